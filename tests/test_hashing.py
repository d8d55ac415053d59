"""Multi-hash item ids: the hash against a byte-by-byte reference, bucket ranges, spread and independence."""

import numpy as np
import pytest

from argus_models.hashing import catalogue_hash_codes, fnv1a64, hash_buckets, splitmix64

M64 = (1 << 64) - 1


def _fnv_reference(s: str) -> int:
    h = 0xCBF29CE484222325
    for byte in s.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & M64
    return h


def _splitmix_reference(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


IDS = ["2858", "260", "", "a", "B000050FBH", "électro-Ω", "x" * 97, "12", "21"]


def test_fnv1a64_and_splitmix64_equal_the_byte_by_byte_reference():
    assert [int(h) for h in fnv1a64(IDS)] == [_fnv_reference(s) for s in IDS]
    assert _fnv_reference("a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    xs = np.array([0, 1, 12345, M64], dtype=np.uint64)
    assert [int(v) for v in splitmix64(xs)] == [_splitmix_reference(int(x)) for x in xs]


def test_buckets_follow_the_reference_and_stay_in_range():
    codes = hash_buckets(IDS, [7, 1000])
    golden = 0x9E3779B97F4A7C15
    for i, s in enumerate(IDS):
        for k, n in enumerate([7, 1000]):
            assert codes[i, k] == _splitmix_reference(_fnv_reference(s) ^ (((k + 1) * golden) & M64)) % n + 1
    assert codes.min() >= 1 and codes[:, 0].max() <= 7 and codes[:, 1].max() <= 1000
    assert np.array_equal(codes, hash_buckets(list(IDS), [7, 1000]))  # deterministic, no process salt
    with pytest.raises(ValueError, match="at least 1"):
        hash_buckets(IDS, [0])


def test_catalogue_codes_keep_padding_row_zero():
    codes = catalogue_hash_codes(["10", "20", "30"], [5, 5])
    assert codes.shape == (4, 2) and codes[0].tolist() == [0, 0] and (codes[1:] >= 1).all()


def test_two_tables_spread_ids_and_rarely_collide_in_both():
    ids = [str(i) for i in range(20_000)]
    codes = hash_buckets(ids, [1000, 1000])
    for k in range(2):
        counts = np.bincount(codes[:, k], minlength=1001)[1:]
        assert counts.min() >= 2 and counts.max() <= 45  # mean 20 per bucket
    assert np.mean(codes[:, 0] == codes[:, 1]) < 0.01  # the two tables hash independently
    pairs = codes[:, 0] * 1001 + codes[:, 1]
    shared = len(ids) - len(np.unique(pairs))
    assert shared < 0.02 * len(ids)  # ~200 expected of 20,000 for 10^6 bucket pairs, vs ~19,000 for one table of 1000
