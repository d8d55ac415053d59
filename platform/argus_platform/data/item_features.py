"""Item-side features (genre, artist, year, ...) for the item tower: one row per item, read from a
metadata file and encoded against the run's item vocabulary.

  movielens   movies.dat / movies.csv / u.item: features `genre` (multi-valued) and `year` (the
              title's trailing "(YYYY)")
  table       Parquet/CSV with `item_column` and categorical `columns`; a cell may hold several
              values joined by `separator`

Result (`vocab/item_features.npz` + `.json`): codes [C+1, S] int32, S = Σ slots per feature, where
feature f owns a contiguous run of slots and code 0 means "no value". Values are numbered 1..V by
descending frequency over the catalogue. Nothing is dropped silently: rows without an item id and
repeated item ids are written to `quarantine/item_features.parquet` with the reason; metadata rows
of items outside the catalogue, catalogue items without a row and values cut beyond
`max_values` are counted in the summary.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from argus_models.config import ItemFeature
from argus_models.contract import Vocabulary
from argus_platform.data.config import ItemFeaturesConfig
from argus_platform.data.quarantine import _damaged, _ids
from argus_platform.data.sources import (
    UNREADABLE,
    DataSourceError,
    _open_text,
    _require_file,
    require_columns,
    unreadable,
)

ITEM_ID = "item_id"  # the metadata frame's id column after reading
MOVIELENS_FEATURES = ["genre", "year"]
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class ItemFeatureTable:
    """Encoded item-side features of one run."""

    features: list[ItemFeature]
    codes: np.ndarray  # [C+1, S] int32, 0 = no value; row 0 (padding item) all 0
    values: dict[str, list[str]] = field(default_factory=dict)  # feature -> raw value of code c at c-1
    stats: dict = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "item_features.npz", codes=self.codes)
        meta = {"features": [vars(f) for f in self.features], "values": self.values, "stats": self.stats}
        (directory / "item_features.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> "ItemFeatureTable | None":
        meta_path = directory / "item_features.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        codes = np.load(directory / "item_features.npz")["codes"]
        return cls([ItemFeature(**f) for f in meta["features"]], codes, meta["values"], meta["stats"])


def read_item_metadata(cfg: ItemFeaturesConfig) -> tuple[pd.DataFrame, list[str]]:
    """(frame with ITEM_ID + one string column per feature, feature names); `_row` = source row."""
    p = _require_file(cfg.path)
    if cfg.format == "movielens":
        df = _read_movielens_items(p)
        names = list(MOVIELENS_FEATURES)
    else:
        wanted = [cfg.item_column, *cfg.columns]
        require_columns(p, wanted, "data.item_features")
        try:  # every column parsed (not `usecols`): a row with more fields than the header is an error
            df = pd.read_parquet(p, columns=wanted) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str)
        except UNREADABLE as exc:
            raise unreadable(p, exc) from None
        df = df[wanted].rename(columns={cfg.item_column: ITEM_ID})
        names = list(cfg.columns)
    if df.empty:
        raise DataSourceError(f"{p}: no rows (data.item_features.path)")
    df["_row"] = np.arange(len(df), dtype=np.int64)
    return df, names


# u.item's 19 genre flags, in u.genre's order
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def _read_movielens_items(p: Path) -> pd.DataFrame:
    """movies.dat (`id::title::genres`), movies.csv (`movieId,title,genres` header) or ML-100K's u.item
    (`id|title|date|video date|url|` + 19 genre flags) → item_id, genre ("A|B"), year."""
    with _open_text(p) as fh:
        first = fh.readline()
    with _open_text(p) as fh:
        if "::" in first:
            df = pd.read_csv(fh, sep="::", engine="python", header=None, names=[ITEM_ID, "title", "genre"], dtype=str)
        elif first.lower().startswith("movieid,"):
            df = pd.read_csv(fh, dtype=str).rename(columns={"movieId": ITEM_ID, "genres": "genre"})
        elif first.count("|") == 4 + len(ML100K_GENRES):
            raw = pd.read_csv(
                fh, sep="|", header=None, dtype=str, names=[ITEM_ID, "title", "date", "video", "url", *ML100K_GENRES]
            )
            flags = raw[ML100K_GENRES].eq("1")
            df = raw[[ITEM_ID, "title"]].assign(
                genre=flags.apply(lambda r: "|".join(g for g, on in zip(ML100K_GENRES, r) if on), axis=1)
            )
        else:
            raise DataSourceError(
                f"{p}: not a MovieLens item file (expected movies.dat `MovieID::Title::Genres`, movies.csv with a "
                f"movieId header, or u.item); first line: {first.strip()[:80]!r}"
            )
    df["genre"] = df["genre"].replace("(no genres listed)", "")
    df["year"] = df["title"].str.extract(_YEAR, expand=False)
    return df[[ITEM_ID, *MOVIELENS_FEATURES]]


def build_item_features(cfg: ItemFeaturesConfig, vocab: Vocabulary, quarantine_path: Path) -> ItemFeatureTable:
    """Encode the metadata against the vocabulary (see the module docstring)."""
    df, names = read_item_metadata(cfg)
    ids, null_id = _ids(df[ITEM_ID])
    df[ITEM_ID] = ids
    damaged = ~null_id & _damaged(ids)
    dup = ~null_id & ~damaged & df.duplicated(ITEM_ID, keep="first")
    bad = pd.concat(
        [
            df[null_id].assign(reason="null item id"),
            df[damaged].assign(reason="damaged item id (control character or undecodable bytes)"),
            df[dup].assign(reason="repeated item id (first row kept)"),
        ]
    )
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    if len(bad):
        bad.astype({c: str for c in bad.columns if c not in ("_row",)}).to_parquet(quarantine_path, index=False)
    elif quarantine_path.exists():
        quarantine_path.unlink()
    df = df[~null_id & ~damaged & ~dup]
    index = vocab.item_index()
    item_idx = df[ITEM_ID].map(index)
    in_catalogue = item_idx.notna()
    df, item_idx = df[in_catalogue], item_idx[in_catalogue].astype(np.int64).to_numpy()

    C = vocab.num_items
    features, blocks, values_out, cut = [], [], {}, {}
    for name in names:
        cells = df[name].astype("string").fillna("")
        lists = [
            [v.strip() for v in cell.split(cfg.separator) if v.strip()]
            if cfg.separator
            else ([cell.strip()] if cell.strip() else [])
            for cell in cells
        ]
        counts = Counter(v for row in lists for v in row)
        ranked = sorted(counts, key=lambda v: (-counts[v], v))
        code = {v: i + 1 for i, v in enumerate(ranked)}
        slots = max(1, min(cfg.max_values, max((len(r) for r in lists), default=1)))
        block = np.zeros((C + 1, slots), dtype=np.int32)
        cut[name] = 0
        for row, item in zip(lists, item_idx):
            kept = row[:slots]
            cut[name] += len(row) - len(kept)
            block[item, : len(kept)] = [code[v] for v in kept]
        features.append(ItemFeature(name=name, num_values=len(ranked) + 1, slots=slots))
        blocks.append(block)
        values_out[name] = ranked
    codes = np.concatenate(blocks, axis=1)
    has_any = codes[1:].any(axis=1)
    stats = {
        "path": cfg.path,
        "rows": int(len(ids)),
        "quarantined_rows": int(len(bad)),
        "quarantine_reasons": bad["reason"].value_counts().to_dict() if len(bad) else {},
        "rows_kept": int(in_catalogue.sum()),  # rows = kept + quarantined + outside the catalogue
        "rows_outside_catalogue": int((~in_catalogue).sum()),
        "catalogue_items_without_features": int((~has_any).sum()),
        "values_cut_by_max_values": cut,
        "values": {f.name: f.num_values - 1 for f in features},
    }
    return ItemFeatureTable(features, codes, values_out, stats)
