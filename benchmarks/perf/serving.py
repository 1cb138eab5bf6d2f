#!/usr/bin/env python
"""The served MLflow detector: server start-up, first-request latency and steady requests/s on 127.0.0.1.

    python benchmarks/perf/serving.py [--requests 200] [--seconds 30] [--clip-s 4] [--threads 1] [--out serving.md]
    python benchmarks/perf/serving.py --quick          # 20 requests / 10 s per input kind: checks it runs

Trains a tiny run (synthetic corpus, tiny encoder, LoRA r 4, 2 steps) in a temporary folder with
tracking to a sqlite store there, registers its detector (`metadg.deploy.register`, alias champion),
serves `models:/NAME@champion` with `mlflow models serve --env-manager local --workers 1`, then for
each input kind (`path`: a FLAC on the serving host; `audio`: the samples in the JSON body) sends one
clip of `--clip-s` seconds per request, sequentially, at most `--requests` requests or `--seconds`
seconds. The same clip scored in this process (pyfunc `predict`, and `Detector.score` alone) gives
the HTTP + JSON overhead as a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

SR = 16000
NAME = "bench-detector"


def train_tiny(root: Path, uri: str) -> Path:
    """A tiny spoof run, tracked to `uri`; its run folder."""
    from metadg.config import build_experiment
    from metadg.engine.trainer import Trainer

    corpus = {"name": "synthetic", "cache_dir": str(root / "cache"), "duration_s": 0.5}
    cfg = {
        "name": "serving-bench", "seed": 0, "output_dir": str(root / "runs"),
        "task": {"name": "spoof_detection", "crop_samples": 8000,
                 "train": {**corpus, "split": "train", "n_bonafide": 40, "n_per_attack": 20},
                 "dev": {**corpus, "split": "dev", "n_bonafide": 20, "n_per_attack": 10}},
        "model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "linear"}},
        "adapter": {"name": "lora", "r": 4}, "algorithm": {"name": "erm"},
        "train": {"steps": 2, "eval_every": 2, "batch_per_domain": 2, "progress": False},
        "tracking": {"enabled": True, "uri": uri, "experiment": "serving-bench"},
    }
    return Path(Trainer(build_experiment(cfg)).fit().run_dir)


def post(url: str, body: bytes) -> tuple[float, dict[str, Any]]:
    """(seconds, decoded answer) of one POST to /invocations."""
    req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        answer = json.loads(resp.read())
    return time.perf_counter() - t0, answer


def requests_of(url: str, body: bytes, max_requests: int, max_seconds: float) -> dict[str, Any]:
    """The first request's latency, then sequential requests until either bound; latency quantiles and requests/s."""
    first, answer = post(url, body)
    assert not answer["predictions"][0]["error"], answer
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_requests and time.perf_counter() - start < max_seconds:
        times.append(post(url, body)[0])
    wall = time.perf_counter() - start
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"first_s": first, "median_s": statistics.median(times), "p90_s": q[8], "requests": len(times),
            "rps": len(times) / wall, "score": answer["predictions"][0]["score"]}


def in_process(run: Path, uri: str, clip: Path, repeats: int) -> dict[str, float]:
    """Median seconds of the same clip through pyfunc `predict` (loaded from the registry) and `Detector.score`."""
    import mlflow
    import pandas as pd

    from metadg.deploy.detector import Detector
    from metadg.deploy.pyfunc import using_uri
    from metadg.tasks.audio.loading import load_audio

    with using_uri(uri):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame, det, wave = pd.DataFrame({"path": [str(clip)]}), Detector(run), load_audio(clip)
    out: dict[str, list[float]] = {"predict_s": [], "detector_s": []}
    for _ in range(repeats + 1):  # the first round warms both up
        t0 = time.perf_counter()
        model.predict(frame)
        t1 = time.perf_counter()
        det.score([wave])
        t2 = time.perf_counter()
        out["predict_s"].append(t1 - t0)
        out["detector_s"].append(t2 - t1)
    return {k: statistics.median(v[1:]) for k, v in out.items()}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train, register, serve, time both input kinds; the figures as a dict."""
    import soundfile as sf
    import torch

    from metadg.deploy.pyfunc import served

    # The same thread count here and in the server (which reads OMP_NUM_THREADS at start): on a shared
    # machine two threads per process can be many times slower than one, and the ratio would measure that.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    from metadg.deploy.register import register

    with tempfile.TemporaryDirectory(prefix="metadg-serving-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        t0 = time.perf_counter()
        run = train_tiny(root, uri)
        trained = time.perf_counter()
        version = register(run, NAME, alias="champion", tracking_uri=uri)
        registered = time.perf_counter()
        clip = root / "clip.flac"
        wave = (0.1 * np.random.default_rng(0).standard_normal(int(args.clip_s * SR))).astype(np.float32)
        sf.write(clip, wave, SR)
        bodies = {"path": {"dataframe_split": {"columns": ["path"], "data": [[str(clip)]]}},
                  "audio": {"dataframe_split": {"columns": ["audio"], "data": [[wave.tolist()]]}}}
        rows = []
        t_serve = time.perf_counter()
        with served(f"models:/{NAME}@champion", uri, root / "serve.log", timeout_s=args.startup_timeout) as url:
            startup = time.perf_counter() - t_serve
            for kind in args.inputs:
                body = json.dumps(bodies[kind]).encode()
                rows.append({"input": kind, "body_kib": len(body) / 1024,
                             **requests_of(url, body, args.requests, args.seconds)})
        local = in_process(run, uri, clip, args.local_repeats)
    return {"clip_s": args.clip_s, "torch_threads": torch.get_num_threads(), "train_s": trained - t0,
            "register_s": registered - trained, "version": version, "startup_s": startup, "rows": rows, **local,
            "bounds": {"requests": args.requests, "seconds": args.seconds}}


def table(res: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per input kind, then the in-process comparison."""
    lines = [f"One {res['clip_s']:g} s clip per request, sequential, `mlflow models serve --env-manager local "
             f"--workers 1` on 127.0.0.1 (tiny encoder + LoRA; at most {res['bounds']['requests']} requests or "
             f"{res['bounds']['seconds']:g} s per input kind; {res['torch_threads']} torch thread(s) in the server and here).",
             "", f"Server start-up (spawn → /ping answers): **{res['startup_s']:.1f} s**; training the run "
             f"{res['train_s']:.1f} s, register (log + validate + register) {res['register_s']:.1f} s.", "",
             "| input | request body | first request | median | p90 | requests | requests/s | median ÷ in-process predict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| `{r['input']}` | {r['body_kib']:,.1f} KiB | {1000 * r['first_s']:.1f} ms | "
                     f"{1000 * r['median_s']:.1f} ms | {1000 * r['p90_s']:.1f} ms | {r['requests']} | {r['rps']:.1f} | "
                     f"{r['median_s'] / res['predict_s']:.2f} |")
    lines += ["", f"In this process, the same clip by path: pyfunc `predict` {1000 * res['predict_s']:.1f} ms, "
              f"`Detector.score` alone {1000 * res['detector_s']:.1f} ms (file read + table: "
              f"{1000 * (res['predict_s'] - res['detector_s']):.1f} ms)."]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="at most this many timed requests per input kind")
    p.add_argument("--seconds", type=float, default=30.0, help="at most this long per input kind")
    p.add_argument("--clip-s", type=float, default=4.0, help="clip length per request")
    p.add_argument("--inputs", nargs="+", default=["path", "audio"], choices=["path", "audio"])
    p.add_argument("--local-repeats", type=int, default=10, help="in-process timings of the same clip")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server and of this process")
    p.add_argument("--quick", action="store_true", help="20 requests / 10 s per input kind, 3 local repeats")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.local_repeats = 20, 10.0, 3
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure and print the markdown table (and --out)."""
    args = parse_args(argv)
    res = measure(args)
    text = "\n".join(table(res)) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
