"""DET plots on normal-deviate (probit) axes, rendered headless with the Agg canvas."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy.stats import norm

__all__ = ["det_plot", "DET_TICKS"]

#: Tick positions as error-rate fractions (labelled in %).
DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
_LIMITS = (0.0005, 0.6)  # axis range as fractions
_EPS = 1e-6  # rates of exactly 0 / 1 are clipped here before the probit transform


def _rates(values: ArrayLike, what: str, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} of curve {name!r} must be a non-empty 1-D array")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{what} of curve {name!r} must be finite rates in [0, 1]")
    return arr


def det_plot(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw one DET line per entry ``{label: (frr, far)}`` and save a PNG at ``path``.

    ``frr``/``far`` are as returned by :func:`metadg.metrics.det_curve`.  The x axis
    is the false acceptance rate (spoof accepted), the y axis the false rejection
    rate (bona fide rejected), both on probit scales (``scipy.stats.norm.ppf``) with
    ticks at 0.1, 0.5, 1, 2, 5, 10, 20, 40 %.  Each line's EER point (official
    procedure: mean of frr and far where |frr − far| is smallest) is marked on the
    diagonal and given in the legend.  Parent folders are created; returns the path.
    """
    if not curves:
        raise ValueError("no curves to plot")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(5.5, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    probit = lambda p: norm.ppf(np.clip(p, _EPS, 1 - _EPS))  # noqa: E731

    for name, pair in curves.items():
        if len(pair) != 2:
            raise ValueError(f"curve {name!r} must be a (frr, far) pair")
        frr, far = _rates(pair[0], "frr", name), _rates(pair[1], "far", name)
        if frr.shape != far.shape:
            raise ValueError(f"curve {name!r}: frr and far have different lengths "
                             f"({frr.size} vs {far.size})")
        k = int(np.argmin(np.abs(frr - far)))
        eer = float(np.mean((frr[k], far[k])))
        (line,) = ax.plot(probit(far), probit(frr), lw=1.5, label=f"{name} (EER {100 * eer:.2f}%)")
        ax.plot(probit(eer), probit(eer), "o", ms=6, mfc="none", color=line.get_color())

    lo, hi = norm.ppf(_LIMITS)
    ax.plot([lo, hi], [lo, hi], ls=":", lw=0.8, color="grey")
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, labels)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(True, ls="--", lw=0.5, alpha=0.6)
    ax.set_xlabel("False acceptance rate, spoof accepted (%)")
    ax.set_ylabel("False rejection rate, bona fide rejected (%)")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
