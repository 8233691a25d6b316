"""PNG figures of a campaign (matplotlib, Agg canvas, no pyplot global state).

* :func:`parity_plot`: MLIP versus DFT energy above the hull with R^2, MAE, RMSE annotated and
  the metastability window shaded (Park & Walsh 2025 Fig. S1, PLaID++ 2025 Fig. 11).
* :func:`histogram_plot`, :func:`band_gap_histogram`, :func:`ehull_histogram`: distributions
  (Park & Walsh 2025 Fig. 6b / S17: DFT band gaps of all samples and of mSUN ones, target window
  shaded).
* :func:`element_frequency_plot`: structures containing each element on a periodic-table grid
  (positions from pymatgen ``Element.row`` / ``Element.group``; La-Lu and Ac-Lr in the f-block
  rows below).
* :func:`spacegroup_bar_plot`: stable and S.U.N. fractions per space group, one bar per model
  (Cao & Wang 2025 Fig. 4).
* :func:`plot_training_curves` and :func:`load_training_curves`: RL training curves stored by
  the ``rl fine-tune`` job (output key ``curves``: a list of ``{"step": ..., metric: ...}``).

Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from xtalforge.reports.classification import regression_metrics
from xtalforge.screening.metrics import METASTABLE_THRESHOLD

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.stores.results import CampaignResults

logger = logging.getLogger(__name__)

__all__ = [
    "band_gap_histogram",
    "element_counts",
    "element_frequency_plot",
    "ehull_histogram",
    "histogram_plot",
    "load_training_curves",
    "parity_plot",
    "plot_training_curves",
    "spacegroup_bar_plot",
]

_DPI = 150


def _new(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _arr(x: Iterable[Any]) -> np.ndarray:
    return pd.to_numeric(pd.Series(list(x), dtype=object), errors="coerce").to_numpy(float)


# --------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------
def parity_plot(
    dft: Sequence[float],
    mlip: Sequence[float],
    path: str | Path,
    title: str = "MLIP vs DFT energy above hull",
    xlabel: str = r"$E_\mathrm{hull}^\mathrm{DFT}$ (eV/atom)",
    ylabel: str = r"$E_\mathrm{hull}^\mathrm{MLIP}$ (eV/atom)",
    limits: tuple[float, float] | None = None,
    metastable_threshold: float = METASTABLE_THRESHOLD,
    hexbin_above: int = 3000,
    note: str | None = None,
) -> Path:
    """Parity plot of MLIP against DFT energies above the hull.

    Parameters
    ----------
    dft, mlip : sequence of float
        Paired values (eV/atom); pairs with a missing side are excluded and counted in the
        annotation.
    path : str or Path
        Output PNG.
    title, xlabel, ylabel : str
        Labels.
    limits : (float, float), optional
        Axis range (default: the data range with a margin).
    metastable_threshold : float
        The metastability window (shaded where both values are below it).
    hexbin_above : int
        Use a log-scaled hexbin density instead of points above this many pairs.
    note : str, optional
        Extra line for the annotation box (e.g. a selection on one side).
    """
    d, m = _arr(dft), _arr(mlip)
    ok = np.isfinite(d) & np.isfinite(m)
    reg = regression_metrics(d, m)
    fig = _new((5.6, 5.4))
    ax = fig.add_subplot()
    if ok.any():
        lo = float(min(d[ok].min(), m[ok].min()))
        hi = float(max(d[ok].max(), m[ok].max()))
    else:
        lo, hi = -0.1, 0.5
    pad = 0.05 * max(hi - lo, 0.05)
    lo, hi = limits if limits is not None else (lo - pad, hi + pad)
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((lo, lo), metastable_threshold - lo, metastable_threshold - lo,
                           color="tab:green", alpha=0.1, lw=0,
                           label=f"both < {metastable_threshold:g} eV/atom (metastable)"))
    if ok.sum() > hexbin_above:
        hb = ax.hexbin(d[ok], m[ok], gridsize=80, bins="log", cmap="viridis", mincnt=1,
                       extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=ax, label="structures per bin")
    elif ok.any():
        ax.scatter(d[ok], m[ok], s=12, alpha=0.6, edgecolors="none", color="tab:blue")
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="y = x")
    for v in (0.0, metastable_threshold):
        ax.axvline(v, color="grey", lw=0.6, ls=":")
        ax.axhline(v, color="grey", lw=0.6, ls=":")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    n_nan = int((~ok).sum())
    text = (f"N = {reg['n']}" + (f" ({n_nan} missing)" if n_nan else "")
            + f"\n$R^2$ = {reg['r2']:.3f}  (Pearson $r^2$ = {reg['pearson_r2']:.3f})"
            + f"\nMAE = {reg['mae']:.4f} eV/atom\nRMSE = {reg['rmse']:.4f} eV/atom"
            + (f"\n{note}" if note else ""))
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8.5,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8,
              frameon=False)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# histograms
# --------------------------------------------------------------------------------------
def histogram_plot(
    series: Mapping[str, Sequence[float]] | Sequence[float],
    path: str | Path,
    xlabel: str,
    title: str,
    bins: int = 40,
    value_range: tuple[float, float] | None = None,
    vlines: Sequence[float] = (),
    span: tuple[float, float] | None = None,
    span_label: str | None = None,
    ylabel: str = "structures",
) -> Path:
    """Overlaid step histograms of one or several value sets (NaNs dropped and counted).

    Values outside ``value_range`` are clipped into the edge bins and their number is shown
    in the legend.
    """
    data = dict(series) if isinstance(series, Mapping) else {"": series}
    fig = _new((6.0, 4.0))
    ax = fig.add_subplot()
    arrays = {k: _arr(v) for k, v in data.items()}
    finite = [a[np.isfinite(a)] for a in arrays.values()]
    allv = np.concatenate(finite) if finite else np.array([])
    if value_range is None:
        value_range = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    if span is not None:
        ax.axvspan(*span, color="tab:orange", alpha=0.15, label=span_label)
    for j, (k, a) in enumerate(arrays.items()):
        f = a[np.isfinite(a)]
        n_out = int(((f < value_range[0]) | (f > value_range[1])).sum())
        label = f"{k} (N={len(f)}" if k else f"N={len(f)}"
        if len(f) < len(a):
            label += f", {len(a) - len(f)} missing"
        if n_out:
            label += f", {n_out} outside range clipped"
        label += ")"
        if len(f):
            style = ({"histtype": "stepfilled", "alpha": 0.35} if j == 0 and len(arrays) > 1
                     else {"histtype": "step", "lw": 1.6})
            ax.hist(np.clip(f, *value_range), bins=bins, range=value_range, label=label,
                    **style)
        else:
            ax.plot([], [], label=label + " no data")
    for v in vlines:
        ax.axvline(v, color="k", lw=0.8, ls="--")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def band_gap_histogram(
    df: pd.DataFrame,
    path: str | Path,
    gap_col: str = "dft_band_gap",
    window: tuple[float, float] = (2.7, 3.3),
    title: str = "DFT band gaps of validated samples",
) -> Path:
    """DFT band gaps of all validated and of the mSUN structures (Park & Walsh 2025 Fig. 6b/S17)."""
    gap = _arr(df[gap_col]) if gap_col in df.columns else np.array([])
    has = np.isfinite(gap)
    series: dict[str, np.ndarray] = {"all with DFT gap": gap[has]}
    if "msun" in df.columns:
        msun = np.array([v is not None and v == v and bool(v) for v in df["msun"]])
        series["mSUN"] = gap[has & msun]
    hi = max(6.0, float(np.nanmax(gap)) if has.any() else 6.0)
    return histogram_plot(series, path, "DFT band gap (eV)", title, bins=int(4 * hi),
                          value_range=(0.0, hi), span=window,
                          span_label=f"target {window[0]:g}-{window[1]:g} eV")


def ehull_histogram(
    df: pd.DataFrame,
    path: str | Path,
    col: str = "e_above_hull",
    group_by: str | None = None,
    value_range: tuple[float, float] | None = None,
    title: str = "MLIP energy above hull of generated structures",
) -> Path:
    """Energy above the hull, one step histogram per group, metastability threshold marked.

    The default range is [-0.2, 1] eV/atom, widened to the 1st / 98th percentiles of the
    values when they extend further; values beyond the range land in the edge bins (counted in
    the legend).
    """
    if group_by and group_by in df.columns:
        keys = df[group_by].map(lambda v: "(none)" if v is None or v != v else str(v)[:16])
        series = {k: df.loc[keys == k, col] for k in dict.fromkeys(keys)}
    else:
        series = {"": df[col] if col in df.columns else []}
    if value_range is None:
        allv = _arr(df[col]) if col in df.columns else np.array([])
        allv = allv[np.isfinite(allv)]
        value_range = (-0.2, 1.0)
        if allv.size:
            value_range = (min(-0.2, float(np.percentile(allv, 1))),
                           max(1.0, float(np.percentile(allv, 98))))
    return histogram_plot(series, path, r"$E_\mathrm{hull}$ (eV/atom)", title, bins=60,
                          value_range=value_range, vlines=(0.0, METASTABLE_THRESHOLD))


# --------------------------------------------------------------------------------------
# periodic table
# --------------------------------------------------------------------------------------
def element_counts(df: pd.DataFrame, col: str = "elements") -> Counter:
    """Count the structures containing each element (rows with a list of symbols)."""
    c: Counter = Counter()
    if col not in df.columns:
        return c
    for els in df[col]:
        if isinstance(els, (list, tuple, np.ndarray)):
            c.update(set(map(str, els)))
    return c


def _grid_position(z: int) -> tuple[float, float]:
    """(column, row) of an element on the 18-column grid; f-block in rows 8.5 and 9.5."""
    from pymatgen.core.periodic_table import Element

    if 57 <= z <= 71:
        return z - 57 + 3, 8.5
    if 89 <= z <= 103:
        return z - 89 + 3, 9.5
    el = Element.from_Z(z)
    return float(el.group), float(el.row)


def element_frequency_plot(
    counts: Mapping[str, float],
    path: str | Path,
    title: str = "Element frequency",
    cbar_label: str = "structures containing the element",
    log: bool = False,
) -> Path:
    """Plot counts per element as a periodic-table heat map (Z 1-103; 0 counts grey)."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle
    from pymatgen.core.periodic_table import Element

    fig = _new((11.0, 6.2))
    ax = fig.add_subplot()
    vals = [float(v) for v in counts.values() if v and v > 0]
    vmax = max(vals) if vals else 1.0
    norm = LogNorm(vmin=max(min(vals), 1e-9) if vals else 1, vmax=vmax) if log and vals \
        else Normalize(vmin=0, vmax=vmax)
    cmap = colormaps["viridis"]
    for z in range(1, 104):
        sym = Element.from_Z(z).symbol
        x, y = _grid_position(z)
        v = float(counts.get(sym, 0) or 0)
        color = cmap(norm(v)) if v > 0 else (0.92, 0.92, 0.92, 1.0)
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 0.95, 0.95, facecolor=color,
                               edgecolor="white", lw=0.5))
        dark = v > 0 and norm(v) < 0.6
        tc = "white" if dark else "black"
        ax.text(x - 0.03, y - 0.12, sym, ha="center", va="center", fontsize=8.5,
                fontweight="bold", color=tc)
        if v > 0:
            ax.text(x - 0.03, y + 0.22, f"{v:.0f}" if v >= 1 else f"{v:.2g}", ha="center",
                    va="center", fontsize=6, color=tc)
    ax.text(2.5, 8.5, "La-Lu", ha="right", va="center", fontsize=7)
    ax.text(2.5, 9.5, "Ac-Lr", ha="right", va="center", fontsize=7)
    ax.set_xlim(0.4, 18.6)
    ax.set_ylim(10.1, 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, shrink=0.6, label=cbar_label)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# space groups
# --------------------------------------------------------------------------------------
def spacegroup_bar_plot(
    table: pd.DataFrame,
    path: str | Path,
    stable_col: str = "Metastable (%)",
    sun_col: str = "mSUN (%)",
    group_col: str = "Group",
    top: int = 20,
    title: str | None = None,
) -> Path:
    """Bars per space group: ``stable_col`` fraction (light) with ``sun_col`` (dark) inside.

    The title names the two columns shown (default: "Metastable and mSUN fractions per space
    group"), as the legend does.

    ``table`` is the DataFrame of :func:`xtalforge.reports.tables.sun_per_spacegroup_table`
    (one bar per model when it has a ``Group`` column). The ``top`` most populated space groups
    are shown, ordered by number; the ``unknown`` row is left out.
    """
    t = table[table["Symbol"] != "unknown"] if "Symbol" in table.columns else table
    groups = list(dict.fromkeys(t[group_col])) if group_col in t.columns else ["all"]
    totals = t.groupby("Space group")["N"].sum().sort_values(ascending=False)
    sgs = sorted(totals.index[:top].tolist())
    fig = _new((max(6.0, 0.55 * len(sgs) * max(1, len(groups)) + 2), 4.4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for gi, g in enumerate(groups):
        sub = t[t[group_col] == g] if group_col in t.columns else t
        sub = sub.set_index("Space group")
        x = np.arange(len(sgs)) + (gi - (len(groups) - 1) / 2) * width
        st = [float(sub.loc[s, stable_col]) if s in sub.index else 0.0 for s in sgs]
        su = [float(sub.loc[s, sun_col]) if s in sub.index else 0.0 for s in sgs]
        ns = [int(sub.loc[s, "N"]) if s in sub.index else 0 for s in sgs]
        c = colors[gi % len(colors)]
        ax.bar(x, st, width * 0.95, color=c, alpha=0.35,
               label=f"{str(g)[:16]}: {stable_col.replace(' (%)', '')}")
        ax.bar(x, su, width * 0.95, color=c, alpha=1.0,
               label=f"{str(g)[:16]}: {sun_col.replace(' (%)', '')}")
        for xi, yi, ni in zip(x, st, ns, strict=True):
            ax.text(xi, yi + 1.5, f"n={ni}", ha="center", va="bottom", fontsize=6,
                    rotation=90 if len(sgs) * len(groups) > 12 else 0)
    sym = dict(zip(t["Space group"], t["Symbol"], strict=False)) if "Symbol" in t.columns else {}
    ax.set_xticks(np.arange(len(sgs)))
    ax.set_xticklabels([f"{sym.get(s, '')}\n({int(s)})" for s in sgs], fontsize=7,
                       rotation=0 if len(sgs) <= 10 else 60)
    ax.set_ylabel("% of generated structures in the space group")
    ax.set_xlabel("space group")
    ax.set_title(title or f"{stable_col.replace(' (%)', '')} and {sun_col.replace(' (%)', '')} "
                 "fractions per space group")
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=7, ncol=max(1, len(groups)), loc="upper center")
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# RL training curves
# --------------------------------------------------------------------------------------
def _curves_frame(curves: Mapping[str, Sequence[float]] | pd.DataFrame | Sequence[Mapping]
                  ) -> pd.DataFrame:
    if isinstance(curves, pd.DataFrame):
        df = curves.copy()
    elif isinstance(curves, Mapping):
        n = max((len(v) for v in curves.values()), default=0)
        df = pd.DataFrame({k: list(v) + [np.nan] * (n - len(v)) for k, v in curves.items()})
    else:
        df = pd.DataFrame(list(curves))
    if "step" not in df.columns:
        df.insert(0, "step", np.arange(len(df)))
    return df


#: The panels of the default RL-curve figure: (title, y label, [(column or prefix, label)]).
#: A column ending in "/" stands for every column with that prefix (the reward components).
RL_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("Reward", "mean reward of the rollouts", (("reward_total", "total"), ("reward/", ""))),
    ("KL to the reference policy", "KL", (("kl", "KL"),)),
    ("Discovery rate", "% of rollouts", (("frac_metastable", "metastable"),
                                         ("frac_msun", "mSUN"),
                                         ("eval/frac_metastable", "metastable (eval)"),
                                         ("eval/frac_msun", "mSUN (eval)"))),
    ("Energy above hull", "mean E_hull (eV/atom)", (("mean_e_above_hull", "rollouts"),
                                                    ("eval/mean_e_above_hull", "eval"))),
)


def _clean(y: pd.Series) -> pd.Series:
    """Numeric values with floating-point noise (|y| < 1e-9, e.g. a normalised mean) set to 0."""
    y = pd.to_numeric(y, errors="coerce").astype(float)
    return y.mask(y.abs() < 1e-9, 0.0)


def plot_training_curves(
    curves: Mapping[str, Sequence[float]] | pd.DataFrame | Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "RL fine-tuning curves",
    metrics: Sequence[str] | None = None,
    ncols: int | None = None,
) -> Path:
    """RL fine-tuning curves against the step, on one readable page.

    By default four panels (:data:`RL_PANELS`): the total reward with each reward component,
    the KL divergence to the reference policy, the metastable and mSUN fractions of the
    rollouts (and of the evaluation samples when stored), and the mean energy above the hull.
    Timings, counters and optimiser diagnostics stay in the stored curves.

    Parameters
    ----------
    curves : DataFrame, dict of lists or list of row dicts
        A ``step`` column (else the row index) and one numeric column per metric.
    path : str or Path
        Output PNG.
    title : str
        Figure title.
    metrics : sequence of str, optional
        Plot these columns instead, one panel each.
    ncols : int, optional
        Panels per row (default 2 for the default panels, else 3, or 4 above nine metrics).
    """
    df = _curves_frame(curves)
    panels: list[tuple[str, str, list[tuple[str, str]]]] = []
    if metrics:
        panels = [(c, c, [(c, c)]) for c in metrics if c in df.columns]
    else:
        for ptitle, ylabel, specs in RL_PANELS:
            lines: list[tuple[str, str]] = []
            for col, label in specs:
                if col.endswith("/"):
                    lines += [(c, c[len(col):]) for c in df.columns if c.startswith(col)]
                elif col in df.columns:
                    lines.append((col, label))
            lines = [(c, lab) for c, lab in lines if _clean(df[c]).notna().any()]
            if lines:
                panels.append((ptitle, ylabel, lines))
        if not panels:  # curves of another trainer: one panel per numeric column
            metrics = [c for c in df.columns
                       if c != "step" and pd.api.types.is_numeric_dtype(df[c])]
            panels = [(c, c, [(c, c)]) for c in metrics]
    n = max(1, len(panels))
    if ncols is None:
        ncols = 2 if not metrics else (3 if n <= 9 else 4)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _new((4.2 * ncols, 3.0 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (ptitle, ylabel, lines) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        pct = ylabel.startswith("%")
        for col, label in lines:
            y = _clean(df[col]) * (100.0 if pct else 1.0)
            style = "--" if col.startswith("eval/") else "-"
            mask = y.notna()
            ax.plot(df["step"][mask], y[mask], style, lw=1.4, marker="o" if len(y) <= 30
                    else None, ms=3, label=label)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for j in range(len(panels), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    if not panels:
        axes[0][0].text(0.5, 0.5, "no curves", ha="center", va="center")
    fig.suptitle(title)
    return _save(fig, path)


def load_training_curves(
    results: CampaignResults, job_name: str = "rl fine-tune", key: str = "curves"
) -> pd.DataFrame | None:
    """Training curves stored by the latest finished ``job_name`` job, or ``None``.

    The job output's ``key`` is a list of row dicts (``{"step": 0, "reward": ...}``), a dict of
    lists, or a DataFrame-like ``{"records": [...]}``; anything else (or no such job) gives
    ``None`` with a log message.
    """
    from xtalforge.reports.tables import iter_job_outputs

    docs = iter_job_outputs(results, name=job_name)
    for d in reversed(docs):
        out = d.get("output")
        curves = out.get(key) if isinstance(out, Mapping) else None
        if isinstance(curves, Mapping) and "records" in curves:
            curves = curves["records"]
        if curves is None or (hasattr(curves, "__len__") and len(curves) == 0):
            continue
        try:
            return _curves_frame(curves)
        except Exception as exc:  # noqa: BLE001 - unexpected layout
            logger.warning("cannot read %r curves of job %s: %s", key, d.get("uuid"), exc)
    logger.info("no %r output from a %r job in campaign %r", key, job_name,
                results.campaign_id)
    return None
