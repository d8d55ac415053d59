"""The optimizers: the tables' fused FBGEMM optimizer (applied in the backward, no gradient is
materialised) and AdamW for the dense parameters."""

from __future__ import annotations

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torch.distributed.tensor import DTensor

from argus_platform.config import TrainJobConfig


def fused_params(cfg: TrainJobConfig) -> dict:
    """The tables' optimizer, fused into the FBGEMM backward (no gradient is materialised)."""
    kind = cfg.optim.sparse_optimizer
    if kind == "adam":
        return {
            "optimizer": EmbOptimType.ADAM,
            "learning_rate": cfg.optim.sparse_lr,
            "eps": 1e-8,
            "beta1": 0.9,
            "beta2": 0.999,
        }
    if kind == "sgd":
        return {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": cfg.optim.sparse_lr}
    optimizer = EmbOptimType.EXACT_ADAGRAD if kind == "adagrad" else EmbOptimType.EXACT_ROWWISE_ADAGRAD
    params = {"optimizer": optimizer, "learning_rate": cfg.optim.sparse_lr, "eps": 1e-8}
    if cfg.optim.sparse_weight_decay:
        params.update(weight_decay=cfg.optim.sparse_weight_decay, weight_decay_mode=WeightDecayMode.L2)
    return params


def dense_adamw(cfg: TrainJobConfig, params: list[torch.Tensor]) -> torch.optim.AdamW:
    """AdamW for the dense parameters; with optim.grad_clip > 0 their global gradient norm is clipped
    before each step (after DDP's all-reduce / FSDP2's reduce-scatter, so every rank agrees)."""
    # The fused kernel (one pass over all parameters) where every parameter is a plain tensor;
    # FSDP2's DTensor shards take the per-tensor loop.
    fused = not any(isinstance(p, DTensor) for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.optim.dense_lr, weight_decay=cfg.optim.weight_decay, fused=fused or None)
    if cfg.optim.grad_clip > 0:

        def clip(optimizer, args, kwargs) -> None:
            grads = [p for p in params if p.grad is not None]
            if grads:
                torch.nn.utils.clip_grad_norm_(grads, cfg.optim.grad_clip)

        opt.register_step_pre_hook(clip)
    return opt
