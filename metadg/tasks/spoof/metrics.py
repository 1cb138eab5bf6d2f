"""Equal error rate (EER) metrics following the official ASVspoof evaluation packages.

Conventions: higher score = more bona fide; labels 1 = bona fide, 0 = spoof.

The EER procedure reproduces the ASVspoof 2019/2021/5 reference code
(``compute_det_curve`` / ``compute_eer``) exactly, including its tie handling:
scores are stably sorted with bona fide trials concatenated first, so within a
group of tied scores the bona fide trials are counted as rejected before the
spoof trials.  Ties across classes are therefore resolved pessimistically
(e.g. all-equal scores give EER 1.0, not 0.5), matching published numbers.

Also: ASVspoof 5 min/act DCF and Cllr, and the ASVspoof 2019 (legacy) and 2021
min t-DCF, each following the arithmetic of the official package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "det_curve", "compute_eer", "eer", "per_domain_eer",
    "min_dcf", "act_dcf", "cllr", "min_tdcf_2019", "min_tdcf_2021", "metric_table",
    "TDCF_2019_COST_MODEL", "TDCF_2021_COST_MODEL",
]


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


def _score_pair(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    bona = _as_scores(bonafide_scores, "bona fide scores")
    spoof = _as_scores(spoof_scores, "spoof scores")
    if bona.size == 0:
        raise ValueError("no bona fide scores")
    if spoof.size == 0:
        raise ValueError("no spoof scores")
    return bona, spoof


def det_curve(
    bonafide_scores: ArrayLike, spoof_scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (frr, far, thresholds) exactly as the official ASVspoof ``compute_det_curve``."""
    bona, spoof = _score_pair(bonafide_scores, spoof_scores)
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


# ---------------------------------------------------------------------------
# Detection costs (ASVspoof 5 track 1), Cllr and the legacy / 2021 t-DCF.
# Each function mirrors the arithmetic of the official evaluation packages so
# that results agree with them to the last bit where the official code is exact.
# ---------------------------------------------------------------------------
def _check_dcf_params(p_spoof: float, c_miss: float, c_fa: float) -> None:
    if not (np.isfinite(p_spoof) and 0.0 < p_spoof < 1.0):
        raise ValueError(f"p_spoof must lie strictly between 0 and 1, got {p_spoof!r}")
    for name, c in (("c_miss", c_miss), ("c_fa", c_fa)):
        if not (np.isfinite(c) and c > 0):
            raise ValueError(f"{name} must be a positive finite cost, got {c!r}")


def min_dcf(
    bonafide_scores: ArrayLike, spoof_scores: ArrayLike,
    p_spoof: float = 0.05, c_miss: float = 1.0, c_fa: float = 10.0,
) -> tuple[float, float]:
    """Return (normalised minimum DCF, threshold) as ASVspoof 5 ``compute_mindcf``.

    DCF(k) = C_miss·P_miss(k)·(1 − P_spoof) + C_fa·P_fa(k)·P_spoof over the
    :func:`det_curve` operating points (P_miss = frr, P_fa = far), normalised by
    min(C_miss·(1 − P_spoof), C_fa·P_spoof); the first minimum wins.  The
    threshold is ``det_curve``'s: trials sorted up to it are rejected.  Because the
    curve contains "accept all" and "reject all", the result is never above 1.
    As in the official code the spoof prior is written ``1 − (1 − P_spoof)``.
    """
    _check_dcf_params(p_spoof, c_miss, c_fa)
    frr, far, thresholds = det_curve(bonafide_scores, spoof_scores)
    p_target = 1 - p_spoof
    c_det = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    k = int(np.argmin(c_det))
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[k] / c_def), float(thresholds[k])


def act_dcf(
    bonafide_scores: ArrayLike, spoof_scores: ArrayLike,
    p_spoof: float = 0.05, c_miss: float = 1.0, c_fa: float = 10.0,
) -> float:
    """Return the normalised actual DCF of natural-log LLR scores (ASVspoof 5 ``compute_actDCF``).

    Bayes threshold τ = −ln β, β = C_miss(1 − P_spoof)/(C_fa·P_spoof) (τ ≈ −0.642 at
    the defaults).  A trial is accepted as bona fide when score ≥ τ: the official
    code counts misses as ``bonafide < τ`` and false alarms as ``spoof >= τ``, so a
    score exactly at τ is accepted.  Unlike min DCF this can exceed 1 (e.g. 1.9 for
    "reject everything" at the defaults).
    """
    _check_dcf_params(p_spoof, c_miss, c_fa)
    bona, spoof = _score_pair(bonafide_scores, spoof_scores)
    tau = -np.log(c_miss * (1 - p_spoof) / (c_fa * p_spoof))
    rate_miss = np.sum(bona < tau) / bona.size
    rate_fa = np.sum(spoof >= tau) / spoof.size
    dcf = c_miss * (1 - p_spoof) * rate_miss + c_fa * p_spoof * rate_fa
    return float(dcf / min(c_fa * p_spoof, c_miss * (1 - p_spoof)))


def cllr(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> float:
    """Return Cllr in bits: ½[mean log2(1 + e^(−s_bona)) + mean log2(1 + e^(s_spoof))].

    Same value as ASVspoof 5 ``calculate_CLLR`` but computed with ``logaddexp`` so
    that large-magnitude LLRs neither overflow nor lose precision.  All-zero
    scores (an uninformative, calibrated system) give exactly 1.0.
    """
    bona, spoof = _score_pair(bonafide_scores, spoof_scores)
    nats = 0.5 * (np.mean(np.logaddexp(0.0, -bona)) + np.mean(np.logaddexp(0.0, spoof)))
    return float(nats / np.log(2))


# Official default cost models (ASVspoof 2019 ``evaluate_tDCF_asvspoof19.py`` and
# ASVspoof 2021 ``evaluate.py``), written exactly as there: Ptar = (1 − Pspoof)·0.99.
TDCF_2019_COST_MODEL = MappingProxyType({
    "Pspoof": 0.05, "Ptar": (1 - 0.05) * 0.99, "Pnon": (1 - 0.05) * 0.01,
    "Cmiss_asv": 1, "Cfa_asv": 10, "Cmiss_cm": 1, "Cfa_cm": 10,
})
TDCF_2021_COST_MODEL = MappingProxyType({
    "Pspoof": 0.05, "Ptar": (1 - 0.05) * 0.99, "Pnon": (1 - 0.05) * 0.01,
    "Cmiss": 1, "Cfa": 10, "Cfa_spoof": 10,
})


def _cost_model(defaults: Mapping[str, float], override: Mapping[str, float] | None) -> dict:
    model = dict(defaults)
    unknown = sorted(set(override or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown cost model key(s) {unknown}; expected {sorted(defaults)}")
    model.update(override or {})
    for key, value in model.items():
        try:
            model[key] = value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"cost model {key} must be a number, got {value!r}") from None
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"cost model {key} must be finite and non-negative, got {value!r}")
    if abs(model["Ptar"] + model["Pnon"] + model["Pspoof"] - 1) > 1e-10:
        raise ValueError("cost model priors Ptar + Pnon + Pspoof must sum to one")
    return model


def _tdcf_inputs(bona_cm, spoof_cm, asv_target, asv_nontarget, asv_spoof):
    """CM DET curve plus the ASV rates at the ASV EER threshold (official ``obtain_asv_error_rates``).

    The official code takes the ASV threshold from ``compute_eer`` but then counts
    misses as ``target < thr`` and false alarms as ``score >= thr``; that is kept.
    """
    bona, spoof = _score_pair(bona_cm, spoof_cm)
    if np.unique(np.concatenate((bona, spoof))).size < 3:
        raise ValueError("CM scores must be soft scores, not binary decisions (< 3 unique values)")
    tar = _as_scores(asv_target, "ASV target scores")
    non = _as_scores(asv_nontarget, "ASV nontarget scores")
    spf = _as_scores(asv_spoof, "ASV spoof scores")
    for arr, name in ((tar, "target"), (non, "nontarget"), (spf, "spoof")):
        if arr.size == 0:
            raise ValueError(f"no ASV {name} scores")
    _, asv_thr = compute_eer(tar, non)
    rates = {
        "Pfa_asv": np.sum(non >= asv_thr) / non.size,
        "Pmiss_asv": np.sum(tar < asv_thr) / tar.size,
        "Pmiss_spoof_asv": np.sum(spf < asv_thr) / spf.size,
        "Pfa_spoof_asv": np.sum(spf >= asv_thr) / spf.size,
    }
    return det_curve(bona, spoof), rates


def min_tdcf_2019(
    bonafide_cm: ArrayLike, spoof_cm: ArrayLike,
    asv_target: ArrayLike, asv_nontarget: ArrayLike, asv_spoof: ArrayLike,
    cost_model: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """Return (min normalised legacy t-DCF, CM threshold) as ASVspoof 2019 ``compute_tDCF``.

    C1 = Ptar(Cmiss_cm − Cmiss_asv·Pmiss_asv) − Pnon·Cfa_asv·Pfa_asv,
    C2 = Cfa_cm·Pspoof·(1 − Pmiss_spoof_asv);
    t-DCF = (C1·Pmiss_cm + C2·Pfa_cm)/min(C1, C2), minimised over ``det_curve``
    points (first minimum).  A perfect CM scores 0, and the minimum is never above 1.
    ``cost_model`` overrides keys of :data:`TDCF_2019_COST_MODEL`.  Raises
    ValueError where the official code exits (C1 or C2 < 0, priors not summing to
    one, < 3 unique CM scores, no ASV spoof scores) and where it would divide by
    zero (min(C1, C2) = 0, e.g. an ASV that rejects every spoof).
    """
    m = _cost_model(TDCF_2019_COST_MODEL, cost_model)
    (pmiss_cm, pfa_cm, thresholds), r = _tdcf_inputs(
        bonafide_cm, spoof_cm, asv_target, asv_nontarget, asv_spoof)
    c1 = m["Ptar"] * (m["Cmiss_cm"] - m["Cmiss_asv"] * r["Pmiss_asv"]) - \
        m["Pnon"] * m["Cfa_asv"] * r["Pfa_asv"]
    c2 = m["Cfa_cm"] * m["Pspoof"] * (1 - r["Pmiss_spoof_asv"])
    if c1 < 0 or c2 < 0:
        raise ValueError(f"t-DCF weights must be non-negative (C1={c1:.6g}, C2={c2:.6g}); "
                         "check the ASV scores and cost model")
    if min(c1, c2) == 0:
        raise ValueError(f"t-DCF normaliser min(C1, C2) is zero (C1={c1:.6g}, C2={c2:.6g})")
    tdcf_norm = (c1 * pmiss_cm + c2 * pfa_cm) / np.minimum(c1, c2)
    k = int(np.argmin(tdcf_norm))
    return float(tdcf_norm[k]), float(thresholds[k])


def min_tdcf_2021(
    bonafide_cm: ArrayLike, spoof_cm: ArrayLike,
    asv_target: ArrayLike, asv_nontarget: ArrayLike, asv_spoof: ArrayLike,
    cost_model: Mapping[str, float] | None = None,
) -> tuple[float, float]:
    """Return (min normalised t-DCF, CM threshold) as the ASVspoof 2021 ``compute_tDCF``.

    C0 = Ptar·Cmiss·Pmiss_asv + Pnon·Cfa·Pfa_asv, C1 = Ptar·Cmiss − C0,
    C2 = Pspoof·Cfa_spoof·Pfa_spoof_asv;
    t-DCF = (C0 + C1·Pmiss_cm + C2·Pfa_cm)/(C0 + min(C1, C2)), minimised over
    ``det_curve`` points.  A perfect CM scores C0/(C0 + min(C1, C2)); the minimum is
    never above 1.  ``cost_model`` overrides keys of :data:`TDCF_2021_COST_MODEL`.
    Raises ValueError where the official code exits (C0, C1 or C2 < 0, ...) and
    where the normaliser is zero.
    """
    m = _cost_model(TDCF_2021_COST_MODEL, cost_model)
    (pmiss_cm, pfa_cm, thresholds), r = _tdcf_inputs(
        bonafide_cm, spoof_cm, asv_target, asv_nontarget, asv_spoof)
    c0 = m["Ptar"] * m["Cmiss"] * r["Pmiss_asv"] + m["Pnon"] * m["Cfa"] * r["Pfa_asv"]
    c1 = m["Ptar"] * m["Cmiss"] - (
        m["Ptar"] * m["Cmiss"] * r["Pmiss_asv"] + m["Pnon"] * m["Cfa"] * r["Pfa_asv"])
    c2 = m["Pspoof"] * m["Cfa_spoof"] * r["Pfa_spoof_asv"]
    if c0 < 0 or c1 < 0 or c2 < 0:
        raise ValueError(f"t-DCF weights must be non-negative (C0={c0:.6g}, C1={c1:.6g}, "
                         f"C2={c2:.6g}); check the ASV scores and cost model")
    default = c0 + np.minimum(c1, c2)
    if default == 0:
        raise ValueError(f"t-DCF normaliser C0 + min(C1, C2) is zero (C0={c0:.6g}, "
                         f"C1={c1:.6g}, C2={c2:.6g})")
    tdcf_norm = (c0 + c1 * pmiss_cm + c2 * pfa_cm) / default
    k = int(np.argmin(tdcf_norm))
    return float(tdcf_norm[k]), float(thresholds[k])


def metric_table(scores: ArrayLike, labels: ArrayLike, *, llr: bool = False) -> dict[str, float]:
    """Return {"eer", "min_dcf"} (+ "act_dcf", "cllr" when ``llr``: scores are calibrated LLRs)."""
    s = _as_scores(scores, "scores")
    is_bona = _as_labels(labels, s.shape[0])
    bona, spoof = _score_pair(s[is_bona], s[~is_bona])
    table = {"eer": compute_eer(bona, spoof)[0], "min_dcf": min_dcf(bona, spoof)[0]}
    if llr:
        table["act_dcf"] = act_dcf(bona, spoof)
        table["cllr"] = cllr(bona, spoof)
    return table
