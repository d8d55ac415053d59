"""RecJPQ item codes (Petrov & Macdonald, "RecJPQ: Training Large-Catalogue Sequential
Recommenders", WSDM 2024): each item's row is the concatenation of M sub-item rows,

    E(i) = [E_0(c_0(i)) ; E_1(c_1(i)) ; … ; E_{M-1}(c_{M-1}(i))]      E_m: K rows, D/M wide

so the item tables hold M·K·D/M = K·D weights whatever the catalogue size. The codes are fixed
before training, as the paper does: a truncated SVD of the training user × item matrix gives each
item M coordinates, and split m's code is the quantile bin (one of K equal-count bins) of the
item's m-th coordinate, so items that the interactions place close together share sub-items.

Determinism: the SVD is a randomised one (Halko et al.) from a fixed seed, each singular vector's
sign is fixed (its largest-magnitude entry positive), and ties in a coordinate are broken by the
item index (the paper adds small random noise instead).
"""

from __future__ import annotations

import numpy as np
import torch

POWER_ITERATIONS = 4
OVERSAMPLE = 10


def interaction_matrix(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """Binary user × item matrix [num_users, num_items + 1] (column 0: the padding item, empty), as a
    sparse float64 tensor; an item a user saw twice counts once."""
    pairs = np.unique(np.stack([users.astype(np.int64), items.astype(np.int64)]), axis=1)
    values = torch.ones(pairs.shape[1], dtype=torch.float64)
    shape = (num_users, num_items + 1)
    return torch.sparse_coo_tensor(torch.from_numpy(pairs), values, shape, check_invariants=True).coalesce()


def item_factors(matrix: torch.Tensor, rank: int, seed: int = 0) -> np.ndarray:
    """The top `rank` right singular vectors of the sparse `matrix` scaled by their singular values,
    one row per column of `matrix` [columns, rank] (randomised SVD, deterministic for a seed)."""
    n_rows, n_cols = matrix.shape
    if min(n_rows, n_cols) <= rank + OVERSAMPLE:  # small: the exact SVD
        _, s, vt = np.linalg.svd(matrix.to_dense().numpy(), full_matrices=False)
    else:
        transposed = matrix.t().coalesce()
        g = np.random.default_rng(seed).standard_normal((n_cols, rank + OVERSAMPLE))
        q = np.linalg.qr((matrix @ torch.from_numpy(g)).numpy())[0]
        for _ in range(POWER_ITERATIONS):  # (A Aᵀ)^q A G, re-orthonormalised each time
            q = np.linalg.qr((transposed @ torch.from_numpy(q)).numpy())[0]
            q = np.linalg.qr((matrix @ torch.from_numpy(q)).numpy())[0]
        _, s, vt = np.linalg.svd((transposed @ torch.from_numpy(q)).numpy().T, full_matrices=False)
    vt, s = vt[:rank], s[:rank]
    if vt.shape[0] < rank:  # fewer non-trivial directions than splits: the rest are zero
        vt = np.vstack([vt, np.zeros((rank - vt.shape[0], n_cols))])
        s = np.concatenate([s, np.zeros(rank - len(s))])
    signs = np.sign(vt[np.arange(rank), np.abs(vt).argmax(1)])
    signs[signs == 0] = 1.0
    return (vt * (signs * s)[:, None]).T


def quantile_codes(factors: np.ndarray, sub_items: int) -> np.ndarray:
    """[C, M] coordinates → int64 [C, M] codes 1..sub_items: in each column the items ranked by
    coordinate (ties by index) and cut into `sub_items` bins of (nearly) equal count."""
    n, m = factors.shape
    codes = np.empty((n, m), dtype=np.int64)
    index = np.arange(n)
    for j in range(m):
        order = np.lexsort((index, factors[:, j]))
        codes[order, j] = index * sub_items // max(n, 1) + 1
    return codes


def assign_codes(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, splits: int, sub_items: int, seed: int = 0
) -> np.ndarray:
    """RecJPQ codes from training interactions (`users`, `items`: one entry per event, items 1..num_items):
    int64 [num_items + 1, splits], each in 1..sub_items; row 0 (the padding item) is 0."""
    if len(items) and (items.min() < 1 or items.max() > num_items):
        raise ValueError(f"RecJPQ codes: item indices must lie in 1..{num_items}, got {items.min()}..{items.max()}")
    if sub_items < 1 or sub_items > max(num_items, 1):
        raise ValueError(f"RecJPQ codes: {sub_items} sub-items per split for a catalogue of {num_items}")
    factors = item_factors(interaction_matrix(users, items, num_users, num_items), splits, seed)[1:]
    codes = np.zeros((num_items + 1, splits), dtype=np.int64)
    codes[1:] = quantile_codes(factors, sub_items)
    return codes


def distinct_items(codes: np.ndarray) -> int:
    """How many distinct code tuples the real items (rows 1..) have: items sharing a tuple share a row."""
    return len(np.unique(codes[1:], axis=0)) if len(codes) > 1 else 0
