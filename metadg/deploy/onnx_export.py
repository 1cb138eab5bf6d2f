"""ONNX export of a trained classifier: (B, T) float32 16 kHz waveforms → (B, C) logits, LoRA merged in.

The graph is made by torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`) at ONNX opset 18 by
default: the opset that torch's ONNX function library (onnxscript torchlib) is written in, so no version
conversion pass runs, and one that ONNX Runtime (≥ 1.14), TensorRT (≥ 8.6) and OpenVINO all execute.
Batch and time are dynamic. What a consumer needs to use the graph (sample rate, class names, the score
and its calibration, the decision threshold, the run's config, the valid input lengths) travels in the
model's `metadata_props`, every value a string (JSON where it is not plain text).

Every export is checked: ONNX Runtime must reproduce the PyTorch model's logits within 1e-4 at several
lengths and batch sizes, or nothing is written. The check is what catches a graph that is only right at
the traced length: the exporter turns shape guards into runtime asserts that ONNX drops, so a length-
dependent Python integer (e.g. a top-k count) would otherwise be frozen at the example's value silently.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import metadg
from metadg.deploy.detector import Detector

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
#: opsets the exporter can target: torchlib is written at 18 and converts upwards; torch's ceiling is 23
OPSETS = range(18, 24)
SAMPLE_RATE = 16000
INPUT, OUTPUT = "waveform", "logits"
#: longest input the graph is declared for (10 min); ONNX Runtime itself takes longer ones
MAX_SAMPLES = 600 * SAMPLE_RATE
#: lengths every export is checked at (0.5 s, 1 s, 3.3 s), besides the shortest valid input
PARITY_LENGTHS = (8000, 16000, 52800)
PARITY_BATCHES = (1, 2)
PARITY_TOLERANCE = 1e-4


class OnnxExportError(RuntimeError):
    """A model that could not be exported to ONNX."""


class ParityError(OnnxExportError):
    """ONNX Runtime's logits differ from the PyTorch model's beyond the tolerance."""


class _Logits(nn.Module):
    """The classifier's forward with one tensor in and one out: what the ONNX graph computes."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) waveforms → (B, C) logits (no lengths: every row is scored as given)."""
        return self.classifier(waveform)


def export_onnx(run: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, device: str = "cpu") -> Path:
    """Export `run`'s trained model (run or checkpoint folder), LoRA merged, to `out` at ONNX `opset` (default 18)."""
    # The Detector loads the best checkpoint and merges LoRA in memory; nothing is written to the run folder.
    from metadg.deploy.model_card import model_card

    detector = Detector(run, device=device)
    card = model_card(run)
    path = export_model(detector.model, out, {**run_metadata(detector), "model_card": card}, opset)
    # The card travels in the graph's metadata and, for people, as a README beside it.
    readme = card_path(path)
    readme.write_text(card, encoding="utf-8")
    return path


def card_path(onnx_path: str | Path) -> Path:
    """Where the model card of an exported graph is written: detector.onnx → detector.README.md."""
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.README.md")


def run_metadata(detector: Detector) -> dict[str, Any]:
    """What a deployed graph states about the run it comes from: classes, calibration, decision rule, config."""
    meta, task = detector.meta, detector.task
    out: dict[str, Any] = {**detector.describe(), "config": meta.get("config")}
    if "step" in meta:
        out["trained_steps"] = meta["step"]
    # The threshold the task's own scoring decides at, where the task has one (the spoof task: the dev EER
    # threshold); asked of the task rather than read from a key, so the exporter knows no task.
    rule = getattr(task, "decision_rule", None)
    if callable(rule):
        on, threshold, _ = rule(meta)
        out["threshold"], out["threshold_on"] = float(threshold), on
    return out


def export_model(model: nn.Module, out: str | Path, metadata: Mapping[str, Any] | None = None,
                 opset: int = DEFAULT_OPSET, *, parity_lengths: Sequence[int] | None = PARITY_LENGTHS) -> Path:
    """Export an in-memory Classifier (adapters merged) to `out`; parity-checked at `parity_lengths` (None: not)."""
    if opset not in OPSETS:
        raise ValueError(f"opset {opset}: the ONNX exporter here targets opsets {OPSETS.start}–{OPSETS.stop - 1}")
    lora = next((n for n, _ in model.named_parameters() if ".lora_" in n), None)
    if lora is not None:
        raise ValueError(f"{model_name(model)} still carries LoRA factors ({lora}); merge them first "
                         "(adapter.merge(model)): the graph must hold plain merged weights")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        program, min_samples = _export(model, opset)
        props = _props(model, dict(metadata or {}), opset, min_samples)
        program.model.metadata_props.update(props)
        program.model.producer_name, program.model.producer_version = "metadg", metadg.__version__
        program.model.doc_string = (f"metadg {model_name(model)}: {INPUT} (batch, time) float32 at {SAMPLE_RATE} Hz "
                                    f"→ {OUTPUT} (batch, {props['num_classes']}); ONNX opset {opset}")
        # Written in a sibling folder and moved in only once the check passed: a failed export leaves no file
        # that looks like a good one. Same base name, so an external-data file (> 2 GB) keeps its reference.
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            program.save(str(tmp / out.name))
            if parity_lengths:
                lengths = sorted({min_samples, *(n for n in parity_lengths if n >= min_samples)})
                try:
                    check_parity(tmp / out.name, model, lengths, name=model_name(model))
                except ParityError as exc:
                    raise ParityError(f"{exc}; {out} was not written") from None
            for f in tmp.iterdir():
                f.replace(out.parent / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        model.train(was_training)
    log.info("exported %s to %s (opset %d, inputs of %d–%d samples)", model_name(model), out, opset, min_samples,
             MAX_SAMPLES)
    return out


def _export(model: nn.Module, opset: int) -> tuple[Any, int]:
    """The ONNXProgram of `model` with dynamic batch and time, and the shortest input length it is valid for."""
    shortest = min_input_samples(model)
    device = next(model.parameters()).device
    example = 0.1 * torch.randn(2, max(16000, 2 * shortest), generator=torch.Generator().manual_seed(0))
    # Batch 2 in the example: torch.export specialises a size-1 dimension to 1.
    dims = ({0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("time", min=shortest, max=MAX_SAMPLES)},)
    try:
        with _quiet():
            program = torch.onnx.export(_Logits(model).eval(), (example.to(device),), dynamo=True,
                                        dynamic_shapes=dims, input_names=[INPUT], output_names=[OUTPUT],
                                        opset_version=opset, verbose=False)
    except Exception as exc:  # the exporter raises many kinds; what the user needs is which model and why
        raise OnnxExportError(f"{model_name(model)} cannot be exported to ONNX (opset {opset}): "
                              f"{type(exc).__name__}: {_first_lines(exc)}") from exc
    return program, max(shortest, _traced_min_time(program, shortest))


def check_parity(onnx_path: str | Path, model: nn.Module, lengths: Sequence[int], *,
                 batches: Sequence[int] = PARITY_BATCHES, tolerance: float = PARITY_TOLERANCE,
                 name: str | None = None) -> float:
    """Max |Δlogit| of ONNX Runtime (CPU) vs `model` over `lengths` × `batches`; ParityError above `tolerance`.

    `name` says what is checked in the error (default: the ONNX file). A model that ranks tied values (e.g.
    AASIST's graph pooling when its sigmoid scores saturate at 1.0) can fail here by design: torch.topk and
    ONNX TopK break ties differently, so the two keep different nodes.
    """
    session = ort_session(onnx_path, threads=torch.get_num_threads())
    props = session.get_modelmeta().custom_metadata_map
    shortest = int(props.get("min_samples", 1))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in lengths:
        if n < shortest:
            raise ValueError(f"parity at {n} samples: {onnx_path} takes inputs of ≥ {shortest} samples")
        for b in batches:
            x = 0.1 * torch.randn(b, n, generator=generator)
            with torch.inference_mode():
                want = model(x.to(device)).float().cpu().numpy()
            got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
            if not diff <= tolerance:  # NaN fails too
                raise ParityError(f"{name or onnx_path}: ONNX Runtime and PyTorch differ at {n} samples "
                                  f"({n / SAMPLE_RATE:.3f} s), batch {b}: max |Δlogit| = {diff:.3g} > {tolerance:g} "
                                  f"(ONNX shape {got.shape}, PyTorch {want.shape})")
            worst = max(worst, diff)
    return worst


def ort_session(onnx_path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session over `onnx_path` with `threads` intra-op threads, warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers of optimised graphs
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def model_name(model: nn.Module) -> str:
    """The model in words: backbone (with its preset or pretrained source) + head."""
    backbone, head = getattr(model, "backbone", model), getattr(model, "head", None)
    cfg = getattr(backbone, "cfg", None)
    source = getattr(cfg, "preset", None) or getattr(cfg, "pretrained", None)
    name = type(backbone).__name__ + (f" ({source})" if source else "")
    return name + (f" + {type(head).__name__}" if head is not None else "")


def min_input_samples(model: nn.Module) -> int:
    """Shortest waveform the backbone takes: a conv feature encoder's receptive field, else its own `min_samples`."""
    backbone = getattr(model, "backbone", model)
    config = getattr(getattr(backbone, "model", None), "config", None)
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if kernels and strides:  # wav2vec 2.0 family: one frame needs the whole receptive field (400 samples)
        field, hop = kernels[0], strides[0]
        for k, s in zip(kernels[1:], strides[1:]):
            field, hop = field + (k - 1) * hop, hop * s
        return int(field)
    # From-scratch models pad shorter input themselves; from their `min_samples` on, no pad branch is traced.
    return int(getattr(backbone, "min_samples", 1))


def _props(model: nn.Module, metadata: dict[str, Any], opset: int, min_samples: int) -> dict[str, str]:
    """metadata_props: the caller's facts plus the graph's own contract, every value a string."""
    classes = metadata.get("class_names")
    n = int(getattr(model, "num_classes", 0) or len(classes or ()))
    props: dict[str, Any] = {
        **metadata,
        "metadg_version": metadg.__version__,
        "opset": opset,
        "sample_rate": SAMPLE_RATE,
        "num_classes": n,
        "input_name": INPUT,
        "input_shape": ["batch", "time"],
        "min_samples": min_samples,
        "max_samples": MAX_SAMPLES,
        "input_semantics": f"float32 mono waveforms at {SAMPLE_RATE} Hz as read from file (no normalisation), "
        f"(batch, time), time from min_samples to max_samples; each row is scored whole, zero padding included "
        "(metadg scores unequal lengths with a padding mask and long files in windows; this graph does neither)",
        "output_name": OUTPUT,
        "output_shape": ["batch", n],
        "output_semantics": "unnormalised class logits (batch, num_classes), columns in class_names order",
    }
    if n == 2:
        pos = f" '{classes[1]}'" if classes and len(classes) == 2 else ""
        props["score"] = f"logits[:, 1] - logits[:, 0]: the log-odds of class 1{pos}; higher = more{pos or ' class 1'}"
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in props.items()}


def _traced_min_time(program: Any, default: int) -> int:
    """Lower bound the exporter derived for the time dimension (its guards may raise the declared one)."""
    try:
        node = next(n for n in program.exported_program.graph.nodes if n.op == "placeholder" and n.name == INPUT)
        expr = node.meta["val"].shape[1].node.expr
        return int(program.exported_program.range_constraints[expr].lower)
    except (StopIteration, KeyError, AttributeError, TypeError, ValueError):  # static or unknown: as declared
        return default


_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch._guards",
                     "torch.fx.experimental.symbolic_shapes", "torch.fx.experimental.recording")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's prints (stdout and stderr), warnings and log lines go to this module's debug log."""
    out = io.StringIO()
    # e.g. "torchvision is not installed" (true, and of no concern to an audio model), and on a failure pages
    # of traced graph that the raised error sums up
    loggers = {lg: lg.level for lg in map(logging.getLogger, _EXPORTER_LOGGERS)}
    # stderr too: on a failure torch.export prints the traced graph there itself, not through a logger
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in loggers.items():
                lg.setLevel(level)
            for line in out.getvalue().splitlines():
                log.debug("exporter: %s", line)
            for w in caught:
                log.debug("exporter warning: %s", w.message)


def _first_lines(exc: BaseException, n: int = 6) -> str:
    """The head of an exporter error (they run to pages), from its own summary where it has one, colours removed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "## Exception summary" in text:  # torch.onnx's errors: advice first, the cause after this heading
        text = text.split("## Exception summary", 1)[1]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")
