"""Affine score calibration to natural-log LLRs by prior-weighted logistic regression.

Conventions as in :mod:`metadg.metrics`: higher score = more bona fide; labels
1 = bona fide, 0 = spoof.

Model and objective (Brümmer's prior-weighted logistic regression, the
calibration used for ASVspoof 5 actDCF / Cllr).  With target prior
π = P(bona fide) = 1 − P_spoof and the affine map llr(s) = a·s + b, the
posterior log-odds at prior π are ℓ(s) = llr(s) + logit(π), and (a, b) minimise

    J(a, b) = π/N_bona · Σ_bona softplus(−ℓ(s)) + (1 − π)/N_spoof · Σ_spoof softplus(ℓ(s))

with softplus(x) = ln(1 + eˣ).  Weighting each class by prior/count makes the
effective training prior exactly π whatever the class counts; adding logit(π)
inside (equivalently, fitting a weighted logistic regression and subtracting
logit(π) from its intercept) leaves a·s + b as a log-likelihood ratio.  J/ln 2 is
the Cllr at prior π (at π = ½ it is :func:`metadg.metrics.cllr`), a proper
scoring rule: when the true LLR is affine in the score (e.g. two Gaussians of
equal variance) its minimiser tends to that LLR for any π.

J is convex in (a, b).  It is minimised with ``scipy.optimize.minimize``
(trust-region Newton with exact gradient and Hessian) on standardised scores,
with a tiny ridge ``l2·a_std²`` on the standardised slope so that perfectly
separable scores still give a finite (very steep) map instead of diverging.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import expit

from metadg.tasks.spoof.metrics import _as_labels, _as_scores

__all__ = ["Calibrator"]


class Calibrator:
    """Logistic-regression calibrator: ``Calibrator().fit(dev_scores, dev_labels).transform(s)``.

    ``p_spoof`` is the spoof prior the calibration targets (ASVspoof 5: 0.05);
    ``l2`` is the ridge on the slope of standardised scores (see module docstring).
    After ``fit``, ``slope`` and ``offset`` hold llr = slope·score + offset.
    ``to_dict()`` gives ``{"slope", "offset", "prior"}`` (prior = P_spoof), JSON-safe.
    """

    def __init__(self, p_spoof: float = 0.05, l2: float = 1e-6) -> None:
        if not (math.isfinite(p_spoof) and 0.0 < p_spoof < 1.0):
            raise ValueError(f"p_spoof must lie strictly between 0 and 1, got {p_spoof!r}")
        if not (math.isfinite(l2) and l2 >= 0.0):
            raise ValueError(f"l2 must be finite and non-negative, got {l2!r}")
        self.p_spoof = float(p_spoof)
        self.l2 = float(l2)
        self.slope: float | None = None
        self.offset: float | None = None

    @property
    def is_fitted(self) -> bool:
        return self.slope is not None and self.offset is not None

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Calibrator:
        """Fit slope/offset on development scores with 0/1 labels; return self."""
        s = _as_scores(scores, "scores")
        is_bona = _as_labels(labels, s.shape[0])
        n_bona = int(is_bona.sum())
        n_spoof = s.size - n_bona
        if n_bona == 0:
            raise ValueError("no bona fide scores")
        if n_spoof == 0:
            raise ValueError("no spoof scores")

        mu = float(np.mean(s))
        sd = float(np.std(s))
        if not sd > 0:  # all scores equal: no slope to learn, only the offset
            sd = 1.0
        z = (s - mu) / sd
        pi = 1.0 - self.p_spoof
        prior_logit = math.log(pi / self.p_spoof)
        y = np.where(is_bona, 1.0, -1.0)  # ±1 so both classes read softplus(−y·ℓ)
        w = np.where(is_bona, pi / n_bona, self.p_spoof / n_spoof)
        l2 = self.l2

        def objective(theta: np.ndarray):
            a, b = theta
            m = y * (a * z + b + prior_logit)  # margin
            value = np.dot(w, np.logaddexp(0.0, -m)) + l2 * a * a
            g = -w * y * expit(-m)  # d/dℓ of each weighted term
            grad = np.array([np.dot(g, z) + 2 * l2 * a, g.sum()])
            return value, grad

        def hessian(theta: np.ndarray) -> np.ndarray:
            a, b = theta
            p = expit(a * z + b + prior_logit)
            h = w * p * (1.0 - p)
            hzz = np.dot(h, z * z) + 2 * l2
            hz = np.dot(h, z)
            return np.array([[hzz, hz], [hz, h.sum()]])

        res = minimize(objective, np.zeros(2), jac=True, hess=hessian,
                       method="trust-exact", options={"gtol": 1e-10, "maxiter": 500})
        a_std, b_std = (float(v) for v in res.x)
        if not (math.isfinite(a_std) and math.isfinite(b_std)):
            raise ValueError("calibration did not converge to finite parameters")
        # llr = a_std·(s − mu)/sd + b_std  =  slope·s + offset
        self.slope = a_std / sd
        self.offset = b_std - a_std * mu / sd
        return self

    def transform(self, scores: ArrayLike) -> np.ndarray:
        """Map raw scores to calibrated natural-log LLRs (NaN, a skipped utterance, stays NaN)."""
        if not self.is_fitted:
            raise RuntimeError("Calibrator is not fitted; call fit() or from_dict() first")
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"scores must be 1-D, got shape {arr.shape}")
        return self.slope * arr + self.offset

    def fit_transform(self, scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
        return self.fit(scores, labels).transform(scores)

    def to_dict(self) -> dict[str, float]:
        """Return ``{"slope", "offset", "prior"}`` (prior = P_spoof) as plain floats."""
        if not self.is_fitted:
            raise RuntimeError("Calibrator is not fitted; nothing to serialise")
        return {"slope": float(self.slope), "offset": float(self.offset), "prior": self.p_spoof}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        missing = sorted({"slope", "offset", "prior"} - set(data))
        if missing:
            raise ValueError(f"calibration dict lacks key(s) {missing}")
        try:
            slope, offset, prior = (float(data[k]) for k in ("slope", "offset", "prior"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"calibration dict values must be numbers: {exc}") from None
        if not (math.isfinite(slope) and math.isfinite(offset)):
            raise ValueError("calibration slope and offset must be finite")
        cal = cls(p_spoof=prior)
        cal.slope, cal.offset = slope, offset
        return cal

    def __repr__(self) -> str:
        if not self.is_fitted:
            return f"Calibrator(p_spoof={self.p_spoof}, unfitted)"
        return f"Calibrator(slope={self.slope:.6g}, offset={self.offset:.6g}, p_spoof={self.p_spoof})"
