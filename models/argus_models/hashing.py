"""Multi-hash item embeddings: raw item ids → bucket rows of K hash tables.

    v(i) = Linear([E_item(i) ; E_h1(h1(i)) ; … ; E_hK(hK(i))])      (then the item tower's side features)

Each hash table has far fewer rows than the catalogue; two items collide in one table with
probability 1/buckets, in all K with 1/buckets^K, so the concatenation keeps them apart while the
tables stay bounded as the catalogue grows. The hashes are of the *raw* id string (FNV-1a 64, then
a SplitMix64 finaliser per table), not of the vocabulary index: they do not change when the
vocabulary is rebuilt, and an id the vocabulary has never seen still has its buckets.
"""

from __future__ import annotations

import numpy as np

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def fnv1a64(raw_ids) -> np.ndarray:
    """FNV-1a 64-bit hash of each id's UTF-8 bytes → uint64 [N] (vectorised over the ids)."""
    encoded = np.array([str(r).encode("utf-8") for r in raw_ids], dtype=object)
    if len(encoded) == 0:
        return np.zeros(0, dtype=np.uint64)
    width = max(1, max(len(b) for b in encoded))
    fixed = np.array(list(encoded), dtype=f"S{width}").view(np.uint8).reshape(len(encoded), width)
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    h = np.full(len(encoded), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            live = lengths > j
            h = np.where(live, (h ^ fixed[:, j].astype(np.uint64)) * _FNV_PRIME, h)
    return h


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (a bijection of uint64 with good avalanche)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_buckets(raw_ids, buckets: list[int]) -> np.ndarray:
    """int64 [N, K]: the bucket row (1..buckets[k]; row 0 is padding) of each raw id in each table."""
    base = fnv1a64(raw_ids)
    out = np.zeros((len(base), len(buckets)), dtype=np.int64)
    with np.errstate(over="ignore"):
        for k, n in enumerate(buckets):
            if n < 1:
                raise ValueError(f"multi-hash table {k} has {n} buckets; it needs at least 1")
            mixed = splitmix64(base ^ (np.uint64(k + 1) * _GOLDEN))
            out[:, k] = (mixed % np.uint64(n)).astype(np.int64) + 1
    return out


def catalogue_hash_codes(raw_items, buckets: list[int]) -> np.ndarray:
    """int64 [C+1, K] for a vocabulary's items (raw id of index i at raw_items[i-1]); row 0 (padding) is 0."""
    codes = np.zeros((len(raw_items) + 1, len(buckets)), dtype=np.int64)
    codes[1:] = hash_buckets(raw_items, buckets)
    return codes
