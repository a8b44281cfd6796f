"""Configuration is data: every default is YAML under configs/ (base, one file per head, modality,
encoder type, the synthetic world and its presets), a run resolves only what its config uses, and
resolving imports no model or data code."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import mmrec.config as config
from mmrec.config import (CONFIG_DIR, ConfigError, add_entry_defaults, dump_config, load_config,
                          load_yaml, register_defaults_dir, resolve_world, world_defaults,
                          world_options, world_presets, yaml_load)

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "configs" / "defaults"
HEAD_FILES = {p.stem: p for p in sorted((DEFAULTS / "heads").glob("*.yaml"))}
HEAD_SECTIONS = {s for p in HEAD_FILES.values() for s in load_yaml(p) if s != config.USES_KEY}

# One run of every head, and every modality and encoder type (clcrec_ml100k: features and text;
# tiny_video_text: video, text; the command line: image).
RUNS = {
    "mmrec": ("configs/ml100k.yaml", []),
    "clcrec": ("configs/clcrec_ml100k.yaml", []),
    "sasrec": ("configs/cmclrec_ml100k.yaml", ["head=sasrec"]),
    "cmclrec": ("configs/cmclrec_ml100k.yaml", []),
}
MORE = [("configs/tiny_video_text.yaml", []), ("configs/world_split.yaml", []),
        ("configs/tiny.yaml", ["fields.still.modality=image", "fields.still.encoder=image",
                               "encoders.image.type=vit", "encoders.image.arch=tiny", "fields.still.size=32"])]


def head_sections(head: str) -> set[str]:
    """The head sections a run of `head` has: its file's and those of the files it `_uses_`."""
    data = load_yaml(HEAD_FILES[head])
    out = {s for s in data if s != config.USES_KEY}
    for other in data.get(config.USES_KEY, []):
        out |= head_sections(other)
    return out


def test_resolving_imports_no_model_or_data_code():
    """In a fresh interpreter: every head's, modality's and encoder type's config resolves (and
    passes the training checks) with none of the heavy stacks or model/data modules imported."""
    cases = list(RUNS.values()) + MORE
    code = f"""
import json, sys
from mmrec.config import load_config
from mmrec.config_checks import check_config
for path, overrides in {cases!r}:
    check_config(load_config(path, overrides), complete=True)
load_config(None, ["fields.f.modality=features"])
banned = ("torch", "timm", "transformers", "pandas", "numpy")
# of the encoders, only their plain-data tables (encoders.presets) may load
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in banned
                        or m.startswith(("mmrec.data", "mmrec.features", "mmrec.models", "mmrec.synthetic"))
                        or (m.startswith("encoders") and m not in ("encoders", "encoders.presets")))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("head", list(RUNS))
def test_a_run_has_base_and_its_own_head_sections_only(head):
    path, overrides = RUNS[head]
    cfg = load_config(path, overrides)
    assert cfg["head"] == head
    base = load_yaml(CONFIG_DIR / "base.yaml")
    assert set(cfg) == set(base) | head_sections(head)
    assert not (set(base) & HEAD_SECTIONS)          # base.yaml holds no head's section
    for section in head_sections(head):             # the head files' keys, all of them
        assert set(cfg[section]) == set(_head_defaults(section))


def _head_defaults(section: str) -> dict:
    for p in HEAD_FILES.values():
        data = load_yaml(p)
        if section in data:
            return data[section]
    raise KeyError(section)


def test_head_sections_follow_the_head_of_the_last_layer():
    assert head_sections("mmrec") == {"loss", "distill"}
    assert head_sections("clcrec") == {"clcrec"}
    assert head_sections("sasrec") == {"sasrec", "user_split"}
    assert head_sections("cmclrec") == {"cmclrec", "sasrec", "user_split"}
    cfg = load_config("configs/clcrec_ml100k.yaml", ["head=mmrec"])      # head from the command line
    assert {"loss", "distill"} <= set(cfg) and "clcrec" not in cfg
    assert cfg["loss"]["logq_correction"] is False  # ml100k_paper's chain sets no loss key
    cfg = load_config("configs/cmclrec_ml100k.yaml", ["sasrec.hidden=32", "sasrec.heads=2"])
    assert cfg["sasrec"]["hidden"] == 32 and cfg["cmclrec"] == _head_defaults("cmclrec")
    assert cfg["user_split"] == _head_defaults("user_split")


def test_another_heads_section_is_checked_then_left_out(tmp_path):
    cfg = load_config("configs/ml100k.yaml", ["sasrec.hidden=32", "clcrec.lam=0.9"])
    assert "sasrec" not in cfg and "clcrec" not in cfg
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'sasrec.hiden'; did you mean 'sasrec.hidden'"):
        load_config("configs/ml100k.yaml", ["sasrec.hiden=32"])
    with pytest.raises(ConfigError, match=r"'clcrec.lam' expects float"):
        load_config("configs/ml100k.yaml", ["clcrec.lam=much"])
    # an older run's config.yaml holds every head's section: it resolves as before
    old = load_config("configs/ml100k.yaml")
    for p in HEAD_FILES.values():
        old.update({k: v for k, v in load_yaml(p).items() if k != config.USES_KEY and k not in old})
    f = tmp_path / "config.yaml"
    dump_config(old, f)
    assert load_config(f) == load_config("configs/ml100k.yaml")


def test_every_shipped_config_round_trips_through_its_dump(tmp_path):
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(f)
        dump_config(cfg, tmp_path / f.name)
        assert load_config(tmp_path / f.name) == cfg, f.name


def _kinds(kind: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((DEFAULTS / kind).glob("*.yaml"))}


def test_entry_defaults_are_the_yaml_files():
    modalities, types = _kinds("modalities"), _kinds("encoders")
    assert set(modalities) == {"text", "video", "image", "features"}
    assert set(types) == {"bert", "vit", "vivit"}
    for name, p in modalities.items():
        want = load_yaml(p)
        assert want["modality"] == name
        assert load_config(None, [f"fields.x.modality={name}"])["fields"]["x"] == want
    for name, p in types.items():
        want = load_yaml(p)
        assert want["type"] == name
        assert load_config(None, [f"encoders.e.type={name}"])["encoders"]["e"] == want
    cfg = load_config("configs/ml100k.yaml")        # the file's keys over the type's defaults
    assert cfg["encoders"]["text"] == {**load_yaml(types["bert"]), "pooling": "mean", "freeze": True,
                                       "cache_frozen": True}


def test_defaults_files_read_the_same_with_plain_yaml():
    """encoders/registry.py reads the encoder files with yaml.safe_load (it imports nothing of
    mmrec); every defaults file must mean the same to it as to mmrec's loader."""
    for p in sorted(DEFAULTS.rglob("*.yaml")):
        text = p.read_text()
        assert yaml.safe_load(text) == yaml_load(text), p


def test_encoder_classes_get_the_yaml_defaults():
    from encoders import ENCODERS, encoder_defaults
    from encoders.text import BertTextEncoder
    types = _kinds("encoders")
    assert set(ENCODERS) == set(types)
    for name, p in types.items():
        assert ENCODERS[name].DEFAULTS == load_yaml(p) == encoder_defaults({"type": name})
        assert list(ENCODERS[name].DEFAULTS)[0] == "type"
    assert BertTextEncoder.DEFAULTS["cache_frozen"] is False


def test_vision_arch_resolution_is_shared_and_worded_for_configs():
    """One table and one resolver (encoders/presets.py, from configs/defaults/encoder_presets.yaml)
    for the checks and the models; an unknown arch is a ConfigError naming the known ones."""
    from encoders import presets
    from mmrec import config_checks
    assert presets.VISION_ARCHS["tiny"]["width"] == 64 and presets.VISION_SIZE_KEYS[0] == "img_size"
    got = config_checks.resolve_vision_arch({"arch": "tiny", "width": 96, "img_size": None})
    assert got == {**presets.VISION_ARCHS["tiny"], "width": 96}
    with pytest.raises(ConfigError, match=r"unknown vision arch 'huge' \(known: paper, tiny\)"):
        config_checks.resolve_vision_arch({"arch": "huge"})


def test_unknown_modality_and_type_suggest():
    with pytest.raises(ConfigError, match=r"command line: 'fields.x': unknown modality 'vidoe'; did you mean 'video'"):
        load_config(None, ["fields.x.modality=vidoe"])
    with pytest.raises(ConfigError, match=r"'encoders.e': unknown encoder type 'vivt'; did you mean 'vivit'"):
        load_config(None, ["encoders.e.type=vivt"])
    with pytest.raises(ConfigError, match=r"'fields.x': needs a 'modality' \(known: features, image, text, video\)"):
        load_config(None, ["fields.x.size=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'encoders.e.tubelett'; did you mean 'encoders.e.tubelet'"):
        load_config(None, ["encoders.e.type=vivit", "encoders.e.tubelett=2"])


# ------------------------------------------------------------------------------ the world
def test_world_options_are_a_checked_section(tmp_path):
    defaults, presets = load_yaml(DEFAULTS / "world.yaml"), world_presets()
    assert set(presets) == {p.stem for p in (DEFAULTS / "world_presets").glob("*.yaml")} >= {"default", "motion", "split"}
    cfg = load_config("configs/world_motion.yaml")
    w = cfg["data"]["world"]
    assert set(w) == set(defaults) and w["preset"] == "motion" and w["name"] == "world-motion"
    assert w["attributes"] == presets["motion"]["attributes"]             # replaced whole, not merged
    assert w["trailer"] == {**defaults["trailer"], "scenes": 6, "informative": 2}
    assert world_options(cfg) == w                                          # merging again changes nothing
    assert load_config("configs/ml100k.yaml")["data"]["world"] == {}        # not a world run: untouched
    custom = {"colour": ["red"], "shape": ["circle"], "texture": ["solid"], "direction": ["up"], "speed": ["slow"]}
    w = resolve_world({"attributes": custom, "n_items": 10}, "split")
    assert w["attributes"] == custom and w["n_items"] == 10 and w["video"] == ["colour", "direction"]
    assert world_defaults() == {k: v for k, v in defaults.items() if k != "preset"}
    f = tmp_path / "w.yaml"
    f.write_text("_base_: world\ndata:\n  world:\n    trailer:\n      sizee: 3\n")
    with pytest.raises(ConfigError, match=rf"{f.name}: unknown config key 'data.world.trailer.sizee'; did you mean 'data.world.trailer.size'"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'data.world.n_itemz'; did you mean 'data.world.n_items'"):
        load_config("configs/world.yaml", ["data.world.n_itemz=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data.world.attributes.color'; did you mean 'data.world.attributes.colour'"):
        load_config("configs/world.yaml", ["data.world.attributes.color=[red]"])
    with pytest.raises(ConfigError, match=r"'data.world.n_items' expects int"):
        load_config("configs/world.yaml", ["data.world.n_items=many"])
    with pytest.raises(ConfigError, match=r"unknown world preset 'motoin'.*did you mean 'motion'"):
        load_config("configs/world.yaml", ["data.world.preset=motoin"])
    assert load_config("configs/world.yaml", ["data.world.name=007"])["data"]["world"]["name"] == "007"   # typed by its default


# ------------------------------------------------------------------------------ plug-ins
@pytest.fixture
def clean_plugins(monkeypatch):
    monkeypatch.setattr(config, "_DEFAULTS_DIRS", [])
    monkeypatch.setattr(config, "_ADDED", {s: {} for s in config.ENTRY_SECTIONS})
    monkeypatch.setattr(config, "_ENTRY_DEFAULTS", {})


def test_plugins_add_yaml_folders_and_dicts(tmp_path, clean_plugins):
    d = tmp_path / "plugin_defaults"
    for kind in ("modalities", "encoders", "heads", "world_presets"):
        (d / kind).mkdir(parents=True)
    (d / "modalities" / "smell.yaml").write_text("modality: smell\ncolumn: odour\nstrength: 1.0\n")
    (d / "modalities" / "text.yaml").write_text("modality: text\nshadowed: true\n")   # shipped wins
    (d / "encoders" / "nose.yaml").write_text("type: nose\nwidth: 8\n")
    (d / "world_presets" / "tiny.yaml").write_text("name: world-tiny\nn_items: 50\n")
    (d / "heads" / "myhead.yaml").write_text("_uses_: [sasrec]\nmyhead:\n  depth: 2\n")
    register_defaults_dir(d)
    cfg = load_config(None, ["fields.s.modality=smell", "fields.s.strength=0.5", "encoders.n.type=nose"])
    assert cfg["fields"]["s"] == {"modality": "smell", "column": "odour", "strength": 0.5}
    assert cfg["encoders"]["n"] == {"type": "nose", "width": 8}
    assert "shadowed" not in load_config(None, ["fields.t.modality=text"])["fields"]["t"]
    with pytest.raises(ConfigError, match=r"unknown config key 'fields.s.strenght'; did you mean 'fields.s.strength'"):
        load_config(None, ["fields.s.modality=smell", "fields.s.strenght=2"])
    assert resolve_world(None, "tiny")["n_items"] == 50
    heads = config._Heads(load_yaml(CONFIG_DIR / "base.yaml"))
    assert heads.of("myhead") == ["myhead", "user_split", "sasrec"]
    add_entry_defaults("encoders", "ear", {"bands": 3})
    assert load_config(None, ["encoders.x.type=ear"])["encoders"]["x"] == {"type": "ear", "bands": 3}
    (d / "heads" / "bad.yaml").write_text("loss:\n  temperature: 2.0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: section 'loss' is already defined in .*mmrec.yaml"):
        load_config(None)


def test_register_modality_and_register_encoder_still_work(clean_plugins, monkeypatch):
    from mmrec.data.fields import field_defaults, register_modality
    register_modality("scent", {"column": "perfume"})
    assert load_config(None, ["fields.s.modality=scent"])["fields"]["s"] == {"modality": "scent", "column": "perfume"}
    assert field_defaults({"modality": "video"}) == load_yaml(DEFAULTS / "modalities" / "video.yaml")
    with pytest.raises(KeyError, match="unknown modality 'smell'"):
        field_defaults({"modality": "smell"})

    class Registry(dict):
        pass

    class Whisker:
        DEFAULTS = {"type": "whisker", "length": 3}

    fake = type(sys)("encoders.registry")
    fake.ENCODERS = Registry(whisker=Whisker)
    monkeypatch.setitem(sys.modules, "encoders.registry", fake)   # a plug-in's register_encoder ran
    assert load_config(None, ["encoders.w.type=whisker"])["encoders"]["w"] == {"type": "whisker", "length": 3}


# ------------------------------------------------------------------------------ packaging
def test_configs_ship_as_package_data():
    import configs
    assert CONFIG_DIR == Path(configs.__file__).resolve().parent == ROOT / "configs"
    assert config.BASE_CONFIG == CONFIG_DIR / "base.yaml" and config.DEFAULT_CONFIG == CONFIG_DIR / "ml100k.yaml"
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert any(p.startswith("configs") for p in tool["packages"]["find"]["include"])
    assert {"*.yaml", "**/*.yaml"} <= set(tool["package-data"]["configs"])
