"""Tests for metadg.calibration.Calibrator (prior-weighted logistic-regression calibration)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from metadg.tasks.spoof.calibration import Calibrator
from metadg.tasks.spoof.metrics import act_dcf, cllr, min_dcf


def gaussian_scores(seed: int, n: int, mu_bona=2.0, mu_spoof=-1.0, sd=1.5):
    rng = np.random.default_rng(seed)
    bona, spoof = rng.normal(mu_bona, sd, n), rng.normal(mu_spoof, sd, n)
    scores = np.concatenate([bona, spoof])
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    return scores, labels


def true_llr_params(mu_bona=2.0, mu_spoof=-1.0, sd=1.5):
    # ln N(s; mb, sd) - ln N(s; ms, sd) = (mb - ms)/sd^2 * s - (mb^2 - ms^2)/(2 sd^2)
    return (mu_bona - mu_spoof) / sd**2, -(mu_bona**2 - mu_spoof**2) / (2 * sd**2)


@pytest.mark.parametrize("seed", range(3))
def test_recovers_analytic_llr(seed):
    # slope 3/2.25 = 1.3333, offset -3/4.5 = -0.6667; with 20k trials per class the
    # spread over seeds is about 0.017 (slope) and 0.013 (offset).
    scores, labels = gaussian_scores(seed, 20000)
    cal = Calibrator().fit(scores, labels)
    slope, offset = true_llr_params()
    assert cal.slope == pytest.approx(slope, abs=0.06)
    assert cal.offset == pytest.approx(offset, abs=0.05)


def test_recovery_independent_of_class_balance_and_prior():
    # Prior weighting makes the fit independent of the class proportions: the LLR is the same.
    rng = np.random.default_rng(5)
    bona, spoof = rng.normal(1.0, 1.0, 30000), rng.normal(-1.0, 1.0, 3000)  # true LLR = 2s
    scores = np.concatenate([bona, spoof])
    labels = np.r_[np.ones(bona.size), np.zeros(spoof.size)]
    for p_spoof in (0.05, 0.5):
        cal = Calibrator(p_spoof=p_spoof).fit(scores, labels)
        assert cal.slope == pytest.approx(2.0, abs=0.1)
        assert cal.offset == pytest.approx(0.0, abs=0.08)


def test_calibration_improves_misscaled_scores():
    scores, labels = gaussian_scores(1, 5000)
    slope, offset = true_llr_params()
    true_llr = slope * scores + offset
    is_bona = labels == 1
    for raw in (5.0 * true_llr + 3.0, 0.2 * true_llr - 2.0, -0.5 + 1.0 * true_llr):
        cal = Calibrator().fit(raw, labels)
        llr = cal.transform(raw)
        assert cllr(llr[is_bona], llr[~is_bona]) <= cllr(raw[is_bona], raw[~is_bona])
        assert act_dcf(llr[is_bona], llr[~is_bona]) <= act_dcf(raw[is_bona], raw[~is_bona]) + 1e-12
        # An increasing affine map keeps the ranking, hence min DCF.
        assert cal.slope > 0
        assert min_dcf(llr[is_bona], llr[~is_bona])[0] == pytest.approx(
            min_dcf(raw[is_bona], raw[~is_bona])[0])


def test_fit_minimises_prior_weighted_cross_entropy():
    # Perturbing the fitted parameters cannot lower the objective (convex, at its minimum).
    scores, labels = gaussian_scores(2, 400)
    cal = Calibrator(l2=0.0).fit(scores, labels)
    pi = 0.95
    bona, spoof = scores[labels == 1], scores[labels == 0]

    def objective(a, b):
        lo = math.log(pi / (1 - pi))
        return (pi * np.mean(np.logaddexp(0, -(a * bona + b + lo)))
                + (1 - pi) * np.mean(np.logaddexp(0, a * spoof + b + lo)))

    best = objective(cal.slope, cal.offset)
    for da, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3), (1e-3, -1e-3)]:
        assert objective(cal.slope + da, cal.offset + db) >= best


def test_separable_and_constant_scores_stay_finite():
    cal = Calibrator().fit([3.0, 4.0, 5.0, -1.0, -2.0], [1, 1, 1, 0, 0])
    assert math.isfinite(cal.slope) and math.isfinite(cal.offset) and cal.slope > 0
    # All scores equal: no information, so the LLR is 0 whatever the class counts.
    cal = Calibrator().fit([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 1])
    assert cal.slope == pytest.approx(0.0, abs=1e-8)
    assert cal.offset == pytest.approx(0.0, abs=1e-8)


def test_dict_round_trip():
    scores, labels = gaussian_scores(0, 500)
    cal = Calibrator().fit(scores, labels)
    d = cal.to_dict()
    assert set(d) == {"slope", "offset", "prior"} and d["prior"] == 0.05
    restored = Calibrator.from_dict(json.loads(json.dumps(d)))
    assert restored.to_dict() == d
    x = np.linspace(-5, 5, 11)
    np.testing.assert_array_equal(restored.transform(x), cal.transform(x))
    np.testing.assert_array_equal(cal.transform(x), cal.slope * x + cal.offset)
    np.testing.assert_array_equal(cal.fit_transform(scores, labels), cal.transform(scores))


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        Calibrator().transform([0.1])
    with pytest.raises(RuntimeError, match="not fitted"):
        Calibrator().to_dict()
    with pytest.raises(ValueError, match="p_spoof"):
        Calibrator(p_spoof=1.0)
    with pytest.raises(ValueError, match="no spoof scores"):
        Calibrator().fit([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="no bona fide scores"):
        Calibrator().fit([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="different lengths"):
        Calibrator().fit([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        Calibrator().fit([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="labels must be"):
        Calibrator().fit([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="lacks key"):
        Calibrator.from_dict({"slope": 1.0, "offset": 0.0})
    with pytest.raises(ValueError, match="p_spoof"):
        Calibrator.from_dict({"slope": 1.0, "offset": 0.0, "prior": 0.0})
    with pytest.raises(ValueError, match="finite"):
        Calibrator.from_dict({"slope": float("nan"), "offset": 0.0, "prior": 0.05})
    with pytest.raises(ValueError, match="numbers"):
        Calibrator.from_dict({"slope": "a", "offset": 0.0, "prior": 0.05})
    cal = Calibrator.from_dict({"slope": 2.0, "offset": 1.0, "prior": 0.05})
    # A skipped utterance (on_error: skip) has a NaN score; it stays NaN, the others are mapped.
    out = cal.transform([np.nan, 1.0])
    assert np.isnan(out[0]) and out[1] == 3.0
    with pytest.raises(ValueError, match="1-D"):
        cal.transform([[1.0]])
