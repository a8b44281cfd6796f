"""Fusion layers (late, early, mixture, adaptive): shapes, masks for padding and absent fields,
adaptive weights, and the whole item tower with real tiny encoders and video segments."""
import pytest
import torch

from encoders import encoder_defaults
from encoders.base import EncoderOutput
from encoders.item_encoder import ItemEncoder
from encoders.registry import build_fusion

D_TOK, DIM, B = 16, 8, 4
FIELDS = ["text", "trailer", "stills"]


def fusion_cfg(kind: str, **kw) -> dict:
    cfg = {"type": kind, "fc_layers": 1, "hidden_dim": None, "dropout": 0.0, "early_fields": [],
           "depth": 1, "heads": 4, "mlp_ratio": 2.0, "aggregate": "cls"}
    if kind == "mixture":
        cfg["early_fields"] = ["text", "trailer"]
    cfg.update(kw)
    return cfg


def fake_outputs(seed=0, lengths=(5, 3, 2)):
    """Per-field encodings: text with padding (last two tokens of item 0 are padding), video and
    stills tokens without a mask."""
    g = torch.Generator().manual_seed(seed)
    outs = {}
    for name, T in zip(FIELDS, lengths):
        tokens = torch.randn(B, T, D_TOK, generator=g)
        mask = None
        if name == "text":
            mask = torch.ones(B, T, dtype=torch.bool)
            mask[0, -2:] = False
        outs[name] = EncoderOutput(torch.randn(B, D_TOK, generator=g), tokens, mask)
    return outs


def bump(t: torch.Tensor, seed: int = 9) -> torch.Tensor:
    """A random (not constant: LayerNorm would remove a constant shift) perturbation of t."""
    return t + 3.0 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))


def all_present():
    return {n: torch.ones(B, dtype=torch.bool) for n in FIELDS}


def build(kind, **kw):
    torch.manual_seed(0)
    return build_fusion(fusion_cfg(kind, **kw), FIELDS, D_TOK, DIM).eval()


KINDS = ["late", "early", "mixture", "adaptive"]


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_and_fc_layers(kind):
    outs = fake_outputs()
    for layers in (1, 2):
        v = build(kind, fc_layers=layers)(outs, all_present())
        assert v.shape == (B, DIM) and torch.isfinite(v).all()
    width = {"late": 3 * D_TOK, "adaptive": 3 * D_TOK, "early": D_TOK, "mixture": 2 * D_TOK}[kind]
    with pytest.raises(ValueError, match="fc_layers=0"):
        build(kind, fc_layers=0)
    f = build_fusion(fusion_cfg(kind, fc_layers=0), FIELDS, D_TOK, width)
    assert f(outs, all_present()).shape == (B, width)


@pytest.mark.parametrize("kind", KINDS)
def test_absent_field_is_masked_not_read(kind):
    """An item lacking a field gets a finite vector that does not depend on whatever the
    encoder produced for the missing input; the other items are untouched."""
    f = build(kind)
    present = all_present()
    present["trailer"][1] = False
    a, b = fake_outputs(0), fake_outputs(0)
    b["trailer"].cls[1] = bump(b["trailer"].cls[1])
    b["trailer"].tokens[1] = bump(b["trailer"].tokens[1])
    with torch.no_grad():
        va, vb = f(a, present), f(b, present)
        full = f(a, all_present())
    assert torch.isfinite(va).all()
    assert torch.allclose(va, vb, atol=1e-5)
    assert not torch.allclose(va[1], full[1], atol=1e-4)       # the absence itself matters
    keep = [0, 2, 3]          # every fusion works per item: the other items are untouched
    assert torch.allclose(va[keep], full[keep], atol=1e-5)


@pytest.mark.parametrize("kind", ["early", "mixture"])
def test_padding_tokens_are_ignored_and_real_tokens_are_read(kind):
    f = build(kind)
    a, b = fake_outputs(0), fake_outputs(0)
    b["text"].tokens[0, -2:] = bump(b["text"].tokens[0, -2:])   # padding of item 0
    with torch.no_grad():
        assert torch.allclose(f(a, all_present()), f(b, all_present()), atol=1e-5)
        c = fake_outputs(0)
        c["text"].tokens[2, 1] = bump(c["text"].tokens[2, 1])   # a real token, not the [CLS] vector
        changed = f(c, all_present())
        base = f(a, all_present())
    assert not torch.allclose(changed[2], base[2], atol=1e-5)   # fused early: every token counts
    assert torch.allclose(changed[[0, 1, 3]], base[[0, 1, 3]], atol=1e-5)


def test_mixture_reads_late_fields_only_through_their_cls():
    f = build("mixture")                       # early: text, trailer; late: stills
    a, b = fake_outputs(0), fake_outputs(0)
    b["stills"].tokens = bump(b["stills"].tokens)
    with torch.no_grad():
        assert torch.allclose(f(a, all_present()), f(b, all_present()), atol=1e-6)
        b["stills"].cls[0] = bump(b["stills"].cls[0])
        assert not torch.allclose(f(a, all_present())[0], f(b, all_present())[0], atol=1e-5)
    assert f.token_fields == ("text", "trailer")
    with pytest.raises(ValueError, match="early_fields"):
        build_fusion(fusion_cfg("mixture", early_fields=["plot"]), FIELDS, D_TOK, DIM)


def test_early_fusion_mean_aggregate_is_the_mean_of_real_tokens():
    """aggregate=mean averages the contextualised real tokens only (padding and the placeholder
    tokens of present fields excluded): checked against a plain per-item loop."""
    f = build_fusion(fusion_cfg("early", aggregate="mean", fc_layers=0), FIELDS, D_TOK, D_TOK).eval()
    outs = fake_outputs(1)
    with torch.no_grad():
        v = f(outs, all_present())
        for j in range(B):   # one item at a time, only its real tokens, no mask needed
            seq = []
            for c, n in enumerate(FIELDS):
                t = outs[n].tokens[j]
                if outs[n].mask is not None:
                    t = t[outs[n].mask[j]]
                seq.append(t + f.transformer.type_embed[c])
            x = torch.cat(seq)[None]
            for blk in f.transformer.blocks:
                x = blk(x)
            want = f.transformer.norm(x)[0].mean(0)
            assert torch.allclose(v[j], want, atol=1e-5), j


def test_adaptive_weights_sum_to_one_skip_absent_fields_and_follow_the_input():
    f = build("adaptive")
    present = all_present()
    present["stills"][2] = False
    outs = fake_outputs(0)
    with torch.no_grad():
        f(outs, present)
        w = f.last_weights
        assert w.shape == (B, 3)
        assert torch.allclose(w.sum(1), torch.ones(B), atol=1e-6)
        assert w[2, 2] == 0 and (w[[0, 1, 3]] > 0).all()
        assert w.std(0).max() > 1e-4              # items differ in which field matters
        other = fake_outputs(7)
        f(other, present)
        assert not torch.allclose(f.last_weights, w, atol=1e-4)   # input-dependent, not a constant
        # the vector is the late-fusion MLP applied to the weighted concatenation
        z = torch.stack([outs[n].cls for n in FIELDS], 1)
        z[2, 2] = f.missing[2]
        want = f.head((z * 3 * w.unsqueeze(-1)).flatten(1))
        assert torch.allclose(f(outs, present), want, atol=1e-5)


def tiny_vivit():
    spec = encoder_defaults({"type": "vivit"})
    spec.update(arch="tiny", img_size=16, patch_size=8, width=16, depth=1, heads=2,
                temporal_depth=1, temporal_heads=2)
    return spec


def tiny_bert():
    return {**encoder_defaults({"type": "bert"}), "checkpoint": None,
            "bert_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "intermediate_size": 32}}


@pytest.mark.parametrize("kind", KINDS)
def test_item_tower_with_real_encoders_segments_and_a_missing_trailer(kind):
    """Real tiny BERT + ViViT: S segments give [B, S, D]; segment s equals the item encoded with
    that clip alone; an item without a trailer is encoded without reading its frames."""
    fields = {"trailer": {"modality": "video", "encoder": "video"},
              "text": {"modality": "text", "encoder": "text"}}
    cfg = fusion_cfg(kind, early_fields=["trailer"], heads=2)
    torch.manual_seed(0)
    model = ItemEncoder(fields, {"video": tiny_vivit(), "text": tiny_bert()},
                        {"token_dim": D_TOK, "dim": DIM, "fusion": cfg}).eval()
    text = {"input_ids": torch.tensor([[101, 2000, 102, 0], [101, 2001, 2002, 102]]),
            "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
            "present": torch.ones(2, dtype=torch.bool)}
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 256, (2, 3, 4, 16, 16, 3), dtype=torch.uint8, generator=g)
    present = torch.tensor([True, False])
    with torch.no_grad():
        out = model({"trailer": {"frames": seg, "present": present}, "text": text})
        per = [model({"trailer": {"frames": seg[:, s], "present": present}, "text": text}).v
               for s in range(3)]
        noise = model({"trailer": {"frames": 255 - seg, "present": present}, "text": text}).v
    assert out.v.shape == (2, 3, DIM)
    for s in range(3):
        assert torch.allclose(out.v[:, s], per[s], atol=1e-5)
    assert torch.allclose(noise[1], out.v[1], atol=1e-5)      # item 1 has no trailer
    assert not torch.allclose(noise[0], out.v[0], atol=1e-4)
    if kind == "adaptive":
        assert out.weights.shape == (2, 3, 2)
        assert torch.allclose(out.weights[1, :, 0], torch.zeros(3))   # no trailer: weight 0
