"""The perf report's structure and internal consistency (never its timings), on the tiny quick setting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as a list of {header: cell} rows."""
    lines, out, i = markdown.splitlines(), [], 0
    while i < len(lines) - 1:
        if lines[i].startswith("| ") and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split("|")))))
                i += 1
            out.append(rows)
        else:
            i += 1
    return out


def num(cell: str) -> float:
    """The first number in a cell ('1,234.5', '0.98 (0.9–1.1)', '12.3 %')."""
    return float(re.search(r"-?[\d,]*\.?\d+", cell).group().replace(",", ""))


def table_with(all_tables: list[list[dict[str, str]]], column: str) -> list[dict[str, str]]:
    """The one table that has `column`."""
    found = [t for t in all_tables if t and column in t[0]]
    assert len(found) == 1, f"expected one table with column {column!r}, found {len(found)}"
    return found[0]


def close(shown: str, a: str, b: str) -> bool:
    """Does a ratio shown with its printed decimals equal the quotient of two printed figures?"""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    x, y = num(a), num(b)
    # The printed figures are rounded too: allow their rounding plus the ratio's.
    err = abs(x / y) * (0.05 / x + 0.05 / y) if x and y else 0
    return abs(num(shown) - x / y) <= 0.5 * 10 ** -decimals + err + 1e-9


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Markdown text and JSON figures of one `report.py --quick --sizes tiny` run."""
    out = tmp_path_factory.mktemp("perf") / "REPORT.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/perf/report.py"), "--quick", "--sizes", "tiny",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text(encoding="utf-8"), json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))


def test_header_names_machine_date_and_every_section(report):
    md, data = report
    assert md.startswith("# metadg performance report")
    assert re.search(r"Date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", md)
    assert f"torch {data['machine']['torch']} (threads pinned to 1)" in md
    assert f"{os.cpu_count()} cores" in md
    for heading in ("## Targets", "## 1. MLDG overhead", "## 2. LoRA vs full", "## 3. Training throughput",
                    "## 4. Evaluation", "## 5. Scale notes", "## 6. The DG algorithm zoo", "### Profile",
                    "## 7. From-scratch detectors", "### Batched RawBoost", "### Gradient checkpointing",
                    "## 8. Deployment", "### Scoring with LoRA merged", "### ONNX Runtime vs PyTorch eager",
                    "### The served MLflow model"):
        assert heading in md


def test_every_target_has_a_verdict_that_follows_from_its_figure(report):
    md, data = report
    rows = table_with(tables(md), "verdict")
    assert [r["target"] for r in rows] == [t["name"] for t in data["targets"]]
    names = " ".join(r["target"] for r in rows)
    for needed in ("MLDG ÷ ERM step time, lora", "MLDG ÷ ERM step time, full", "LoRA ÷ full step time",
                   "LoRA ÷ full peak step memory", "merged LoRA ÷ plain inference", "loader ÷ model clips/s"):
        assert needed in names
    for r, t in zip(rows, data["targets"]):
        value, limit = t["value"], t["limit"]
        expected = {"≤": value <= limit, "≥": value >= limit, "±": abs(value - 1) <= limit}[t["op"]]
        assert t["met"] == expected and r["verdict"] == ("met" if expected else "not met")
        assert num(r["measured"]) == pytest.approx(value, abs=10 ** -t["digits"])


def test_mldg_ratios_are_quotients_of_the_reported_times(report):
    md, data = report
    rows = table_with(tables(md), "× naive")
    assert {(r["size"], r["adapter"], r["method"]) for r in rows} == {
        ("tiny", a, m) for a in ("lora", "full") for m in ("erm", "mldg", "naive_mldg")}
    for r in rows:
        ref = {m["method"]: m for m in rows if (m["size"], m["adapter"]) == (r["size"], r["adapter"])}
        assert close(r["× ERM"], r["median ms/step"], ref["erm"]["median ms/step"])
        assert close(r["× naive"], r["median ms/step"], ref["naive_mldg"]["median ms/step"])
        assert close(r["mem × ERM"], r["peak step MB"], ref["erm"]["peak step MB"])
        assert close(r["CPU × ERM"], r["CPU ms/step"], ref["erm"]["CPU ms/step"])
        lo, hi = map(num, r["IQR ms"].split("–"))
        assert lo <= hi
    for raw in data["mldg"]:
        erm = next(x for x in data["mldg"] if (x["size"], x["adapter"], x["method"]) == (raw["size"], raw["adapter"], "erm"))
        assert raw["ratio"] == pytest.approx(raw["ms"] / erm["ms"])
        assert raw["paired_q1"] <= raw["paired"] <= raw["paired_q3"]
    mldg_targets = {t["name"]: t["value"] for t in data["targets"] if t["name"].startswith("MLDG")}
    for raw in data["mldg"]:
        if raw["method"] == "mldg":
            assert mldg_targets[f"MLDG ÷ ERM step time, {raw['adapter']}, {raw['size']}"] == pytest.approx(raw["ratio"])


def test_adapter_throughput_and_scoring_ratios_are_quotients(report):
    md, data = report
    all_tables = tables(md)
    train = {r["variant"]: r for r in table_with(all_tables, "mem × full")}
    assert set(train) == {"lora", "full"}
    for r in train.values():
        assert close(r["× full"], r["median ms/step"], train["full"]["median ms/step"])
        assert close(r["mem × full"], r["peak step MB"], train["full"]["peak step MB"])
    infer = {r["model"]: r for r in table_with(all_tables, "per-round × plain (IQR)")}
    assert set(infer) == {"plain", "lora_merged", "lora_unmerged"}
    for r in infer.values():
        assert close(r["× plain"], r["median ms/forward"], infer["plain"]["median ms/forward"])
    tp = table_with(all_tables, "× model clips/s")
    model = next(r for r in tp if r["setting"] == "model step alone")
    assert {r["setting"] for r in tp} >= {"loader alone, num_workers = 0", "loader + model step (end to end), num_workers = 0"}
    for r in tp:
        assert close(r["× model clips/s"], r["clips/s"], model["clips/s"])
    default = data["throughput"]["default_workers"]
    margin = next(t for t in data["targets"] if t["name"].startswith("loader ÷ model"))
    assert margin["value"] == pytest.approx(data["throughput"][f"loader/{default}"]["clips_s"] / data["throughput"]["model"]["clips_s"])
    sc = {r["scoring"]: r for r in table_with(all_tables, "× unbatched")}
    assert close(sc["batched, length-sorted"]["× unbatched"], sc["batched, length-sorted"]["utt/s"], sc["unbatched"]["utt/s"])
    assert data["scoring"]["max_abs_diff"] < 1e-4  # batching must not change the scores
    metrics = table_with(all_tables, "metric on scores")
    assert [r["metric on scores"].split(" ")[0] for r in metrics] == ["EER", "minDCF"]
    assert "1,000,000 scores" in metrics[0]["metric on scores"]


def test_scale_estimates_follow_from_flops_and_assumptions(report):
    md, data = report
    sc = data["scale"]
    flops = table_with(tables(md), "train step GFLOP/clip")
    for r in flops:
        f = sc["flops"][r["adapter"]]
        assert num(r["epoch PFLOP"]) == pytest.approx(f["train"] * 25_380 / 1e15, abs=0.006)
        assert f["train"] > f["fwd"] > 0
    for adapter, ests in sc["gpu"].items():
        assert [e["gpus"] for e in ests] == [1, 2, 4, 8]
        for e in ests:
            assert e["epoch_s"] == pytest.approx(e["steps"] * (e["compute_s"] + e["comm_s"]))
            assert e["steps"] == -(-25_380 // (14 * e["gpus"]))
        assert ests[0]["comm_s"] == 0 < ests[1]["comm_s"]
    assert "H100" in md and "utilisation" in md


def test_every_algorithm_has_a_row_whose_ratios_are_quotients(report):
    from metadg.registry import ALGORITHMS

    md, data = report
    rows = table_with(tables(md), "target × ERM")
    assert [r["algorithm"] for r in rows][0] == "erm" and {r["algorithm"] for r in rows} == set(ALGORITHMS.names())
    erm = rows[0]
    for r in rows:
        assert close(r["× ERM"], r["median ms/step"], erm["median ms/step"])
        assert close(r["mem × ERM"], r["peak step MB"], erm["peak step MB"])
    targets = {t["name"]: t for t in data["targets"]}
    for raw in data["algorithms"]:
        name = f"{raw['algorithm']} ÷ ERM step time, lora, {raw['size']}"
        assert (name in targets) == (raw["target"] is not None)
        if raw["target"]:
            assert targets[name]["value"] == pytest.approx(raw["ratio"]) and targets[name]["limit"] == raw["target"]
