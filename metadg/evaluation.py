"""Scoring whole utterances, score files, per-set metric tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metadg.calibration import Calibrator
from metadg.models.classifier import Classifier
from metadg.tasks.base import Utterances


def segments(wave: np.ndarray, chunk: int | None, overlap: float) -> list[np.ndarray]:
    """The whole wave, or overlapping windows of `chunk` samples covering it (the last one flush with the end)."""
    if chunk is None or wave.shape[0] <= chunk:
        return [wave]
    hop = max(1, int(round(chunk * (1.0 - overlap))))
    starts = list(range(0, wave.shape[0] - chunk + 1, hop))
    if starts[-1] + chunk < wave.shape[0]:
        starts.append(wave.shape[0] - chunk)
    return [wave[s : s + chunk] for s in starts]


# A batch never pads its shortest segment by more than this share of its length: padded
# samples cost as much as real ones (the conv encoder runs over them), and on CPU that
# waste outweighs what batching saves.
MAX_PADDING = 0.1


def length_batches(segs: list[tuple[int, np.ndarray]], batch_size: int) -> list[list[tuple[int, np.ndarray]]]:
    """Split length-sorted segments into batches of ≤ `batch_size` whose longest is ≤ (1 + MAX_PADDING) × shortest."""
    batches: list[list[tuple[int, np.ndarray]]] = []
    for item in segs:
        if batches and len(batches[-1]) < batch_size and item[1].shape[0] <= (1 + MAX_PADDING) * batches[-1][0][1].shape[0]:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


@torch.no_grad()
def score_utterances(
    model: nn.Module,
    utts: Utterances,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "scoring",
    chunk_samples: int | None = None,
    chunk_overlap: float = 0.5,
    amp: bool = False,
) -> np.ndarray:
    """Bona fide log-odds per utterance, in `utts` order: whole utterances, or the mean over overlapping chunks.

    Under `utts.on_error == "skip"` an unusable file scores NaN and is counted in `utts.skipped`.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    totals = np.zeros(len(utts), dtype=np.float64)
    counts = np.zeros(len(utts), dtype=np.int64)
    # Reading a window of utterances and sorting its segments by length keeps
    # padding small without loading the whole set first.
    window = batch_size * 8
    bar = tqdm(total=len(utts), desc=desc, disable=None if progress else True, leave=False, unit="utt")
    for start in range(0, len(utts), window):
        waves = {i: utts.try_load(i) for i in range(start, min(start + window, len(utts)))}
        segs = [(i, seg) for i, wave in waves.items() if wave is not None
                for seg in segments(wave, chunk_samples, chunk_overlap)]
        segs.sort(key=lambda item: item[1].shape[0])
        for part in length_batches(segs, batch_size):
            lengths = [seg.shape[0] for _, seg in part]
            inputs = torch.zeros(len(part), max(lengths))
            for row, (_, seg) in enumerate(part):
                inputs[row, : lengths[row]] = torch.from_numpy(seg)
            lens = None if min(lengths) == max(lengths) else torch.tensor(lengths, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(inputs.to(device), lens)
            owners = np.array([i for i, _ in part])
            np.add.at(totals, owners, Classifier.score_from_logits(logits.float()).cpu().numpy())
            np.add.at(counts, owners, 1)
        bar.update(min(start + window, len(utts)) - start)
    bar.close()
    model.train(was_training)
    with np.errstate(invalid="ignore"):
        return totals / counts  # NaN marks an utterance skipped under on_error: skip


def write_score_file(path: str | Path, utts: Utterances, scores: np.ndarray) -> Path:
    """`utt score` lines, the ASVspoof 2019/2021 CM score-file layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for utt, s in zip(utts.ids, scores):
            if np.isfinite(s):  # skipped utterances (on_error: skip) have no score
                fh.write(f"{utt} {s:.6f}\n")
    return path


def write_score_csv(path: str | Path, utts: Utterances, scores: np.ndarray, llr: np.ndarray | None = None) -> Path:
    """CSV with utterance, score, calibrated LLR (if any), label and every attribute, for analysis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(utts.attrs)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utt", "score", *(["llr"] if llr is not None else []), "label", *keys])
        for i, (utt, s) in enumerate(zip(utts.ids, scores)):
            label = "bonafide" if utts.labels[i] == 1 else "spoof"
            extra = [f"{llr[i]:.6f}"] if llr is not None else []
            writer.writerow([utt, f"{s:.6f}", *extra, label, *(utts.attrs[k][i] for k in keys)])
    return path


def write_asvspoof5_scores(path: str | Path, utts: Utterances, scores: np.ndarray) -> Path:
    """The ASVspoof 5 submission layout: tab separated, header `filename<TAB>cm-score`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("filename\tcm-score\n")
        for utt, s in zip(utts.ids, scores):
            if np.isfinite(s):
                fh.write(f"{utt}\t{s:.6f}\n")
    return path


def det_png(path: str | Path, sets: dict[str, tuple[Utterances, np.ndarray]]) -> Path | None:
    """One DET curve per labelled set (probit axes); None when no set has both classes."""
    from metadg.metrics import det_curve
    from metadg.plots import det_plot

    curves = {}
    for name, (utts, scores) in sets.items():
        ok = np.isfinite(scores)  # skipped utterances (on_error: skip) score NaN
        bona, spoof = scores[ok & (utts.labels == 1)], scores[ok & (utts.labels == 0)]
        if bona.size and spoof.size:
            frr, far, _ = det_curve(bona, spoof)
            curves[name] = (frr, far)
    return det_plot(curves, path) if curves else None


def write_scores(
    directory: str | Path, name: str, utts: Utterances, scores: np.ndarray, llr: np.ndarray | None = None
) -> list[Path]:
    """Every score file a set needs: `utt score`, the CSV, and the ASVspoof 5 TSV for that corpus."""
    directory = Path(directory)
    written = [write_score_file(directory / f"{name}.txt", utts, scores), write_score_csv(directory / f"{name}.csv", utts, scores, llr)]
    if "asvspoof5" in set(utts.attrs.get("corpus", [])):
        written.append(write_asvspoof5_scores(directory / f"{name}.asvspoof5.tsv", utts, scores))
    return written


AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au"}


def collect_audio(paths: list[str | Path]) -> list[Path]:
    """Audio files named directly or found (recursively, sorted) in the named folders."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            # A dangling symlink is kept so that it gets its own error row instead of vanishing.
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and (p.is_file() or p.is_symlink()))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return found


def scoring_options(train_cfg: object) -> dict[str, object]:
    """score_utterances keyword arguments from an experiment's train section."""
    return {
        "batch_size": train_cfg.eval_batch_size,
        "chunk_samples": train_cfg.eval_chunk_samples,
        "chunk_overlap": train_cfg.eval_chunk_overlap,
        "amp": train_cfg.amp,
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    eval_specs: dict[str, dict] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Score a trained model on its own eval sets (or `eval_specs`); write score files and metrics.json."""
    import json

    from metadg.config import build_experiment
    from metadg.training import load_trained

    exp, model, _, meta = load_trained(checkpoint, device)
    calibrator = Calibrator.from_dict(meta["calibration"]) if meta.get("calibration") else None
    if eval_specs is not None:
        data = exp.to_dict()
        data["task"]["eval"] = eval_specs
        exp = build_experiment(data, source=f"{checkpoint} + eval sets")
    task = exp.task.build(seed=exp.seed)
    out_dir = Path(out_dir)
    results: dict[str, dict[str, float]] = {}
    scored = {}
    for name, utts in task.eval_sets().items():
        scores = score_utterances(model, utts, device=device, progress=progress, desc=f"eval {name}", **scoring_options(exp.train))
        llr = calibrator.transform(scores) if calibrator else None
        results[name] = task.metrics(scores, utts, llr)
        write_scores(out_dir, name, utts, scores, llr)
        scored[name] = (utts, scores)
    out_dir.mkdir(parents=True, exist_ok=True)
    det_png(out_dir / "det.png", scored)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def score_files(checkpoint: str | Path, paths: list[str | Path], out_csv: str | Path, device: str = "cpu") -> tuple[int, int]:
    """Score audio files/folders with a trained model into a CSV; returns (scored, unreadable)."""
    from metadg.tasks.spoof.audio import AudioError, load_audio
    from metadg.training import load_trained

    exp, model, _, meta = load_trained(checkpoint, device)
    threshold = float(meta.get("dev", {}).get("eer_threshold", 0.0))
    calibrator = Calibrator.from_dict(meta["calibration"]) if meta.get("calibration") else None
    files = collect_audio(paths)
    waves, kept, errors = [], [], {}
    for path in files:
        try:
            waves.append(load_audio(path))
            kept.append(path)
        except AudioError as exc:  # one bad file must not lose the others' scores
            errors[path] = str(exc)
    utts = Utterances([str(p) for p in kept], np.zeros(len(kept), dtype=np.int64), {}, waves.__getitem__)
    scores = score_utterances(model, utts, device=device, progress=True, **scoring_options(exp.train)) if kept else []
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    llrs = calibrator.transform(np.asarray(scores)) if calibrator and kept else [None] * len(kept)
    by_path = dict(zip(kept, zip(scores, llrs)))
    with out_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "llr", "decision", "error"])
        for path in files:
            if path in by_path:
                s, llr = by_path[path]
                shown = "" if llr is None else f"{llr:.6f}"
                writer.writerow([str(path), f"{s:.6f}", shown, "bonafide" if s > threshold else "spoof", ""])
            else:
                writer.writerow([str(path), "", "", "", errors[path]])
    return len(kept), len(errors)
