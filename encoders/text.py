"""BERT text encoder (KDD'24 Sec. 5.1.3): pretrained or from scratch, fine-tuned end to end."""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from encoders.base import EncoderOutput
from encoders.registry import register_encoder
from mmrec import assets


def tokenizer_path(spec: dict) -> str:
    """The WordPiece vocabulary a text encoder's inputs must be tokenised with."""
    return assets.resolve_checkpoint(spec.get("tokenizer") or spec.get("checkpoint") or "minilm")


@register_encoder("bert")
class BertTextEncoder(nn.Module):
    DEFAULTS = {
        "checkpoint": "minilm",   # 'minilm' (installed pretrained MiniLM-L6), a local HF path, or null (from scratch)
        "tokenizer": None,        # vocabulary path (null: the checkpoint's, or MiniLM's for from-scratch)
        "bert_config": {},        # BertConfig overrides for from-scratch models (e.g. num_hidden_layers)
        "num_layers": None,       # keep only the first N pretrained layers (cheap CPU configs)
        "pooling": "cls",         # cls | mean: the aggregate vector given to late fusion
        "freeze": False,          # keep BERT's weights fixed (the projection still trains)
        "freeze_layers": 0,       # freeze the word embeddings and the first N layers (no backward through them)
        "gradient_checkpointing": False,
    }

    def __init__(self, spec: dict, token_dim: int):
        super().__init__()
        self.pooling = spec["pooling"]
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"encoders: bert pooling must be 'cls' or 'mean', got {self.pooling!r}")
        ckpt = assets.resolve_checkpoint(spec["checkpoint"])
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
        self.proj = nn.Linear(self.bert.config.hidden_size, token_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's name for it; every encoder that can recompute activations offers it."""
        if enable:
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.bert.gradient_checkpointing_disable()

    def forward(self, inputs: dict, need_tokens: bool = False) -> EncoderOutput:
        mask = inputs["attention_mask"]
        hidden = self.bert(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        tokens = self.proj(hidden) if need_tokens else None
        return EncoderOutput(self.proj(pooled), tokens, mask.bool() if need_tokens else None)


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
