"""Browser check: MLflow's compare page of a finished tiny benchmark renders in headless Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metadg.bench import run_benchmark

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (/usr/bin/chromium); "
                    "`apt-get install -y --no-install-recommends chromium` (what .ci/run does) enables this check")
def test_compare_page_of_a_benchmark_renders(tiny_config, tmp_path):
    from PIL import Image

    store = f"sqlite:///{tmp_path}/mlflow.db"
    bench = {**tiny_config, "name": "uibench", "tracking": {"uri": store, "experiment": "ui"},
             "grid": {"algorithm": [{"name": "erm"}, {"name": "mldg"}]}}
    bench["train"] = {**bench["train"], "steps": 3, "eval_every": 3}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))
    run_benchmark(tmp_path / "bench.yaml")

    png = tmp_path / "compare.png"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ui_screenshot.py"), "--store", store,
                           "--out", str(png), "--window", "1280x900"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["runs"] == ["uibench/algorithm=erm", "uibench/algorithm=mldg"]
    assert report["checks"]["title"] and report["checks"]["run_names"]  # the page shows both runs
    with Image.open(png) as img:
        assert img.size == (1280, 900)
        assert len(img.convert("RGB").getcolors(maxcolors=1280 * 900)) > 100  # not a blank page
