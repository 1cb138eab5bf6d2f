"""Scoring whole utterances, score files, per-set metric tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

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
    """Bona fide log-odds per utterance, in `utts` order: whole utterances, or the mean over overlapping chunks."""
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
        segs = [(i, seg) for i in range(start, min(start + window, len(utts)))
                for seg in segments(utts.load(i), chunk_samples, chunk_overlap)]
        segs.sort(key=lambda item: item[1].shape[0])
        for b in range(0, len(segs), batch_size):
            part = segs[b : b + batch_size]
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
    return totals / counts


def write_score_file(path: str | Path, utts: Utterances, scores: np.ndarray) -> Path:
    """`utt score` lines, the ASVspoof 2019/2021 CM score-file layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for utt, s in zip(utts.ids, scores):
            fh.write(f"{utt} {s:.6f}\n")
    return path


def write_score_csv(path: str | Path, utts: Utterances, scores: np.ndarray) -> Path:
    """CSV with utterance, score, label and every attribute, for analysis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(utts.attrs)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utt", "score", "label", *keys])
        for i, (utt, s) in enumerate(zip(utts.ids, scores)):
            label = "bonafide" if utts.labels[i] == 1 else "spoof"
            writer.writerow([utt, f"{s:.6f}", label, *(utts.attrs[k][i] for k in keys)])
    return path
