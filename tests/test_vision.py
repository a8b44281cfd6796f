"""ViT / ViViT encoders, clip sampling and the S-segment max (KDD'24 Eq. 4)."""
import pytest
import torch

from encoders import build_encoder, encoder_defaults
from encoders.item_encoder import ItemEncoder
from mmrec.data.visual import clip_indices, random_start, segment_starts
from mmrec.evaluation.evaluator import DotScorer


def tiny(type_: str, **kw) -> dict:
    spec = encoder_defaults({"type": type_})
    spec.update(arch="tiny", **kw)
    return spec


def frames(*lead, f=6, px=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*lead, f, px, px, 3), dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------ clip sampling
@pytest.mark.parametrize("T,F", [(50, 8), (8, 8), (9, 8), (3, 8), (1, 4)])
def test_random_clip_stays_inside_the_video(T, F):
    starts = {random_start(T, F, s) for s in range(300)}
    assert min(starts) >= 0 and max(starts) <= max(T - F, 0)
    if T - F >= 1:   # every legal start is reachable, the last one included
        assert starts == set(range(T - F + 1))
    idx = clip_indices(T, max(starts), F)
    assert len(idx) == F and idx.min() >= 0 and idx.max() < T


def test_clip_start_is_a_function_of_the_seed():
    assert [random_start(100, 8, s) for s in range(20)] == [random_start(100, 8, s) for s in range(20)]


def test_short_video_is_looped():
    assert clip_indices(3, 0, 8).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert clip_indices(10, 4, 4).tolist() == [4, 5, 6, 7]


def test_segment_starts_even_and_centre():
    assert segment_starts(100, 10, 10).tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert segment_starts(100, 10, 4).tolist() == [0, 30, 60, 90]
    assert segment_starts(100, 10, 1).tolist() == [45]      # the centre clip
    assert segment_starts(5, 10, 3).tolist() == [0, 0, 0]   # short: every segment is the looped video


# ------------------------------------------------------------------ encoders
def test_vit_shapes_mask_and_gradients():
    enc = build_encoder(tiny("vit"), 24)
    imgs = frames(2, f=3)                      # [B=2, K=3, H, W, 3]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = enc({"images": imgs, "image_mask": mask}, need_tokens=True)
    assert out.cls.shape == (2, 24) and out.tokens.shape == (2, 3, 24) and out.mask.equal(mask)
    # the aggregate is the mean over present images only: changing an absent image changes nothing
    imgs2 = imgs.clone()
    imgs2[0, 2] = 0
    imgs2[1, 1:] = 255
    enc.eval()
    assert torch.allclose(enc({"images": imgs, "image_mask": mask}).cls,
                          enc({"images": imgs2, "image_mask": mask}).cls, atol=1e-6)
    enc.train()
    out.cls.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("temporal", ["transformer", "mean"])
def test_vivit_shapes_segments_and_gradients(temporal):
    enc = build_encoder(tiny("vivit", temporal=temporal), 24)
    out = enc({"frames": frames(3)}, need_tokens=True)
    n_tok = 6 + (temporal == "transformer")        # frames (+ [CLS])
    assert out.cls.shape == (3, 24) and out.tokens.shape == (3, n_tok, 24)
    out.cls.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    enc.eval()
    seg = frames(3, 4)                                # [B, S, F, H, W, 3]
    with torch.no_grad():
        by_segment = enc({"frames": seg}).cls
        one_by_one = torch.stack([enc({"frames": seg[:, s]}).cls for s in range(4)], dim=1)
    assert by_segment.shape == (3, 4, 24)
    assert torch.allclose(by_segment, one_by_one, atol=1e-5)


def test_temporal_transformer_sees_frame_order_and_mean_does_not():
    torch.manual_seed(0)
    clip = frames(2)
    reversed_clip = clip.flip(1)
    for temporal, order_matters in (("transformer", True), ("mean", False)):
        enc = build_encoder(tiny("vivit", temporal=temporal), 16).eval()
        with torch.no_grad():
            a, b = enc({"frames": clip}).cls, enc({"frames": reversed_clip}).cls
        assert (not torch.allclose(a, b, atol=1e-5)) == order_matters, temporal


def test_frame_chunking_and_checkpointing_do_not_change_the_output():
    torch.manual_seed(0)
    plain = build_encoder(tiny("vivit"), 16)
    chunked = build_encoder(tiny("vivit", frame_chunk=4, gradient_checkpointing=True), 16)
    chunked.load_state_dict(plain.state_dict())
    x = frames(2)
    a, b = plain({"frames": x}).cls, chunked({"frames": x}).cls
    assert torch.allclose(a, b, atol=1e-5)
    a.sum().backward()
    b.sum().backward()
    for (n, p), q in zip(plain.named_parameters(), chunked.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4), n


def test_wrong_frame_size_is_a_clear_error():
    enc = build_encoder(tiny("vivit"), 16)
    with pytest.raises(ValueError, match="img_size"):
        enc({"frames": frames(1, px=48)})


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    enc = build_encoder(tiny("vivit"), 16).eval()
    x = frames(2)
    with torch.no_grad():
        ref = enc({"frames": x}).cls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc({"frames": x}).cls
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.1, rtol=0.1)


# ------------------------------------------------------------------ S-segment max (Eq. 4)
def test_item_encoder_segments_and_segment_max_score():
    fields = {"trailer": {"modality": "video", "encoder": "video"},
              "text": {"modality": "text", "encoder": "text"}}
    encs = {"video": tiny("vivit"),
            "text": {**encoder_defaults({"type": "bert"}), "checkpoint": None,
                     "bert_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "intermediate_size": 32}}}
    model = ItemEncoder(fields, encs, {"token_dim": 16, "dim": 8,
                                       "fusion": {"type": "late", "fc_layers": 1}}).eval()
    text = {"input_ids": torch.tensor([[101, 2000, 102], [101, 2001, 102]]),
            "attention_mask": torch.ones(2, 3, dtype=torch.long), "present": torch.ones(2, dtype=torch.bool)}
    seg = frames(2, 3)
    with torch.no_grad():
        v = model({"trailer": {"frames": seg, "present": torch.ones(2, dtype=torch.bool)}, "text": text}).v
        per = [model({"trailer": {"frames": seg[:, s], "present": torch.ones(2, dtype=torch.bool)},
                      "text": text}).v for s in range(3)]
    assert v.shape == (2, 3, 8)
    for s in range(3):   # segment s of the batch = the item encoded with that clip alone
        assert torch.allclose(v[:, s], per[s], atol=1e-5)
    users = torch.randn(5, 8)
    scores = DotScorer(users, v)(torch.arange(5))
    expected = torch.stack([users @ p.T for p in per]).amax(0)
    assert torch.allclose(scores, expected, atol=1e-5)
    # the max really picks per (user, item): some pair's best segment is not segment 0
    best = torch.stack([users @ p.T for p in per]).argmax(0)
    assert (best != 0).any()


# ------------------------------------------------------------------ tubelet embedding
def test_tubelets_embed_consecutive_frames_together():
    """tubelet=2: each token sees frames (2k, 2k+1) stacked on channels; the temporal stage gets
    F/2 tokens. Checked against the same modules applied by hand."""
    torch.manual_seed(0)
    enc = build_encoder(tiny("vivit", tubelet=2), 16).eval()
    assert enc.frames.patch.proj.in_channels == 6
    x = frames(2, f=6)
    with torch.no_grad():
        got = enc({"frames": x}).cls
        pairs = torch.cat([x[:, 0::2], x[:, 1::2]], dim=-1)          # [2, 3, H, W, 6]
        per = torch.stack([enc.frames.pool(enc.frames(pairs[:, k])) for k in range(3)], dim=1)
        want = enc.proj(enc.temporal.pool(enc.temporal(per)))
        swapped = x.clone()
        swapped[:, [0, 1]] = x[:, [1, 0]]                            # order inside a tubelet
        other = enc({"frames": swapped}).cls
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, other, atol=1e-4)
    with pytest.raises(ValueError, match="tubelet"):
        enc({"frames": frames(1, f=5)})


def test_conv_stem_keeps_the_token_grid_and_trains():
    """stem=conv: log2(P) stride-2 convolutions give the same P x P token grid as the patch
    projection (so positional encodings and the temporal stage are unchanged), every weight gets
    a gradient, and a patch size that is not a power of two is refused by name."""
    torch.manual_seed(0)
    patch = build_encoder(tiny("vivit", tubelet=2), 16)
    conv = build_encoder(tiny("vivit", tubelet=2, stem="conv"), 16)
    x = frames(2, f=4)
    assert patch.frames(x[:, 0].repeat(1, 1, 1, 2)).shape == conv.frames(x[:, 0].repeat(1, 1, 1, 2)).shape
    assert conv.frames.patch.backbone[0].conv.in_channels == 6 and conv.frames.patch.num_patches == 16
    conv({"frames": x}).cls.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
    with pytest.raises(ValueError, match="power of two"):
        build_encoder(tiny("vivit", stem="conv", patch_size=6, img_size=36), 16)
    with pytest.raises(ValueError, match="unknown vision stem"):
        build_encoder(tiny("vivit", stem="convnext"), 16)
