"""Layered configs: defaults -> files (with _base_) -> command line, checked key by key."""
import pytest

from mmrec.config import ConfigError, load_config, parse_overrides


def test_default_config_resolves_with_entry_defaults():
    cfg = load_config("configs/ml100k.yaml")
    assert cfg["data"]["source"] == "ml100k" and cfg["split"]["ratios"] == [0.85, 0.075, 0.075]
    text = cfg["encoders"]["text"]
    assert text["freeze"] is True and text["cache_frozen"] is True          # set by the file
    assert text["freeze_layers"] == 0 and text["tokenizer"] is None and text["num_layers"] is None  # bert defaults
    assert cfg["fields"]["text"]["modality"] == "text"


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["train.lr=3e-4", "eval.ks=[1,5]", "run_dir=null", "name=x"]) == \
        {"train": {"lr": 3e-4}, "eval": {"ks": [1, 5]}, "run_dir": None, "name": "x"}
    cfg = load_config("configs/ml100k.yaml", ["train.lr=3e-4", "fields.text.max_length=16"])
    assert cfg["train"]["lr"] == 3e-4 and cfg["fields"]["text"]["max_length"] == 16


def test_unknown_key_names_source_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'train.lrr'; did you mean 'train.lr'"):
        load_config("configs/ml100k.yaml", ["train.lrr=1"])
    f = tmp_path / "bad.yaml"
    f.write_text("_base_: ml100k\ntrain:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=rf"{f.name}: unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(f)


def test_unknown_key_inside_a_field_entry_and_bad_type():
    with pytest.raises(ConfigError, match=r"unknown config key 'fields.text.templat'"):
        load_config("configs/ml100k.yaml", ["fields.text.templat={title}"])
    with pytest.raises(ConfigError, match=r"'train.epochs' expects int"):
        load_config("configs/ml100k.yaml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"unknown modality 'smell'"):
        load_config("configs/ml100k.yaml", ["fields.odour.modality=smell"])


def test_base_chain_and_removing_an_entry(tmp_path):
    f = tmp_path / "two_fields.yaml"
    f.write_text("_base_: ml100k\nfields:\n  genres:\n    modality: text\n    template: '{genres}'\n")
    cfg = load_config(f)
    assert list(cfg["fields"]) == ["text", "genres"] and cfg["name"] == "ml100k-text"
    cfg = load_config(f, ["fields.text=null"])
    assert list(cfg["fields"]) == ["genres"]
