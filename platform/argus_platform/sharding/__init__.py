"""Shard the ARGUS task: tables on `meta` → planner `collective_plan` → DistributedModelParallel,
fused row-wise Adagrad for the tables + AdamW for the dense part in one CombinedOptimizer. Same
code on CPU (gloo) and GPU (nccl); only the device and the planner topology differ.

- `task`: the unsharded task (dense arch, tables on meta, the loss with its logQ mixture);
- `optimizers`: the tables' fused FBGEMM optimizer and the dense AdamW;
- `plan`: the planner's constraints and topology, the kernel checks, DMP (+ FSDP2) — `shard`;
- `gather`: full tables on every rank, for evaluation and export.
"""
