"""Equal error rate (EER) metrics following the official ASVspoof evaluation packages.

Conventions: higher score = more bona fide; labels 1 = bona fide, 0 = spoof.

The EER procedure reproduces the ASVspoof 2019/2021/5 reference code
(``compute_det_curve`` / ``compute_eer``) exactly, including its tie handling:
scores are stably sorted with bona fide trials concatenated first, so within a
group of tied scores the bona fide trials are counted as rejected before the
spoof trials.  Ties across classes are therefore resolved pessimistically
(e.g. all-equal scores give EER 1.0, not 0.5), matching published numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["det_curve", "compute_eer", "eer", "per_domain_eer"]


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    """Convert to a finite 1-D float64 array, raising ValueError otherwise."""
    # float64 so that the "min - 0.001" threshold also works for integer scores.
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    n_bad = int(np.count_nonzero(~np.isfinite(arr)))
    if n_bad:
        raise ValueError(f"{name} contain {n_bad} non-finite value(s) (NaN or inf)")
    return arr


def _as_labels(labels: ArrayLike, n_scores: int) -> np.ndarray:
    """Validate a 0/1 label vector aligned with the scores; return it as a bool mask."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n_scores:
        raise ValueError(
            f"scores and labels have different lengths ({n_scores} vs {arr.shape[0]})"
        )
    # Reject strings/objects up front: comparing them with 0/1 would not be meaningful.
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numeric 0 (spoof) / 1 (bona fide), got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        bad = sorted({repr(v) for v in arr.tolist() if v not in (0, 1)})[:5]
        raise ValueError(f"labels must be 0 (spoof) or 1 (bona fide); found {', '.join(bad)}")
    return arr == 1


def det_curve(
    bonafide_scores: ArrayLike, spoof_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (frr, far, thresholds) exactly as the official ASVspoof ``compute_det_curve``."""
    bona = _as_scores(bonafide_scores, "bona fide scores")
    spoof = _as_scores(spoof_scores, "spoof scores")
    if bona.size == 0:
        raise ValueError("no bona fide scores")
    if spoof.size == 0:
        raise ValueError("no spoof scores")
    n_bona, n_spoof = bona.size, spoof.size
    n_scores = n_bona + n_spoof

    # Bona fide first + stable sort: this fixes the tie order used by the reference code.
    all_scores = np.concatenate((bona, spoof))
    labels = np.concatenate((np.ones(n_bona), np.zeros(n_spoof)))
    indices = np.argsort(all_scores, kind="mergesort")
    labels = labels[indices]

    # Entry i (i >= 1) = operating point after rejecting the i lowest-ranked trials.
    tar_trial_sums = np.cumsum(labels)
    nontarget_trial_sums = n_spoof - (np.arange(1, n_scores + 1) - tar_trial_sums)

    frr = np.concatenate((np.atleast_1d(0), tar_trial_sums / n_bona))
    far = np.concatenate((np.atleast_1d(1), nontarget_trial_sums / n_spoof))
    thresholds = np.concatenate(
        (np.atleast_1d(all_scores[indices[0]] - 0.001), all_scores[indices])
    )
    return frr, far, thresholds


def compute_eer(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> tuple[float, float]:
    """Return (eer in [0, 1], threshold) as the official ASVspoof ``compute_eer``."""
    frr, far, thresholds = det_curve(bonafide_scores, spoof_scores)
    # argmin takes the first minimum, i.e. the lowest threshold when several points tie.
    k = int(np.argmin(np.abs(frr - far)))
    return float(np.mean((frr[k], far[k]))), float(thresholds[k])


def eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Return the EER of a score vector with aligned 0/1 labels (1 = bona fide)."""
    s = _as_scores(scores, "scores")
    is_bona = _as_labels(labels, s.shape[0])
    return compute_eer(s[is_bona], s[~is_bona])[0]


def per_domain_eer(
    scores: ArrayLike, labels: ArrayLike, domains: Sequence[str]
) -> dict[str, float]:
    """Return {domain: EER of all bona fide trials vs that domain's spoof trials}, sorted by domain."""
    s = _as_scores(scores, "scores")
    is_bona = _as_labels(labels, s.shape[0])
    doms = list(domains)
    if len(doms) != s.shape[0]:
        raise ValueError(
            f"scores and domains have different lengths ({s.shape[0]} vs {len(doms)})"
        )
    bona = s[is_bona]
    if bona.size == 0:
        raise ValueError("no bona fide scores")
    # Bona fide domains are ignored: as in the ASVspoof per-attack breakdown, the whole
    # bona fide set is the shared reference for every spoof domain.
    spoof_idx = np.flatnonzero(~is_bona)
    if spoof_idx.size == 0:
        raise ValueError("no spoof scores")
    groups: dict[str, list[int]] = {}
    for i in spoof_idx.tolist():
        groups.setdefault(doms[i], []).append(i)
    return {d: compute_eer(bona, s[groups[d]])[0] for d in sorted(groups)}
