"""Readers on the real datasets in ../shared/data/raw (skipped with a reason when absent)."""

import pandas as pd
import pytest

from conftest import shared_file

from argus_platform.data.quarantine import validate_chunk
from argus_platform.data.sources import read_kuairand, read_movielens, read_sasrec

pytestmark = pytest.mark.shared_data


def test_ml1m_sasrec_sequences():
    spec, chunks = read_sasrec(shared_file("ml-1m/derived_ml-1m_chrono_userid_movieid.txt.gz"))
    df = pd.concat(chunks)
    assert len(df) == 1_000_209 and df["user_id"].nunique() == 6040 and df["item_id"].nunique() == 3706
    good, bad = validate_chunk(df, spec, "ml-1m")
    assert len(bad) == 0


def test_ml100k_raw_ratings():
    spec, chunks = read_movielens(shared_file("ml-100k/u.data"))
    df = pd.concat(chunks)
    good, bad = validate_chunk(df, spec, "u.data")
    assert len(good) == 100_000 and len(bad) == 0
    assert good["user_id"].nunique() == 943 and good["item_id"].nunique() == 1682
    assert 0.5 < good["like"].mean() < 0.6  # ratings ≥ 4 are 55% of MovieLens-100K


def test_ml_latest_small_half_star_ratings():
    spec, chunks = read_movielens(shared_file("ml-latest-small/ratings.csv"))
    good, bad = validate_chunk(pd.concat(chunks), spec, "ratings.csv")
    assert len(good) == 100_836 and len(bad) == 0 and 0.5 in spec.actions[2].levels


def test_kuairand_multi_action_slice():
    spec, chunks = read_kuairand(shared_file("kuairand-27k-likehate-slice/processed_standard_kcore_15.csv"))
    df = pd.concat(chunks)
    good, bad = validate_chunk(df, spec, "kuairand")
    assert len(good) + len(bad) == 41_828 and len(bad) == 0
    assert len(spec.actions) == 7 and spec.context_columns == ["hour"]
    assert abs(good["like"].mean() - 0.807) < 0.01 and abs(good["click"].mean() - 0.657) < 0.01
