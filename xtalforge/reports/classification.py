"""MLIP versus DFT energy above the hull: regression and stability-classification metrics.

Park & Walsh 2025 (Chemeleon2, Supplementary Fig. S1) validates MACE energies above the hull against
DFT on generated structures; PLaID++ 2025 (PLaID++, section 7.4) reports R^2 and the precision,
recall, F1 and accuracy of the MLIP's stable / metastable classification, restricted to a
"near-hull" window of DFT values ``[-0.2, 0.2]`` eV/atom.

Conventions (identical to the screening layer, :func:`xtalforge.screening.metrics.
stability_flags`, applied to *both* sides)
-------------------------------------------------------------------------------------------
stable
    ``e_above_hull <= 0`` (+ 1e-8 eV/atom of numerical noise).
metastable
    ``e_above_hull < 0.1`` eV/atom, strict (``inclusive=True`` gives ``<=``, Chemeleon2's
    code).
positive class
    "stable" (resp. "metastable") is the positive class: precision is the fraction of
    structures the MLIP calls stable that DFT also calls stable, recall the fraction of the
    DFT-stable structures the MLIP finds. Accuracy counts both classes.
R^2
    ``r2`` is the coefficient of determination of the MLIP values *as predictions* of the DFT
    values, ``1 - SS_res / SS_tot`` about the identity line (it can be negative);
    ``pearson_r2`` is the squared Pearson correlation, i.e. the R^2 of a least-squares fit
    line (what PLaID++ Fig. 11 reports).
missing values
    A pair with a non-finite value on either side is excluded from every metric; the counts
    of such pairs (``n_nan_dft``, ``n_nan_mlip``, ``n_nan_both``) are returned, never silently
    dropped. With a window, pairs whose DFT value falls outside it are excluded and counted
    (``n_outside_window``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xtalforge.screening.metrics import (
    METASTABLE_THRESHOLD,
    STABILITY_TOL,
    STABLE_THRESHOLD,
    stability_flags,
)

logger = logging.getLogger(__name__)

__all__ = [
    "NEAR_HULL_WINDOW",
    "EhullComparison",
    "classification_counts",
    "compare_ehull",
    "regression_metrics",
]

#: PLaID++'s near-hull window of DFT energies above the hull (eV/atom).
NEAR_HULL_WINDOW = (-0.2, 0.2)


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """R^2, squared Pearson r, MAE, RMSE and mean signed error of finite pairs.

    Parameters
    ----------
    y_true, y_pred : sequence of float
        Reference (DFT) and predicted (MLIP) values; only pairs finite on both sides are used.

    Returns
    -------
    dict
        ``n, r2, pearson_r2, mae, rmse, mean_error`` (``mean(pred - true)``); NaN when
        undefined (no pairs; R^2 with zero variance of ``y_true``).
    """
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    n = len(t)
    out = {"n": n, "r2": math.nan, "pearson_r2": math.nan, "mae": math.nan,
           "rmse": math.nan, "mean_error": math.nan}
    if n == 0:
        return out
    err = p - t
    out["mae"] = float(np.mean(np.abs(err)))
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["mean_error"] = float(np.mean(err))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if n >= 2 and ss_tot > 0:
        out["r2"] = 1.0 - float(np.sum(err**2)) / ss_tot
        if float(np.std(p)) > 0:
            out["pearson_r2"] = float(np.corrcoef(t, p)[0, 1] ** 2)
    return out


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def classification_counts(truth: Sequence[bool], pred: Sequence[bool]) -> dict[str, float]:
    """Confusion counts and precision, recall, F1, accuracy (positive class = ``True``).

    Undefined ratios (zero denominators) are NaN, not 0.
    """
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = (2 * precision * recall / (precision + recall)
          if np.isfinite(precision) and np.isfinite(recall) and precision + recall > 0
          else math.nan)
    return {"n": tp + fp + fn + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "n_true_positive_class": tp + fn, "n_pred_positive_class": tp + fp,
            "precision": precision, "recall": recall, "f1": f1,
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn)}


@dataclass
class EhullComparison:
    """Result of :func:`compare_ehull`.

    Attributes
    ----------
    counts : dict
        ``n_total, n_nan_dft, n_nan_mlip, n_nan_both, n_excluded_nan, n_outside_window, n_used``.
    regression : dict
        :func:`regression_metrics` of the used pairs.
    stable, metastable : dict
        :func:`classification_counts` at the stable and metastable thresholds.
    settings : dict
        Thresholds, inclusivity, tolerance and window.
    """

    counts: dict[str, int]
    regression: dict[str, float]
    stable: dict[str, float]
    metastable: dict[str, float]
    settings: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """One flat dict (``stable_precision``, ``metastable_recall``, ``r2`` ...)."""
        out: dict[str, Any] = dict(self.counts)
        out.update({k: v for k, v in self.regression.items() if k != "n"})
        for name in ("stable", "metastable"):
            for k, v in getattr(self, name).items():
                out[f"{name}_{k}"] = v
        return out


def compare_ehull(
    dft: Sequence[float],
    mlip: Sequence[float],
    stable_threshold: float = STABLE_THRESHOLD,
    metastable_threshold: float = METASTABLE_THRESHOLD,
    metastable_inclusive: bool = False,
    tol: float = STABILITY_TOL,
    window: tuple[float, float] | None = None,
) -> EhullComparison:
    """Compare MLIP and DFT energies above the hull of the same structures.

    Parameters
    ----------
    dft, mlip : sequence of float
        Energies above the hull (eV/atom) of the same structures, in the same order; NaN or
        ``None`` for a missing value.
    stable_threshold, metastable_threshold, metastable_inclusive, tol
        Classification thresholds, as :func:`xtalforge.screening.metrics.stability_flags`.
    window : (float, float), optional
        Keep only pairs whose DFT value lies in ``[lo, hi]`` (inclusive), e.g.
        :data:`NEAR_HULL_WINDOW`.

    Returns
    -------
    EhullComparison
    """
    d = np.asarray([np.nan if v is None else v for v in dft], dtype=float)
    m = np.asarray([np.nan if v is None else v for v in mlip], dtype=float)
    if d.shape != m.shape:
        raise ValueError(f"dft and mlip differ in length ({len(d)} vs {len(m)})")
    fd, fm = np.isfinite(d), np.isfinite(m)
    ok = fd & fm
    counts = {
        "n_total": len(d),
        "n_nan_dft": int(np.sum(~fd & fm)),
        "n_nan_mlip": int(np.sum(fd & ~fm)),
        "n_nan_both": int(np.sum(~fd & ~fm)),
        "n_excluded_nan": int(np.sum(~ok)),
        "n_outside_window": 0,
    }
    if window is not None:
        lo, hi = window
        inside = ok & (d >= lo) & (d <= hi)
        counts["n_outside_window"] = int(np.sum(ok & ~inside))
        ok = inside
    counts["n_used"] = int(ok.sum())
    if counts["n_excluded_nan"]:
        logger.info("MLIP vs DFT: %d of %d pairs excluded for missing values",
                    counts["n_excluded_nan"], counts["n_total"])
    du, mu = d[ok], m[ok]
    kw = {"stable_threshold": stable_threshold, "metastable_threshold": metastable_threshold,
          "metastable_inclusive": metastable_inclusive, "tol": tol}
    st_d, meta_d = stability_flags(du, **kw)
    st_m, meta_m = stability_flags(mu, **kw)
    settings = {
        "stable": f"E_hull <= {stable_threshold:g} (+{tol:g}) eV/atom",
        "metastable": (f"E_hull {'<=' if metastable_inclusive else '<'} "
                       f"{metastable_threshold:g} eV/atom"),
        "stable_threshold": stable_threshold,
        "metastable_threshold": metastable_threshold,
        "metastable_inclusive": metastable_inclusive,
        "tol": tol,
        "window": list(window) if window is not None else None,
        "positive_class": "stable / metastable",
        "missing": "pairs with a non-finite value on either side excluded and counted",
    }
    return EhullComparison(
        counts=counts,
        regression=regression_metrics(du, mu),
        stable=classification_counts(st_d, st_m),
        metastable=classification_counts(meta_d, meta_m),
        settings=settings,
    )
