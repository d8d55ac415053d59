"""`optim.precision: auto` follows the CPU's bf16 hardware: AMX → bf16; none → fp32; AVX512-BF16
alone → fp32 until pre-training has timed the model's step in both precisions."""

import re

import pytest
import torch

from argus_platform import precision as prec
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import load_config
from argus_platform.plan_argus import planning_schema
from argus_platform.precision import resolve_precision


@pytest.mark.parametrize(
    "caps, want",
    [
        ({"amx_bf16": True, "avx512_bf16": True}, "bf16"),
        ({"avx512_bf16": True}, "fp32"),  # until the model's step is timed (below)
        ({}, "fp32"),  # emulated bf16
    ],
)
def test_auto_precision_on_cpu_follows_the_bf16_hardware(monkeypatch, caps, want):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    precision, why = resolve_precision("auto", torch.device("cpu"), collective=False)
    assert precision == want and why.startswith("auto: ")
    assert resolve_precision("bf16", torch.device("cpu"), collective=False)[0] == "bf16"  # an explicit choice stands
    assert resolve_precision("fp32", torch.device("cpu"), collective=False)[0] == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize(
    "caps, timed", [({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx512_bf16": True}, False), ({}, False)]
)
def test_only_cpus_with_avx512_bf16_and_no_amx_time_the_step(monkeypatch, caps, timed):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert prec.bf16_worth_timing(torch.device("cpu")) is timed
    assert not prec.bf16_worth_timing(torch.device("meta"))


def _model(*overrides: str) -> tuple[TrainJobConfig, object]:
    cfg = load_config(
        TrainJobConfig,
        overrides=["model.embedding_dim=32", "model.max_seq_len=16", "optim.batch_size=4", *overrides],
    )
    return cfg, planning_schema(cfg, 200)


def test_a_short_step_keeps_fp32_without_timing_bf16():
    cfg, schema = _model()
    chosen, why = prec.timed_precision(cfg, schema, torch.device("cpu"))
    assert chosen == "fp32" and re.search(r"takes \d+ ms in fp32, too short to time bf16", why), why


def test_the_timed_choice_follows_the_measured_speedup_and_keeps_the_random_state(monkeypatch):
    """Every step timed (no floor): the choice is bf16 exactly when the printed times say it is
    1.2x faster; the timing draws random ids and weights without moving the process's generator.
    The item tower and RecJPQ parts are left out of the timed model (one plain item table)."""
    monkeypatch.setattr(prec, "TIMED_MIN_STEP_S", 0.0)
    cfg, schema = _model("model.item_codes=recjpq", "model.recjpq_splits=4", "model.recjpq_sub_items=8")
    assert schema.recjpq_splits == 4
    torch.manual_seed(7)
    chosen, why = prec.timed_precision(cfg, schema, torch.device("cpu"))
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))
    bf16, fp32, speedup = map(
        float, re.search(r"took ([\d.]+) ms in bf16 against ([\d.]+) ms in fp32, ([\d.]+)x", why).groups()
    )
    assert chosen == ("bf16" if speedup >= prec.BF16_MIN_SPEEDUP else "fp32"), why
    assert speedup == pytest.approx(fp32 / bf16, rel=0.01, abs=0.01) and why.startswith("auto, timed: ")
