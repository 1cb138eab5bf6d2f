"""Report sections 7 and 8: from-scratch detectors, RawBoost on the device and checkpointing; deployment costs.

Called by report.py (`--sections detectors deployment`); each script also runs alone.
"""

from __future__ import annotations

from typing import Any

import checkpointing
import detectors
import merged_scoring
import onnx_runtime
import rawboost
import serving


def detectors_section(rep: Any, quick: bool, threads: int) -> None:
    """7. Step time and memory of the from-scratch detectors, framework cost, batched RawBoost, checkpointing."""
    args = detectors.parse_args(["--threads", str(threads), *(["--quick"] if quick else [])])
    res = detectors.measure(args)
    rep.data["detectors"] = res
    rep.add("## 7. From-scratch detectors, RawBoost on the device, gradient checkpointing", "",
            "### Step time and peak step memory", "",
            "One Trainer step (ERM + AdamW, full fine-tuning) of each detector on the same random crops, round-robin "
            "(order rotated); peak step memory (AdamW state included) in fresh forkserver children. The SSL rows are "
            "the tiny and small wav2vec2 encoders with the linear head.", "", *detectors.table(res), "")
    rep.target("metadg AASIST-L step ÷ the published model's (same weights and batch)", res["framework"]["ratio"], "≤",
               detectors.FRAMEWORK_TARGET, 3)
    rb_args = rawboost.parse_args(["--threads", str(threads), *(["--rounds", "2", "--batches", "24"] if quick else [])])
    rb = rawboost.measure(rb_args)
    rep.data["rawboost"] = rb
    rep.add("### Batched RawBoost (`augment.device`) vs the per-clip NumPy loader", "", rawboost.render(rb), "",
            "The ≥ 10× target is for a GPU: on a CPU both versions spend most of their time in the same FFTs "
            "(about 11 of 64,800 points per clip for algorithm 5), and torch's CPU FFT is no faster than SciPy's.", "")
    for name, ratio, _ in rawboost.targets(rb):
        rep.target(name, ratio, "≥", rb["target"])
    ck_args = checkpointing.parse_args(["--threads", str(threads), *(["--quick"] if quick else
                                                                   ["--sizes", "xlsr_300m", "--budget", "400"])])
    ck = checkpointing.measure(ck_args)
    rep.data["checkpointing"] = ck
    rep.add("### Gradient checkpointing (`model.backbone.gradient_checkpointing`)", "",
            "Activation memory = peak during a step minus what stays resident after it (weights, gradients, AdamW "
            "state); fresh child per variant. Step time: on and off round-robin on one model, per-round ratio.", "",
            checkpointing.render(ck), "")
    for r in ck["rows"]:
        rep.target(f"checkpointing ÷ plain activation memory, {r['adapter']}, {r['size']}", r["activation_ratio"], "≤",
                   ck["targets"]["activation"])
        rep.target(f"checkpointing ÷ plain step time, {r['adapter']}, {r['size']}", r["paired"], "≤",
                   ck["targets"]["time"])


def deployment_section(rep: Any, quick: bool, threads: int) -> None:
    """8. Scoring with merged vs unmerged LoRA, ONNX Runtime vs eager PyTorch, the served MLflow model."""
    args = merged_scoring.parse_args(["--threads", str(threads),
                                      *(["--sizes", "tiny", "--utts", "4", "--rounds", "2"] if quick else
                                        ["--utts", "8"])])
    res = merged_scoring.measure(args)
    rep.data["merged_scoring"] = res
    rep.add("## 8. Deployment", "", "### Scoring with LoRA merged vs the unmerged peft model", "",
            "`utterance_logits` (the path of `metadg score`, `metadg eval` and the MLflow model) on the same 4 s "
            "utterances, round-robin; scores agree to the last column's difference.", "",
            *merged_scoring.table(res), "")
    onnx_args = onnx_runtime.parse_args(["--threads", str(threads), *(["--sizes", "tiny", "--heads", "linear",
                                                                         "--rounds", "5"] if quick else [])])
    ox = onnx_runtime.measure(onnx_args)
    rep.data["onnx"] = ox
    rep.add("### ONNX Runtime vs PyTorch eager (`metadg export`)", "",
            "One 4 s clip per call, batch 1, the merged model in `torch.inference_mode` vs its ONNX export on "
            "ONNX Runtime's CPU provider, round-robin.", "", onnx_runtime.render(ox), "")
    sv_args = serving.parse_args(["--threads", str(threads), *(["--quick"] if quick else [])])
    sv = serving.measure(sv_args)
    rep.data["serving"] = sv
    rep.add("### The served MLflow model (`mlflow models serve --env-manager local`, 127.0.0.1)", "",
            "A tiny trained run, registered and served locally; one 4 s clip per request, sent by path or as samples "
            "in the JSON body; bounded by request count and time.", "", *serving.table(sv), "")
