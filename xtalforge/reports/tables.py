"""Validation tables of a campaign, built from the results store alone.

Every builder takes the one-row-per-structure DataFrame of
:meth:`xtalforge.stores.results.CampaignResults.to_dataframe` (or any DataFrame with the same
columns) and returns a :class:`Table`: the values as a pandas DataFrame plus a caption and
footnotes stating the number of structures and the hull and MLIP conventions, renderable as
Markdown, CSV and LaTeX. :func:`build_table` builds a table by name from a
:class:`~xtalforge.stores.results.CampaignResults` (what ``xtalforge table`` calls).

Tables
------
``mlip-vs-dft``
    :func:`mlip_vs_dft_table`: R^2, MAE, RMSE and stable/metastable classification of the
    MLIP energy above the hull against DFT (Park & Walsh 2025 Fig. S1, PLaID++ 2025 section 7.4).
``denovo``
    :func:`denovo_benchmark_table`: Park & Walsh 2025 Supplementary Table S1 (mSUN, uniqueness,
    novelty, compositional validity, metastability, 1/(1+FMD)), one row per model/checkpoint.
``property-targeting``
    :func:`property_targeting_table`: mSUN structures with DFT band gaps in 2.7-3.3 eV
    (Park & Walsh 2025 Fig. 6b/c, S17).
``fom``
    :func:`fom_table`: Cao & Wang 2025 Table I (formula, Eg, eps_elec, FoM = eps_elec * Eg, DFT
    E_hull), formulas absent from the training set in bold.
``sun-per-spacegroup``
    :func:`sun_per_spacegroup_table`: stable / S.U.N. / mSUN fractions per space group (Cao & Wang
    2025 Fig. 4) and, with a target space group column, PLaID++ 2025's S.S.U.N.

Denominators are failure-aware: every generated structure (stage ``sample``) counts, including
those that failed to decode, were not evaluated or have no energy; a missing indicator counts
as ``False`` (the screening layer's convention, :func:`xtalforge.screening.metrics.aggregate`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xtalforge.reports.classification import compare_ehull
from xtalforge.screening.metrics import METASTABLE_THRESHOLD, STABILITY_TOL

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from xtalforge.stores.results import CampaignResults

logger = logging.getLogger(__name__)

__all__ = [
    "TABLES",
    "Table",
    "build_table",
    "describe_conventions",
    "dft_rows",
    "denovo_benchmark_table",
    "fom_table",
    "mlip_vs_dft_table",
    "property_targeting_table",
    "spacegroups_of",
    "stored_coverage",
    "sun_per_spacegroup_table",
    "training_formulas",
]

#: Default grouping of generated structures (one row per model checkpoint).
GROUP_BY = "lineage.checkpoint_id"
#: Band-gap window of Park & Walsh 2025's property-targeting benchmark (eV, inclusive).
GAP_WINDOW = (2.7, 3.3)
_MISSING = "n/a"


# --------------------------------------------------------------------------------------
# the Table object and its renderers
# --------------------------------------------------------------------------------------
@dataclass
class Table:
    """A table's values with its caption, footnotes and display formats.

    Attributes
    ----------
    name : str
        Table name (``denovo``, ``fom`` ...).
    data : pandas.DataFrame
        The values (numeric columns stay numeric; percentages are in percent).
    caption : str
        One-line caption.
    footnotes : list of str
        Number of structures, conventions, definitions.
    formats : dict
        ``{column: format spec}`` for rendering (``".1f"``, ``".3f"``, ``"d"``).
    bold_rows : list of bool, optional
        Rows rendered in bold in Markdown and LaTeX.
    values : dict
        Extra machine-readable values (e.g. confusion counts) not shown as columns.
    """

    name: str
    data: pd.DataFrame
    caption: str
    footnotes: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    bold_rows: list[bool] | None = None
    values: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ cells
    def _cell(self, col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return _MISSING
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        spec = self.formats.get(col)
        if spec and isinstance(v, (int, float, np.integer, np.floating)):
            try:
                return format(v, spec)
            except (ValueError, TypeError):
                return str(v)
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v)

    def _rows(self) -> list[list[str]]:
        return [[self._cell(c, v) for c, v in zip(self.data.columns, row, strict=True)]
                for row in self.data.itertuples(index=False, name=None)]

    # ------------------------------------------------------------------ renderers
    def to_markdown(self) -> str:
        """Markdown pipe table with the caption above and the footnotes below."""
        cols = [str(c) for c in self.data.columns]
        rows = self._rows()
        bold = self.bold_rows or [False] * len(rows)
        lines = [f"**{_md_escape(self.caption)}**", ""]
        if not cols:
            lines += ["_(no rows)_", ""] + [f"{_md_escape(f)}  " for f in self.footnotes]
            return "\n".join(lines).rstrip() + "\n"
        lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
        lines.append("|" + "|".join(
            "---:" if _is_numeric(self.data[c]) else ":---" for c in self.data.columns) + "|")
        for r, b in zip(rows, bold, strict=True):
            cells = [_md_escape(x) for x in r]
            if b:
                cells = [f"**{x}**" for x in cells]
            lines.append("| " + " | ".join(cells) + " |")
        if not rows:
            lines.append("| " + " | ".join("" for _ in cols) + " |")
        lines.append("")
        lines += [f"{_md_escape(f)}  " for f in self.footnotes]
        return "\n".join(lines).rstrip() + "\n"

    def to_csv(self, comments: bool = True) -> str:
        """CSV of the raw values; caption and footnotes as leading ``#`` lines.

        Read it back with ``pandas.read_csv(path, comment="#")``.
        """
        buf = io.StringIO()
        if comments:
            for line in [self.caption, *self.footnotes]:
                buf.write("# " + line.replace("\n", " ") + "\n")
        self.data.to_csv(buf, index=False)
        return buf.getvalue()

    def to_latex(self) -> str:
        """Render a LaTeX ``table`` environment (booktabs rules) with caption and footnotes."""
        cols = [str(c) for c in self.data.columns] or ["(no rows)"]
        align = "".join("r" if _is_numeric(self.data[c]) else "l"
                        for c in self.data.columns) or "l"
        bold = self.bold_rows or [False] * len(self.data)
        out = ["\\begin{table}[htbp]", "\\centering",
               f"\\caption{{{_tex_escape(self.caption)}}}",
               f"\\label{{tab:{self.name}}}",
               f"\\begin{{tabular}}{{{align}}}", "\\toprule",
               " & ".join(_tex_escape(c) for c in cols) + " \\\\", "\\midrule"]
        for r, b in zip(self._rows(), bold, strict=True):
            cells = [_tex_escape(x) for x in r]
            if b:
                cells = [f"\\textbf{{{x}}}" for x in cells]
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if self.footnotes:
            out.append("\\par\\smallskip\\footnotesize")
            out += [_tex_escape(f) + "\\\\" for f in self.footnotes]
        out.append("\\end{table}")
        return "\n".join(out) + "\n"

    def render(self, fmt: str = "markdown") -> str:
        """Render as ``markdown`` (``md``), ``csv`` or ``latex`` (``tex``)."""
        fmt = fmt.lower()
        if fmt in ("markdown", "md"):
            return self.to_markdown()
        if fmt == "csv":
            return self.to_csv()
        if fmt in ("latex", "tex"):
            return self.to_latex()
        raise ValueError(f"unknown table format {fmt!r}: use markdown, csv or latex")


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


# --------------------------------------------------------------------------------------
# helpers on the results DataFrame
# --------------------------------------------------------------------------------------
def _flag(df: pd.DataFrame, col: str) -> np.ndarray:
    """Boolean array of an indicator column; missing (None/NaN) and absent count as False."""
    if col not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return np.array([v is not None and v == v and bool(v) for v in df[col]], dtype=bool)


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def _stage_rows(df: pd.DataFrame, stage: str | None) -> pd.DataFrame:
    if stage and "stage" in df.columns:
        return df[df["stage"] == stage]
    return df


def _groups(df: pd.DataFrame, group_by: str | None) -> list[tuple[str, pd.DataFrame]]:
    """Split rows by ``group_by`` (missing values: ``"(none)"``), in order of appearance."""
    if not group_by or group_by not in df.columns:
        return [("all", df)]
    keys = df[group_by].map(lambda v: "(none)" if v is None or v != v else str(v))
    return [(k, df[keys == k]) for k in dict.fromkeys(keys)]


def _label(g: pd.DataFrame, key: str) -> str:
    """``label (checkpoint)`` when the rows carry a single model label or name."""
    for col in ("lineage.model_label", "model_label", "lineage.model_name"):
        if col not in g.columns:
            continue
        names = {str(v) for v in g[col] if v is not None and v == v}
        if len(names) == 1:
            name = names.pop()
            return name if key in ("all", "(none)") else f"{name} ({key[:12]})"
    return key


def _pct(n: int, d: int) -> float:
    return 100.0 * n / d if d else math.nan


def _summarise_convention(c: Any) -> str:
    if not isinstance(c, Mapping):
        return str(c)
    keys = ("convention", "engine", "settings_fingerprint", "energy_source", "energy",
            "energy_kind", "reference_set", "reference_files", "correction", "relaxed",
            "n_entries")
    parts = [f"{k}={c[k]}" for k in keys if c.get(k) is not None]
    if not parts:  # an unfamiliar layout: its scalar items
        parts = [f"{k}={v}" for k, v in c.items()
                 if isinstance(v, (str, int, float, bool)) and k != "fingerprint"][:8]
    mlip = c.get("mlip")
    if isinstance(mlip, Mapping):
        parts.append(f"mlip={mlip.get('spec') or mlip.get('name')}")
    elif mlip:
        parts.append(f"mlip={mlip}")
    if c.get("fingerprint"):
        parts.append(f"fingerprint={str(c['fingerprint'])[:12]}")
    return ", ".join(parts) or "unspecified"


def _summarise_mlip(m: Any) -> str:
    if isinstance(m, Mapping):
        s = m.get("spec") or m.get("name") or "unknown"
        extra = [f"{k}={m[k]}" for k in ("dtype", "device") if m.get(k)]
        if m.get("fingerprint"):
            extra.append(f"fingerprint={str(m['fingerprint'])[:12]}")
        return f"{s} ({', '.join(extra)})" if extra else str(s)
    return str(m)


def _distinct(values: Iterable[Any], fmt: Callable[[Any], str]) -> list[str]:
    out: dict[str, None] = {}
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            continue
        out[fmt(v)] = None
    return list(out)


def describe_protocol(df: pd.DataFrame) -> str | None:
    """One footnote line: single point or relaxed energies, sampler settings and seeds, N.

    Read from the rows (``relaxed`` of the screening documents, ``lineage.sampler`` of the
    samples); ``None`` when the rows carry neither. Metric definitions follow Park & Walsh 2025
    (S.U.N., mSUN with ``E_hull < 0.1`` eV/atom) and Cao & Wang 2025 (S.U.N. as ``E_hull < 0.1``).
    """
    parts: list[str] = []
    if "relaxed" in df.columns:
        kinds = sorted({"relaxed" if bool(v) else "single point"
                        for v in df["relaxed"] if v is not None and v == v})
        if kinds:
            parts.append("MLIP energies: " + " and ".join(kinds)
                         + (" (MIXED)" if len(kinds) > 1 else ""))
    if "lineage.sampler" in df.columns:
        samplers = _distinct(df["lineage.sampler"], lambda s: (
            f"DDIM {s.get('steps')} steps, eta={s.get('eta')}, seed={s.get('seed')}"
            if isinstance(s, Mapping) else str(s)))
        if samplers:
            parts.append("sampling: " + "; ".join(samplers))
    if not parts:
        return None
    return ("Protocol: " + "; ".join(parts) + ". Metrics as defined by "
            "Park & Walsh 2025 (Chemeleon2; mSUN) and Cao & Wang 2025 (CrystalFormer-RL).")


def describe_conventions(
    df: pd.DataFrame,
    hull_col: str = "hull_convention",
    mlip_col: str = "mlip",
    hull: Mapping[str, Any] | str | None = None,
    mlip: Mapping[str, Any] | str | None = None,
    dft_hull_col: str | None = "dft_hull_convention",
) -> list[str]:
    """Footnote lines stating the hull and MLIP conventions found on the rows.

    Parameters
    ----------
    df : pandas.DataFrame
        Rows whose ``hull_col`` / ``mlip_col`` hold the screening stage's records (dicts or
        strings); several distinct values are all listed (and flagged as mixed).
    hull, mlip : dict or str, optional
        Explicit conventions (used when given, e.g. by benchmarks without a store).
    dft_hull_col : str, optional
        Column of the DFT stage's hull convention (listed when present).
    """
    hulls = [_summarise_convention(hull)] if hull is not None else (
        _distinct(df[hull_col], _summarise_convention) if hull_col in df.columns else [])
    mlips = [_summarise_mlip(mlip)] if mlip is not None else (
        _distinct(df[mlip_col], _summarise_mlip) if mlip_col in df.columns else [])
    if not mlips and "energy_model" in df.columns:
        mlips = _distinct(df["energy_model"], _summarise_mlip)
    lines = []
    protocol = describe_protocol(df)
    if protocol:
        lines.append(protocol)
    lines.append("Hull convention: " + ("; ".join(hulls) if hulls else "not recorded")
                 + (" (MIXED conventions)" if len(hulls) > 1 else ""))
    lines.append("MLIP: " + ("; ".join(mlips) if mlips else "not recorded")
                 + (" (MIXED models)" if len(mlips) > 1 else ""))
    if dft_hull_col and dft_hull_col in df.columns:
        dft = _distinct(df[dft_hull_col], _summarise_convention)
        if dft:
            lines.append("DFT hull convention: " + "; ".join(dft)
                         + (" (MIXED conventions)" if len(dft) > 1 else ""))
    return lines


def _stability_note(metastable_inclusive: bool = False) -> str:
    op = "<=" if metastable_inclusive else "<"
    return (f"Stable: E_hull <= 0 eV/atom (+{STABILITY_TOL:g}); metastable: E_hull {op} "
            f"{METASTABLE_THRESHOLD:g} eV/atom; SUN/mSUN = (meta)stable & unique & novel.")


# --------------------------------------------------------------------------------------
# (1) MLIP vs DFT
# --------------------------------------------------------------------------------------
def dft_rows(df: pd.DataFrame, dft_stage: str | None = "dft") -> tuple[pd.DataFrame, int]:
    """Rows of the structures sent to DFT whose calculation is not pending.

    With the bookkeeping column ``<dft_stage>_doc_id`` (a store's DataFrame), only structures
    with a DFT result document are kept (structures never sent to DFT are not "missing");
    documents whose ``dft_status`` starts with ``pending`` (flows stored for later submission)
    are dropped and counted. Returns ``(rows, n_pending)``.
    """
    d = df
    marker = f"{dft_stage}_doc_id" if dft_stage else None
    if marker and marker in d.columns:
        d = d[d[marker].notna()]
    n_pending = 0
    if "dft_status" in d.columns:
        pending = d["dft_status"].map(lambda v: isinstance(v, str) and v.startswith("pending"))
        n_pending = int(pending.sum())
        d = d[~pending]
    return d, n_pending


def mlip_vs_dft_table(
    df: pd.DataFrame,
    mlip_col: str = "e_above_hull",
    dft_col: str = "dft_e_above_hull",
    group_by: str | None = None,
    window: tuple[float, float] | None = None,
    dft_stage: str | None = "dft",
    metastable_inclusive: bool = False,
    label: str | None = None,
    hull: Mapping[str, Any] | str | None = None,
    mlip: Mapping[str, Any] | str | None = None,
    dft_label: str = "DFT",
) -> Table:
    """MLIP versus DFT energy above the hull: R^2, MAE, RMSE, classification at 0 and 0.1.

    Parameters
    ----------
    df : pandas.DataFrame
        Rows with ``mlip_col`` and ``dft_col`` (eV/atom).
    group_by : str, optional
        One row per value of this column (e.g. ``lineage.checkpoint_id``); default one row.
    window : (float, float), optional
        Restrict to DFT values in ``[lo, hi]`` (PLaID++'s near-hull window ``(-0.2, 0.2)``).
    dft_stage : str, optional
        When the rows carry the bookkeeping column ``<dft_stage>_doc_id`` (a store's
        DataFrame), only the structures with a DFT result document are compared (structures
        never sent to DFT are not "missing"; a DFT document without an energy is); pending
        calculations are left out and counted (:func:`dft_rows`).
    metastable_inclusive : bool
        ``<=`` instead of ``<`` at 0.1 eV/atom.
    label : str, optional
        Name of the single row (default ``"all"``).
    hull, mlip : dict or str, optional
        Conventions for the footnote when the rows do not carry them.
    dft_label : str
        Name of the reference side in the caption (``"DFT"``, ``"MP"``).
    """
    d, n_pending = dft_rows(df, dft_stage)
    rows, values = [], {}
    for key, g in _groups(d, group_by):
        cmp = compare_ehull(_num(g, dft_col), _num(g, mlip_col), window=window,
                            metastable_inclusive=metastable_inclusive)
        f = cmp.flat()
        name = label if (label and key == "all") else _label(g, key)
        values[name] = {**f, "settings": cmp.settings}
        rows.append({
            "Comparison": name,
            "N": f["n_used"],
            "N excluded (NaN)": f["n_excluded_nan"],
            **({"N outside window": f["n_outside_window"]} if window else {}),
            "R2": f["r2"],
            "Pearson r2": f["pearson_r2"],
            "MAE (eV/atom)": f["mae"],
            "RMSE (eV/atom)": f["rmse"],
            "Precision (stable)": f["stable_precision"],
            "Recall (stable)": f["stable_recall"],
            "F1 (stable)": f["stable_f1"],
            "Accuracy (stable)": f["stable_accuracy"],
            "Precision (metastable)": f["metastable_precision"],
            "Recall (metastable)": f["metastable_recall"],
            "F1 (metastable)": f["metastable_f1"],
            "Accuracy (metastable)": f["metastable_accuracy"],
        })
    data = pd.DataFrame(rows)
    n_used = int(data["N"].sum()) if len(data) else 0
    n_excl = int(data["N excluded (NaN)"].sum()) if len(data) else 0
    fmt = {c: ".3f" for c in data.columns if c not in ("Comparison",) and not c.startswith("N")}
    fmt.update({"MAE (eV/atom)": ".4f", "RMSE (eV/atom)": ".4f"})
    op = "<=" if metastable_inclusive else "<"
    foot = [
        f"N = {n_used} structures compared ({n_excl} excluded for a missing MLIP or "
        f"{dft_label} value" + (f"; window {dft_label} E_hull in [{window[0]:g}, {window[1]:g}]"
                                f" eV/atom" if window else "")
        + (f"; {n_pending} DFT calculations pending, not counted" if n_pending else "") + ").",
        f"Classification (positive = stable or metastable): stable E_hull <= 0 eV/atom; "
        f"metastable E_hull {op} {METASTABLE_THRESHOLD:g} eV/atom, same rule on both sides. "
        f"R2 = 1 - SS_res/SS_tot of the MLIP values as predictions of {dft_label}; "
        f"Pearson r2 = R^2 of a least-squares line.",
        *describe_conventions(d, hull=hull, mlip=mlip),
    ]
    return Table("mlip-vs-dft", data,
                 f"MLIP versus {dft_label} energy above the convex hull", foot, fmt,
                 values=values)


# --------------------------------------------------------------------------------------
# (2) de novo benchmark (Park & Walsh 2025 Table S1)
# --------------------------------------------------------------------------------------
_DENOVO = (
    ("mSUN (%)", "msun"),
    ("Uniqueness (%)", "unique"),
    ("Novelty (%)", "novel"),
    ("Comp. validity (%)", "smact_valid"),
    ("Metastability (%)", "metastable"),
)


def denovo_benchmark_table(
    df: pd.DataFrame,
    group_by: str | None = GROUP_BY,
    stage: str | None = "sample",
    coverage: float | Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    metastable_inclusive: bool = False,
) -> Table:
    """De novo generation benchmark in the layout of Park & Walsh 2025 Supplementary Table S1.

    Parameters
    ----------
    df : pandas.DataFrame
        Campaign rows; generated structures are those of ``stage``.
    group_by : str, optional
        Column separating models or checkpoints (default ``lineage.checkpoint_id``).
    stage : str, optional
        Structure stage of the generated structures.
    coverage : float or dict, optional
        ``1/(1+FMD)`` per group key (or one value for all); default: a stored per-structure
        ``coverage`` column when present (else n/a).
    labels : dict, optional
        Display names of group keys.
    metastable_inclusive : bool
        Only for the footnote: whether the stored ``metastable`` used ``<=``.

    Notes
    -----
    Every generated structure of a group is in its denominator ``N`` (failed decodes count as
    not unique/novel/valid/metastable; structures not evaluated or without an energy as not
    metastable). A metric whose column is absent from every row is n/a, not 0.
    """
    rows_df = _stage_rows(df, stage)
    rows: list[dict[str, Any]] = []
    groups = _groups(rows_df, group_by)
    for key, g in groups:
        n = len(g)
        no_structure = g["formula"].isna().to_numpy() if "formula" in g.columns \
            else np.zeros(n, dtype=bool)
        row: dict[str, Any] = {"Model": (labels or {}).get(key, _label(g, key)), "N": n,
                               "N failed": int(no_structure.sum()),
                               "N no E_hull": int((~np.isfinite(_num(g, "e_above_hull"))).sum())}
        for col_name, col in _DENOVO:
            row[col_name] = _pct(int(_flag(g, col).sum()), n) if _has(rows_df, col) \
                else math.nan
        cov = math.nan
        if isinstance(coverage, Mapping):  # "*": checkpoint unknown, only for one group
            cov = coverage.get(key, coverage.get("*", math.nan) if len(groups) == 1
                               else math.nan)
        elif coverage is not None:
            cov = float(coverage)
        elif _has(g, "coverage"):
            vals = pd.to_numeric(g["coverage"], errors="coerce").dropna().unique()
            if len(vals) > 1:
                logger.warning("group %s has %d distinct stored coverage values; using the "
                               "first", key, len(vals))
            cov = float(vals[0])
        row["1/(1+FMD) (%)"] = 100.0 * cov if cov == cov else math.nan
        rows.append(row)
    data = pd.DataFrame(rows, columns=["Model", "N", "N failed", "N no E_hull",
                                       *[c for c, _ in _DENOVO], "1/(1+FMD) (%)"])
    n_tot = int(data["N"].sum()) if len(data) else 0
    fmt = {c: ".1f" for c in data.columns if c.endswith("(%)")}
    foot = [
        f"N = {n_tot} generated structures (stage {stage!r}) in {len(data)} group(s) by "
        f"{group_by or 'nothing'}; every generated structure is in its group's denominator. "
        "N failed: no structure (failed decode); N no E_hull: no MLIP energy above hull (failed "
        "decode, rejected before the MLIP as structurally invalid or implausibly dense, or "
        "MLIP/hull failure); failed decodes count as not unique/novel/valid/metastable, the "
        "others as not metastable (their validity, uniqueness and novelty are those of their "
        "structure).",
        "Comp. validity: SMACT (charge neutrality + electronegativity); uniqueness/novelty: "
        "pymatgen StructureMatcher; 1/(1+FMD): coverage from the stored Frechet distance "
        "(n/a when not stored).",
        _stability_note(metastable_inclusive),
        *describe_conventions(rows_df),
    ]
    return Table("denovo", data, "De novo generation benchmark (layout of Chemeleon2 "
                 "Supplementary Table S1)", foot, fmt)


# --------------------------------------------------------------------------------------
# (3) property targeting (band gap)
# --------------------------------------------------------------------------------------
def property_targeting_table(
    df: pd.DataFrame,
    window: tuple[float, float] = GAP_WINDOW,
    gap_col: str = "dft_band_gap",
    group_by: str | None = GROUP_BY,
    stage: str | None = "sample",
) -> Table:
    """Count the mSUN structures whose DFT band gap is in ``window`` (Park & Walsh 2025, S17).

    Parameters
    ----------
    df : pandas.DataFrame
        Campaign rows.
    window : (float, float)
        Inclusive band-gap window (eV).
    gap_col : str
        Column of the DFT band gap (eV).
    group_by, stage
        As :func:`denovo_benchmark_table`.

    Notes
    -----
    Columns: ``N`` generated, ``N DFT gap`` (with a finite DFT gap), ``N mSUN``, ``N mSUN with
    DFT gap``, ``N in window`` (any structure), ``N mSUN in window``, and the fraction of mSUN
    structures in the window over all generated structures (Park & Walsh 2025: 82 of 512) and over
    mSUN structures with a DFT gap.
    """
    lo, hi = window
    rows_df = _stage_rows(df, stage)
    rows = []
    for key, g in _groups(rows_df, group_by):
        n = len(g)
        gap = _num(g, gap_col)
        has_gap = np.isfinite(gap)
        msun = _flag(g, "msun")
        inw = has_gap & (gap >= lo) & (gap <= hi)
        rows.append({
            "Model": _label(g, key),
            "N": n,
            "N DFT gap": int(has_gap.sum()),
            "N mSUN": int(msun.sum()),
            "N mSUN with DFT gap": int((msun & has_gap).sum()),
            "N in window": int(inw.sum()),
            "N mSUN in window": int((msun & inw).sum()),
            "mSUN in window / N (%)": _pct(int((msun & inw).sum()), n),
            "mSUN in window / mSUN with gap (%)": _pct(int((msun & inw).sum()),
                                                       int((msun & has_gap).sum())),
            "Median DFT gap (eV)": float(np.median(gap[has_gap])) if has_gap.any()
            else math.nan,
        })
    data = pd.DataFrame(rows)
    fmt = {c: ".1f" for c in data.columns if c.endswith("(%)")}
    fmt["Median DFT gap (eV)"] = ".2f"
    n_tot = int(data["N"].sum()) if len(data) else 0
    foot = [
        f"N = {n_tot} generated structures (stage {stage!r}); band-gap window "
        f"[{lo:g}, {hi:g}] eV inclusive, DFT gaps from column {gap_col!r}; structures "
        f"without a DFT gap are never in the window.",
        _stability_note(),
        *describe_conventions(rows_df),
    ]
    return Table("property-targeting", data,
                 f"Property targeting: mSUN structures with DFT band gap in {lo:g}-{hi:g} eV",
                 foot, fmt)


# --------------------------------------------------------------------------------------
# (4) figure of merit (Cao & Wang 2025 Table I)
# --------------------------------------------------------------------------------------
def fom_table(
    df: pd.DataFrame,
    train_formulas: Iterable[str] | None = None,
    max_e_hull: float | None = None,
    top: int | None = None,
    gap_col: str = "dft_band_gap",
    eps_col: str = "dft_eps_elec",
    ehull_col: str = "dft_e_above_hull",
    fom_col: str = "dft_fom",
) -> Table:
    """Dielectric figure of merit in the layout of Cao & Wang 2025 Table I.

    Parameters
    ----------
    df : pandas.DataFrame
        Campaign rows (dataset rows are ignored).
    train_formulas : iterable of str, optional
        Reduced formulas of the training set; rows whose formula is absent are novel and
        rendered in bold. ``None``: unknown (column n/a).
    max_e_hull : float, optional
        Keep rows with DFT E_hull below this (Cao & Wang 2025 lists E_hull < 0.1 eV/atom).
    top : int, optional
        Keep the ``top`` rows by FoM.
    gap_col, eps_col, ehull_col, fom_col : str
        Columns of the DFT band gap (eV), electronic dielectric constant, DFT energy above the
        hull (eV/atom) and stored FoM.

    Notes
    -----
    FoM = eps_elec * Eg (eV) computed from the stored DFT values; a stored ``dft_fom`` is used
    only when one of them is missing, and a stored value that disagrees with the product is
    reported in a footnote. Rows are sorted by FoM, highest first.
    """
    d = df[df["stage"] != "dataset"] if "stage" in df.columns else df
    gap, eps = _num(d, gap_col), _num(d, eps_col)
    stored = _num(d, fom_col)
    prod = gap * eps
    fom = np.where(np.isfinite(prod), prod, stored)
    disagree = np.isfinite(prod) & np.isfinite(stored) & ~np.isclose(prod, stored, rtol=1e-6,
                                                                     atol=1e-9)
    keep = np.isfinite(fom)
    ehull = _num(d, ehull_col)
    n_candidates = int(keep.sum())
    if max_e_hull is not None:
        keep &= np.isfinite(ehull) & (ehull < max_e_hull)
    formula_col = "reduced_formula" if "reduced_formula" in d.columns else "formula"
    formulas = d[formula_col].to_numpy() if formula_col in d.columns else \
        np.array([None] * len(d))
    train = set(train_formulas) if train_formulas is not None else None
    data = pd.DataFrame({
        "Formula": formulas[keep],
        "Eg (eV)": gap[keep],
        "eps_elec": eps[keep],
        "FoM (eV)": fom[keep],
        "E_hull (eV/atom)": ehull[keep],
        "In training set": [(f in train) if train is not None else None
                            for f in formulas[keep]],
        "structure_id": d["structure_id"].to_numpy()[keep] if "structure_id" in d.columns
        else [None] * int(keep.sum()),
    })
    data = data.sort_values("FoM (eV)", ascending=False, kind="stable").reset_index(drop=True)
    if top:
        data = data.head(top)
    bold = [v is False for v in data["In training set"]]
    fmt = {"Eg (eV)": ".2f", "eps_elec": ".2f", "FoM (eV)": ".2f", "E_hull (eV/atom)": ".3f"}
    foot = [
        f"N = {len(data)} structures listed ({n_candidates} with a DFT FoM"
        + (f"; DFT E_hull < {max_e_hull:g} eV/atom" if max_e_hull is not None else "")
        + (f"; top {top}" if top else "") + "). FoM = eps_elec * Eg; Eg, eps_elec and E_hull "
        "from DFT, ranked by FoM.",
        ("Bold rows: reduced formula not in the training set "
         f"({len(train)} training formulas)." if train is not None
         else "Training set not available: novelty of formulas not marked."),
        *describe_conventions(d),
    ]
    if disagree.any():
        foot.append(f"Warning: {int(disagree.sum())} stored dft_fom value(s) differ from "
                    "eps_elec * Eg; the product is shown.")
        logger.warning("%d stored dft_fom values differ from eps_elec * Eg", int(disagree.sum()))
    return Table("fom", data, "Dielectric materials ranked by figure of merit "
                 "FoM = eps_elec * Eg (layout of CrystalFormer-RL Table I)", foot, fmt,
                 bold_rows=bold)


# --------------------------------------------------------------------------------------
# (5) S.U.N. per space group
# --------------------------------------------------------------------------------------
def _sg_number(v: Any) -> int | None:
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, Mapping):
        v = v.get("number") or v.get("int_number") or v.get("symbol")
        if v is None:
            return None
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer()):
        n = int(v)
        return n if 1 <= n <= 230 else None
    s = str(v).strip()
    if s.isdigit():
        return int(s) if 1 <= int(s) <= 230 else None
    try:
        from pymatgen.symmetry.groups import SpaceGroup

        return int(SpaceGroup(s).int_number)
    except Exception:  # noqa: BLE001 - not a recognisable symbol
        return None


def spacegroups_of(
    df: pd.DataFrame,
    structures: Mapping[str, Structure] | None = None,
    symprec: float = 0.1,
    column: str = "spacegroup",
) -> np.ndarray:
    """Space-group numbers of the rows (NaN when unknown).

    A stored ``column`` value (number, symbol or ``{"number": ...}``) is used when present;
    otherwise the structure (``structure`` column dict or ``structures[structure_id]``) is
    analysed with pymatgen's ``SpacegroupAnalyzer(symprec=symprec)``.
    """
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    out = np.full(len(df), np.nan)
    stored = df[column].tolist() if column in df.columns else [None] * len(df)
    sdicts = df["structure"].tolist() if "structure" in df.columns else [None] * len(df)
    sids = df["structure_id"].tolist() if "structure_id" in df.columns else [None] * len(df)
    n_an = 0
    for i, (sg, sd, sid) in enumerate(zip(stored, sdicts, sids, strict=True)):
        num = _sg_number(sg)
        if num is None:
            s = None
            if structures is not None and sid in structures:
                s = structures[sid]
            elif isinstance(sd, Mapping):
                s = Structure.from_dict(sd)
            if s is not None:
                try:
                    num = SpacegroupAnalyzer(s, symprec=symprec).get_space_group_number()
                    n_an += 1
                except Exception as exc:  # noqa: BLE001
                    logger.debug("space group of %s failed: %s", sid, exc)
        if num is not None:
            out[i] = num
    logger.info("space groups: %d analysed with symprec=%g, %d stored, %d unknown", n_an,
                symprec, int(np.isfinite(out).sum()) - n_an, int((~np.isfinite(out)).sum()))
    return out


def _crystal_system(n: int) -> str:
    for hi, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"),
                     (142, "tetragonal"), (167, "trigonal"), (194, "hexagonal"),
                     (230, "cubic")):
        if n <= hi:
            return name
    return "unknown"


def _sg_symbol(n: int) -> str:
    """Short Hermann-Mauguin symbol (monoclinic ``C12/m1`` -> ``C2/m``)."""
    try:
        from pymatgen.symmetry.groups import SpaceGroup

        sym = SpaceGroup.from_int_number(int(n)).symbol
    except Exception:  # noqa: BLE001
        return str(n)
    if 3 <= int(n) <= 15 and len(sym) > 3 and sym[1] == "1" and sym.endswith("1"):
        sym = sym[0] + sym[2:-1]
    return sym


def sun_per_spacegroup_table(
    df: pd.DataFrame,
    structures: Mapping[str, Structure] | None = None,
    symprec: float = 0.1,
    group_by: str | None = None,
    stage: str | None = "sample",
    target_col: str | None = None,
    min_count: int = 1,
) -> Table:
    """Stable, S.U.N. and mSUN fractions per space group (Cao & Wang 2025 Fig. 4; PLaID++ S.S.U.N.).

    Parameters
    ----------
    df : pandas.DataFrame
        Campaign rows; a ``structure`` column (``to_dataframe(include_structures=True)``) or
        ``structures`` is needed for rows without a stored ``spacegroup``.
    structures : dict, optional
        ``{structure_id: Structure}``.
    symprec : float
        ``SpacegroupAnalyzer`` tolerance (Å).
    group_by : str, optional
        Also split by this column (e.g. ``lineage.checkpoint_id`` for base vs RL bars).
    stage : str, optional
        Stage of the generated structures.
    target_col : str, optional
        Column of the *requested* space group of space-group-conditioned samples; rows are
        then per target space group and ``S.S.U.N. (%)`` = structures whose detected space
        group equals the target and that are metastable, unique and novel.
    min_count : int
        Drop space groups with fewer structures (never the ``unknown`` row).

    Notes
    -----
    Denominators are the generated structures of each space group; structures whose space
    group cannot be determined (failed decodes) form the ``unknown`` row, so the rows of a
    group sum to all its generated structures. Cao & Wang 2025 calls "stable" E_hull < 0.1 eV/atom:
    its S.U.N. corresponds to mSUN here.
    """
    rows_df = _stage_rows(df, stage)
    sg = spacegroups_of(rows_df, structures, symprec)
    target = None
    if target_col:
        target = np.array([_sg_number(v) or np.nan for v in
                           (rows_df[target_col] if target_col in rows_df.columns
                            else [None] * len(rows_df))], dtype=float)
    key_sg = target if target is not None else sg
    rows = []
    gkeys = (rows_df[group_by].map(lambda v: "(none)" if v is None or v != v else str(v))
             .to_numpy() if group_by and group_by in rows_df.columns
             else np.array(["all"] * len(rows_df)))
    stable, meta = _flag(rows_df, "stable"), _flag(rows_df, "metastable")
    sun, msun = _flag(rows_df, "sun"), _flag(rows_df, "msun")
    for gk in dict.fromkeys(gkeys):
        gm = gkeys == gk
        sgs = sorted({int(x) for x in key_sg[gm] if np.isfinite(x)})
        for num in [*sgs, None]:
            m = gm & (np.isfinite(key_sg) & (key_sg == num) if num is not None
                      else ~np.isfinite(key_sg))
            n = int(m.sum())
            if n == 0 or (num is not None and n < min_count):
                continue
            row = {"Group": gk} if group_by else {}
            row.update({
                "Space group": num if num is not None else math.nan,
                "Symbol": _sg_symbol(num) if num is not None else "unknown",
                "Crystal system": _crystal_system(num) if num is not None else "unknown",
                "N": n,
                "N stable": int((m & stable).sum()),
                "N SUN": int((m & sun).sum()),
                "N metastable": int((m & meta).sum()),
                "N mSUN": int((m & msun).sum()),
                "Stable (%)": _pct(int((m & stable).sum()), n),
                "SUN (%)": _pct(int((m & sun).sum()), n),
                "Metastable (%)": _pct(int((m & meta).sum()), n),
                "mSUN (%)": _pct(int((m & msun).sum()), n),
            })
            if target is not None:
                correct = m & np.isfinite(sg) & (sg == key_sg)
                row["N correct symmetry"] = int(correct.sum())
                row["N S.S.U.N."] = int((correct & msun).sum())
                row["S.S.U.N. (%)"] = _pct(int((correct & msun).sum()), n)
            rows.append(row)
    data = pd.DataFrame(rows)
    fmt = {c: ".1f" for c in data.columns if c.endswith("(%)")}
    fmt["Space group"] = ".0f"
    n_unknown = int((~np.isfinite(key_sg)).sum())
    foot = [
        f"N = {len(rows_df)} generated structures (stage {stage!r}); "
        + (f"rows per target space group ({target_col}); " if target_col else
           f"space group from the stored value or SpacegroupAnalyzer(symprec={symprec:g}); ")
        + f"{n_unknown} with unknown space group (no structure, or the symmetry analysis "
        "failed) in the 'unknown' row.",
        _stability_note() + " Cao & Wang 2025's S.U.N. (E_hull < 0.1) is mSUN here."
        + (" S.S.U.N.: detected space group = target, and mSUN (PLaID++ 2025)." if target_col
           else ""),
        *describe_conventions(rows_df),
    ]
    return Table("sun-per-spacegroup", data, "S.U.N. per space group", foot, fmt)


# --------------------------------------------------------------------------------------
# store look-ups and build-by-name
# --------------------------------------------------------------------------------------
def training_formulas(df: pd.DataFrame, split: str | None = "train") -> set[str] | None:
    """Reduced formulas of the training set (``dataset`` rows with ``lineage.split == split``).

    Returns ``None`` when the store holds no dataset rows. When no row carries a split, all
    dataset rows are taken.
    """
    if "stage" not in df.columns:
        return None
    ds = df[df["stage"] == "dataset"]
    if ds.empty:
        return None
    if split and "lineage.split" in ds.columns and ds["lineage.split"].notna().any():
        ds = ds[ds["lineage.split"] == split]
    return {f for f in ds.get("reduced_formula", pd.Series(dtype=object)) if f}


def iter_job_outputs(results: CampaignResults, name: str | None = None
                      ) -> list[dict[str, Any]]:
    crit: dict[str, Any] = {}
    if results.campaign_id:
        crit["metadata.campaign_id"] = results.campaign_id
    if name:
        crit["name"] = name
    try:
        docs = list(results.store.query(crit, properties=["uuid", "name", "output",
                                                          "completed_at", "metadata"],
                                        load=True))
    except Exception as exc:  # noqa: BLE001 - a store that cannot resolve references
        logger.warning("could not read job outputs: %s", exc)
        return []
    docs.sort(key=lambda d: str(d.get("completed_at") or ""))
    return docs


def stored_coverage(results: CampaignResults, df: pd.DataFrame | None = None
                    ) -> dict[str, float]:
    """Coverage ``1/(1+FMD)`` stored in job outputs, keyed by checkpoint id (``*``: unknown).

    Looks for ``coverage`` (or ``fmd``) at the top level of a job output or in its
    ``summary`` (the screening job's output). The checkpoint comes from a ``checkpoint_id``
    next to it or, for a screening output, from the ``lineage.checkpoint_id`` of the samples
    written by its ``sample_job_uuids`` (rows of ``df``) when they share one. Later jobs win.
    """
    out: dict[str, float] = {}
    samples = _stage_rows(df, "sample") if df is not None else None
    for d in iter_job_outputs(results):
        o = d.get("output")
        if not isinstance(o, Mapping):
            continue
        for src in (o, o.get("summary")):
            if not isinstance(src, Mapping):
                continue
            cov = src.get("coverage")
            if cov is None and src.get("fmd") is not None:
                cov = 1.0 / (1.0 + max(float(src["fmd"]), 0.0))
            if cov is None:
                continue
            ck = src.get("checkpoint_id") or o.get("checkpoint_id")
            uuids = o.get("sample_job_uuids")
            if (ck is None and uuids and samples is not None and "job_uuid" in samples.columns
                    and GROUP_BY in samples.columns):
                cks = set(samples.loc[samples["job_uuid"].isin(list(uuids)), GROUP_BY].dropna())
                ck = cks.pop() if len(cks) == 1 else None
            ck = ck or "*"
            try:
                out[str(ck)] = float(cov)
            except (TypeError, ValueError):
                continue
    return out


#: Table names accepted by :func:`build_table` (and ``xtalforge table``).
TABLES = ("mlip-vs-dft", "denovo", "property-targeting", "fom", "sun-per-spacegroup")


def build_table(name: str, results: CampaignResults, df: pd.DataFrame | None = None,
                **kwargs: Any) -> Table:
    """Build a table by name from a campaign's results.

    Parameters
    ----------
    name : str
        One of :data:`TABLES` (underscores accepted).
    results : CampaignResults
        The campaign (store look-ups: coverage, training formulas, structures).
    df : pandas.DataFrame, optional
        ``results.to_dataframe()`` when already loaded.
    **kwargs
        Passed to the builder.
    """
    key = name.lower().replace("_", "-")
    if key not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose from {', '.join(TABLES)}")
    if df is None:
        df = results.to_dataframe()
    if key == "sun-per-spacegroup":
        if "structure" not in df.columns and "structures" not in kwargs:
            rows = _stage_rows(df, kwargs.get("stage", "sample"))
            stored = rows["spacegroup"].map(_sg_number) if "spacegroup" in rows.columns \
                else pd.Series([None] * len(rows), index=rows.index)
            ids = rows.loc[stored.isna(), "structure_id"].tolist() if len(rows) else []
            kwargs["structures"] = results.structures(ids) if ids else {}
        return sun_per_spacegroup_table(df, **kwargs)
    if df.empty:
        logger.warning("campaign %r has no structures", results.campaign_id)
    if key == "mlip-vs-dft":
        return mlip_vs_dft_table(df, **kwargs)
    if key == "denovo":
        if "coverage" not in kwargs and not _has(df, "coverage"):
            cov = stored_coverage(results, df)
            kwargs["coverage"] = cov or None
        return denovo_benchmark_table(df, **kwargs)
    if key == "property-targeting":
        return property_targeting_table(df, **kwargs)
    kwargs.setdefault("train_formulas", training_formulas(df))
    return fom_table(df, **kwargs)

