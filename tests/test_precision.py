"""`optim.precision: auto` follows the CPU's bf16 hardware: AMX → bf16; AVX512-BF16 alone or none → fp32."""

import pytest
import torch

from argus_platform.precision import resolve_precision


@pytest.mark.parametrize(
    "caps, want",
    [
        ({"amx_bf16": True, "avx512_bf16": True}, "bf16"),
        ({"avx512_bf16": True}, "fp32"),  # measured slower than fp32 for the default model
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
