"""A fairseq wav2vec 2.0 / XLS-R pre-training checkpoint (e.g. xlsr2_300m.pt) as a transformers folder.

The output (config.json + model.safetensors + conversion.json) loads with `Wav2Vec2Model.from_pretrained`,
so the `ssl` backbone takes it as `pretrained: DIR`.

Reading the file. A fairseq checkpoint is a Python pickle. It is read only when the caller passes
`trust_checkpoint=True` (the CLI's --trust-checkpoint), and then only with torch's weights_only loader: no
code named by the file runs. Beyond the tensors and plain containers that loader accepts, the allow-list is:
* `argparse.Namespace`: the model config of legacy checkpoints (`args`), a bag of attributes;
* numpy scalars and dtypes: numbers in the training metadata (meters, best scores) of some checkpoints;
* inert stand-ins, never the real classes, for the names of fairseq's configuration objects: omegaconf's
  DictConfig/ListConfig/nodes/metadata and anything under `fairseq.` (enum members of its choice fields,
  task state), plus, in a file that holds omegaconf objects, the `typing.*` names, builtin type names and
  `collections.defaultdict` that omegaconf's metadata refers to. A stand-in only records what the pickle
  hands it; the config is then read from the recorded `_content`/`_val` fields. So older checkpoints whose
  `cfg` is an omegaconf DictConfig convert without omegaconf installed and without unpickling it for real.
Any other global (a function, a class of another library) is refused with a CheckpointError naming it.

Mapping. Every source key is mapped to one key of transformers' Wav2Vec2Model, or dropped for a stated
reason (the quantizer and the projections that serve only the pre-training loss); an unknown key, a key
of the model left unfilled, or a shape mismatch is an error naming the key. `conversion.json` lists them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metadg.config import ConfigError
from metadg.engine.checkpoint import CheckpointError

# ---------------------------------------------------------------------------------------------- keys

#: fairseq Wav2Vec2Model key → transformers Wav2Vec2Model key (full-match regex, replacement)
KEY_RULES: list[tuple[str, str]] = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    # extractor_mode layer_norm: Sequential(conv, dropout, Sequential(TransposeLast, LayerNorm, TransposeLast), GELU)
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    # extractor_mode default: the first layer's GroupNorm sits at index 2
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", "masked_spec_embed"),
    # weight-normed positional conv: g and v become torch's parametrization originals 0 and 1
    (r"encoder\.pos_conv\.0\.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.pos_conv\.0\.parametrizations\.weight\.original([01])",  # a model saved under torch's newer API
     r"encoder.pos_conv_embed.conv.parametrizations.weight.original\1"),
    (r"encoder\.pos_conv\.0\.bias", "encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(k|v|q|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]
#: source keys deliberately left out (regex prefix, reason)
DROPPED: list[tuple[str, str]] = [
    (r"quantizer\.", "codebook quantizer of the pre-training targets; Wav2Vec2Model has none"),
    (r"project_q\.", "projection of the quantized targets, used only by the contrastive pre-training loss"),
    (r"final_proj\.", "projection of the context vectors, used only by the contrastive pre-training loss"),
    (r"target_glu\.", "gating of the pre-training targets, used only by the contrastive loss"),
]


def hf_key(key: str) -> str | None:
    """The transformers Wav2Vec2Model key of fairseq key `key`, None if no rule maps it."""
    for pattern, replacement in KEY_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def dropped_reason(key: str) -> str | None:
    """Why fairseq key `key` is deliberately not converted (None: it is not one of those)."""
    return next((reason for pattern, reason in DROPPED if re.match(pattern, key)), None)


def map_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], where: str,
                   prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """fairseq tensors → the keys of `target` (a Wav2Vec2Model state dict); with the record of what went where.

    Unknown source keys, target keys left unfilled and shape mismatches raise a CheckpointError naming them;
    `prefix` is what the source keys were found under in their file (for the messages and the record).
    """
    mapped: dict[str, torch.Tensor] = {}
    record: dict[str, Any] = {"mapped": {}, "dropped": {}, "synthesised": {}}
    unknown = []
    for key, tensor in source.items():
        reason, new = dropped_reason(key), hf_key(key)
        if new == "masked_spec_embed" and new not in target:
            reason = "mask embedding; this config has time and feature masking off, so the model has no place for it"
        if reason is not None:
            record["dropped"][prefix + key] = reason
        elif new is None:
            unknown.append(prefix + key)
        elif new in mapped:
            raise CheckpointError(f"{where}: {prefix}{key} and another key both map to {new}")
        else:
            mapped[new] = tensor
            record["mapped"][prefix + key] = new
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} key(s) are not wav2vec 2.0's, e.g. {sorted(unknown)[:3]} "
                              "(is it a fine-tuned, HuBERT or data2vec checkpoint? only wav2vec 2.0 pre-training "
                              "checkpoints convert)")
    _identity_projection(mapped, target, record)
    missing, extra = sorted(set(target) - set(mapped)), sorted(set(mapped) - set(target))
    if missing or extra:
        raise CheckpointError(f"{where}: does not fit the wav2vec 2.0 its config describes: {len(missing)} tensor(s) "
                              f"of the model have no source, e.g. {missing[:3]}; {len(extra)} mapped key(s) have no "
                              f"place in the model, e.g. {extra[:3]}")
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise CheckpointError(f"{where}: {key}: shape {tuple(tensor.shape)}, "
                                  f"the model has {tuple(target[key].shape)}")
    return mapped, record


def _identity_projection(mapped: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                         record: dict[str, Any]) -> None:
    # fairseq has no post_extract_proj when the conv output width equals the encoder width; transformers
    # always has the projection, so the identity stands in for it (exactly fairseq's computation).
    weight, bias = "feature_projection.projection.weight", "feature_projection.projection.bias"
    w = target.get(weight)
    if weight in mapped or w is None or w.ndim != 2 or w.shape[0] != w.shape[1]:
        return
    mapped[weight], mapped[bias] = torch.eye(w.shape[0]), torch.zeros(w.shape[0])
    for key in (weight, bias):
        record["synthesised"][key] = "identity: fairseq feeds the conv features to the encoder unprojected"


# -------------------------------------------------------------------------------------------- config

#: fairseq's Wav2Vec2Config defaults, for keys an older checkpoint's config does not spell out
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "dropout_features": 0.0, "final_dim": 0, "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2", "conv_bias": False,
    "quantize_input": False, "latent_vars": 320, "latent_groups": 2, "latent_dim": 0, "mask_length": 10,
    "conv_pos": 128, "conv_pos_groups": 16, "pos_conv_depth": 1,
}
#: fairseq activation_fn → transformers hidden_act (fairseq's gelu_fast/gelu_accurate is the tanh form)
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "tanh": "tanh", "linear": "linear", "swish": "swish",
               "gelu_fast": "gelu_new", "gelu_accurate": "gelu_new"}
MAX_CONV_LAYERS = 64


def parse_conv_layers(spec: str, where: str = "conv_feature_layers") -> list[tuple[int, int, int]]:
    """fairseq's conv spec, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", read as data (never evaluated)."""
    if not isinstance(spec, str) or len(spec) > 2000:
        raise CheckpointError(f"{where}: expected a short string like \"[(512, 10, 5)] + [(512, 3, 2)] * 4\"")
    try:
        tree = ast.parse(spec, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CheckpointError(f"{where}: {spec!r} is not a list expression") from None

    def layers(node: ast.expr) -> list[tuple[int, int, int]]:
        if isinstance(node, ast.List):
            return [layer(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return layers(node.left) + layers(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            items, count = (node.left, node.right) if isinstance(node.left, ast.List) else (node.right, node.left)
            n = count.value if isinstance(count, ast.Constant) else None
            if type(n) is int and 0 <= n <= MAX_CONV_LAYERS:
                return layers(items) * n
        raise CheckpointError(f"{where}: {spec!r}: only lists of (dim, kernel, stride), '+' and '* N' are read")

    def layer(node: ast.expr) -> tuple[int, int, int]:
        ok = isinstance(node, ast.Tuple) and len(node.elts) == 3 and all(
            isinstance(e, ast.Constant) and type(e.value) is int and e.value > 0 for e in node.elts)
        if not ok:
            raise CheckpointError(f"{where}: {spec!r}: each layer must be a (dim, kernel, stride) of positive ints")
        return tuple(e.value for e in node.elts)  # type: ignore[return-value]

    out = layers(tree)
    if not 1 <= len(out) <= MAX_CONV_LAYERS:
        raise CheckpointError(f"{where}: {spec!r}: expected 1..{MAX_CONV_LAYERS} conv layers, got {len(out)}")
    return out


def hf_config(model_cfg: Mapping[str, Any], where: str, *, has_mask_emb: bool = True) -> tuple[Any, list[str]]:
    """fairseq model config → (transformers Wav2Vec2Config, the keys taken from fairseq's defaults)."""
    from transformers import Wav2Vec2Config

    defaulted = sorted(k for k in FAIRSEQ_DEFAULTS if model_cfg.get(k) is None)
    cfg = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None}}

    def get(key: str, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
        value = cfg[key]
        good = type(value) is kind or (kind is float and type(value) is int)
        if not good or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise CheckpointError(f"{where}: model config {key}: {value!r} is not a valid {kind.__name__}")
        return value

    name = cfg.get("_name", cfg.get("arch", "wav2vec2"))
    if not str(name).startswith("wav2vec2"):
        raise CheckpointError(f"{where}: a {name!r} checkpoint; only wav2vec 2.0 / XLS-R pre-training ones convert")
    for key, want in (("layer_type", "transformer"), ("pos_conv_depth", 1), ("quantize_input", False)):
        if cfg[key] != want:
            raise CheckpointError(f"{where}: model config {key}={cfg[key]!r}; Wav2Vec2Model supports only {want!r}")
    mode = get("extractor_mode", str)
    if mode not in ("default", "layer_norm"):
        raise CheckpointError(f"{where}: model config extractor_mode {mode!r}: expected 'default' or 'layer_norm'")
    act = get("activation_fn", str)
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}: model config activation_fn {act!r}: supported {sorted(ACTIVATIONS)}")
    conv = parse_conv_layers(get("conv_feature_layers", str), f"{where}: model config conv_feature_layers")
    final_dim = get("final_dim", int, 0) or get("encoder_embed_dim", int, 1)
    config = Wav2Vec2Config(
        hidden_size=get("encoder_embed_dim", int, 1), num_hidden_layers=get("encoder_layers", int, 1),
        num_attention_heads=get("encoder_attention_heads", int, 1),
        intermediate_size=get("encoder_ffn_embed_dim", int, 1), hidden_act=ACTIVATIONS[act],
        hidden_dropout=get("dropout", float, 0, 1), attention_dropout=get("attention_dropout", float, 0, 1),
        activation_dropout=get("activation_dropout", float, 0, 1),
        feat_proj_dropout=get("dropout_input", float, 0, 1), layerdrop=get("encoder_layerdrop", float, 0, 1),
        feat_extract_norm="group" if mode == "default" else "layer", feat_extract_activation="gelu",
        conv_dim=[c[0] for c in conv], conv_kernel=[c[1] for c in conv], conv_stride=[c[2] for c in conv],
        conv_bias=get("conv_bias", bool), num_conv_pos_embeddings=get("conv_pos", int, 1),
        num_conv_pos_embedding_groups=get("conv_pos_groups", int, 1),
        do_stable_layer_norm=get("layer_norm_first", bool),
        # Quantizer shape, for the record (Wav2Vec2ForPreTraining would use it; Wav2Vec2Model does not).
        num_codevectors_per_group=get("latent_vars", int, 1), num_codevector_groups=get("latent_groups", int, 1),
        codevector_dim=get("latent_dim", int, 0) or final_dim, proj_codevector_dim=final_dim,
        feat_quantizer_dropout=get("dropout_features", float, 0, 1),
        # fairseq's mask_prob (0.65) belongs to the pre-training objective; fine-tuning SpecAugment keeps
        # transformers' default, which also gives the mask embedding its place.
        mask_time_prob=0.05 if has_mask_emb else 0.0, mask_time_length=get("mask_length", int, 1),
        layer_norm_eps=1e-5,
    )
    return config, defaulted


# ------------------------------------------------------------------------------------------- loading

try:
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar
# numpy 2 writes the _core path, numpy 1 the core one; a dtype is built as its numeric class (no object dtype)
_NUMPY = [(np.dtype, "numpy.dtype"), (_np_scalar, "numpy._core.multiarray.scalar"),
          (_np_scalar, "numpy.core.multiarray.scalar"),
          *((type(np.dtype(c)), f"numpy.dtypes.{type(np.dtype(c)).__name__}") for c in "?bBhHiIlLqQefdgFDG")]
#: real classes whose unpickling is plain data
ALLOWED: list[tuple[Any, str]] = [(argparse.Namespace, "argparse.Namespace"), *_NUMPY]
_TYPE_NAMES = {f"builtins.{t}" for t in ("int", "float", "str", "bool", "bytes", "dict", "list", "tuple", "object",
                                         "NoneType", "type")} | {"collections.defaultdict"}


class Inert:
    """Stands in for a configuration class of the checkpoint: records what the pickle hands it, runs nothing."""

    _source = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        obj.__dict__["_args"], obj.__dict__["_state"] = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<{self._source} (not read)>"


def _stand_in(name: str, has_omegaconf: bool) -> bool:
    root = name.split(".", 1)[0]
    return root in ("omegaconf", "fairseq") or (has_omegaconf and (root == "typing" or name in _TYPE_NAMES))


def _globals_of(checkpoint: Path) -> list[str] | None:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint))
    except ValueError:  # the legacy (pre-zip) format: found one at a time by the loader instead
        return None


def _safe_load(checkpoint: Path) -> Any:
    """torch.load(weights_only=True) with ALLOWED and inert stand-ins; other globals are refused by name."""
    allowed = {name: obj for obj, name in ALLOWED}
    names, seen = _globals_of(checkpoint), []
    for _ in range(200):  # the legacy format reveals one unknown global per attempt
        todo = [n for n in names or [] if n not in allowed]
        has_omegaconf = any(n.startswith("omegaconf.") for n in [*todo, *allowed])
        refused = sorted(n for n in todo if not _stand_in(n, has_omegaconf))
        if refused:
            raise CheckpointError(
                f"{checkpoint}: refused: the pickle names {', '.join(refused[:5])}"
                f"{' ...' if len(refused) > 5 else ''}, which metadg does not load (it runs no code from a "
                "checkpoint; accepted beyond tensors and containers: argparse.Namespace, numpy scalars, and "
                "fairseq/omegaconf configuration objects read inertly)")
        for n in todo:
            allowed[n] = type(n.rsplit(".", 1)[-1], (Inert,), {"_source": n})
        try:
            with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
                return torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{checkpoint}: not found") from None
        except Exception as exc:
            message = str(exc)
            found = re.search(r"Unsupported global: GLOBAL (\S+) was not an allowed", message)
            if names is None and found:
                name = found.group(1)
                seen.append(name if "." in name else f"builtins.{name}")  # torch drops the builtins. prefix
                names = list(seen)
                continue
            why = re.search(r"(Unsupported global.*|Can only .*|Trying to .*)", message)
            first = why.group(1) if why else (message.splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{checkpoint}: not a checkpoint metadg can read safely "
                                  f"(weights_only load failed: {first.strip()[:300]})") from None
    raise CheckpointError(f"{checkpoint}: too many classes in the pickle")


def plain(value: Any) -> Any:
    """Recorded omegaconf containers and nodes, enum members and Namespaces → dicts, lists and values."""
    if isinstance(value, Inert):
        state = value._state
        if isinstance(state, dict) and "_content" in state:  # DictConfig / ListConfig
            return plain(state["_content"])
        if isinstance(state, dict) and "_val" in state:  # a value node
            return plain(state["_val"])
        if len(value._args) == 1 and state is None:  # an enum member, rebuilt from its value
            return plain(value._args[0])
        return value
    if isinstance(value, argparse.Namespace):
        return plain(vars(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def read_fairseq_checkpoint(checkpoint: str | Path, *,
                            trust_checkpoint: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, model config as plain data) of a fairseq checkpoint, read without running its code."""
    checkpoint = Path(checkpoint)
    if not trust_checkpoint:
        raise CheckpointError(
            f"{checkpoint}: a fairseq checkpoint is a Python pickle. metadg reads it only with torch's weights_only "
            "loader and a short allow-list (argparse.Namespace, numpy scalars, fairseq/omegaconf configuration read "
            "inertly), so no code in it runs; pass --trust-checkpoint to confirm that you want this file read")
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: not found")
    state = _safe_load(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{checkpoint}: not a fairseq checkpoint (expected a dict with a `model` state dict)")
    model = state["model"]
    bad = [k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{checkpoint}: model[{bad[0]!r}] is not a tensor")
    cfg = plain(state.get("cfg"))
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if model_cfg is None and state.get("args") is not None:
        model_cfg = plain(state["args"])
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{checkpoint}: no model config (neither cfg['model'] nor args); a fairseq training "
                              "checkpoint has one")
    opaque = sorted(k for k, v in model_cfg.items() if k in FAIRSEQ_DEFAULTS and isinstance(v, Inert))
    if opaque:
        raise CheckpointError(f"{checkpoint}: model config {opaque[0]} is a {model_cfg[opaque[0]]!r}, "
                              "which metadg cannot read")
    return model, model_cfg


# ------------------------------------------------------------------------------------------- writing

def write_hf_folder(model: Any, out_dir: Path, record: dict[str, Any]) -> None:
    """save_pretrained `model` into `out_dir` (config.json, model.safetensors) with `record` as conversion.json."""
    model.save_pretrained(str(out_dir))
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")


def convert_fairseq_wav2vec2(checkpoint: str | Path, out_dir: str | Path, *, trust_checkpoint: bool) -> Path:
    """Write a transformers Wav2Vec2Model folder (config.json, model.safetensors, conversion.json) from fairseq's."""
    from transformers import Wav2Vec2Model

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: already exists and is not empty; choose another folder")
    source, model_cfg = read_fairseq_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    config, defaulted = hf_config(model_cfg, str(checkpoint), has_mask_emb="mask_emb" in source)
    model = Wav2Vec2Model(config).eval()
    mapped, record = map_state_dict(source, model.state_dict(), str(checkpoint))
    dtypes = sorted({str(t.dtype) for t in mapped.values()})
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, strict=True)
    record = {"source": str(checkpoint.resolve()), "target": "transformers Wav2Vec2Model", "source_dtypes": dtypes,
              **record, "fairseq_defaults_used": defaulted, "config": config.to_dict()}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the destination and renamed into place: an interrupted conversion leaves no half folder.
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        write_hf_folder(model, tmp, record)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
