"""Screenshot MLflow's compare-runs page of a finished benchmark's child runs with headless Chromium.

    python benchmarks/ui_screenshot.py --store sqlite:///mlflow.db --out compare.png [--benchmark quickstart]

Starts `mlflow server` on a free 127.0.0.1 port over the store, finds the latest
benchmark parent run (tag metadg.kind=benchmark) and its children, renders
/#/compare-runs for them in Debian's /usr/bin/chromium, and stops the server.
Prints one JSON line (png, url, runs, checks) and exits 1 when the page does not
show the runs or the PNG is blank, 3 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# The local MLflow server is a test helper: tests/mlflow_server.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mlflow_server import LocalMlflowServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
EXIT_NO_CHROMIUM = 3


def api(url: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the MLflow REST API and return the JSON answer."""
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def benchmark_runs(url: str, benchmark: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(experiment id, child runs) of the latest benchmark parent run, optionally by name."""
    experiments = [e["experiment_id"] for e in api(url, "experiments/search", {"max_results": 1000}).get("experiments", [])]
    where = "tags.`metadg.kind` = 'benchmark'" + (f" and attributes.run_name = '{benchmark}'" if benchmark else "")
    parents = api(url, "runs/search", {"experiment_ids": experiments, "filter": where,
                                       "order_by": ["attributes.start_time DESC"], "max_results": 1}).get("runs", [])
    if not parents:
        raise SystemExit(f"no benchmark run{f' named {benchmark!r}' if benchmark else ''} in the store")
    parent = parents[0]["info"]
    children = api(url, "runs/search", {"experiment_ids": [parent["experiment_id"]], "max_results": 1000,
                                        "filter": f"tags.`mlflow.parentRunId` = '{parent['run_id']}'"}).get("runs", [])
    if len(children) < 2:
        raise SystemExit(f"benchmark run {parent['run_name']!r} has {len(children)} child run(s); nothing to compare")
    return parent["experiment_id"], children


def compare_url(url: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI route the Compare button opens."""
    def compact(value: list[str]) -> str:
        return json.dumps(value, separators=(",", ":"))

    query = urllib.parse.urlencode({"runs": compact(sorted(run_ids)), "experiments": compact([experiment_id])})
    return f"{url}/#/compare-runs?{query}"


def png_checks(path: Path) -> dict[str, float]:
    """Colours in the picture and the share of pixels that differ from its background colour."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").resize((img.width // 4, img.height // 4))
    counts = small.getcolors(maxcolors=small.width * small.height)
    background = max(counts)[0]
    return {"colours": len(counts), "non_background": 1 - background / (small.width * small.height)}


def screenshot(page: str, out: Path, window: str, budget_ms: int, profile: Path) -> str:
    """Render `page` once in headless Chromium: the PNG goes to `out`, the final DOM is returned."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={window.replace('x', ',')}",
           f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", "--dump-dom", page]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    """Start the server, take the screenshot, check it, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db", help="MLflow backend store of the finished benchmark")
    parser.add_argument("--out", default="mlflow-compare.png", help="PNG to write")
    parser.add_argument("--benchmark", help="benchmark (parent run) name; default: the latest benchmark")
    parser.add_argument("--window", default="1600x1200", help="browser window WIDTHxHEIGHT")
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time the page gets to load its data")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: apt-get install -y --no-install-recommends chromium", file=sys.stderr)
        return EXIT_NO_CHROMIUM
    if args.store.startswith("sqlite:///") and not Path(args.store[len("sqlite:///"):]).is_file():
        print(f"{args.store}: no such store", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-screenshot-") as tmp:
        server = LocalMlflowServer(args.store, Path(tmp) / "artifacts", Path(tmp) / "server.log")
        with server:
            experiment_id, children = benchmark_runs(server.url, args.benchmark)
            page = compare_url(server.url, experiment_id, [c["info"]["run_id"] for c in children])
            dom = screenshot(page, out, args.window, args.budget_ms, Path(tmp) / "profile")
    names = sorted(c["info"]["run_name"] for c in children)
    checks: dict[str, Any] = png_checks(out)
    checks["title"] = f"Comparing {len(children)} Runs" in dom
    checks["run_names"] = all(name in dom for name in names)
    print(json.dumps({"png": str(out), "url": page, "runs": names, "checks": checks}))
    ok = checks["title"] and checks["run_names"] and checks["colours"] >= 16 and checks["non_background"] >= 0.05
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
