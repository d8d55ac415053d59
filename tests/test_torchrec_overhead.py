"""The TorchRec-overhead benchmark compares like with like: from the same weights on the same
batches, plain nn.Embedding tables with Adagrad and TorchRec's DMP with FBGEMM's fused Adagrad
take the same steps (equal losses), so its step-time ratio measures only the machinery."""

import torch
from conftest import TINY_TRAIN


def test_plain_tables_and_torchrec_train_identically(tmp_path):
    from argus_platform.bench_torchrec import measure, prepared_batches
    from argus_platform.config import TrainJobConfig
    from argus_platform.configlib import load_config
    from argus_platform.data.prepare import prepare_data
    from argus_platform.train_argus import model_schema
    from argus_platform.train_loop import make_collators

    cfg = load_config(
        TrainJobConfig, overrides=[o for o in TINY_TRAIN if not o.startswith("scaling")] + ["model.dropout=0.0"]
    )
    prepared = prepare_data(cfg.data, tmp_path)
    schema = model_schema(prepared, cfg.model)
    collate, _ = make_collators(cfg, schema, prepared.spec, rank=0)
    batches = prepared_batches(tmp_path, collate, cfg.optim.batch_size, 5)
    r = measure(cfg, schema, torch.from_numpy(prepared.item_counts), batches, warmup=1)
    assert r.first_loss_plain == r.first_loss_torchrec or abs(r.first_loss_plain - r.first_loss_torchrec) < 1e-5, r
    assert abs(r.loss_plain - r.loss_torchrec) < 1e-4 and r.loss_plain < r.first_loss_plain, r
    assert r.steps == 4 and r.plain_ms > 0 and r.torchrec_ms > 0
