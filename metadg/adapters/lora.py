"""LoRA on the backbone's attention projections, through peft."""

from __future__ import annotations

import warnings
from pathlib import Path

from pydantic import Field
import torch
from torch import nn

from metadg.adapters.base import ALWAYS_TRAINED, Adapter
from metadg.config import ConfigError, StrictModel
from metadg.registry import ADAPTERS


class LoRAConfig(StrictModel):
    """Low-rank adapters W + (alpha/r)·B·A on the listed linear layers."""

    r: int = Field(16, ge=1, description="rank of every adapter")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        description="names of the linear layers that get adapters, in every selected layer",
    )
    layers: list[int] | None = Field(None, description="transformer layer indices to adapt; default: all")
    rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")
    per_head: bool = Field(
        False,
        description="every attention head gets its own rank-r factors (q/k/v split by output, out_proj by input)",
    )


@ADAPTERS.register("lora")
class LoRA(Adapter):
    """peft LoRA on attention (q/k/v/out) of every layer; the backbone stays frozen."""

    Config = LoRAConfig

    def apply(self, model: nn.Module) -> None:
        """Wrap the backbone's HF model with peft LoRA layers; adapters + head train."""
        from peft import LoraConfig, get_peft_model

        cfg: LoRAConfig = self.cfg
        hf = getattr(model.backbone, "model", None)
        if not isinstance(hf, nn.Module):  # e.g. aasist_raw: no transformer inside to adapt
            raise ConfigError(f"adapter: lora adapts the attention layers of a transformer backbone; "
                              f"{type(model.backbone).__name__} has none (use adapter: {{name: full}} or head_only)")
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

    @staticmethod
    def _check_adapters_run(model: nn.Module) -> None:
        # Some encoders (WavLM) read q/k/v weights straight into
        # F.multi_head_attention_forward, bypassing the module: peft's LoRA layer
        # would then never run and training would silently change nothing.
        from peft.tuners.lora import LoraLayer

        devices = {p.device for p in model.parameters()}
        if any(d.type == "meta" for d in devices):  # shape-only models (parameter counting) cannot run
            return
        device = next(iter(devices))
        wrapped = {n: m for n, m in model.backbone.model.named_modules() if isinstance(m, LoraLayer)}
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
            kind = type(model.backbone.model.get_base_model()).__name__
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

        if isinstance(model.backbone.model, PeftModel):
            model.backbone.model = model.backbone.model.merge_and_unload()

    def save_peft(self, model: nn.Module, directory: str | Path) -> None:
        """Write the adapters in peft's own format (adapter_config.json + safetensors)."""
        model.backbone.model.save_pretrained(str(directory))
