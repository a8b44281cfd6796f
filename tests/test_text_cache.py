"""The frozen-bottom text cache (encoders.*.cache_frozen): the cached path is the uncached model.

A frozen BERT bottom is computed once per run and a step continues from its stored output, so
every check here compares the two paths on the same weights: outputs in eval mode, gradients of
the trainable layers, the stored file and its reuse, and a whole training run.
"""
import os
import pickle

import numpy as np
import pytest
import torch

from encoders.text import BertTextEncoder
from mmrec.config import ConfigError, load_config

MINILM_LAYERS = 3   # the installed MiniLM cut to 3 layers: pretrained weights, quick


def minilm(**spec) -> BertTextEncoder:
    full = dict(BertTextEncoder.DEFAULTS, num_layers=MINILM_LAYERS, cache_frozen=True)
    full.update(spec)
    torch.manual_seed(0)
    return BertTextEncoder(full, token_dim=16)


def text_batch(B=6, T=14, pad_to=None):
    """Token ids of texts of different lengths (padded, [CLS] first), as TextContent pads them;
    `pad_to`: the same texts padded further."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 20000, (B, T), generator=g)
    mask = torch.zeros_like(ids)
    for r in range(B):
        mask[r, :max(2, T - 2 * r)] = 1
    ids[:, 0] = 101
    ids[mask == 0] = 0
    if pad_to:
        ids = torch.nn.functional.pad(ids, (0, pad_to - T))
        mask = torch.nn.functional.pad(mask, (0, pad_to - T))
    return ids, mask


FROZEN = [pytest.param({"freeze_layers": 2}, 2, id="freeze_layers=2"),
          pytest.param({"freeze": True}, MINILM_LAYERS, id="freeze=all")]


@pytest.mark.parametrize("pooling", ["cls", "mean", "attention"])
@pytest.mark.parametrize("frozen,depth", FROZEN)
def test_cached_forward_equals_uncached_in_eval(frozen, depth, pooling):
    enc = minilm(pooling=pooling, **frozen)
    assert enc.cacheable_layers() == depth
    enc.eval()
    ids, mask = text_batch()
    with torch.no_grad():
        plain = enc({"input_ids": ids, "attention_mask": mask}, need_tokens=True)
        hidden = enc.frozen_forward(ids, mask)
        cached = enc({"frozen_hidden": hidden, "attention_mask": mask}, need_tokens=True)
    # Same batch, same shapes: the same arithmetic, bit for bit (the aggregate and every token).
    assert torch.equal(plain.cls, cached.cls)
    assert torch.equal(plain.tokens, cached.tokens) and torch.equal(plain.mask, cached.mask)
    # A cache pads every text to the field's longest: the rows cut back to this batch's length
    # differ only by the summation order of the longer padding.
    long_ids, long_mask = text_batch(pad_to=30)
    with torch.no_grad():
        cut = enc.frozen_forward(long_ids, long_mask)[:, :ids.shape[1]]
        from_long = enc({"frozen_hidden": cut, "attention_mask": mask}, need_tokens=True)
    torch.testing.assert_close(from_long.cls, plain.cls, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_long.tokens, plain.tokens, atol=1e-5, rtol=1e-5)


def test_attention_pooling_starts_as_mean_and_weighs_tokens_as_a_plain_softmax():
    from encoders.text import AttentionPool
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(4, 7, 12, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 2 + [0] * 5, [0] * 7])
    pool = AttentionPool(12, heads=3)
    m = mask.unsqueeze(-1).float()
    mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    torch.testing.assert_close(pool(hidden, mask), mean)          # zero queries: mean pooling
    with torch.no_grad():
        pool.query.copy_(torch.randn(3, 4, generator=g))
    out = pool(hidden, mask)
    for b in range(4):     # per row and head: softmax over the unpadded tokens' dot products
        n = int(mask[b].sum())
        for h in range(3):
            part = hidden[b, :n, 4 * h:4 * h + 4]
            want = (torch.softmax(part @ pool.query[h], 0).unsqueeze(-1) * part).sum(0) if n else torch.zeros(4)
            torch.testing.assert_close(out[b, 4 * h:4 * h + 4], want)
    out.sum().backward()
    assert pool.query.grad is not None and pool.query.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pool_heads=5 must divide"):
        AttentionPool(12, heads=5)


def test_frozen_forward_has_eval_semantics_and_restores_modes():
    """A cache is computed without dropout whatever mode the model is in (MiniLM's dropout is
    0.1), and leaves the modes of the modules as they were."""
    enc = minilm(freeze_layers=2)
    ids, mask = text_batch()
    enc.eval()
    reference = enc.frozen_forward(ids, mask)
    enc.train()
    enc.bert.encoder.layer[0].attention.eval()   # a mixed state must come back as it was
    before = {n: m.training for n, m in enc.named_modules()}
    torch.manual_seed(5)
    assert torch.equal(enc.frozen_forward(ids, mask), reference)
    assert {n: m.training for n, m in enc.named_modules()} == before
    # whereas the uncached frozen layers in train mode do drop out
    with torch.no_grad():
        noisy = enc.bert.embeddings(input_ids=ids)
    assert not torch.equal(noisy, enc.bert.embeddings.eval()(input_ids=ids))


def test_nothing_frozen_cannot_be_cached():
    enc = minilm()
    assert enc.cacheable_layers() == 0
    ids, mask = text_batch()
    with pytest.raises(ValueError, match="cache_frozen"):
        enc.frozen_forward(ids, mask)


def _no_dropout(enc):
    for m in enc.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-checkpointing"])
def test_gradients_of_trainable_layers_equal_uncached(checkpointing):
    """In train mode (dropout set to 0, so the two paths can agree), the gradient of every
    trainable parameter is the same through the cache, with or without recomputation."""
    grads = []
    ids, mask = text_batch()
    for path in ("plain", "cached"):
        enc = minilm(freeze_layers=2, pooling="mean", gradient_checkpointing=checkpointing)
        _no_dropout(enc)
        enc.train()
        inputs = {"input_ids": ids, "attention_mask": mask}
        if path == "cached":
            inputs = {"frozen_hidden": enc.frozen_forward(ids, mask), "attention_mask": mask}
        out = enc(inputs, need_tokens=True)
        loss = (out.cls ** 2).sum() + out.tokens[out.mask].pow(3).mean()
        loss.backward()
        grads.append({n: p.grad for n, p in enc.named_parameters() if p.requires_grad})
        frozen = [n for n, p in enc.named_parameters() if not p.requires_grad]
        assert frozen and all(enc.get_parameter(n).grad is None for n in frozen)
    plain, cached = grads
    assert plain.keys() == cached.keys() and any(n.startswith("bert.encoder.layer.2.") for n in plain)
    for n in plain:
        assert plain[n] is not None and cached[n] is not None, n
        torch.testing.assert_close(cached[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


# --- the stored cache on a prepared dataset ---------------------------------------------------

TINY_FROZEN = ["encoders.text.bert_config.num_hidden_layers=2", "encoders.text.freeze_layers=1",
               "encoders.text.cache_frozen=true"]


@pytest.fixture(scope="module")
def prepared_text(tiny_overrides):
    """A prepared tiny dataset of this module's own: a cache attached to its provider must not
    leak into the session's shared `tiny_prepared`."""
    from mmrec.data.pipeline import prepare
    return prepare(load_config("configs/tiny.yaml", tiny_overrides + TINY_FROZEN))


def build(prepared, cache_dir, extra=(), seed=0):
    from mmrec.models.mmrec_model import MMRecModel
    cfg = load_config("configs/tiny.yaml", [f"data.cache_dir={cache_dir}", *TINY_FROZEN, *extra])
    torch.manual_seed(seed)
    return MMRecModel.build(cfg, prepared)


class WorkerCollate:
    """Collates in a DataLoader worker and says which process opened the memmap."""

    def __init__(self, provider):
        self.provider = provider

    def __call__(self, items):
        batch = self.provider.collate(np.asarray(items), "eval")
        return batch, os.getpid(), self.provider._frozen_pid


def test_attach_writes_a_reused_memmap_keyed_by_weights_and_depth(prepared_text, tmp_path):
    provider = prepared_text.content["text"]
    model = build(prepared_text, tmp_path)
    info = model.text_caches["text"]
    path = tmp_path / "text_frozen" / os.path.basename(info["path"])
    assert info["built"] and info["layers"] == 1 and path.suffix == ".npy" and path.exists()
    mm = np.load(path, mmap_mode="r")
    lengths = provider.tokens.lengths()
    assert isinstance(mm, np.memmap) and mm.dtype == np.float32
    assert mm.shape == (len(lengths), lengths.max(), 32) and info["bytes"] == mm.nbytes
    assert not list(path.parent.glob("*.tmp*"))   # written through a temporary renamed into place

    # The same weights and tokens again: the file is reused, not recomputed.
    mtime = path.stat().st_mtime_ns
    again = build(prepared_text, tmp_path).text_caches["text"]
    assert not again["built"] and again["path"] == info["path"] and path.stat().st_mtime_ns == mtime
    # Another frozen depth, or other frozen weights (a from-scratch BERT of another seed): own files.
    deeper = build(prepared_text, tmp_path, ["encoders.text.freeze=true"]).text_caches["text"]
    reseeded = build(prepared_text, tmp_path, seed=1).text_caches["text"]
    assert deeper["layers"] == 2 and deeper["built"] and reseeded["built"]
    assert len({info["path"], deeper["path"], reseeded["path"]}) == 3

    # Eval through the cache equals eval without it, for the same weights.
    model = build(prepared_text, tmp_path).eval()
    items = np.arange(prepared_text.split.n_items)[::7]
    with torch.no_grad():
        content = prepared_text.collate(items)
        assert content["text"]["frozen_hidden"].shape[:2] == content["text"]["input_ids"].shape
        cached = model.item_vectors(content)
        provider.use_frozen_cache(None)
        plain = model.item_vectors(prepared_text.collate(items))
    assert "frozen_hidden" not in prepared_text.collate(items)["text"]
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)

    # A model without the cache built on the same prepared data detaches it.
    build(prepared_text, tmp_path)
    assert provider.frozen_cache is not None
    build(prepared_text, tmp_path, ["encoders.text.cache_frozen=false"])
    assert provider.frozen_cache is None
    build(prepared_text, tmp_path)


def test_cache_is_opened_in_each_worker_never_pickled(prepared_text, tmp_path):
    build(prepared_text, tmp_path)
    provider = prepared_text.content["text"]
    rows = prepared_text.item_rows[:40]
    here = provider.collate(rows)   # opens the memmap in this process
    assert provider._frozen_pid == os.getpid()
    state = pickle.dumps(provider)
    assert len(state) < provider._frozen.nbytes / 10 and pickle.loads(state)._frozen is None
    loader = torch.utils.data.DataLoader(list(rows), batch_size=len(rows), num_workers=1,
                                         collate_fn=WorkerCollate(provider))
    [(batch, worker, opened_by)] = list(loader)
    assert worker != os.getpid() and opened_by == worker
    assert torch.equal(batch["frozen_hidden"], here["frozen_hidden"])
    assert torch.equal(batch["attention_mask"], here["attention_mask"])


def test_cache_frozen_without_a_frozen_bottom_is_a_config_error(prepared_text, tmp_path):
    with pytest.raises(ConfigError, match=r"encoders\.text\.cache_frozen.*freeze_layers"):
        build(prepared_text, tmp_path, ["encoders.text.freeze_layers=0"])


def test_a_transfer_run_caches_the_transferred_bottom(prepared_text, trained_run, tmp_path):
    """The trainer loads `transfer.from_run`'s tower after the model (and its cache) is built;
    the cache must hold the source run's frozen layers, not this run's initial ones."""
    from mmrec.models.mmrec_model import MMRecModel
    from mmrec.transfer import apply_transfer
    source, _ = trained_run
    cfg = load_config("configs/tiny.yaml", [f"data.cache_dir={tmp_path}", "encoders.text.freeze=true",
                                            "encoders.text.cache_frozen=true", f"transfer.from_run={source}"])
    torch.manual_seed(0)
    model = MMRecModel.build(cfg, prepared_text)
    assert model.text_caches["text"]["layers"] == 1
    apply_transfer(model, cfg)
    model.eval()
    items = np.arange(prepared_text.split.n_items)[::5]
    with torch.no_grad():
        cached = model.item_vectors(prepared_text.collate(items))
        prepared_text.content["text"].use_frozen_cache(None)
        plain = model.item_vectors(prepared_text.collate(items))
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)


def test_training_with_the_cache_gives_the_uncached_run(tmp_path, tiny_overrides):
    """tiny.yaml's BERT has no dropout, so its frozen layer computes the same in train and eval
    mode, and the cached run must retrace the uncached one: the same losses step by step and
    the same trained weights, up to float rounding (the cache pads to the field's longest text,
    a batch to its own). Ranking metrics then agree but for near-ties that rounding may flip:
    each touches one evaluated user's list, i.e. moves a mean by at most 1/users."""
    from safetensors.torch import load_file
    from mmrec.training.trainer import Trainer
    runs = {}
    for flag in ("false", "true"):
        cfg = load_config("configs/tiny.yaml", tiny_overrides + TINY_FROZEN + [
            f"encoders.text.cache_frozen={flag}", f"run_dir={tmp_path / flag}", "train.epochs=1",
            "train.log_every_steps=1", "eval.baselines=[]"])
        trainer = Trainer(cfg)
        caches = trainer.accelerator.unwrap_model(trainer.model).text_caches
        assert bool(caches) == (flag == "true")
        runs[flag] = trainer.fit()
    plain, cached = runs["false"], runs["true"]
    assert plain["resources"]["train_steps"] == cached["resources"]["train_steps"] > 0
    for a, b in zip(plain["history"], cached["history"], strict=True):
        assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=1e-5)
    w_plain = load_file(str(tmp_path / "false" / "model" / "model.safetensors"))
    w_cached = load_file(str(tmp_path / "true" / "model" / "model.safetensors"))
    assert w_plain.keys() == w_cached.keys()
    for k, v in w_plain.items():
        torch.testing.assert_close(w_cached[k], v, atol=1e-5, rtol=1e-4, msg=k)
    for part in ("val", "test"):
        users = plain[part]["users"]
        assert cached[part]["users"] == users and plain[part].keys() == cached[part].keys()
        for k, v in plain[part].items():
            assert cached[part][k] == pytest.approx(v, abs=2 / users), (part, k)
    # A finished run's model meets its data with the cache its run built (reused, not rebuilt),
    # so `mmrec evaluate`, plots and the transfer table's kNN read what training read, and the
    # trainer's own metrics come back exactly; the uncached run gets plain token batches.
    from mmrec.models import load_run_data
    for flag, fitted in (("true", cached), ("false", plain)):
        cfg, prepared, model = load_run_data(tmp_path / flag)
        assert {n: c["built"] for n, c in model.text_caches.items()} == ({"text": False} if flag == "true" else {})
        assert ("frozen_hidden" in prepared.collate(np.arange(3))["text"]) == (flag == "true")
        for part in ("val", "test"):
            assert model.evaluate_part(prepared, part, cfg["eval"]) == fitted[part], (flag, part)
