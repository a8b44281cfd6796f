"""Image (ViT) and video (ViViT "model 2", factorised encoder) encoders, trained from scratch
(KDD'24 Sec. 5.1.1-5.1.2). Built from timm's parts: `PatchEmbed` and the pre-norm `Block`, whose
attention calls the fused `F.scaled_dot_product_attention`; only the [CLS]/positional wiring and
the temporal stage are ours, because timm has no factorised video transformer.

Inputs are uint8 pixels, channels last, exactly as the frame store holds them; they are
converted and normalised on the model's device, so a DataLoader moves 4x fewer bytes.
Architecture sizes are named (timm-style): `arch: paper` (224 px, P=16, d=192, L=4 spatial and
L=4 temporal) for GPU users, `arch: tiny` for CPU tests and demos; any size key set explicitly
overrides the named one.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.layers import HybridEmbed, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from timm.models.vision_transformer_hybrid import ConvStem

from encoders.base import EncoderOutput, ModalityEncoder
# The named sizes are plain data in a torch-free module, so the config checks can read them.
from encoders.presets import VISION_ARCHS as ARCHS, VISION_SIZE_KEYS as SIZE_KEYS  # noqa: F401
from encoders.presets import resolve_vision_arch as resolve_arch
from encoders.registry import register_encoder


class TokenTransformer(nn.Module):
    """Optional [CLS] + learnable positional encoding + L pre-norm blocks + final norm.
    The spatial (patches of a frame) and temporal (frames of a clip) stages are both this."""

    def __init__(self, max_tokens: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 drop_path: float, cls_token: bool = True):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, max_tokens + int(cls_token), width))
        trunc_normal_(self.pos, std=0.02)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=1e-6)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias=True, drop_path=r)
                                    for r in rates)
        self.norm = nn.LayerNorm(width)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, w] -> [N, T (+1 with [CLS] first), w]."""
        n_pos = self.pos.shape[1] - (self.cls is not None)
        if x.shape[1] > n_pos:
            raise ValueError(f"{x.shape[1]} tokens but positional encodings for {n_pos} "
                             f"(raise max_frames / check img_size)")
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos[:, :x.shape[1]].to(x.dtype)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.cls is not None else tokens.mean(dim=1)


class FrameEncoder(nn.Module):
    """ViT over one image: uint8 [N, H, W, 3] -> tokens [N, 1 + patches, width].

    With `tubelet` t > 1 the input is t consecutive frames stacked on the channel axis
    ([N, H, W, 3t]), and each token embeds a t x P x P tubelet (ViViT's tubelet embedding)."""

    def __init__(self, sizes: dict, spec: dict, tubelet: int = 1):
        super().__init__()
        self.img_size = int(sizes["img_size"])
        self.tubelet = int(tubelet)
        self.patch = make_stem(spec.get("stem") or "patch", self.img_size, int(sizes["patch_size"]),
                               3 * self.tubelet, int(sizes["width"]))
        self.transformer = TokenTransformer(self.patch.num_patches, int(sizes["width"]),
                                            int(sizes["depth"]), int(sizes["heads"]),
                                            float(spec["mlp_ratio"]), float(spec["drop_path"]),
                                            bool(spec["cls_token"]))
        self.register_buffer("mean", torch.tensor(spec["pixel_mean"] * self.tubelet, dtype=torch.float32)
                             .view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(spec["pixel_std"] * self.tubelet, dtype=torch.float32)
                             .view(1, -1, 1, 1) * 255, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"frames are {tuple(pixels.shape[1:3])} px but the encoder's img_size is "
                             f"{self.img_size}: set the field's `size` and the encoder's `img_size` alike")
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        x = x.to(self.patch.proj.weight.dtype) if not torch.is_autocast_enabled() else x
        return self.transformer(self.patch(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer.pool(tokens)


def make_stem(kind: str, img_size: int, patch: int, in_chans: int, width: int) -> nn.Module:
    """Pixels -> one token per P x P patch. `patch`: ViT's single strided P x P projection (the
    paper's). `conv`: timm's ConvStem, log2(P) stride-2 3x3 convolutions then a 1x1 projection
    ("Early convolutions help transformers see better", Xiao et al. 2021): the same token grid,
    but local edges and corners come built in, which a from-scratch ViT otherwise learns slowly."""
    if kind == "patch":
        return PatchEmbed(img_size, patch, in_chans, width)
    if kind != "conv":
        raise ValueError(f"encoders: unknown vision stem {kind!r} (known: patch, conv)")
    depth = patch.bit_length() - 1
    if patch < 2 or 2 ** depth != patch:
        raise ValueError(f"encoders: stem 'conv' needs patch_size a power of two >= 2, got {patch}")
    chans = tuple(max(8, width // 2 ** (depth - 1 - i)) for i in range(depth))   # ..., w/4, w/2, w
    stem = ConvStem(in_chans, depth, chans, 3, (2,) * depth)
    return HybridEmbed(stem, img_size, patch_size=1, in_chans=in_chans, embed_dim=width)


def _project(width: int, token_dim: int) -> nn.Module:
    return nn.Identity() if width == token_dim else nn.Linear(width, token_dim)


@register_encoder("vit")
class ViTImageEncoder(ModalityEncoder):
    """Up to k still images per item (news-style): each image's [CLS], projected to d; the item's
    aggregate is the mean over its present images, its tokens are the per-image vectors."""

    # DEFAULTS (set by register_encoder): configs/defaults/encoders/vit.yaml

    def __init__(self, spec: dict, token_dim: int):
        super().__init__()
        sizes = resolve_arch(spec)
        self.frames = FrameEncoder(sizes, spec)
        self.proj = _project(int(sizes["width"]), token_dim)
        self.set_grad_checkpointing(bool(spec["gradient_checkpointing"]))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.frames.transformer.grad_checkpointing = enable

    def forward(self, inputs: dict, need_tokens: bool = False) -> EncoderOutput:
        images, mask = inputs["images"], inputs["image_mask"].bool()   # [B, K, H, W, 3], [B, K]
        B, K = mask.shape
        z = self.proj(self.frames.pool(self.frames(images.flatten(0, 1)))).view(B, K, -1)
        w = mask.unsqueeze(-1).to(z.dtype)
        cls = (z * w).sum(1) / w.sum(1).clamp_min(1.0)
        return EncoderOutput(cls, z if need_tokens else None, mask if need_tokens else None)


@register_encoder("vivit")
class ViViTVideoEncoder(ModalityEncoder):
    """ViViT model 2: per-frame ViT [CLS] -> learnable temporal positional encoding -> temporal
    Transformer -> [CLS]. `temporal: mean` instead averages the frames' [CLS] vectors (the
    image-encoder baseline, blind to frame order).

    Input `frames` is uint8 [B, F, H, W, 3] (training: one clip) or [B, S, F, H, W, 3]
    (inference: S segments); the aggregate is [B, d] or [B, S, d] accordingly."""

    # DEFAULTS (set by register_encoder): configs/defaults/encoders/vivit.yaml

    def __init__(self, spec: dict, token_dim: int):
        super().__init__()
        sizes = resolve_arch(spec)
        self.tubelet = int(sizes["tubelet"])
        if self.tubelet < 1:
            raise ValueError(f"encoders: vivit tubelet must be >= 1, got {self.tubelet}")
        self.frames = FrameEncoder(sizes, spec, self.tubelet)
        self.temporal_mode = spec["temporal"]
        if self.temporal_mode not in ("transformer", "mean"):
            raise ValueError(f"encoders: vivit temporal must be 'transformer' or 'mean', got {self.temporal_mode!r}")
        width = int(sizes["width"])
        self.temporal = (TokenTransformer(int(sizes["max_frames"]), width, int(sizes["temporal_depth"]),
                                          int(sizes["temporal_heads"]), float(spec["mlp_ratio"]),
                                          float(spec["drop_path"]), bool(spec["cls_token"]))
                         if self.temporal_mode == "transformer" else None)
        self.frame_chunk = int(spec["frame_chunk"] or 0)
        self.proj = _project(width, token_dim)
        self.set_grad_checkpointing(bool(spec["gradient_checkpointing"]))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.frames.transformer.grad_checkpointing = enable
        if self.temporal is not None:
            self.temporal.grad_checkpointing = enable

    def frame_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3t] -> [N, width] per-frame (per-tubelet) [CLS], in chunks to bound
        activation memory."""
        step = self.frame_chunk or len(pixels)
        return torch.cat([self.frames.pool(self.frames(pixels[i:i + step]))
                          for i in range(0, len(pixels), step)])

    def forward(self, inputs: dict, need_tokens: bool = False) -> EncoderOutput:
        frames = inputs["frames"]
        lead = frames.shape[:-4]                        # (B,) or (B, S)
        F = frames.shape[-4]
        t = self.tubelet
        if F % t:
            raise ValueError(f"clips of {F} frames do not split into tubelets of {t} frames: "
                             f"make the field's clip_frames a multiple of the encoder's tubelet")
        clips = frames.reshape(-1, *frames.shape[-4:])  # [N, F, H, W, 3]
        H, W = clips.shape[2:4]
        # [N, F/t, t, H, W, 3] -> [N * F/t, H, W, t * 3]: each tubelet's frames side by side on channels
        tubes = clips.view(len(clips), F // t, t, H, W, 3).permute(0, 1, 3, 4, 2, 5).reshape(-1, H, W, 3 * t)
        per_frame = self.frame_vectors(tubes).view(len(clips), F // t, -1)
        if self.temporal is None:
            tokens = per_frame
            pooled = per_frame.mean(dim=1)
        else:
            tokens = self.temporal(per_frame)
            pooled = self.temporal.pool(tokens)
        cls = self.proj(pooled).view(*lead, -1)
        if not need_tokens:
            return EncoderOutput(cls)
        tok = self.proj(tokens).view(*lead, tokens.shape[1], -1)
        return EncoderOutput(cls, tok, None)
