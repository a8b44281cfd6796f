"""User errors are one line: a mistake in a config, a command line or an input file ends `mmrec`
with `mmrec: error: ...` on stderr (naming the file and line, key or field) and exit status 2, no
traceback; `--debug` / MMREC_DEBUG=1 show the traceback; bugs keep theirs (exit 1).

The real CLI runs in a subprocess for each kind of mistake (each pays the imports, so they are
few); the config checks themselves are covered in-process through `mmrec.cli.main` and
`load_config`, which is the same code path without the start-up cost."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmrec import cli
from mmrec.config import ConfigError, load_config
from mmrec.config_checks import check_config

ROOT = Path(__file__).resolve().parent.parent
NO_DATA = ["data.source=processed", "data.path=/nonexistent/mmrec-dataset"]   # never reached
VIDEO = ["--config", "configs/tiny_video_text.yaml"]


def mmrec(*args, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("MMREC_DEBUG", None)
    e.pop("RANK", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "mmrec", *args], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=600)


def assert_one_line(stderr: str, *names: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmrec: error: ") and lines[0].strip() != "mmrec: error:", stderr
    assert "Traceback" not in stderr, stderr
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def bad_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\ntrain:\n  epochs: [1, 2\n  lr: 3\n")
    return f


@pytest.fixture
def broken_dataset(tmp_path):
    """A processed dataset directory whose items table is not Parquet."""
    d = tmp_path / "broken"
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"format_version": 1, "name": "broken", "tables": {}}))
    (d / "items.parquet").write_bytes(b"this is not a parquet file at all")
    (d / "interactions.parquet").write_bytes(b"PAR1")
    return d


# ------------------------------------------------------------------------ the real CLI
SUBPROCESS_CASES = {
    "unknown key": (["train", "--config", "configs/tiny.yaml", "train.lrr=1"],
                    ["command line", "'train.lrr'", "did you mean 'train.lr'"]),
    "wrong type": (["train", "--config", "configs/tiny.yaml", "train.epochs=many"],
                   ["'train.epochs' expects int", "'many'"]),
    "invalid yaml": (["train", "--config", "{bad_yaml}"], ["{bad_yaml} line 4", "not valid YAML"]),
    "missing config": (["preprocess", "--config", "{tmp}/missing.yaml"], ["config file not found", "missing.yaml"]),
    "bad override": (["train", "train.lr"], ["override 'train.lr' is not of the form key=value"]),
    # config-time check, before the (non-existent) data would be read
    "vivit size": (["train", *VIDEO, "fields.trailer.size=64", *NO_DATA],
                   ["fields.trailer.size=64 does not match encoders.video.arch=tiny (img_size 32)",
                    "set fields.trailer.size=32 or encoders.video.img_size=64"]),
    # training's completeness check, also before any data is read
    "unknown encoder": (["train", "--config", "configs/tiny.yaml", "fields.text.encoder=txt", *NO_DATA],
                        ["fields.text.encoder=txt names no entry of `encoders` (encoders: text)"]),
    "head needs features": (["train", "--config", "configs/tiny.yaml", "head=clcrec", *NO_DATA],
                            ["head clcrec needs a field of modality 'features'"]),
    "broken input file": (["preprocess", "data.source=processed", "data.path={broken_dataset}"],
                          ["{broken_dataset}/items.parquet: cannot read as a Parquet table"]),
}


def _case(case, tmp_path, bad_yaml, broken_dataset):
    args, names = SUBPROCESS_CASES[case]
    fill = {"bad_yaml": bad_yaml, "tmp": tmp_path, "broken_dataset": broken_dataset}
    return [a.format(**fill) for a in args], [n.format(**fill) for n in names]


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_cli_main_user_error_is_one_line(case, tmp_path, bad_yaml, broken_dataset, capfd, monkeypatch):
    """Every case through the CLI's entry point in this process (fd-level capture)."""
    monkeypatch.delenv("MMREC_DEBUG", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    args, names = _case(case, tmp_path, bad_yaml, broken_dataset)
    assert cli.main(args) == 2
    out, err = capfd.readouterr()
    assert_one_line(err, *names)
    assert out == ""


# Each subprocess pays the library imports: the real process for a few representative cases.
@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown key", "vivit size", "broken input file"])
def test_cli_user_error_is_one_line(case, tmp_path, bad_yaml, broken_dataset):
    args, names = _case(case, tmp_path, bad_yaml, broken_dataset)
    r = mmrec(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert_one_line(r.stderr, *names)
    assert r.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--debug before the subcommand", "MMREC_DEBUG=1"])
def test_debug_shows_the_traceback_and_still_exits_2(how, broken_dataset):
    args = ["preprocess", "data.source=processed", f"data.path={broken_dataset}"]
    if how.startswith("--debug"):
        r = mmrec("--debug", *args)
    else:
        r = mmrec(*args, env={"MMREC_DEBUG": "1"})
    assert r.returncode == 2, r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert "DataError" in r.stderr and "items.parquet" in r.stderr


@pytest.mark.slow
def test_a_bug_keeps_its_traceback_and_exits_1():
    code = ("import sys, mmrec.cli as c\n"
            "def boom(args):\n    raise TypeError('a bug, not a user error')\n"
            "c.cmd_preprocess = boom\n"
            "sys.exit(c.main(['preprocess']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "TypeError: a bug" in r.stderr
    assert "mmrec: error" not in r.stderr


# ------------------------------------------------------------------------ in process: cli.main
def run_main(capsys, *args) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err


# (args, names the one line must contain); every check of mmrec/config_checks.py that a
# command line can trip, each with the data never read (NO_DATA would fail if it were).
MAIN_CASES = {
    "tubelet": ([*VIDEO, "fields.trailer.clip_frames=7", "encoders.video.tubelet=2"],
                ["fields.trailer.clip_frames=7 is not a multiple of encoders.video.tubelet=2"]),
    "temporal positions": ([*VIDEO, "fields.trailer.clip_frames=80"],
                           ["fields.trailer.clip_frames=80 gives 80 temporal tokens",
                            "encoders.video.arch=tiny (max_frames 64)"]),
    "vit heads": ([*VIDEO, "encoders.video.heads=3"],
                  ["encoders.video.heads=3 must divide encoders.video.arch=tiny (width 64)"]),
    "temporal heads": ([*VIDEO, "encoders.video.temporal_heads=5"],
                       ["encoders.video.temporal_heads=5 must divide"]),
    "conv stem": ([*VIDEO, "encoders.video.stem=conv", "encoders.video.patch_size=6",
                   "encoders.video.img_size=36", "fields.trailer.size=36"],
                  ["encoders.video.stem=conv needs a patch size that is a power of two",
                   "encoders.video.patch_size=6"]),
    "bert heads": (["--config", "configs/tiny.yaml", "encoders.text.bert_config.num_attention_heads=3"],
                   ["encoders.text.bert_config.num_attention_heads=3 must divide "
                    "encoders.text.bert_config.hidden_size=32"]),
    "bert positions": (["--config", "configs/tiny.yaml", "fields.text.max_length=600"],
                       ["fields.text.max_length=600 exceeds encoders.text.bert_config.max_position_embeddings=512"]),
    "fusion heads": ([*VIDEO, "model.fusion.type=early", "model.fusion.heads=5"],
                     ["model.fusion.heads=5 must divide model.token_dim=32"]),
    "fc_layers 0, late": ([*VIDEO, "model.fusion.fc_layers=0"],
                          ["model.fusion.fc_layers=0 needs model.dim equal to the fused width of late fusion",
                           "2 fields x model.token_dim=32 = 64, but model.dim=32", "set model.dim=64"]),
    "fc_layers 0, mixture": ([*VIDEO, "model.fusion.type=mixture", "model.fusion.early_fields=[trailer]",
                              "model.fusion.fc_layers=0"], ["= 64, but model.dim=32"]),
    "fc_layers 3": ([*VIDEO, "model.fusion.fc_layers=3"], ["model.fusion.fc_layers=3 must be 0, 1 or 2"]),
    "mixture fields": ([*VIDEO, "model.fusion.type=mixture", "model.fusion.early_fields=[plot]"],
                       ["model.fusion.early_fields=['plot']", "(not fields: ['plot'])"]),
    "fusion type": ([*VIDEO, "model.fusion.type=middle"], ["model.fusion.type='middle' is not a fusion"]),
    "encoder for another modality": ([*VIDEO, "fields.text.encoder=video"],
                                     ["fields.text.encoder=video is a vivit encoder (for video fields), "
                                      "but fields.text is a text field; give it a bert encoder"]),
    "pairs_per_item": (["--config", "configs/tiny.yaml", "train.pairs_per_item=5"],
                       ["train.pairs_per_item=5 must be >= 1 and divide train.batch_size=64"]),
    "batch_size": (["--config", "configs/tiny.yaml", "train.batch_size=0"], ["train.batch_size=0"]),
    "unknown head": (["--config", "configs/tiny.yaml", "head=bert4rec"], ["head='bert4rec' is not a model head"]),
    "sasrec heads": (["--config", "configs/cmclrec_ml100k.yaml", "sasrec.heads=3"],
                     ["sasrec.heads=3 must divide sasrec.hidden=64"]),
    "sequences have no items to group": (["--config", "configs/cmclrec_ml100k.yaml", "train.pairs_per_item=2"],
                                         ["train.pairs_per_item=2: head 'cmclrec' trains on user sequences"]),
    "user features": (["--config", "configs/cmclrec_ml100k.yaml", "user_split.features=[age,income]"],
                      ["user_split.features: unknown feature(s) ['income']"]),
    "cmclrec needs features": (["--config", "configs/cmclrec_ml100k.yaml", "user_split.features=[]"],
                               ["head cmclrec needs user features"]),
    "clcrec setting": (["--config", "configs/clcrec_ml100k.yaml", "clcrec.encoder=lightgcn"],
                       ["clcrec.encoder='lightgcn' must be one of mf, gcn"]),
    "features source": (["--config", "configs/clcrec_ml100k.yaml", "fields.text_feat.source=clip"],
                        ["fields.text_feat.source='clip' must be one of"]),
    "mmrec head reads no features field": (["--config", "configs/clcrec_ml100k.yaml", "head=mmrec"],
                                           ["fields.text_feat: modality 'features'", "head clcrec"]),
    "no fields": (["--config", "configs/tiny.yaml", "fields.text=null"],
                  ["head mmrec needs at least one content field"]),
    "on_bad_row": (["--config", "configs/tiny.yaml", "data.on_bad_row=drop"], ["data.on_bad_row='drop'"]),
    "split ratios": (["--config", "configs/tiny.yaml", "split.ratios=[0.8,0.2]"], ["split.ratios=[0.8, 0.2]"]),
}


@pytest.mark.parametrize("case", list(MAIN_CASES))
def test_config_check_is_one_line_before_any_data(case, capsys):
    args, names = MAIN_CASES[case]
    code, err = run_main(capsys, "train", *args, *NO_DATA)
    assert code == 2, err
    assert_one_line(err, *names)


def test_debug_after_the_subcommand_and_rank_0_only(capsys, monkeypatch):
    args = ["train", *VIDEO, "fields.trailer.size=64", *NO_DATA]
    code, err = run_main(capsys, args[0], "--debug", *args[1:])
    assert code == 2 and "Traceback (most recent call last)" in err and "ConfigError" in err
    monkeypatch.setenv("RANK", "1")          # another process of `accelerate launch`: silent
    code, err = run_main(capsys, *args)
    assert code == 2 and err == ""
    monkeypatch.setenv("RANK", "0")
    code, err = run_main(capsys, *args)
    assert code == 2
    assert_one_line(err, "fields.trailer.size=64")


def test_a_bug_propagates_from_main(monkeypatch):
    def boom(args):
        raise AssertionError("our own invariant broke")
    monkeypatch.setattr(cli, "cmd_preprocess", boom)
    with pytest.raises(AssertionError, match="invariant"):
        cli.main(["preprocess"])


def test_multi_line_and_worker_messages_become_one_line():
    from mmrec.data.tables import DataError
    assert cli.one_line(ConfigError("does not fit:\n  a.weight: [2]\n  b.bias: [3]\nfix it")) == \
        "does not fit: a.weight: [2]; b.bias: [3]; fix it"
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                        "call last):\n  File \"x.py\", line 1, in f\nmmrec.data.tables.DataError: "
                        "ratings.csv line 3: rating 'abc' is not a number\n")
    assert cli.one_line(wrapped) == "ratings.csv line 3: rating 'abc' is not a number"
    assert cli.one_line(FileNotFoundError()) == "FileNotFoundError"


# ------------------------------------------------------------------------ bad input files
def test_bad_dataset_files_are_data_errors_naming_the_file(tmp_path, capsys, broken_dataset):
    d = tmp_path / "badjson"
    d.mkdir()
    (d / "report.json").write_text('{"format_version": 1,\n "name": "x",,\n}')
    code, err = run_main(capsys, "preprocess", "data.source=processed", f"data.path={d}")
    assert code == 2
    assert_one_line(err, f"{d / 'report.json'} line 2: not valid JSON")
    code, err = run_main(capsys, "preprocess", "data.source=processed", f"data.path={tmp_path / 'nothing'}")
    assert code == 2
    assert_one_line(err, "not a processed mmrec dataset")


@pytest.mark.parametrize("content", [b"item_id,title\n1,\"never closed\n", b"\xff\xfe\x00garbage\x81\x82", b""],
                         ids=["unclosed quote", "binary", "empty"])
def test_export_item_table_errors_name_the_file(tmp_path, content):
    """`mmrec export RUN --items FILE`: a table that cannot be read is one DataError naming it."""
    from mmrec.data.tables import DataError
    from mmrec.export import read_items
    f = tmp_path / "items.csv"
    f.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_items(f)
    assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)
    p = tmp_path / "items.parquet"
    p.write_bytes(content + b"not parquet")
    with pytest.raises(DataError, match="cannot read as a Parquet table") as e:
        read_items(p)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_malformed_csv_source_is_one_line_naming_file_and_line(tmp_path, capsys):
    root = tmp_path / "ml-25m"
    root.mkdir()
    (root / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Comedy\n2,"Heat (1995),Action\n')
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    code, err = run_main(capsys, "preprocess", "data.source=ml25m", f"data.path={root}",
                         f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2
    assert_one_line(err, str(root / "movies.csv"), "line 3")


def test_invalid_yaml_names_file_line_and_column(bad_yaml):
    with pytest.raises(ConfigError, match=rf"^{bad_yaml} line 4 column 5: not valid YAML: expected ',' or ']'"):
        load_config(bad_yaml)


# ------------------------------------------------------------------------ the checks themselves
def test_every_shipped_config_and_grid_cell_passes_the_checks():
    from mmrec.sweep import grid_cells, load_grid
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(f)
        if f.name != "base.yaml":   # the defaults alone name no field: not a trainable config
            check_config(cfg, complete=True)
    grids = {"alignment": "ml100k_fusion", "fusion": "ml100k_fusion", "modality": "ml100k_fusion",
             "clcrec_lambda": "clcrec_ml100k", "world_motion_temporal": "world_motion"}
    assert set(grids) == {p.stem for p in (ROOT / "configs" / "grids").glob("*.yaml")}
    for grid, base in grids.items():
        for _, cell in grid_cells(load_grid(f"grids/{grid}")):
            over = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in cell.items()]
            check_config(load_config(base, over), complete=True)


def test_checks_accept_what_the_model_accepts():
    """Edge cases that build and run today stay accepted."""
    # a patch size that does not divide the image: timm's PatchEmbed drops the edge pixels
    load_config("configs/tiny_video_text.yaml", ["encoders.video.img_size=30", "fields.trailer.size=30"])
    # fc_layers=0 with the exact fused width, for each fusion
    load_config("configs/tiny_video_text.yaml", ["model.fusion.fc_layers=0", "model.dim=64"])
    load_config("configs/tiny_video_text.yaml", ["model.fusion.fc_layers=0", "model.fusion.type=early"])
    load_config("configs/tiny_video_text.yaml", ["model.fusion.fc_layers=0", "model.fusion.type=mixture",
                                                 "model.fusion.early_fields=[trailer,text]"])
    # temporal: mean has no positional encodings to outgrow; depth 0 has no heads to split
    load_config("configs/tiny_video_text.yaml", ["fields.trailer.clip_frames=128", "encoders.video.temporal=mean"])
    load_config("configs/tiny_video_text.yaml", ["encoders.video.temporal_heads=5", "encoders.video.temporal_depth=0"])
    # a field without an encoder is fine for extract-features (only training needs one) ...
    cfg = load_config(None, ["fields.still.modality=image", "fields.still.size=32"])
    with pytest.raises(ConfigError, match="fields.still.encoder=image names no entry of `encoders`"):
        check_config(cfg, complete=True)
    # ... and sequential heads never build the item tower, so its fields are not checked
    load_config("configs/cmclrec_ml100k.yaml", ["fields.x.modality=video", "fields.x.size=17"])


def test_registries_agree_with_the_check_tables():
    import transformers
    from encoders import ENCODERS, FUSIONS
    from encoders.presets import BERT_CONFIG_DEFAULTS, ENCODER_MODALITY
    from mmrec import config_checks
    from mmrec.data.sequences import FEATURES
    from mmrec.features import FEATURE_SOURCES
    from mmrec.models import HEADS, head_class
    head_class("mmrec")   # registers every head
    assert set(config_checks.HEADS) == set(HEADS)
    assert set(config_checks.FUSIONS) == set(FUSIONS)
    assert set(ENCODER_MODALITY) == set(ENCODERS)
    assert tuple(config_checks.USER_FEATURES) == tuple(FEATURES)
    assert tuple(config_checks.FEATURE_SOURCES) == tuple(FEATURE_SOURCES)
    bert = transformers.BertConfig()
    assert {k: getattr(bert, k) for k in BERT_CONFIG_DEFAULTS} == BERT_CONFIG_DEFAULTS


def test_config_checks_and_presets_import_no_torch():
    """Resolving a config is to need no torch (a later redesign): the checks and the presets
    they read import none of the heavy stacks, and encoders/presets.py nothing from mmrec."""
    heavy = {"torch", "timm", "transformers", "pandas", "numpy", "pyarrow"}
    for path, banned in ((ROOT / "mmrec" / "config_checks.py", heavy),
                         (ROOT / "encoders" / "presets.py", heavy | {"mmrec"})):
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert not names & banned, (path.name, names & banned)
