"""Content fields: templates, missing text, and items without any content."""
import numpy as np
import pandas as pd
import pytest

from mmrec.config import load_config
from mmrec.data.fields import render_texts
from mmrec.data.pipeline import prepare
from mmrec.data.tables import DataError
from tests.ml25m_fixture import write_ml25m


def test_template_rendering_and_presence():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["Heat", "", None],
                          "year": ["1995", "", ""], "genres": [["Action", "Crime"], [], []]})
    texts, present = render_texts(items, "text", "{title} ({year}). {genres}")
    assert texts[0] == "Heat (1995). Action, Crime"
    assert present == [True, False, False]          # b and c have every referenced column empty
    assert texts[1] == ""


def test_unknown_template_column_names_field_and_columns():
    items = pd.DataFrame({"item_id": ["a"], "title": ["x"]})
    with pytest.raises(DataError, match=r"fields\.syn\.template names unknown item column\(s\) \['synopsis'\]"):
        render_texts(items, "syn", "{synopsis}")


def test_item_with_empty_text_is_dropped_and_reported(tmp_path, cache_dir):
    # Movie 5 has no synopsis; with a synopsis-only field it has no content at all.
    root = write_ml25m(tmp_path / "ml", synopsis=True, youtube=False)
    cfg = load_config("configs/tiny.yaml", [
        "data.source=ml25m", f"data.path={root}", "data.synopsis_file=synopsis.csv",
        f"data.cache_dir={cache_dir}", "data.min_user_ratings=1",
        "fields.text.template={synopsis}"])
    p = prepare(cfg)
    # Only movies 1 and 3 have synopses; the rest are dropped, counted and named.
    assert p.split.n_items == 2
    assert p.split.stats["items_dropped_no_content"] == 4
    assert set(p.report["items_without_content"]["examples"]) == {"2", "4", "5", "6"}
    assert p.report["items_without_content"]["count"] == 4
    assert p.split.stats["interactions_in"] == p.split.stats["interactions"] + \
        p.split.stats["interactions_dropped_no_content"] + p.split.stats["interactions_dropped_few_ratings"]


def test_partially_missing_field_keeps_the_item(tmp_path, cache_dir):
    root = write_ml25m(tmp_path / "ml", synopsis=True, youtube=False)
    cfg = load_config("configs/tiny.yaml", [
        "data.source=ml25m", f"data.path={root}", "data.synopsis_file=synopsis.csv",
        f"data.cache_dir={cache_dir}", "data.min_user_ratings=1",
        "fields.synopsis.modality=text", "fields.synopsis.template={synopsis}"])
    p = prepare(cfg)
    assert p.split.n_items == 6
    assert p.field_present("synopsis").sum() == 2 and p.field_present("text").all()
    batch = p.collate(np.arange(6))
    assert batch["synopsis"]["present"].tolist() == p.field_present("synopsis").tolist()
