"""Tests for min/act DCF, Cllr, t-DCF 2019/2021 and metric_table (metadg.metrics), and det_plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metadg.tasks.spoof.metrics import (
    TDCF_2019_COST_MODEL,
    TDCF_2021_COST_MODEL,
    act_dcf,
    cllr,
    compute_eer,
    det_curve,
    metric_table,
    min_dcf,
    min_tdcf_2019,
    min_tdcf_2021,
)

TAU = -math.log(1.9)  # Bayes threshold at P_spoof 0.05, C_miss 1, C_fa 10


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_bona, n_spoof = rng.integers(1, 60, size=2)
    bona = rng.normal(rng.uniform(-1, 2), 1.0, n_bona)
    spoof = rng.normal(0.0, rng.uniform(0.3, 2.0), n_spoof)
    if seed % 2 == 0:  # integer-rounded: many ties within and across classes
        bona, spoof = np.round(bona), np.round(spoof)
    return bona, spoof


# ---------------------------------------------------------------------------
# min DCF
# ---------------------------------------------------------------------------
def brute_force_min_dcf(bona, spoof, p_spoof=0.05, c_miss=1.0, c_fa=10.0):
    """Reject every trial with score <= t, for t = -inf and each unique score."""
    bona, spoof = list(map(float, bona)), list(map(float, spoof))
    best = math.inf
    for t in [-math.inf] + sorted(set(bona + spoof)):
        p_miss = sum(s <= t for s in bona) / len(bona)
        p_fa = sum(s > t for s in spoof) / len(spoof)
        best = min(best, c_miss * p_miss * (1 - p_spoof) + c_fa * p_fa * p_spoof)
    return best / min(c_miss * (1 - p_spoof), c_fa * p_spoof)


def test_min_dcf_hand_computed():
    # sorted: .1s .2s .3b .4s .8b .9b; frr=[0,0,0,1/3,1/3,2/3,1], far=[1,2/3,1/3,1/3,0,0,0]
    # DCF = .95*frr + .5*far = [.5, .3333, .1667, .4833, .3167, .6333, .95] -> min 1/6 at
    # k=2 (threshold .2); normaliser min(.95, .5) = .5 -> min DCF = 1/3.
    value, thr = min_dcf([0.9, 0.8, 0.3], [0.1, 0.4, 0.2])
    assert value == pytest.approx(1 / 3, abs=1e-15)
    assert thr == 0.2


def test_min_dcf_hand_computed_other_costs():
    # Same DET; P_spoof .5, C_miss = C_fa = 1: DCF = .5 frr + .5 far
    # = [.5, .3333, .1667, .3333, .1667, .3333, .5]; first min k=2 (thr .2); norm .5 -> 1/3.
    value, thr = min_dcf([0.9, 0.8, 0.3], [0.1, 0.4, 0.2], p_spoof=0.5, c_miss=1, c_fa=1)
    assert value == pytest.approx(1 / 3)
    assert thr == 0.2


def test_min_dcf_perfectly_separated_is_zero():
    assert min_dcf([3.0, 4.0, 5.0], [1.0, 2.0]) == (0.0, 2.0)


@pytest.mark.parametrize("bona,spoof", [([1.0, 2.0], [3.0, 4.0]), ([0.5] * 3, [0.5] * 4)])
def test_min_dcf_useless_system_is_one(bona, spoof):
    # Inverted or all-tied: best is "accept all" (C_fa*P_spoof = .5) or "reject all"
    # (C_miss*(1-P_spoof) = .95); min = .5 = the normaliser -> exactly 1.0.
    assert min_dcf(bona, spoof)[0] == 1.0


@pytest.mark.parametrize("seed", range(120))
def test_min_dcf_matches_brute_force(seed):
    bona, spoof = random_case(seed)
    params = [dict(), dict(p_spoof=0.5, c_miss=1.0, c_fa=1.0), dict(p_spoof=0.2, c_miss=3.0, c_fa=0.5)]
    for kw in params:
        value, thr = min_dcf(bona, spoof, **kw)
        assert value == pytest.approx(brute_force_min_dcf(bona, spoof, **kw), rel=1e-12, abs=1e-15)
        assert 0.0 <= value <= 1.0
        # The returned threshold realises the minimum with the rule "reject score <= thr".
        p = kw.get("p_spoof", 0.05)
        cm, cf = kw.get("c_miss", 1.0), kw.get("c_fa", 10.0)
        cost = cm * np.mean(bona <= thr) * (1 - p) + cf * np.mean(spoof > thr) * p
        assert cost / min(cm * (1 - p), cf * p) == pytest.approx(value, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(10))
def test_min_dcf_matches_official_loop(seed):
    # The official compute_mindcf: strict '<' loop over det_curve points (first minimum).
    bona, spoof = random_case(seed)
    frr, far, thresholds = det_curve(bona, spoof)
    best, best_thr = math.inf, None
    for i in range(len(frr)):
        c = 1.0 * frr[i] * 0.95 + 10.0 * far[i] * (1 - 0.95)
        if c < best:
            best, best_thr = c, thresholds[i]
    assert min_dcf(bona, spoof) == (best / min(0.95, 10.0 * (1 - 0.95)), best_thr)


def test_min_dcf_rank_invariant():
    bona, spoof = random_case(3)
    assert min_dcf(bona, spoof)[0] == min_dcf(2 * bona + 7, 2 * spoof + 7)[0]


# ---------------------------------------------------------------------------
# act DCF
# ---------------------------------------------------------------------------
def test_tau_value():
    assert TAU == pytest.approx(-0.6418538861723947)


def test_act_dcf_hand_computed():
    # tau = -0.6419.  bona [1, -.5, -.7, -2]: -.7 and -2 are < tau -> P_miss = 2/4.
    # spoof [-.6, -.65, -3, .2, -1]: -.6 and .2 are >= tau -> P_fa = 2/5.
    # (.95*.5 + 10*.05*.4) / min(.5, .95) = (.475 + .2) / .5 = 1.35
    assert act_dcf([1.0, -0.5, -0.7, -2.0], [-0.6, -0.65, -3.0, 0.2, -1.0]) == pytest.approx(1.35)


def test_act_dcf_score_at_threshold_is_accepted():
    # Official: misses are bona < tau, false alarms spoof >= tau.  A bona fide trial at
    # tau is therefore accepted (no miss), and a spoof trial at tau is accepted (FA).
    assert act_dcf([TAU], [TAU - 1]) == 0.0
    # spoof at tau: P_fa = 1/2 -> .5*.5/.5 = .5
    assert act_dcf([TAU + 1], [TAU, TAU - 1]) == pytest.approx(0.5)


def test_act_dcf_accept_all_and_reject_all():
    assert act_dcf([5.0, 6.0], [4.0, 3.0]) == pytest.approx(1.0)  # all accepted: .5/.5
    assert act_dcf([-5.0, -6.0], [-4.0, -3.0]) == pytest.approx(1.9)  # all rejected: .95/.5


def test_shift_changes_act_dcf_but_not_min_dcf():
    rng = np.random.default_rng(0)
    bona, spoof = rng.normal(2, 1.5, 500), rng.normal(-2, 1.5, 500)
    shifted = (bona + 3.0, spoof + 3.0)
    assert min_dcf(*shifted) == (min_dcf(bona, spoof)[0], min_dcf(bona, spoof)[1] + 3.0)
    assert act_dcf(*shifted) != act_dcf(bona, spoof)
    assert act_dcf(*shifted) >= min_dcf(*shifted)[0]


@pytest.mark.parametrize("seed", range(10))
def test_act_dcf_not_below_min_dcf(seed):
    bona, spoof = random_case(seed)
    assert act_dcf(bona, spoof) >= min_dcf(bona, spoof)[0] - 1e-12


# ---------------------------------------------------------------------------
# Cllr
# ---------------------------------------------------------------------------
def test_cllr_all_zero_is_exactly_one():
    assert cllr([0.0, 0.0, 0.0], [0.0, 0.0]) == 1.0


def test_cllr_hand_computed():
    # bona ln3: log2(1 + 1/3) = log2(4/3); spoof -ln3: log2(1 + 1/3) -> Cllr = log2(4/3)
    assert cllr([math.log(3)], [-math.log(3)]) == pytest.approx(math.log2(4 / 3), rel=1e-14)
    # bona [0, ln3]: (1 + log2(4/3))/2; spoof [ln3]: log2(4) = 2 -> ((1+.415)/2 + 2)/2
    expected = 0.5 * ((1 + math.log2(4 / 3)) / 2 + 2.0)
    assert cllr([0.0, math.log(3)], [math.log(3)]) == pytest.approx(expected, rel=1e-14)


def test_cllr_calibrated_large_margin_near_zero():
    # True LLRs of N(+d/2, 1) vs N(-d/2, 1) are N(+-d^2/2, d^2); d = 10 -> mean +-50.
    rng = np.random.default_rng(0)
    d = 10.0
    bona = rng.normal(d * d / 2, d, 5000)
    spoof = rng.normal(-d * d / 2, d, 5000)
    assert cllr(bona, spoof) < 1e-3


def test_cllr_is_numerically_stable():
    value = cllr([-1000.0, 1000.0], [1000.0, -1000.0])
    assert math.isfinite(value)
    assert value == pytest.approx(0.5 * (1000 / 2 + 1000 / 2) / math.log(2))
    assert cllr([800.0], [-800.0]) == 0.0


# ---------------------------------------------------------------------------
# t-DCF 2019 (legacy) and 2021
# ---------------------------------------------------------------------------
# ASV: tar [1,2,3,4], non [-2,-1,0,5]; sorted -2n -1n 0n 1t 2t 3t 4t 5n
# frr=[0,0,0,0,.25,.5,.75,1,1], far=[1,.75,.5,.25,.25,.25,.25,.25,0] -> EER k=4, thr = 1.
# Official rates at thr=1: Pfa_asv = mean(non >= 1) = 1/4, Pmiss_asv = mean(tar < 1) = 0,
# spoof [.5, 1, 3, -3]: Pfa_spoof_asv = mean(>= 1) = 1/2, Pmiss_spoof_asv = 1/2.
ASV = dict(asv_target=[1.0, 2.0, 3.0, 4.0], asv_nontarget=[-2.0, -1.0, 0.0, 5.0],
           asv_spoof=[0.5, 1.0, 3.0, -3.0])
# CM DET (as above): Pmiss_cm=[0,0,0,1/3,1/3,2/3,1], Pfa_cm=[1,2/3,1/3,1/3,0,0,0].
CM = ([0.9, 0.8, 0.3], [0.1, 0.4, 0.2])


def test_asv_threshold_is_eer_threshold():
    assert compute_eer(ASV["asv_target"], ASV["asv_nontarget"]) == (0.25, 1.0)


def test_default_cost_models():
    assert TDCF_2019_COST_MODEL["Ptar"] == pytest.approx(0.95 * 0.99)
    assert TDCF_2019_COST_MODEL["Pnon"] == pytest.approx(0.95 * 0.01)
    assert dict(TDCF_2019_COST_MODEL, Ptar=0, Pnon=0) == dict(
        Pspoof=0.05, Ptar=0, Pnon=0, Cmiss_asv=1, Cfa_asv=10, Cmiss_cm=1, Cfa_cm=10)
    assert dict(TDCF_2021_COST_MODEL, Ptar=0, Pnon=0) == dict(
        Pspoof=0.05, Ptar=0, Pnon=0, Cmiss=1, Cfa=10, Cfa_spoof=10)
    with pytest.raises(TypeError):
        TDCF_2019_COST_MODEL["Pspoof"] = 0.1  # read-only


def test_tdcf_2019_hand_computed():
    # Ptar=.9405, Pnon=.0095.  C1 = .9405*(1 - 0) - .0095*10*.25 = .91675,
    # C2 = 10*.05*(1 - .5) = .25.  t-DCF = (.91675 Pmiss + .25 Pfa)/.25
    # = [1, .6667, .3333, 1.5556, 1.2222, 2.4444, 3.667] -> min 1/3 at k=2, threshold .2.
    value, thr = min_tdcf_2019(*CM, **ASV)
    assert value == pytest.approx(1 / 3, rel=1e-12)
    assert thr == 0.2


def test_tdcf_2021_hand_computed():
    # C0 = .9405*1*0 + .0095*10*.25 = .02375, C1 = .9405 - .02375 = .91675,
    # C2 = .05*10*.5 = .25; normaliser C0 + min(C1, C2) = .27375.
    # k=0: (.02375 + .25)/.27375 = 1; k=1: (.02375 + .25*2/3)/.27375 = .6956;
    # k=2: (.02375 + .25/3)/.27375 = .391172; k=4: (.02375 + .91675/3)/.27375 = 1.2031
    value, thr = min_tdcf_2021(*CM, **ASV)
    assert value == pytest.approx((0.02375 + 0.25 / 3) / 0.27375, rel=1e-12)
    assert value == pytest.approx(0.391172, abs=1e-6)
    assert thr == 0.2


def test_tdcf_cost_model_override():
    # Cfa_cm = 20 doubles C2 (.5): t-DCF = (.91675 Pmiss + .5 Pfa)/.5; k=2 -> .5/3/.5 = 1/3,
    # k=4 (thr .4): .91675/3/.5 = .6112 -> still 1/3 at .2.
    assert min_tdcf_2019(*CM, **ASV, cost_model={"Cfa_cm": 20})[0] == pytest.approx(1 / 3)


def asv_case(seed: int):
    rng = np.random.default_rng(seed)
    return dict(asv_target=rng.normal(3, 1, 200), asv_nontarget=rng.normal(-3, 1, 200),
                asv_spoof=rng.normal(1.5, 1.5, 200))


@pytest.mark.parametrize("seed", range(6))
def test_tdcf_perfect_and_useless_cm(seed):
    asv = asv_case(seed)
    rng = np.random.default_rng(100 + seed)
    perfect = (rng.uniform(1, 2, 50), rng.uniform(-2, -1, 50))
    useless = (rng.normal(0, 1, 50), rng.normal(0, 1, 50))
    inverted = (perfect[1], perfect[0])

    # 2019: error-free CM -> C1*0 + C2*0 = 0.
    best19 = min_tdcf_2019(*perfect, **asv)[0]
    assert best19 == 0.0
    assert best19 <= min_tdcf_2019(*useless, **asv)[0] <= 1.0
    assert min_tdcf_2019(*inverted, **asv)[0] == 1.0

    # 2021: error-free CM -> C0 / (C0 + min(C1, C2)), the lowest achievable value.
    tar, non, spf = (np.asarray(asv[k]) for k in ("asv_target", "asv_nontarget", "asv_spoof"))
    thr = compute_eer(tar, non)[1]
    m = TDCF_2021_COST_MODEL
    c0 = m["Ptar"] * m["Cmiss"] * np.mean(tar < thr) + m["Pnon"] * m["Cfa"] * np.mean(non >= thr)
    c1 = m["Ptar"] * m["Cmiss"] - c0
    c2 = m["Pspoof"] * m["Cfa_spoof"] * np.mean(spf >= thr)
    best21 = min_tdcf_2021(*perfect, **asv)[0]
    assert best21 == pytest.approx(c0 / (c0 + min(c1, c2)), rel=1e-12)
    assert best21 <= min_tdcf_2021(*useless, **asv)[0] <= 1.0
    assert min_tdcf_2021(*inverted, **asv)[0] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(1, 20, 2))
def test_tdcf_2021_is_affine_in_2019(seed):
    # With equal costs the two share C1 and C2, so t21 = (C0 + min(C1,C2)*t19)/(C0 + min(C1,C2))
    # point by point: the same optimal threshold, and the minima related the same way.
    bona, spoof = random_case(seed)
    asv = asv_case(seed)
    t19, thr19 = min_tdcf_2019(bona, spoof, **asv)
    t21, thr21 = min_tdcf_2021(bona, spoof, **asv)
    tar, non, spf = (np.asarray(asv[k]) for k in ("asv_target", "asv_nontarget", "asv_spoof"))
    thr = compute_eer(tar, non)[1]
    c0 = 0.9405 * np.mean(tar < thr) + 0.0095 * 10 * np.mean(non >= thr)
    mn = min(0.9405 - c0, 0.5 * np.mean(spf >= thr))
    assert thr21 == thr19
    assert t21 == pytest.approx((c0 + mn * t19) / (c0 + mn), rel=1e-10)


def test_tdcf_rejects_negative_weights():
    # Cfa_asv = 1000: C1 = .9405 - .0095*1000*.25 < 0 (the official code exits here).
    with pytest.raises(ValueError, match="non-negative"):
        min_tdcf_2019(*CM, **ASV, cost_model={"Cfa_asv": 1000})
    with pytest.raises(ValueError, match="non-negative"):
        min_tdcf_2021(*CM, **ASV, cost_model={"Cfa": 1000})


def test_tdcf_rejects_zero_normaliser():
    # ASV rejects every spoof -> C2 = 0 -> min(C1, C2) = 0 (official would divide by 0).
    asv = dict(ASV, asv_spoof=[-5.0, -6.0])
    with pytest.raises(ValueError, match="normaliser"):
        min_tdcf_2019(*CM, **asv)
    # 2021 needs C0 = 0 as well.  Even a perfect ASV has Pfa_asv = 1/N_non under the
    # official ">= threshold" rule (thr = 2 = the top nontarget), so set Pnon = 0:
    # C0 = .95*Pmiss_asv = 0 and C2 = 0 -> normaliser 0.
    with pytest.raises(ValueError, match="normaliser"):
        min_tdcf_2021(*CM, asv_target=[3.0, 4.0], asv_nontarget=[1.0, 2.0], asv_spoof=[-5.0],
                      cost_model={"Pnon": 0.0, "Ptar": 0.95})


def test_tdcf_input_errors():
    for fn in (min_tdcf_2019, min_tdcf_2021):
        with pytest.raises(ValueError, match="soft scores"):
            fn([1.0, 1.0], [0.0, 0.0], **ASV)
        with pytest.raises(ValueError, match="no ASV spoof scores"):
            fn(*CM, **dict(ASV, asv_spoof=[]))
        with pytest.raises(ValueError, match="no ASV target scores"):
            fn(*CM, **dict(ASV, asv_target=[]))
        with pytest.raises(ValueError, match="no spoof scores"):
            fn([0.1, 0.2, 0.3], [], **ASV)
        with pytest.raises(ValueError, match="non-finite"):
            fn([0.1, np.nan, 0.3], [0.0], **ASV)
        with pytest.raises(ValueError, match="non-finite"):
            fn(*CM, **dict(ASV, asv_nontarget=[np.inf, 0.0]))
        with pytest.raises(ValueError, match="sum to one"):
            fn(*CM, **ASV, cost_model={"Pspoof": 0.5})
        with pytest.raises(ValueError, match="unknown cost model key"):
            fn(*CM, **ASV, cost_model={"Pspof": 0.05})
        with pytest.raises(ValueError, match="non-negative"):
            fn(*CM, **ASV, cost_model={"Pnon": -0.01, "Ptar": 0.96})
        with pytest.raises(ValueError, match="must be a number"):
            fn(*CM, **ASV, cost_model={"Cfa_spoof" if fn is min_tdcf_2021 else "Cfa_cm": "ten"})


# ---------------------------------------------------------------------------
# metric_table and validation
# ---------------------------------------------------------------------------
def test_metric_table():
    scores = np.array([0.9, 0.1, 0.8, 0.4, 0.3, 0.2])
    labels = [1, 0, 1, 0, 1, 0]
    table = metric_table(scores, labels)
    assert table == {"eer": pytest.approx(1 / 3), "min_dcf": pytest.approx(1 / 3)}
    assert list(table) == ["eer", "min_dcf"]
    full = metric_table(scores, labels, llr=True)
    assert list(full) == ["eer", "min_dcf", "act_dcf", "cllr"]
    bona, spoof = scores[[0, 2, 4]], scores[[1, 3, 5]]
    assert full["act_dcf"] == act_dcf(bona, spoof)
    assert full["cllr"] == cllr(bona, spoof)
    assert all(type(v) is float for v in full.values())


def test_validation_errors():
    for fn in (min_dcf, act_dcf, cllr):
        with pytest.raises(ValueError, match="no bona fide scores"):
            fn([], [0.1])
        with pytest.raises(ValueError, match="no spoof scores"):
            fn([0.1], [])
        with pytest.raises(ValueError, match="1 non-finite"):
            fn([0.1, np.nan], [0.2])
    for kw, match in [({"p_spoof": 0.0}, "p_spoof"), ({"p_spoof": 1.0}, "p_spoof"),
                      ({"c_miss": 0.0}, "c_miss"), ({"c_fa": -1.0}, "c_fa"),
                      ({"c_fa": np.inf}, "c_fa")]:
        for fn in (min_dcf, act_dcf):
            with pytest.raises(ValueError, match=match):
                fn([0.1], [0.2], **kw)
    with pytest.raises(ValueError, match="scores and labels have different lengths"):
        metric_table([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="no spoof scores"):
        metric_table([0.1, 0.2], [1, 1], llr=True)
    with pytest.raises(ValueError, match="labels must be"):
        metric_table([0.1, 0.2], [1, 2])


# ---------------------------------------------------------------------------
# DET plot
# ---------------------------------------------------------------------------
def test_det_plot_writes_png(tmp_path):
    from metadg.tasks.spoof.plots import det_plot

    rng = np.random.default_rng(0)
    curves = {}
    for name, d in [("A", 3.0), ("B", 1.0)]:
        frr, far, _ = det_curve(rng.normal(d, 1, 300), rng.normal(0, 1, 300))
        curves[name] = (frr, far)
    out = det_plot(curves, tmp_path / "sub" / "det.png")
    assert out == tmp_path / "sub" / "det.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_det_plot_errors(tmp_path):
    from metadg.tasks.spoof.plots import det_plot

    with pytest.raises(ValueError, match="no curves"):
        det_plot({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="different lengths"):
        det_plot({"A": ([0, 1], [1, 0.5, 0])}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det_plot({"A": ([0, 1.5], [1, 0])}, tmp_path / "x.png")
