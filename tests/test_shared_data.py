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


@pytest.mark.parametrize(
    "path, rows, first_genres",
    [
        ("ml-1m/movies.dat", 3883, "Animation|Children's|Comedy"),
        ("ml-100k/u.item", 1682, "Animation|Children's|Comedy"),
        ("ml-latest-small/movies.csv", 9742, "Adventure|Animation|Children|Comedy|Fantasy"),
    ],
)
def test_movielens_item_files_give_genre_and_year(path, rows, first_genres):
    from argus_platform.data.config import ItemFeaturesConfig
    from argus_platform.data.item_features import read_item_metadata

    df, names = read_item_metadata(ItemFeaturesConfig(path=str(shared_file(path)), format="movielens"))
    assert names == ["genre", "year"] and len(df) == rows
    assert df.iloc[0]["item_id"] == "1" and df.iloc[0]["genre"] == first_genres and df.iloc[0]["year"] == "1995"
    assert df["year"].notna().mean() > 0.99


def test_ml1m_catalogue_is_covered_by_movies_dat(tmp_path):
    import numpy as np

    from argus_models.contract import Vocabulary
    from argus_platform.data.config import ItemFeaturesConfig
    from argus_platform.data.item_features import build_item_features

    _, chunks = read_sasrec(shared_file("ml-1m/derived_ml-1m_chrono_userid_movieid.txt.gz"))
    items = pd.concat(chunks)["item_id"].unique()
    vocab = Vocabulary(items=np.array(items, dtype=str), users=np.array(["0"]))
    table = build_item_features(
        ItemFeaturesConfig(path=str(shared_file("ml-1m/movies.dat")), format="movielens"), vocab, tmp_path / "q.parquet"
    )
    st = table.stats
    assert st["catalogue_items_without_features"] == 0 and st["quarantined_rows"] == 0
    assert st["rows_outside_catalogue"] == 3883 - 3706 and st["values"]["genre"] == 18
