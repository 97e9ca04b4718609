"""Bjontegaard delta rate and delta PSNR with piecewise cubic (PCHIP) interpolation.

Why PCHIP: the original cubic-polynomial fit (VCEG-M33) can overshoot and
give misleading BD-rates; PCHIP is what the JCT-VC/JVET common test
conditions spreadsheets use and what learned-codec papers' compare scripts
(e.g. DCVC's, ``scipy.interpolate.pchip_interpolate`` over log-rate) use.

BD-rate: log-rate is interpolated as a PCHIP function of quality (PSNR in dB,
or any metric where higher is better) for each curve; the mean difference
``test - anchor`` of the two over the quality interval both curves cover is
turned back into a rate ratio: ``BD-rate = exp(mean diff) - 1``, reported in
percent (negative: the test codec needs fewer bits for the same quality).
The integral is exact (``PchipInterpolator.integrate``), where DCVC's script
samples 100 points and uses the trapezoid rule (differences ~1e-3 %).
Identical to the ``bjontegaard`` package's ``bd_rate(..., method="pchip")``.

BD-PSNR swaps the axes: quality as a function of log-rate, averaged over the
common log-rate interval, in dB (positive: the test codec is better).

Curves that cannot give a meaningful number return NaN with a ``reason``
instead of raising, so one bad sequence does not sink a whole report:

* fewer than ``min_points`` (default 4, as the cubic methods need) points,
  non-finite values, or rates <= 0;
* two points with the same rate, or quality not strictly increasing with
  rate (a non-monotonic curve: the interpolant would not be a function of
  quality, so the "rate at equal quality" is ambiguous);
* quality ranges (rate ranges for BD-PSNR) that do not overlap.

``overlap`` is the common interval as a fraction of the union of both
intervals; below 0.75 (the ``bjontegaard`` package's warning threshold) the
result extrapolates little but summarises only part of the curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["MIN_POINTS", "BDResult", "bd_psnr", "bd_rate"]

MIN_POINTS = 4
LOW_OVERLAP = 0.75


@dataclass(frozen=True)
class BDResult:
    """A BD value (percent for BD-rate, dB for BD-PSNR), or NaN and the reason why not."""

    value: float
    reason: str | None = None
    overlap: float | None = None  #: common / union interval of the integration axis, in [0, 1]

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)

    def __float__(self) -> float:
        return self.value

    def to_dict(self) -> dict[str, float | str | None]:
        return {"value": self.value if self.ok else None, "reason": self.reason, "overlap": self.overlap}


class _Invalid(Exception):
    pass


def _curve(rate: Sequence[float], quality: Sequence[float], name: str, min_points: int) -> tuple[np.ndarray, ...]:
    """Validated ``(log rate, quality)`` sorted by rate, or _Invalid with the reason."""
    r = np.asarray(rate, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if r.size != q.size:
        raise _Invalid(f"{name} curve has {r.size} rates but {q.size} quality values")
    if r.size < min_points:
        raise _Invalid(f"{name} curve has {r.size} points; BD needs at least {min_points}")
    if not (np.isfinite(r).all() and np.isfinite(q).all()):
        raise _Invalid(f"{name} curve has non-finite values")
    if (r <= 0).any():
        raise _Invalid(f"{name} curve has a rate <= 0")
    order = np.argsort(r, kind="stable")
    r, q = r[order], q[order]
    if (np.diff(r) <= 0).any():
        raise _Invalid(f"{name} curve has two points with the same rate")
    if (np.diff(q) <= 0).any():
        raise _Invalid(f"{name} curve is not monotonic: quality does not increase with rate "
                       f"({', '.join(f'{x:.4g}' for x in q)})")
    return np.log(r), q


def _mean_gap(xa: np.ndarray, ya: np.ndarray, xt: np.ndarray, yt: np.ndarray,
              unit: str) -> tuple[float, float]:
    """Mean of ``f_test - f_anchor`` (PCHIP through (x, y)) over the common x-interval, and the overlap."""
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if hi <= lo:
        raise _Invalid(f"curves do not overlap: anchor {_span(xa, unit)}, test {_span(xt, unit)}")
    union = max(xa[-1], xt[-1]) - min(xa[0], xt[0])
    fa, ft = PchipInterpolator(xa, ya), PchipInterpolator(xt, yt)
    gap = (float(ft.integrate(lo, hi)) - float(fa.integrate(lo, hi))) / float(hi - lo)
    return gap, float((hi - lo) / union)


def _span(x: np.ndarray, unit: str) -> str:
    if unit == "log-rate":
        return f"{math.exp(x[0]):.4g}..{math.exp(x[-1]):.4g}"
    return f"{x[0]:.4g}..{x[-1]:.4g} {unit}"


def bd_rate(anchor_rate: Sequence[float], anchor_quality: Sequence[float],
            test_rate: Sequence[float], test_quality: Sequence[float], *,
            min_points: int = MIN_POINTS, unit: str = "dB") -> BDResult:
    """BD-rate of test vs anchor in percent (negative = test saves bits), or NaN with a reason.

    Rates in any unit proportional to bits (bytes, bpp, kbps: the ratio is
    the same); quality in any higher-is-better metric (``unit`` only labels
    messages). Points may come in any order.
    """
    try:
        la, qa = _curve(anchor_rate, anchor_quality, "anchor", min_points)
        lt, qt = _curve(test_rate, test_quality, "test", min_points)
        gap, overlap = _mean_gap(qa, la, qt, lt, unit)
    except _Invalid as e:
        return BDResult(math.nan, str(e))
    return BDResult(math.expm1(gap) * 100.0, None, overlap)


def bd_psnr(anchor_rate: Sequence[float], anchor_quality: Sequence[float],
            test_rate: Sequence[float], test_quality: Sequence[float], *,
            min_points: int = MIN_POINTS) -> BDResult:
    """BD-PSNR (BD-quality) of test vs anchor in the quality's unit (positive = test better), or NaN."""
    try:
        la, qa = _curve(anchor_rate, anchor_quality, "anchor", min_points)
        lt, qt = _curve(test_rate, test_quality, "test", min_points)
        gap, overlap = _mean_gap(la, qa, lt, qt, "log-rate")
    except _Invalid as e:
        return BDResult(math.nan, str(e))
    return BDResult(gap, None, overlap)
