"""BERT text encoder (KDD'24 Sec. 5.1.3): pretrained or from scratch, fine-tuned end to end.

A frozen bottom (the embeddings and the first `freeze_layers` layers, or everything with
`freeze: true`) gives every item the same hidden states at every step, so with `cache_frozen`
they are computed once per run (`frozen_forward`; mmrec/data/text_cache.py stores them) and a
step runs only the layers above: `forward` takes `frozen_hidden` [B, T, H] in place of
`input_ids`. The remaining layers get the attention mask `BertModel.forward` would build, so in
eval mode the two paths compute the same function.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask

from encoders.base import EncoderOutput, ModalityEncoder
from encoders.presets import BERT_POOLING
from encoders.registry import register_encoder
from encoders import pretrained


def tokenizer_path(spec: dict) -> str:
    """The WordPiece vocabulary a text encoder's inputs must be tokenised with."""
    return pretrained.resolve_checkpoint(spec.get("tokenizer") or spec.get("checkpoint") or "minilm")


@register_encoder("bert")
class BertTextEncoder(ModalityEncoder):
    # DEFAULTS (set by register_encoder): configs/defaults/encoders/bert.yaml

    def __init__(self, spec: dict, token_dim: int):
        super().__init__()
        self.pooling = spec["pooling"]
        if self.pooling not in BERT_POOLING:
            raise ValueError(f"encoders: bert pooling must be one of {', '.join(BERT_POOLING)}, got {self.pooling!r}")
        ckpt = pretrained.resolve_checkpoint(spec["checkpoint"])
        if ckpt is not None:
            config = BertConfig.from_pretrained(ckpt)
            if spec["num_layers"]:
                config.num_hidden_layers = int(spec["num_layers"])
            self.bert = BertModel.from_pretrained(ckpt, config=config, add_pooling_layer=False,
                                                  attn_implementation="sdpa")
        else:
            base = BertConfig.from_pretrained(tokenizer_path(spec))  # vocabulary size and special ids
            config = BertConfig(vocab_size=base.vocab_size, pad_token_id=base.pad_token_id,
                                **spec["bert_config"])
            if spec["num_layers"]:
                config.num_hidden_layers = int(spec["num_layers"])
            config._attn_implementation = "sdpa"
            self.bert = BertModel(config, add_pooling_layer=False)
        if spec["gradient_checkpointing"]:
            self.set_grad_checkpointing(True)
        if spec["freeze"]:
            self.bert.requires_grad_(False)
        elif spec["freeze_layers"]:
            self.bert.embeddings.requires_grad_(False)
            for layer in self.bert.encoder.layer[:int(spec["freeze_layers"])]:
                layer.requires_grad_(False)
        layers = self.bert.encoder.layer   # the count of exactly the layers frozen above
        self._frozen_layers = len(layers) if spec["freeze"] else len(layers[:int(spec["freeze_layers"] or 0)])
        self.cache_frozen = bool(spec.get("cache_frozen", False))
        self.proj = nn.Linear(self.bert.config.hidden_size, token_dim)
        if self.pooling == "attention":
            self.attention_pool = AttentionPool(self.bert.config.hidden_size, int(spec.get("pool_heads") or 1))

    def cacheable_layers(self) -> int:
        """How many bottom layers (after the embeddings) `frozen_forward` runs: every layer with
        `freeze: true`, else `freeze_layers`; 0 when nothing is frozen (nothing to cache). A
        from-scratch BERT counts too: frozen, its random weights are as fixed as pretrained ones."""
        return self._frozen_layers

    def frozen_fingerprint(self) -> str:
        """A hash of everything the frozen bottom's output depends on besides its input: the
        frozen weights and buffers themselves (so the checkpoint's identity, `num_layers`, a
        from-scratch seed and a transferred tower are all covered) and the layer arithmetic."""
        n = self.cacheable_layers()
        c = self.bert.config
        h = hashlib.sha256(json.dumps({
            "layers": n, "hidden_size": c.hidden_size, "heads": c.num_attention_heads,
            "act": str(c.hidden_act), "eps": c.layer_norm_eps, "attn": c._attn_implementation,
            "position": getattr(c, "position_embedding_type", "absolute"), "decoder": bool(c.is_decoder),
        }, sort_keys=True).encode())
        for module in self.frozen_modules():
            for name, t in module.state_dict(keep_vars=False).items():
                t = t.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def frozen_modules(self) -> list[nn.Module]:
        """The embeddings, then the cached layers in order (empty past the embeddings when
        nothing is cacheable)."""
        return [self.bert.embeddings, *self.bert.encoder.layer[:self.cacheable_layers()]]

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        """`layers` of the encoder on `hidden`, with the mask `BertModel.forward` builds from the
        same 2D attention mask (create_bidirectional_mask: sdpa's boolean mask, None without padding)."""
        if len(layers) == 0:
            return hidden
        mask = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        for layer in layers:   # GradientCheckpointingLayer: checkpointed in training when enabled
            hidden = layer(hidden, mask)
        return hidden

    @torch.no_grad()
    def frozen_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, H] hidden states after the frozen bottom, in eval mode (no dropout) whatever
        mode the module is in: what a cache stores and `forward` continues from."""
        n = self.cacheable_layers()
        if n == 0:
            raise ValueError("encoders: bert cache_frozen needs a frozen bottom (freeze: true or "
                             "freeze_layers > 0); nothing is frozen")
        with _eval_mode(self.frozen_modules()):
            hidden = self.bert.embeddings(input_ids=input_ids)
            return self._run_layers(hidden, attention_mask, self.bert.encoder.layer[:n])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's name for it; every encoder that can recompute activations offers it."""
        if enable:
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.bert.gradient_checkpointing_disable()

    def forward(self, inputs: dict, need_tokens: bool = False) -> EncoderOutput:
        """`inputs`: `input_ids` + `attention_mask` [B, T], or, from a cache, `frozen_hidden`
        [B, T, H] (`frozen_forward`'s output) + `attention_mask`: then only the layers above the
        frozen bottom run. A cache is used only by an encoder built with `cache_frozen`; any
        other falls back to `input_ids`, which cached batches keep."""
        mask = inputs["attention_mask"]
        frozen = inputs.get("frozen_hidden") if self.cache_frozen or "input_ids" not in inputs else None
        if frozen is not None:
            n = self.cacheable_layers()
            if n == 0:
                raise ValueError("encoders: bert got cached `frozen_hidden`, but nothing of it is frozen "
                                 "(cache_frozen needs freeze: true or freeze_layers > 0)")
            if frozen.shape[-1] != self.bert.config.hidden_size or frozen.shape[:2] != mask.shape:
                raise ValueError(f"encoders: bert frozen_hidden has shape {tuple(frozen.shape)}; expected "
                                 f"{tuple(mask.shape)} x hidden size {self.bert.config.hidden_size}")
            hidden = frozen.to(self.proj.weight.dtype)
            hidden = self._run_layers(hidden, mask, self.bert.encoder.layer[n:])
        else:
            hidden = self.bert(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "attention":
            pooled = self.attention_pool(hidden, mask)
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        tokens = self.proj(hidden) if need_tokens else None
        return EncoderOutput(self.proj(pooled), tokens, mask.bool() if need_tokens else None)


class AttentionPool(nn.Module):
    """Mean pooling with learned weights per token: each of `heads` slices of the hidden size
    has a query whose dot product with a token's slice gives that token's weight (softmax over
    the unpadded tokens). The queries start at zero, so training starts from mean pooling and
    learns which words of a frozen tower's output matter (title, year or genres), for the price
    of one dot product per token: cheap enough to train over a cached frozen BERT."""

    def __init__(self, hidden_size: int, heads: int = 1):
        super().__init__()
        if heads < 1 or hidden_size % heads:
            raise ValueError(f"encoders: bert pool_heads={heads} must divide the hidden size {hidden_size}")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(heads, hidden_size // heads))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, H = hidden.shape
        parts = hidden.reshape(B, T, self.heads, H // self.heads)
        logits = torch.einsum("bthd,hd->bth", parts, self.query.to(hidden.dtype))
        logits = logits.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=1) * mask.unsqueeze(-1).to(hidden.dtype)   # an all-pad row: zeros
        return torch.einsum("bth,bthd->bhd", weights, parts).reshape(B, H)


@contextmanager
def _eval_mode(modules):
    """Every submodule of `modules` in eval mode for the block, each restored to its own mode."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, mode in saved:
            m.training = mode


@torch.no_grad()
def frozen_text_embeddings(checkpoint: str, batches, pooling: str = "mean") -> torch.Tensor:
    """Embeddings of a frozen pretrained BERT (no projection), e.g. for the kNN baseline."""
    bert = BertModel.from_pretrained(checkpoint, add_pooling_layer=False, attn_implementation="sdpa")
    bert.eval()
    out = []
    for inputs in batches:
        hidden = bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        if pooling == "cls":
            out.append(hidden[:, 0])
        else:
            m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * m).sum(1) / m.sum(1).clamp_min(1.0))
    return torch.cat(out)
