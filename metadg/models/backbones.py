"""Self-supervised speech encoders from HF transformers as feature extractors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from metadg.config import ConfigError, StrictModel
from metadg.models.hub import resolve_pretrained
from metadg.registry import MODELS

# Shapes buildable without weights. `tiny` is what tests and the quickstart train
# on CPU; `xlsr_300m` is wav2vec 2.0 XLS-R 300M (24 layers, 1024 hidden, 16 heads).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model_type": "wav2vec2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "conv_dim": [32] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "mask_time_prob": 0.0,
    },
    "xlsr_300m": {
        "model_type": "wav2vec2",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "conv_bias": True,
        "feat_proj_dropout": 0.1,
        "hidden_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "layerdrop": 0.1,
        "mask_time_prob": 0.075,
    },
}


class SSLConfig(StrictModel):
    """Where the encoder comes from and which layer(s) feed the head."""

    pretrained: str | None = Field(
        None, description="a local Hugging Face checkpoint folder, or a Hub id (facebook/wav2vec2-xls-r-300m) resolved "
        "through the Hugging Face cache (HF_HUB_CACHE / HF_HOME), downloaded when online"
    )
    revision: str | None = Field(None, description="with a Hub id: the branch, tag or commit (default: main)")
    preset: str | None = Field(
        None,
        description=f"named shape ({', '.join(PRESETS)}): random init, or beside pretrained the expected shape "
        "(checked on load; lets `metadg params` count without the checkpoint)",
    )
    config: dict[str, Any] | None = Field(
        None, description="transformers config fields for random init (model_type defaults to wav2vec2)"
    )
    layer: Literal["last", "weighted"] | int = Field(
        "last", description="'last' hidden state, a learned 'weighted' sum of all layers, or a layer index"
    )
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="attention kernel; 'auto' = sdpa where the model has it (WavLM has not); second-order MLDG needs 'eager'"
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute each transformer (and trainable conv) layer's activations in the backward pass "
        "instead of keeping them: trades activation memory for step time (about one extra forward per step, more "
        "with second-order MLDG); "
        "training mode only, scoring is unaffected",
    )

    @model_validator(mode="after")
    def _one_source(self) -> SSLConfig:
        given = [k for k in ("pretrained", "preset", "config") if getattr(self, k) is not None]
        if len(given) > 1 and given not in (["preset", "config"], ["pretrained", "preset"]):
            raise ValueError(f"give one of pretrained / preset / config (got {', '.join(given)})")
        if not given:
            raise ValueError("give pretrained: <local dir or Hub id>, preset: <name> or config: {...}")
        if self.revision is not None and self.pretrained is None:
            raise ValueError("revision applies to pretrained: <Hub id>; give pretrained")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (valid: {', '.join(PRESETS)})")
        return self


def _check_shape(hf: object, preset: dict[str, Any], path: Path, name: str) -> None:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    wrong = {k: (getattr(hf, k, None), preset[k]) for k in keys if k in preset and getattr(hf, k, None) != preset[k]}
    if wrong:
        detail = ", ".join(f"{k} {got} != {want}" for k, (got, want) in wrong.items())
        raise ValueError(f"model.backbone: checkpoint {path} does not have the {name} shape ({detail})")


@MODELS.register("ssl")
class SSLBackbone(nn.Module):
    """HF transformers audio encoder (wav2vec 2.0, XLS-R, HuBERT, WavLM, data2vec-audio)."""

    Config = SSLConfig

    def __init__(self, cfg: SSLConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        want_all = cfg.layer != "last"
        attn = None if cfg.attn_implementation == "auto" else cfg.attn_implementation
        on_meta = torch.empty(0).device.type == "meta"
        path = Path(cfg.pretrained).expanduser() if cfg.pretrained is not None else None
        if path is not None and not (on_meta and cfg.preset and not (path / "config.json").is_file()):
            # On the meta device (shapes only) a Hub id needs its config alone.
            path = resolve_pretrained(cfg.pretrained, cfg.revision, config_only=on_meta)
            if on_meta:
                # Shapes only (e.g. `metadg params`): from_pretrained refuses the meta device.
                hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
                self.model = AutoModel.from_config(hf_cfg, attn_implementation=attn)
            else:
                with _quiet_loading():  # a local load takes milliseconds; its bar only clutters the run's output
                    self.model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation=attn)
        else:
            fields = dict(PRESETS[cfg.preset]) if cfg.preset else {}
            fields.update(cfg.config or {})
            model_type = fields.pop("model_type", "wav2vec2")
            hf_cfg = AutoConfig.for_model(model_type, **fields)
            self.model = AutoModel.from_config(hf_cfg, attn_implementation=attn)
        hf = self.model.config
        if path is not None and cfg.preset:
            _check_shape(hf, PRESETS[cfg.preset], path, cfg.preset)
        self.out_dim: int = int(hf.hidden_size)
        self.num_layers: int = int(hf.num_hidden_layers)
        self.num_heads: int = int(hf.num_attention_heads)
        self._want_all = want_all
        if isinstance(cfg.layer, int) and not -self.num_layers - 1 <= cfg.layer <= self.num_layers:
            raise ValueError(f"model.backbone.layer: {cfg.layer} out of range for {self.num_layers} layers")
        # Hidden states = embeddings + one per layer.
        self.layer_weights = nn.Parameter(torch.zeros(self.num_layers + 1)) if cfg.layer == "weighted" else None
        if cfg.gradient_checkpointing:
            _enable_checkpointing(self.model)

    def frame_mask(self, lengths: torch.Tensor | None, n_frames: int) -> torch.Tensor | None:
        """Boolean (B, F) mask of valid frames for waveforms of `lengths` samples."""
        if lengths is None:
            return None
        frames = self.model._get_feat_extract_output_lengths(lengths)
        return torch.arange(n_frames, device=lengths.device)[None, :] < frames[:, None]

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) waveforms → (B, F, H) features and a (B, F) valid-frame mask (None if unpadded)."""
        self._sync_frozen_encoder()
        attention_mask = None
        if lengths is not None:
            attention_mask = (torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]).long()
        out = self.model(wave, attention_mask=attention_mask, output_hidden_states=self._want_all)
        if self.cfg.layer == "last":
            feats = out.last_hidden_state
        elif self.cfg.layer == "weighted":
            stacked = torch.stack(out.hidden_states, dim=0)
            weights = torch.softmax(self.layer_weights, dim=0).to(stacked.dtype)
            feats = (weights[:, None, None, None] * stacked).sum(0)
        else:
            feats = out.hidden_states[self.cfg.layer]
        return feats, self.frame_mask(lengths, feats.shape[1])

    def _sync_frozen_encoder(self) -> None:
        # transformers' wav2vec2-family encoders mark their conv output as
        # requiring grad in training mode unless told otherwise, so autograd
        # would run the whole frozen conv stack backward when only LoRA or the
        # head trains (3x the step time of a small model on CPU).
        hf = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        encoder = getattr(hf, "feature_extractor", None)
        if encoder is not None and hasattr(encoder, "_requires_grad"):
            encoder._requires_grad = any(p.requires_grad for p in encoder.parameters())

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped transformers model (a PeftModel once LoRA is applied)."""
        return self.model


def _enable_checkpointing(hf: nn.Module) -> None:
    """Turn on transformers' activation checkpointing, replayed at the weights each layer ran with."""
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.backbone.gradient_checkpointing: {type(hf).__name__} does not support gradient checkpointing "
            "in transformers; set it to false"
        )
    # Non-reentrant: works when no input of a layer requires grad (LoRA on a
    # frozen encoder), under torch.autograd.grad and create_graph (MLDG), and it
    # replays autocast and the RNG state, so dropout draws the same masks.
    # The layerdrop draws happen in the encoder's loop, outside any checkpoint.
    kwargs = {"use_reentrant": False}
    enable = getattr(hf, "activation_checkpointing_enable", None)  # transformers >= 5 (the old name warns)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # transformers flags every module that has a `gradient_checkpointing`
    # attribute, the conv feature encoder's layers included. Kept: when the conv
    # stack trains (full fine-tuning) it holds more than half of the activation
    # memory at XLS-R shape (~1.0 of 1.8 GiB for 16 × 1 s, growing with the
    # audio length) for about a seventh of a forward's FLOPs to recompute; when
    # it is frozen (LoRA, head_only, freeze_feature_encoder) no graph is
    # recorded there, so it is neither recomputed nor costs anything.
    for module in hf.modules():
        if getattr(module, "gradient_checkpointing", False):
            module._gradient_checkpointing_func = partial(_checkpoint_at_call_weights, module)
    # peft (wrapping a checkpointing model) asks for the token embeddings' output
    # to require grad, which only reentrant checkpoints need; an audio encoder has
    # no token embeddings, and transformers would warn that gradients cannot flow.
    hf.enable_input_require_grads = _no_input_require_grads


def _no_input_require_grads() -> None:
    """Nothing to do: non-reentrant checkpoints need no input that requires grad."""


class _Replay(nn.Module):
    """Runs `function` as the forward of a module that owns `layer`, so functional_call can swap its tensors."""

    def __init__(self, layer: nn.Module, function: Callable[..., Any]) -> None:
        super().__init__()
        self.layer = layer
        self.function = function

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function."""
        return self.function(*args, **kwargs)


def _checkpoint_at_call_weights(layer: nn.Module, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """torch's non-reentrant checkpoint of `function` (a forward of `layer`), recomputed at the tensors it ran with."""
    # Under torch.func.functional_call (MLDG's virtual step θ' = θ − α∇F) the
    # layer holds θ' only while the forward runs; the recompute happens in the
    # backward pass, after functional_call has put θ back, and would silently
    # differentiate at θ. So the tensors of this call are pinned and swapped in
    # again for the recompute (a no-op swap when they are the module's own).
    held = dict(_tensors(layer))

    def replay(*a: Any, **k: Any) -> Any:
        if all(held.get(n) is t for n, t in _tensors(layer)):  # the forward itself, or no functional_call
            return function(*a, **k)
        return functional_call(_Replay(layer, function), {f"layer.{n}": t for n, t in held.items()}, a, k)

    return checkpoint(replay, *args, use_reentrant=False, **kwargs)


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter and buffer `module` holds now."""
    yield from module.named_parameters()
    yield from module.named_buffers()


@contextmanager
def _quiet_loading() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
