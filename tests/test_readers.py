"""Readers: real MovieLens-100k, the GroupLens MovieLens-25M layout, and bad input."""
import pandas as pd
import pytest

from mmrec.data.readers import read_ml100k, read_ml25m, split_title_year
from mmrec.data.tables import DataError, MultiModalDataset
from tests.ml25m_fixture import ratings_rows, write_ml25m


def test_ml100k_from_recbole_package():
    ds = read_ml100k({})
    assert len(ds.interactions) == 100_000 and len(ds.items) == 1682
    assert ds.interactions["user_id"].nunique() == 943
    toy = ds.items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story" and toy["year"] == "1995"
    assert list(toy["genres"]) == ["Animation", "Children's", "Comedy"]
    assert set(ds.users.columns) >= {"user_id", "age", "gender", "occupation", "zip"}
    for tc in ds.report.values():
        tc.check()


def test_ml25m_layout(tmp_path):
    root = write_ml25m(tmp_path / "ml-25m")
    ds = read_ml25m({"path": str(root), "synopsis_file": "synopsis.csv", "trailer_dir": str(tmp_path / "tr")})
    items = ds.items.set_index("item_id")
    assert items.loc["3", "title"] == "Shawshank Redemption, The" and items.loc["3", "year"] == "1994"
    assert list(items.loc["1", "genres"]) == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert list(items.loc["5", "genres"]) == []                       # "(no genres listed)"
    assert items.loc["6", "year"] == "1993"                           # "(1993-1998)"
    assert items.loc["1", "imdb_id"] == "0114709"                      # leading zeros kept
    assert items.loc["1", "synopsis"].startswith("A cowboy doll") and items.loc["2", "synopsis"] == ""
    assert items.loc["4", "trailer"] == str(tmp_path / "tr" / "2GfZl4kuVNI.mp4")
    assert pd.isna(items.loc["3", "trailer"])                         # no trailer listed
    assert len(ds.interactions) == len(ratings_rows())
    assert ds.interactions["rating"].tolist()[:3] == [0.5, 3.5, 4.0]
    # Round trip through the canonical format.
    back = MultiModalDataset.load(ds.save(tmp_path / "processed"))
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    assert back.items["title"].tolist() == ds.items["title"].tolist()


def test_title_year_parsing():
    assert split_title_year("Heat (1995)") == ("Heat", "1995")
    assert split_title_year("Untitled Project") == ("Untitled Project", "")
    assert split_title_year("1984 (1956)") == ("1984", "1956")


def _write_ratings(tmp_path, text):
    return write_ml25m(tmp_path / "ml", ratings_text=text, synopsis=False, youtube=False)


def test_missing_column_names_file_and_column(tmp_path):
    root = _write_ratings(tmp_path, "userId,movieId,timestamp\n1,1,100\n")
    with pytest.raises(DataError, match=r"ratings\.csv: missing column\(s\) \['rating'\]"):
        read_ml25m({"path": str(root)})


def test_non_numeric_rating_names_line(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,abc,101\n2,1,3.0,102\n"
    root = _write_ratings(tmp_path, text)
    with pytest.raises(DataError, match=r"ratings\.csv line 3: rating 'abc' is not a number"):
        read_ml25m({"path": str(root)})
    ds = read_ml25m({"path": str(root), "on_bad_row": "skip"})
    tc = ds.report["interactions"]
    assert tc.rows_in == 3 and tc.rows_out == 2 and tc.skips.counts == {"malformed rating": 1}
    assert "line 3" in tc.skips.examples["malformed rating"][0]


def test_empty_value_and_blank_line_name_the_line(tmp_path):
    root = _write_ratings(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,,101\n")
    with pytest.raises(DataError, match=r"line 3: rating .* is empty"):
        read_ml25m({"path": str(root)})


def test_unknown_item_and_duplicates_are_counted_skips(tmp_path):
    text = ("userId,movieId,rating,timestamp\n"
            "1,1,4.0,100\n"
            "1,999,5.0,101\n"      # unknown movie
            "1,1,2.0,150\n"        # duplicate of line 2, later: kept
            "2,2,3.0,100\n")
    root = _write_ratings(tmp_path, text)
    ds = read_ml25m({"path": str(root)})
    tc = ds.report["interactions"]
    assert tc.rows_in == 4 and tc.rows_out == 2
    assert tc.skips.counts == {"unknown item id": 1, "duplicate (user, item) row; kept the latest": 1}
    assert tc.rows_in == tc.rows_out + tc.skips.total
    kept = ds.interactions.set_index(["user_id", "item_id"])["rating"]
    assert kept.loc[("1", "1")] == 2.0
    assert "item 999" in tc.skips.examples["unknown item id"][0]


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        read_ml25m({"path": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"movies\.csv: file not found"):
        read_ml25m({"path": str(tmp_path / "empty")})
