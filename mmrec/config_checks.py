"""What a resolved config can be checked for on its own, before any data is read or model built.

`load_config` calls `check_config(cfg)` last, so a config whose parts contradict each other (a
frame size the encoder does not take, attention heads that do not divide a width, a fused width
that `fc_layers: 0` cannot give) stops at once with a `ConfigError` naming the keys and how to fix
them, instead of deep inside data loading or the model's constructor. The trainer also calls
`check_config(cfg, complete=True)` before it reads data: that adds what only training needs (a
head's required fields, every field's encoder), which a config used to preprocess or to extract
features may leave out.

Each check encodes the constraint of the code that would otherwise fail (named in its comment);
a config that trains today passes. This module imports no torch, timm, transformers or pandas:
the encoders' named sizes and choices are the plain data of configs/defaults/encoder_presets.yaml,
read through `encoders.presets` (which the torch modules read too).
"""
from __future__ import annotations

import sys

from encoders.presets import (BERT_CONFIG_DEFAULTS, BERT_POOLING, ENCODER_MODALITY, VISION_ARCHS,  # noqa: F401
                              VISION_SIZE_KEYS, VISION_STEMS, VIVIT_TEMPORAL)
from encoders.presets import resolve_vision_arch as _resolve_arch
from mmrec.errors import ConfigError


def resolve_vision_arch(spec: dict) -> dict:
    """The named architecture's sizes, with every size key the spec sets explicitly on top."""
    try:
        return _resolve_arch(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _registered(module: str, registry: str) -> set[str]:
    """Names in a registry whose module is already loaded (a plug-in's heads or fusions: the
    plug-in loaded it to register them; these checks never import it)."""
    reg = getattr(sys.modules.get(module), registry, None)
    return set(reg) if reg is not None else set()


# Registered in torch modules; kept here as names (tests/test_cli_errors.py checks they agree).
HEADS = ("mmrec", "clcrec", "sasrec", "cmclrec")            # mmrec/models/*.py
FUSIONS = ("late", "early", "mixture", "adaptive")          # encoders/fusion.py
FEATURE_SOURCES = ("file", "frozen_text", "multihot")       # mmrec/features.py
USER_FEATURES = ("age", "gender", "occupation", "zip")      # mmrec/data/sequences.py FEATURES
SEQUENTIAL_HEADS = ("sasrec", "cmclrec")                    # train on user sequences, not on fields


def check_config(cfg: dict, complete: bool = False) -> None:
    """Raise ConfigError at the first problem. complete=True: also what training needs."""
    head = cfg.get("head")
    heads = list(HEADS) + sorted(_registered("mmrec.models.base", "HEADS") - set(HEADS))
    if head not in heads:
        raise ConfigError(f"head={head!r} is not a model head (known: {', '.join(heads)})")
    _check_general(cfg)
    if head == "mmrec":
        _check_item_tower(cfg)
    elif head == "clcrec":
        _check_clcrec(cfg)
    elif head in SEQUENTIAL_HEADS:
        _check_sequential(cfg)
    for name, spec in (cfg.get("fields") or {}).items():
        if spec.get("modality") == "features":
            _check_feature_field(name, spec)
        elif spec.get("modality") == "video":
            _check_frame_store(name, spec)
    if complete:
        _check_complete(cfg)


# ------------------------------------------------------------------------------ helpers
def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value) -> int | None:
    """An integral number as int; None for anything else (text, 2.5, True)."""
    return int(value) if _num(value) and float(value).is_integer() else None


def _size_ref(enc: str, spec: dict, key: str, sizes: dict) -> str:
    """How an encoder's size came about: `encoders.video.img_size=64` when set explicitly, else
    `encoders.video.arch=tiny (img_size 32)`."""
    if spec.get(key) is not None:
        return f"encoders.{enc}.{key}={spec[key]}"
    return f"encoders.{enc}.arch={spec.get('arch') or 'paper'} ({key} {sizes[key]})"


def _divides(heads: int, width: int) -> bool:
    return heads >= 1 and width % heads == 0


# ------------------------------------------------------------------------------ every head
def _check_general(cfg: dict) -> None:
    train, data, split, ev = cfg["train"], cfg["data"], cfg["split"], cfg["eval"]
    bs = _int(train.get("batch_size"))
    if bs is None or bs < 1:
        raise ConfigError(f"train.batch_size={train.get('batch_size')!r} must be a positive integer")
    # trainer.make_sampler: runs of k pairs of one item fill a batch exactly.
    k = _int(train.get("pairs_per_item"))
    if k is None or k < 1 or bs % k:
        raise ConfigError(f"train.pairs_per_item={train.get('pairs_per_item')!r} must be >= 1 and divide "
                          f"train.batch_size={bs}")
    pat = _int(train.get("patience", 0))
    if pat is None or pat < 0:
        raise ConfigError(f"train.patience={train.get('patience')!r} must be an integer >= 0 (0: off)")
    ibs = _int(ev.get("item_batch_size"))
    if ibs is None or ibs < 1:
        raise ConfigError(f"eval.item_batch_size={ev.get('item_batch_size')!r} must be a positive integer")
    # readers.parse_ratings treats anything but 'error' as 'skip'.
    if data.get("on_bad_row") not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_row={data.get('on_bad_row')!r} must be 'error' or 'skip'")
    # data/split.py: make_split and part_sizes.
    if split.get("method") not in ("random", "time"):
        raise ConfigError(f"split.method={split.get('method')!r} must be 'random' or 'time'")
    ratios = split.get("ratios")
    if (not isinstance(ratios, (list, tuple)) or len(ratios) != 3
            or any(not _num(r) or r < 0 for r in ratios) or sum(ratios) <= 0):
        raise ConfigError(f"split.ratios={ratios!r} must be three non-negative numbers "
                          f"(train, cold validation, cold test), not all 0")


# ------------------------------------------------------------------------------ head mmrec
def _check_item_tower(cfg: dict) -> None:
    """Fields, their encoders and the fusion layer, as encoders/item_encoder.py builds them."""
    fields, encoders, model = cfg.get("fields") or {}, cfg.get("encoders") or {}, cfg["model"]
    d = _int(model.get("token_dim"))
    D = _int(model.get("dim"))
    if d is None or d < 1 or D is None or D < 1:
        raise ConfigError(f"model.token_dim={model.get('token_dim')!r} and model.dim={model.get('dim')!r} "
                          f"must be positive integers")
    linked = {n: s["encoder"] for n, s in fields.items() if s.get("encoder") in encoders}
    # (a field naming no encoder: check_config(complete=True); only the model needs one)
    for name, enc in linked.items():
        etype, modality = encoders[enc].get("type"), fields[name].get("modality")
        reads = ENCODER_MODALITY.get(etype)
        if reads is not None and modality != reads:
            want = [t for t, m in ENCODER_MODALITY.items() if m == modality]
            raise ConfigError(f"fields.{name}.encoder={enc} is a {etype} encoder (for {reads} fields), but "
                              f"fields.{name} is a {modality} field" + (f"; give it a {' or '.join(want)} encoder"
                                                                         if want else ""))
    for enc in dict.fromkeys(linked.values()):      # the encoders the model builds
        spec = encoders[enc]
        if spec.get("type") in ("vit", "vivit"):
            _check_vision_encoder(enc, spec)
        elif spec.get("type") == "bert":
            _check_bert_encoder(enc, spec)
    for name, enc in linked.items():
        etype = encoders[enc].get("type")
        if etype in ("vit", "vivit"):
            _check_vision_field(name, fields[name], enc, encoders[enc])
        elif etype == "bert":
            _check_text_field(name, fields[name], enc, encoders[enc])
    _check_fusion(list(fields), model["fusion"], d, D)
    _check_sampling(cfg)


def _check_sampling(cfg: dict) -> None:
    """Mixed negatives and the distillation's hybrid, as mmrec/models/mmrec_model.py uses them."""
    k = cfg["loss"].get("mixed_negatives")
    if _int(k) is None or _int(k) < 0:
        raise ConfigError(f"loss.mixed_negatives={k!r} must be a whole number >= 0 (uniform negatives per step)")
    if cfg["loss"].get("in_batch_negatives") is False and not _int(k):
        raise ConfigError("loss.in_batch_negatives=false leaves the positive alone in the user -> item "
                          "softmax; give it uniform negatives (loss.mixed_negatives > 0)")
    dc = cfg.get("distill") or {}
    if not dc.get("id_embedding"):
        return
    rho, weight, tau = dc.get("rho"), dc.get("weight"), dc.get("temperature")
    if not _num(rho) or not 0 <= rho <= 1:
        raise ConfigError(f"distill.rho={rho!r} must be a probability in [0, 1]")
    if not _num(weight) or weight < 0:
        raise ConfigError(f"distill.weight={weight!r} must be >= 0")
    if not _num(tau) or tau <= 0:
        raise ConfigError(f"distill.temperature={tau!r} must be > 0")
    if not isinstance(dc.get("cosine"), bool):
        raise ConfigError(f"distill.cosine={dc.get('cosine')!r} must be true or false")
    if rho == 1 and weight == 0:
        raise ConfigError("distill.id_embedding=true with distill.rho=1 and distill.weight=0 never uses the "
                          "ID embedding; lower rho or raise weight")


def _check_vision_encoder(enc: str, spec: dict) -> None:
    arch = spec.get("arch") or "paper"
    if arch not in VISION_ARCHS:
        raise ConfigError(f"encoders.{enc}.arch={arch!r} is not a vision architecture "
                          f"(known: {', '.join(VISION_ARCHS)})")
    sizes = resolve_vision_arch(spec)
    for key, value in sizes.items():
        least = 0 if key.endswith("depth") else 1
        if _int(value) is None or value < least:
            raise ConfigError(f"{_size_ref(enc, spec, key, sizes)} must be an integer >= {least}")
    # vision.make_stem: ViT's P x P projection, or log2(P) stride-2 convolutions.
    stem = spec.get("stem") or "patch"
    if stem not in VISION_STEMS:
        raise ConfigError(f"encoders.{enc}.stem={stem!r} must be one of {', '.join(VISION_STEMS)}")
    if stem == "conv":
        p = int(sizes["patch_size"])
        if p < 2 or p & (p - 1):
            raise ConfigError(f"encoders.{enc}.stem=conv needs a patch size that is a power of two >= 2, "
                              f"but {_size_ref(enc, spec, 'patch_size', sizes)}")
    # timm's Attention (in every Block): the width splits evenly into the heads.
    width = int(sizes["width"])
    if int(sizes["depth"]) > 0 and not _divides(int(sizes["heads"]), width):
        raise ConfigError(f"{_size_ref(enc, spec, 'heads', sizes)} must divide "
                          f"{_size_ref(enc, spec, 'width', sizes)} (attention heads split the width)")
    if spec.get("type") == "vivit":
        temporal = spec.get("temporal") or "transformer"
        if temporal not in VIVIT_TEMPORAL:
            raise ConfigError(f"encoders.{enc}.temporal={temporal!r} must be one of {', '.join(VIVIT_TEMPORAL)}")
        if (temporal == "transformer" and int(sizes["temporal_depth"]) > 0
                and not _divides(int(sizes["temporal_heads"]), width)):
            raise ConfigError(f"{_size_ref(enc, spec, 'temporal_heads', sizes)} must divide "
                              f"{_size_ref(enc, spec, 'width', sizes)} (attention heads split the width)")


def _check_vision_field(name: str, spec: dict, enc: str, enc_spec: dict) -> None:
    sizes = resolve_vision_arch(enc_spec)        # checked by _check_vision_encoder
    # vision.FrameEncoder.forward: frames must be exactly img_size x img_size.
    size, img = spec.get("size"), int(sizes["img_size"])
    if size != img:
        raise ConfigError(f"fields.{name}.size={size} does not match {_size_ref(enc, enc_spec, 'img_size', sizes)}; "
                          f"set fields.{name}.size={img} or encoders.{enc}.img_size={size}")
    if spec.get("modality") != "video" or enc_spec.get("type") != "vivit":
        return
    F, t = _int(spec.get("clip_frames")), int(sizes["tubelet"])
    if F is None or F < 1:
        raise ConfigError(f"fields.{name}.clip_frames={spec.get('clip_frames')!r} must be a positive integer")
    # vision.ViViTVideoEncoder.forward: a clip splits into whole tubelets.
    if F % t:
        raise ConfigError(f"fields.{name}.clip_frames={F} is not a multiple of "
                          f"{_size_ref(enc, enc_spec, 'tubelet', sizes)}; make the clip a whole number "
                          f"of tubelets")
    # vision.TokenTransformer.forward: the temporal stage has max_frames positional encodings.
    if (enc_spec.get("temporal") or "transformer") == "transformer" and F // t > int(sizes["max_frames"]):
        raise ConfigError(f"fields.{name}.clip_frames={F} gives {F // t} temporal tokens (tubelets of {t}), more "
                          f"than the {sizes['max_frames']} positions of {_size_ref(enc, enc_spec, 'max_frames', sizes)}; "
                          f"lower fields.{name}.clip_frames or raise encoders.{enc}.max_frames")
    segments = _int(spec.get("segments"))
    if segments is None or segments < 1:
        raise ConfigError(f"fields.{name}.segments={spec.get('segments')!r} must be a positive integer")


def _check_frame_store(name: str, spec: dict) -> None:
    """preprocessing/frame_store.py: the two store formats and JPEG's quality range."""
    fmt, q = spec.get("store_format"), spec.get("jpeg_quality")
    if fmt not in ("npy", "jpeg"):
        raise ConfigError(f"fields.{name}.store_format={fmt!r} must be 'npy' (raw frames) or 'jpeg' (compressed)")
    if isinstance(q, bool) or _int(q) is None or not 1 <= _int(q) <= 100:
        raise ConfigError(f"fields.{name}.jpeg_quality={q!r} must be a whole number from 1 to 100")


def _bert_scratch_sizes(enc: str, spec: dict) -> dict | None:
    """A from-scratch BERT's sizes (its `bert_config` over BertConfig's defaults); None for a
    pretrained checkpoint, whose sizes are in its own files."""
    if spec.get("checkpoint") is not None:
        return None
    bc = spec.get("bert_config") or {}
    sizes = {k: bc.get(k, v) for k, v in BERT_CONFIG_DEFAULTS.items()}
    for key, value in sizes.items():
        if _int(value) is None or value < 1:
            raise ConfigError(f"encoders.{enc}.bert_config.{key}={value!r} must be a positive integer")
    return sizes


def _check_bert_encoder(enc: str, spec: dict) -> None:
    pooling = spec.get("pooling")
    if pooling not in BERT_POOLING:
        raise ConfigError(f"encoders.{enc}.pooling={pooling!r} must be one of {', '.join(BERT_POOLING)}")
    heads = spec.get("pool_heads", 1)
    if _int(heads) is None or heads < 1:
        raise ConfigError(f"encoders.{enc}.pool_heads={heads!r} must be a positive integer")
    if spec.get("cache_frozen") and not spec.get("freeze") and not _int(spec.get("freeze_layers")):
        raise ConfigError(f"encoders.{enc}.cache_frozen=true needs a frozen bottom to cache: set "
                          f"encoders.{enc}.freeze_layers > 0 or encoders.{enc}.freeze=true")
    sizes = _bert_scratch_sizes(enc, spec)
    # transformers' BertSelfAttention: hidden_size splits evenly into the attention heads.
    if sizes is not None and not _divides(int(sizes["num_attention_heads"]), int(sizes["hidden_size"])):
        raise ConfigError(f"encoders.{enc}.bert_config.num_attention_heads={sizes['num_attention_heads']} must "
                          f"divide encoders.{enc}.bert_config.hidden_size={sizes['hidden_size']}")


def _check_text_field(name: str, spec: dict, enc: str, enc_spec: dict) -> None:
    sizes = _bert_scratch_sizes(enc, enc_spec)
    # BERT's position embeddings: a token sequence longer than max_position_embeddings fails.
    n = _int(spec.get("max_length"))
    if sizes is not None and n is not None and n > int(sizes["max_position_embeddings"]):
        raise ConfigError(f"fields.{name}.max_length={n} exceeds encoders.{enc}.bert_config."
                          f"max_position_embeddings={sizes['max_position_embeddings']}; lower "
                          f"fields.{name}.max_length or raise that")


def _check_fusion(field_names: list[str], fusion: dict, d: int, D: int) -> None:
    """encoders/fusion.py: the fusion layers and their `mlp` head."""
    kind = fusion.get("type")
    fusions = list(FUSIONS) + sorted(_registered("encoders.registry", "FUSIONS") - set(FUSIONS))
    if kind not in fusions:
        raise ConfigError(f"model.fusion.type={kind!r} is not a fusion (known: {', '.join(fusions)})")
    layers = fusion.get("fc_layers")
    if layers not in (0, 1, 2) or isinstance(layers, bool):
        raise ConfigError(f"model.fusion.fc_layers={layers!r} must be 0, 1 or 2")
    late = list(field_names)
    if kind == "mixture":
        early = list(fusion.get("early_fields") or [])
        unknown = [f for f in early if f not in field_names]
        if not early or unknown:
            raise ConfigError(f"model.fusion.early_fields={early}: name at least one of the fields "
                              f"{field_names}" + (f" (not fields: {unknown})" if unknown else ""))
        late = [f for f in field_names if f not in early]
    if kind in ("early", "mixture"):
        # FusionTransformer: the fused tokens have width token_dim, split into `heads`.
        heads = fusion.get("heads") or 4
        if not _divides(int(heads), d):
            raise ConfigError(f"model.fusion.heads={heads} must divide model.token_dim={d} "
                              f"(attention heads split the width)")
        if fusion.get("aggregate", "cls") not in ("cls", "mean"):
            raise ConfigError(f"model.fusion.aggregate={fusion.get('aggregate')!r} must be 'cls' or 'mean'")
    if layers == 0 and field_names:
        # fusion.mlp: with no FC layer the fused vector is the item vector.
        if kind == "early":
            width, how = d, f"model.token_dim={d}"
        elif kind == "mixture":
            width = (1 + len(late)) * d
            how = f"(1 early vector + {len(late)} late) x model.token_dim={d} = {width}"
        else:
            width = len(field_names) * d
            how = f"{len(field_names)} fields x model.token_dim={d} = {width}"
        if width != D:
            raise ConfigError(f"model.fusion.fc_layers=0 needs model.dim equal to the fused width of "
                              f"{kind} fusion, {how}, but model.dim={D}; set model.dim={width} or "
                              f"model.fusion.fc_layers=1")


# ------------------------------------------------------------------------------ other heads
def _check_clcrec(cfg: dict) -> None:
    """mmrec/models/clcrec.py: CLCRecModel's settings."""
    c = cfg["clcrec"]
    for key, allowed in (("encoder", ("mf", "gcn")), ("reg", ("official", "l2")),
                         ("hybrid_sampling", ("bernoulli", "official"))):
        if c.get(key) not in allowed:
            raise ConfigError(f"clcrec.{key}={c.get(key)!r} must be one of {', '.join(allowed)}")
    for key in ("lam", "rho"):
        v = c.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise ConfigError(f"clcrec.{key}={v!r} must be in [0, 1]")


def _check_sequential(cfg: dict) -> None:
    """mmrec/models/sasrec.py, cmclrec.py and mmrec/data/sequences.py."""
    head, s = cfg["head"], cfg["sasrec"]
    # nn.TransformerEncoderLayer (SASRec, and CMCLRec's sequence encoder): heads split `hidden`.
    hidden, heads = _int(s.get("hidden")), _int(s.get("heads"))
    if hidden is None or heads is None or hidden < 1 or not _divides(heads, hidden):
        raise ConfigError(f"sasrec.heads={s.get('heads')!r} must divide sasrec.hidden={s.get('hidden')!r}")
    # trainer.make_sampler: the sequence windows have no item to group pairs by.
    k = cfg["train"].get("pairs_per_item")
    if k != 1:
        raise ConfigError(f"train.pairs_per_item={k}: head '{head}' trains on user sequences, which have no "
                          f"per-pair item to group by; use 1")
    names = list(cfg["user_split"].get("features") or [])
    unknown = [n for n in names if n not in USER_FEATURES]
    if unknown:
        raise ConfigError(f"user_split.features: unknown feature(s) {unknown} (known: {', '.join(USER_FEATURES)})")


def _check_feature_field(name: str, spec: dict) -> None:
    """mmrec/features.py: the sources of a `features` field."""
    source = spec.get("source")
    if source not in FEATURE_SOURCES:
        raise ConfigError(f"fields.{name}.source={source!r} must be one of {', '.join(FEATURE_SOURCES)}")
    if source == "frozen_text" and spec.get("pooling") not in ("mean", "cls"):
        raise ConfigError(f"fields.{name}.pooling={spec.get('pooling')!r} must be 'mean' or 'cls'")


# ------------------------------------------------------------------------------ training needs
def _check_complete(cfg: dict) -> None:
    head, fields, encoders = cfg["head"], cfg.get("fields") or {}, cfg.get("encoders") or {}
    known = ", ".join(encoders) or "none"
    if head == "mmrec":
        # encoders/item_encoder.py: every field through an encoder, then the fusion.
        if not fields:
            raise ConfigError("head mmrec needs at least one content field (`fields` is empty)")
        for name, spec in fields.items():
            if spec.get("modality") == "features":
                raise ConfigError(f"fields.{name}: modality 'features' (precomputed vectors) is read by "
                                  f"head clcrec; head mmrec encodes text, video and image fields")
            if spec.get("encoder") not in encoders:
                raise ConfigError(f"fields.{name}.encoder={spec.get('encoder')} names no entry of `encoders` "
                                  f"(encoders: {known})")
    elif head == "clcrec":
        # clcrec.feature_fields: the model reads only `features` fields ...
        if not any(spec.get("modality") == "features" for spec in fields.values()):
            raise ConfigError("head clcrec needs a field of modality 'features' in `fields` "
                              "(e.g. fields.text_feat: {modality: features, source: frozen_text})")
        # ... but every field's content is built, and text is tokenised with its encoder's vocabulary.
        for name, spec in fields.items():
            if spec.get("modality") == "text" and spec.get("encoder") not in encoders:
                raise ConfigError(f"fields.{name}.encoder={spec.get('encoder')} names no entry of `encoders` "
                                  f"(encoders: {known}); its tokenizer comes from there")
    elif head == "cmclrec":
        # CMCLRecModel: a cold user's sequence is decoded from its features.
        if not cfg["user_split"].get("features"):
            raise ConfigError("head cmclrec needs user features: user_split.features is empty")
