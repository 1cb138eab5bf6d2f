"""Multi-class metrics from (N, C) logits: accuracy, macro accuracy and F1, log loss (DCASE 2020 task 1A), per domain."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metadg.tasks.base import softmax

#: probabilities are clipped here before the log, as scikit-learn's log_loss does
EPS = 1e-15


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (labels, predicted), 1)
    return out


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean multi-class cross-entropy (natural log) of the true class's probability."""
    if labels.size == 0:
        return float("nan")
    p = np.clip(probs[np.arange(labels.size), labels], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur (true or predicted)."""
    tp = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(1), matrix.sum(0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean()) if present.any() else float("nan")


def classification_metrics(logits: np.ndarray, labels: np.ndarray, domains: Sequence[str] | None = None,
                           class_names: Sequence[str] | None = None) -> dict[str, float]:
    """accuracy, macro_accuracy (mean per-class recall), macro_f1, log_loss, accuracy/<domain>, accuracy/class/<name>.

    Rows with a non-finite logit (utterances skipped under on_error: skip) are left out and counted as `skipped`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    ok = np.isfinite(logits).all(axis=1)
    x, y = logits[ok], labels[ok]
    n_classes = logits.shape[1]
    predicted = x.argmax(axis=1) if x.size else np.zeros(0, dtype=np.int64)
    matrix = confusion(y, predicted, n_classes)
    support = matrix.sum(1)
    recall = np.divide(np.diag(matrix), support, out=np.zeros(n_classes), where=support > 0)
    out = {
        "accuracy": float((predicted == y).mean()) if y.size else float("nan"),
        "macro_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else float("nan"),
        "macro_f1": macro_f1(matrix),
        "log_loss": log_loss(y, softmax(x)),
        "skipped": float((~ok).sum()),
    }
    if class_names is not None:
        for c, name in enumerate(class_names):
            if support[c]:
                out[f"accuracy/class/{name}"] = float(recall[c])
    if domains is not None:
        values = np.asarray(domains, dtype=object)[ok]
        for d in sorted(set(values)):
            member = values == d
            out[f"accuracy/{d}"] = float((predicted[member] == y[member]).mean())
    return out
