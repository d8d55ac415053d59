"""Build the run's vocabularies from the canonical log (the `Vocabulary` format lives in
`argus_models.contract`, so Serve reads it without the training code)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from argus_models.contract import Vocabulary
from argus_platform.data.spec import ITEM, USER, DatasetSpec

__all__ = ["Vocabulary", "build_vocabulary"]


def build_vocabulary(events_path: Path, spec: DatasetSpec) -> Vocabulary:
    """Count ids and context values over the canonical log, streaming row groups."""
    counts = {USER: Counter(), ITEM: Counter(), **{c: Counter() for c in spec.context_columns}}
    pf = pq.ParquetFile(events_path)
    for batch in pf.iter_batches(batch_size=1_000_000, columns=list(counts)):
        for name in counts:
            vc = batch.column(name).value_counts()
            counts[name].update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))

    def ranked(c: Counter) -> np.ndarray:
        return np.array(sorted(c, key=lambda k: (-c[k], k)), dtype=str)

    return Vocabulary(
        items=ranked(counts[ITEM]),
        users=np.array(sorted(counts[USER]), dtype=str),
        contexts={c: ranked(counts[c]) for c in spec.context_columns},
    )
