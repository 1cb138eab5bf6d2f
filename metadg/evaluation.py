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


@torch.no_grad()
def score_utterances(
    model: nn.Module,
    utts: Utterances,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "scoring",
) -> np.ndarray:
    """Bona fide log-odds for every utterance, whole (no cropping), in `utts` order."""
    was_training = model.training
    model.eval()
    scores = np.empty(len(utts), dtype=np.float64)
    # Reading a window of utterances and sorting it by length keeps padding small
    # without loading the whole set first.
    window = batch_size * 8
    bar = tqdm(total=len(utts), desc=desc, disable=None if progress else True, leave=False, unit="utt")
    for start in range(0, len(utts), window):
        idx = list(range(start, min(start + window, len(utts))))
        waves = {i: utts.load(i) for i in idx}
        idx.sort(key=lambda i: waves[i].shape[0])
        for b in range(0, len(idx), batch_size):
            chunk = idx[b : b + batch_size]
            lengths = [waves[i].shape[0] for i in chunk]
            inputs = torch.zeros(len(chunk), max(lengths))
            for row, i in enumerate(chunk):
                inputs[row, : lengths[row]] = torch.from_numpy(waves[i])
            lens = None if min(lengths) == max(lengths) else torch.tensor(lengths)
            logits = model(inputs.to(device), None if lens is None else lens.to(device))
            scores[chunk] = Classifier.score_from_logits(logits.float()).cpu().numpy()
            bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return scores


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
