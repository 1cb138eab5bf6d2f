"""Tests for metadg.metrics (official ASVspoof EER procedure)."""

from __future__ import annotations

import numpy as np
import pytest

from metadg.tasks.spoof.metrics import compute_eer, det_curve, eer, per_domain_eer


# ---------------------------------------------------------------------------
# Independent oracle: plain Python, no NumPy sort/cumsum.
# ---------------------------------------------------------------------------
def oracle_det(bona: list[float], spoof: list[float]):
    """Walk the sorted trial list position by position, counting incrementally."""
    trials = [(float(s), 1) for s in bona] + [(float(s), 0) for s in spoof]
    # Python's sort is stable: tied scores keep bona-fide-first concatenation order.
    trials = sorted(trials, key=lambda t: t[0])
    n_bona, n_spoof = len(bona), len(spoof)
    rejected_bona, accepted_spoof = 0, n_spoof
    frr, far, thr = [0.0], [1.0], [trials[0][0] - 0.001]
    for score, label in trials:
        if label == 1:
            rejected_bona += 1
        else:
            accepted_spoof -= 1
        frr.append(rejected_bona / n_bona)
        far.append(accepted_spoof / n_spoof)
        thr.append(score)
    return frr, far, thr


def oracle_eer(bona: list[float], spoof: list[float]) -> tuple[float, float]:
    frr, far, thr = oracle_det(bona, spoof)
    best = 0
    for i in range(1, len(frr)):
        if abs(frr[i] - far[i]) < abs(frr[best] - far[best]):  # strict: first minimum wins
            best = i
    return (frr[best] + far[best]) / 2, thr[best]


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_bona, n_spoof = rng.integers(1, 60, size=2)
    bona = rng.normal(rng.uniform(-1, 2), 1.0, n_bona)
    spoof = rng.normal(0.0, rng.uniform(0.3, 2.0), n_spoof)
    if seed % 2 == 0:  # integer-rounded scores: many ties within and across classes
        bona, spoof = np.round(bona), np.round(spoof)
    return bona, spoof


# ---------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------
def test_hand_computed_basic():
    # sorted: .1s .2s .3b .4s .8b .9b -> labels 0 0 1 0 1 1
    # frr = [0, 0, 0, 1/3, 1/3, 2/3, 1]; far = [1, 2/3, 1/3, 1/3, 0, 0, 0]
    # |frr-far| = [1, 2/3, 1/3, 0, ...] -> k=3, EER=1/3, threshold = thresholds[3] = 0.3
    e, t = compute_eer([0.9, 0.8, 0.3], [0.1, 0.4, 0.2])
    assert e == pytest.approx(1 / 3, abs=1e-15)
    assert t == 0.3


def test_hand_computed_first_minimum_wins():
    # sorted: .2s .6b .65s .7b .9b .95b (nb=4, ns=2)
    # labels 0 1 0 1 1 1 -> frr = [0, 0, .25, .25, .5, .75, 1]
    # far = [1, .5, .5, 0, 0, 0, 0]; |diff| = [1, .5, .25, .25, ...]: tie at k=2 and k=3,
    # argmin takes k=2 -> EER = (.25+.5)/2 = .375, threshold 0.6 (k=3 would give .125).
    e, t = compute_eer([0.6, 0.7, 0.9, 0.95], [0.2, 0.65])
    assert e == 0.375
    assert t == 0.6


def test_perfectly_separated():
    # labels sorted 0 0 1 1: frr=[0,0,0,.5,1], far=[1,.5,0,0,0] -> k=2, EER 0, thr = 2
    e, t = compute_eer([3.0, 4.0], [1.0, 2.0])
    assert e == 0.0
    assert t == 2.0


def test_perfectly_inverted():
    # labels sorted 1 1 0 0: frr=[0,.5,1,1,1], far=[1,1,1,.5,0] -> k=2, EER 1, thr = 2
    e, t = compute_eer([1.0, 2.0], [3.0, 4.0])
    assert e == 1.0
    assert t == 2.0


@pytest.mark.parametrize("n_bona,n_spoof", [(1, 1), (2, 2), (3, 1), (1, 5)])
def test_all_scores_equal(n_bona, n_spoof):
    # The stable sort keeps bona fide (concatenated first) ahead of spoof within the tie,
    # so the sorted labels are 1..1 0..0: identical to the perfectly inverted case.
    # The official procedure therefore gives EER 1.0 (not 0.5) at threshold = the score.
    e, t = compute_eer([0.5] * n_bona, [0.5] * n_spoof)
    assert e == 1.0
    assert t == 0.5


def test_ties_across_classes():
    # sorted: .1s, .5b, .5s (bona first within the tie), .9b -> labels 0 1 0 1
    # frr=[0,0,.5,.5,1], far=[1,.5,.5,0,0] -> k=2, EER .5, thr .5.
    # (Spoof-first tie order would give labels 0 0 1 1 and EER 0.)
    e, t = compute_eer([0.9, 0.5], [0.5, 0.1])
    assert e == 0.5
    assert t == 0.5


def test_det_curve_hand_computed_arrays():
    frr, far, thr = det_curve([0.9, 0.8, 0.3], [0.1, 0.4, 0.2])
    np.testing.assert_allclose(frr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(far, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(thr, [0.099, 0.1, 0.2, 0.3, 0.4, 0.8, 0.9])


def test_integer_and_list_inputs_return_python_floats():
    e, t = compute_eer([3, 4], [1, 2])
    assert type(e) is float and type(t) is float
    assert (e, t) == (0.0, 2.0)
    _, _, thr = det_curve([3, 4], [1, 2])
    assert thr[0] == pytest.approx(0.999)  # min - 0.001 must not be truncated to int


def test_eer_convenience_matches_compute_eer():
    scores = [0.9, 0.1, 0.8, 0.4, 0.3, 0.2]
    labels = np.array([1, 0, 1, 0, 1, 0])
    assert eer(scores, labels) == compute_eer([0.9, 0.8, 0.3], [0.1, 0.4, 0.2])[0]
    assert eer(scores, labels.astype(bool)) == eer(scores, labels.astype(float))


# ---------------------------------------------------------------------------
# Against the independent oracle
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(200))
def test_matches_python_oracle(seed):
    bona, spoof = random_case(seed)
    frr, far, thr = det_curve(bona, spoof)
    o_frr, o_far, o_thr = oracle_det(bona.tolist(), spoof.tolist())
    np.testing.assert_array_equal(frr, o_frr)
    np.testing.assert_array_equal(far, o_far)
    np.testing.assert_array_equal(thr, o_thr)
    assert compute_eer(bona, spoof) == oracle_eer(bona.tolist(), spoof.tolist())


@pytest.mark.parametrize("seed", range(20))
def test_invariant_to_within_class_permutation(seed):
    bona, spoof = random_case(seed)
    rng = np.random.default_rng(1000 + seed)
    assert compute_eer(rng.permutation(bona), rng.permutation(spoof)) == compute_eer(bona, spoof)


@pytest.mark.parametrize("seed", range(1, 40, 2))  # odd seeds: continuous, no ties
def test_consistent_with_sklearn_roc(seed):
    roc_curve = pytest.importorskip("sklearn.metrics").roc_curve
    bona, spoof = random_case(seed)
    scores = np.concatenate([bona, spoof])
    assert np.unique(scores).size == scores.size
    labels = np.concatenate([np.ones(bona.size), np.zeros(spoof.size)])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    # Without ties the official operating points are exactly sklearn's ROC points.
    frr, far, _ = det_curve(bona, spoof)
    ours = sorted(zip(np.round(far, 12), np.round(frr, 12)))
    theirs = sorted(zip(np.round(fpr, 12), np.round(fnr, 12)))
    assert ours == theirs
    # fnr - fpr is non-increasing along sklearn's (decreasing-threshold) order; the EER
    # point is one of the two points around the sign change.
    j = int(np.flatnonzero(fnr - fpr >= 0)[-1])
    around = [fpr[j], fnr[j], fpr[j + 1], fnr[j + 1]]
    e, _ = compute_eer(bona, spoof)
    assert min(around) - 1e-12 <= e <= max(around) + 1e-12


# ---------------------------------------------------------------------------
# per_domain_eer
# ---------------------------------------------------------------------------
def test_per_domain_separated_and_inverted():
    scores = [0.95, 0.5, 0.1, 0.6, 0.9, 0.2, 0.7]
    labels = [0, 1, 0, 1, 0, 0, 1]
    domains = ["B", "bonafide", "A", "bonafide", "B", "A", "bonafide"]
    # bona {.5,.6,.7} shared; A spoof {.1,.2} all below -> 0.0; B spoof {.9,.95} above -> 1.0
    result = per_domain_eer(scores, labels, domains)
    assert result == {"A": 0.0, "B": 1.0}
    assert list(result) == ["A", "B"]  # sorted; the bona fide domain name is not a key


def test_per_domain_uses_all_bona_fide():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=40)
    labels = np.array([1] * 15 + [0] * 25)
    domains = ["x"] * 5 + ["y"] * 10 + ["A07"] * 12 + ["A01"] * 13
    result = per_domain_eer(scores, labels, domains)
    assert list(result) == ["A01", "A07"]
    assert result["A07"] == compute_eer(scores[:15], scores[15:27])[0]
    assert result["A01"] == compute_eer(scores[:15], scores[27:])[0]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def test_empty_classes():
    with pytest.raises(ValueError, match="no bona fide scores"):
        compute_eer([], [0.1, 0.2])
    with pytest.raises(ValueError, match="no spoof scores"):
        compute_eer([0.1, 0.2], [])
    with pytest.raises(ValueError, match="no spoof scores"):
        eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="no bona fide scores"):
        eer([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no bona fide scores"):
        per_domain_eer([0.1, 0.2], [0, 0], ["A", "B"])
    with pytest.raises(ValueError, match="no spoof scores"):
        per_domain_eer([0.1, 0.2], [1, 1], ["A", "B"])


def test_non_finite_scores_reports_count():
    with pytest.raises(ValueError, match="2 non-finite"):
        compute_eer([0.1, np.nan, np.inf], [0.2])
    with pytest.raises(ValueError, match="1 non-finite"):
        compute_eer([0.1], [0.2, -np.inf])
    with pytest.raises(ValueError, match="3 non-finite"):
        eer([np.nan, np.nan, np.inf, 0.3], [1, 0, 1, 0])


def test_length_mismatches():
    with pytest.raises(ValueError, match="scores and labels have different lengths"):
        eer([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="scores and labels have different lengths"):
        per_domain_eer([0.1, 0.2, 0.3], [1, 0], ["A", "A"])
    with pytest.raises(ValueError, match="scores and domains have different lengths"):
        per_domain_eer([0.1, 0.2, 0.3], [1, 0, 0], ["A", "A"])


@pytest.mark.parametrize("bad", [[1, 0, 2], [1, 0, -1], [1, 0, 0.5], [1, 0, np.nan], ["1", "0", "0"]])
def test_invalid_labels(bad):
    with pytest.raises(ValueError, match="labels must be"):
        eer([0.1, 0.2, 0.3], bad)
    with pytest.raises(ValueError, match="labels must be"):
        per_domain_eer([0.1, 0.2, 0.3], bad, ["A", "A", "A"])
