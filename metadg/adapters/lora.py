"""LoRA through peft: on a transformer backbone's attention projections, or on the linear and
convolution layers of a from-scratch backbone (aasist_raw, rawnet2, lcnn).

A from-scratch backbone declares the layers LoRA adapts by default in `lora_targets` (module names
or dotted suffixes of them). Its adapters are injected in place, so the backbone keeps its class and
attributes; `merge()` folds them in and puts the plain layers (and their parameter names) back.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from pydantic import Field
import torch
from torch import nn

from metadg.adapters.base import ALWAYS_TRAINED, Adapter
from metadg.config import ConfigError, StrictModel
from metadg.registry import ADAPTERS

#: the default `targets`: a transformer's attention projections. On a from-scratch backbone this
#: default stands for the backbone's own `lora_targets`; it stays the default value so that resolved
#: configs (and with them benchmark cell ids and the check that a resumed run is the same) are unchanged.
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")

#: the layer types whose weight peft's LoRA adapts here
_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


class LoRAConfig(StrictModel):
    """Low-rank adapters W + (alpha/r)·B·A on the listed linear (from scratch: also convolution) layers."""

    r: int = Field(16, ge=1, description="rank of every adapter")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    targets: list[str] = Field(
        default_factory=lambda: list(ATTENTION),
        description="names of the layers that get adapters, in every selected layer; on a from-scratch backbone "
        "(aasist_raw, rawnet2, lcnn) a layer name or dotted suffix of one, and the default stands for that "
        "backbone's declared LoRA targets (its linear and convolution layers)",
    )
    layers: list[int] | None = Field(None, description="transformer layer indices to adapt; default: all")
    rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")
    per_head: bool = Field(
        False,
        description="every attention head gets its own rank-r factors (q/k/v split by output, out_proj by input)",
    )


def _is_transformer(backbone: nn.Module) -> bool:
    return isinstance(getattr(backbone, "model", None), nn.Module)


def _adaptable(module: nn.Module) -> bool:
    if not isinstance(module, _ADAPTABLE):
        return False
    # peft's conv LoRA builds A with the layer's kernel, stride and padding only: a grouped, dilated or
    # non-zero-padded convolution would get an update that is not a change of its own weight.
    return isinstance(module, nn.Linear) or (module.groups == 1 and set(module.dilation) == {1}
                                             and module.padding_mode == "zeros")


def _why_not(module: nn.Module, name: str, adaptable: list[str]) -> str:
    kind = type(module).__name__
    if isinstance(module, nn.RNNBase):
        return f"{kind}: peft has no LoRA for recurrent layers"
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
        return f"{kind}: a normalisation layer, not a weight matrix"
    if isinstance(module, _ADAPTABLE):
        return f"{kind}: grouped, dilated or non-zero-padded convolutions are not adapted"
    inside = [n for n in adaptable if n.startswith(f"{name}.")]
    if inside:
        return f"{kind}: a block, not one layer; name its layers (e.g. {inside[0]})"
    if not any(True for _ in module.parameters()):
        return f"{kind}: no trainable weight (a fixed or parameter-free layer)"
    return f"{kind}: peft's LoRA here takes nn.Linear, nn.Conv1d and nn.Conv2d layers"


def targetable(backbone: nn.Module) -> list[str]:
    """Short names a from-scratch backbone's LoRA targets can use: each adaptable layer's own name, or its full name."""
    out: dict[str, None] = {}
    for name, m in backbone.named_modules():
        if name and _adaptable(m):
            last = name.rsplit(".", 1)[-1]
            out[name if last.isdigit() else last] = None  # an index inside a Sequential says nothing alone
    return list(out)


def resolve_targets(backbone: nn.Module, requested: list[str] | None) -> list[str]:
    """Full names of the layers of a from-scratch `backbone` that `requested` names (None: its declared default)."""
    kind = type(backbone).__name__
    can = f"LoRA can target: {', '.join(targetable(backbone))} (a layer name or a dotted suffix of its full name)"
    if requested is None:
        declared = getattr(backbone, "lora_targets", None)
        if not declared:
            raise ConfigError(f"adapter.targets: {kind} has no transformer attention and declares no default LoRA "
                              f"targets (lora_targets); name its layers. {can}")
        requested = list(declared)
    modules = {n: m for n, m in backbone.named_modules() if n}
    adaptable = [n for n, m in modules.items() if _adaptable(m)]
    chosen: dict[str, None] = {}
    problems = []
    for target in requested:
        hits = [n for n in modules if n == target or n.endswith(f".{target}")]
        bad = [n for n in hits if n not in adaptable]
        if not hits:
            problems.append(f"{target!r} names no layer of {kind}")
        elif bad:
            problems.append(f"{target!r} names {bad[0]} ({_why_not(modules[bad[0]], bad[0], adaptable)})")
        chosen.update(dict.fromkeys(hits))
    if problems:
        raise ConfigError(f"adapter.targets: {'; '.join(problems)}. {can}")
    return list(chosen)


@ADAPTERS.register("lora")
class LoRA(Adapter):
    """peft LoRA on attention (q/k/v/out) of every layer, or on a from-scratch backbone's layers; the rest is frozen."""

    Config = LoRAConfig

    def apply(self, model: nn.Module) -> None:
        """Wrap the backbone's HF model in peft LoRA (from scratch: inject it in place); adapters + head train."""
        from peft import LoraConfig, get_peft_model

        cfg: LoRAConfig = self.cfg
        hf = getattr(model.backbone, "model", None)
        if not isinstance(hf, nn.Module):  # e.g. aasist_raw: no transformer inside, its own layers get adapters
            self._apply_from_scratch(model)
            return
        names = {n.rsplit(".", 1)[-1] for n, m in hf.named_modules() if isinstance(m, nn.Linear)}
        missing = [t for t in cfg.targets if t not in names]
        if missing:
            raise ValueError(f"adapter.targets: {missing} are not linear layers of this backbone (have: {sorted(names)})")
        rank, alpha, extra = cfg.r, cfg.alpha, {}
        if cfg.per_head:
            rank, alpha, extra = self._per_head(model.backbone.num_heads)
        peft_cfg = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.targets),
            layers_to_transform=cfg.layers,
            layers_pattern="layers" if cfg.layers is not None else None,
            use_rslora=cfg.rslora,
            bias="none",
            **extra,
        )
        with warnings.catch_warnings():
            # transformers 5 deprecates an attribute peft still probes; not ours to fix.
            warnings.filterwarnings("ignore", category=FutureWarning)
            model.backbone.model = get_peft_model(hf, peft_cfg)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(ALWAYS_TRAINED) or ".lora_" in name)
        self._check_adapters_run(model)

    def _apply_from_scratch(self, model: nn.Module) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg: LoRAConfig = self.cfg
        backbone = model.backbone
        for key, given in (("layers", cfg.layers is not None), ("per_head", cfg.per_head)):
            if given:
                raise ConfigError(f"adapter.{key}: only means something on a transformer backbone (its layer indices "
                                  f"and attention heads); {type(backbone).__name__} is a from-scratch model: choose "
                                  f"its layers with adapter.targets (can target: {', '.join(targetable(backbone))})")
        targets = resolve_targets(backbone, None if list(cfg.targets) == list(ATTENTION) else list(cfg.targets))
        # Full names, and a set closed under peft's suffix rule (a module whose name ends with a chosen one
        # matched the same target): peft wraps exactly these layers.
        peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              use_rslora=cfg.rslora, bias="none")
        inject_adapter_in_model(peft_cfg, backbone)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(ALWAYS_TRAINED) or ".lora_" in name)
        self._check_adapters_run(model, backbone)

    @staticmethod
    def _check_adapters_run(model: nn.Module, root: nn.Module | None = None) -> None:
        # Some encoders (WavLM) read q/k/v weights straight into
        # F.multi_head_attention_forward, bypassing the module: peft's LoRA layer
        # would then never run and training would silently change nothing.
        from peft.tuners.lora import LoraLayer

        devices = {p.device for p in model.parameters()}
        if any(d.type == "meta" for d in devices):  # shape-only models (parameter counting) cannot run
            return
        device = next(iter(devices))
        root = model.backbone.model if root is None else root
        wrapped = {n: m for n, m in root.named_modules() if isinstance(m, LoraLayer)}
        called: set[str] = set()
        hooks = [m.register_forward_hook(lambda mod, *_, n=n: called.add(n)) for n, m in wrapped.items()]
        was_training = model.training
        model.eval()  # layerdrop in training mode would skip layers at random
        try:
            with torch.no_grad():
                model.backbone(torch.zeros(1, 1600, device=device))
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        silent = sorted(n.rsplit(".", 1)[-1] for n in set(wrapped) - called)
        if silent:
            kind = type(root.get_base_model() if hasattr(root, "get_base_model") else root).__name__
            raise ValueError(
                f"adapter.targets: {sorted(set(silent))} of {kind} never run as modules (their weights are read "
                "directly), so LoRA on them would train nothing; choose other targets (e.g. feed-forward layers)"
            )

    def added_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The LoRA factors."""
        return {n: p for n, p in model.named_parameters() if ".lora_" in n}

    def _per_head(self, heads: int) -> tuple[int, float, dict]:
        # peft's block-diagonal LoRA with one block per head: with the rank
        # split into `heads` groups, a block-diagonal B on q/k/v ties rank group
        # h to the output slice of head h, and a block-diagonal A on out_proj
        # ties it to the input slice of head h. So head h owns a rank-r pair.
        from peft.tuners.lora.config import BdLoraConfig

        cfg: LoRAConfig = self.cfg
        split_output = [t for t in cfg.targets if t in ("q_proj", "k_proj", "v_proj")]
        split_input = [t for t in cfg.targets if t == "out_proj"]
        others = sorted(set(cfg.targets) - set(split_output) - set(split_input))
        if others:
            raise ValueError(f"adapter.per_head: only attention projections have heads; remove {others} from targets")
        # peft scales by alpha / total_rank (or / sqrt of it); rescale so each
        # head keeps the scale alpha / r that plain LoRA of rank r would have.
        alpha = cfg.alpha * (heads**0.5 if cfg.rslora else heads)
        bd = BdLoraConfig(target_modules_bd_a=split_input, target_modules_bd_b=split_output, nblocks=heads)
        return cfg.r * heads, alpha, {"use_bdlora": bd}

    def merge(self, model: nn.Module) -> None:
        """Fold B·A into the base weights and drop the peft wrappers."""
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        if _is_transformer(model.backbone):
            if isinstance(model.backbone.model, PeftModel):
                model.backbone.model = model.backbone.model.merge_and_unload()
            return
        backbone = model.backbone
        # What peft's merge_and_unload does, for a model without a PeftModel around it: merge each
        # wrapped layer and put its base layer back in its place (the factors live in plain children).
        for name, layer in [(n, m) for n, m in backbone.named_modules() if isinstance(m, BaseTunerLayer)]:
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent), child, layer.get_base_layer())
        if hasattr(backbone, "peft_config"):
            del backbone.peft_config

    def save_peft(self, model: nn.Module, directory: str | Path) -> None:
        """Write the adapters in peft's own format (adapter_config.json + safetensors)."""
        if _is_transformer(model.backbone):
            model.backbone.model.save_pretrained(str(directory))
            return
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        backbone = model.backbone
        config = getattr(backbone, "peft_config", {}).get("default")
        if config is None:
            raise ValueError(f"save_peft: {type(backbone).__name__} carries no LoRA adapters (not applied, or merged)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(config)
        config.inference_mode = True  # as PeftModel.save_pretrained writes it
        config.save_pretrained(str(directory))
        # PeftModel.from_pretrained(backbone, directory) expects the keys of a PeftModel around the backbone.
        state = get_peft_model_state_dict(backbone)
        save_file({f"base_model.model.{k}": v.detach().contiguous() for k, v in state.items()},
                  str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
