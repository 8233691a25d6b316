"""Second opinion on CHGNet energies: re-score generated samples with SevenNet-0.

Reads one or more ``samples_*.json.gz`` files (a gzipped JSON list; each entry
``{"structure": pymatgen Structure dict or null, "e_above_hull": CHGNet E_hull in eV/atom or
null, "error": str or null}``, as ``benchmarks/generator_scaling.py eval`` writes them),
computes SevenNet-0 single points of the structures, places them on the MP-20 formation-energy
hull (45,229 DFT entries) with SevenNet's own elemental chemical potentials (lowest single
point among the elemental MP-20 val + test structures, ASE reference crystal relaxed with
SevenNet otherwise: :func:`xtalforge.screening.hull.mlip_chemical_potentials`), and reports per
input file how well the metastable flags (E_hull < 0.1 eV/atom) of the two models agree.

Set-up
------
SevenNet needs e3nn >= 0.5 while mace-torch pins e3nn 0.4.4, so SevenNet gets its own virtual
environment (outside the repository), with xtalforge installed without its dependencies::

    python3 -m venv sevenn_venv
    sevenn_venv/bin/pip install torch==2.13.0   # the CPU wheel; on GPU hosts install the CUDA
                                                # build of torch first instead
    sevenn_venv/bin/pip install sevenn==0.13.0  # ships the SevenNet-0 (11Jul2024) weights
    sevenn_venv/bin/pip install pymatgen smact average-minimum-distance pyarrow
    sevenn_venv/bin/pip install --no-deps -e /path/to/xtalforge
    sevenn_venv/bin/pip install chgnet          # optional: only for --recompute-chgnet

Protocol
--------
Every model is evaluated the way the generator studies screen samples
(:func:`xtalforge.screening.screen.screen_structures`, single points, no relaxation):
``None`` structures and structures failing the 0.5 Å structural check are not evaluated,
cells below ``--min-volume-per-atom`` (2 Å^3/atom) are refused before the MLIP
(:class:`xtalforge.rewards.resources.GuardedEnergyModel`), a model failure on one structure is
recorded with its reason and never stops the run.

Energy scale. CHGNet 0.3.0 is trained on MP2020-corrected MPtrj energies; SevenNet-0 is trained
on *uncorrected* MPtrj energies (Matbench Discovery applies ``MaterialsProject2020Compatibility``
to its predictions). The MP-20 hull holds MP2020-corrected formation energies, so by default
(``--sevennet-correction MP2020``) SevenNet's total energies get the MP2020 anion and GGA/GGA+U
mixing corrections (the entry is labelled GGA+U with MP's U values when it contains O or F and
a U element, GGA otherwise), while the elemental chemical potentials stay uncorrected (MP2020
corrects no elemental entry). The uncorrected SevenNet E_hull is always recorded as well, and
its agreement is in the JSON (``agreement_uncorrected``).

Metrics per file
----------------
``n_entries``; per model the structures with a finite E_hull (``n_ok``), the failures with
their reasons, the metastable share over all entries (failures count as not metastable, the
project's failure-aware denominator) and over the model's scored structures; over the
structures both models scored: the 2x2 confusion counts of the metastable flags, accuracy,
Cohen's kappa, the precision and recall of CHGNet's flag taking SevenNet's as the reference,
and the Spearman correlation of the two E_hull values. CHGNet values come from the file, or
are recomputed with ``--recompute-chgnet`` (CHGNet must be installed in this environment).

Outputs in ``--out``: ``second_opinion.json`` (summaries, model and hull conventions, timings),
``second_opinion_records.json.gz`` (per-structure values and failure reasons),
``second_opinion_parity.png`` (CHGNet vs SevenNet E_hull clipped to [0, 3] eV/atom, with the
0.1 eV/atom lines), the chemical-potential caches; a Markdown table goes to stdout.

Cost
----
SevenNet-0 is evaluated one structure at a time through its ASE calculator. On a 2-core CPU
shared with other jobs it ran at 0.25-1.4 structures/s on ~11-atom MP-20 cells (CHGNet,
batched: 4-6 structures/s in the same runs); the chemical potentials took 7 min once (CIF
parsing, elemental single points, 14 ASE reference crystals relaxed) and are cached in
``--out`` (keyed by the checkpoint's SHA-256). A GPU (``device="auto"`` picks CUDA) is the
place for thousands of samples.

Example::

    sevenn_venv/bin/python benchmarks/second_opinion.py out/sc/samples_A_16000.json.gz \
        --out out/second_opinion
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import math
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mp20"
logger = logging.getLogger("second_opinion")

THRESHOLD = 0.1  # eV/atom, E_hull < THRESHOLD is metastable (xtalforge.screening.metrics)


# ------------------------------------------------------------------------------- inputs
def read_samples(path: Path) -> list[dict[str, Any]]:
    """Entries of a samples file (structures parsed, unreadable ones recorded as errors)."""
    from pymatgen.core import Structure

    with gzip.open(path, "rt") as fh:
        rows = json.load(fh)
    out = []
    for i, r in enumerate(rows):
        s, err = None, None
        if r.get("structure") is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s = Structure.from_dict(r["structure"])
            except Exception as exc:  # noqa: BLE001 - a broken entry is one failure
                err = f"unreadable structure: {type(exc).__name__}: {exc}"[:300]
        e = r.get("e_above_hull")
        out.append({"index": i, "structure": s, "read_error": err,
                    "chgnet_e_hull": float(e) if e is not None else math.nan,
                    "chgnet_error": r.get("error"), "msun": r.get("msun")})
    return out


# ------------------------------------------------------------------------------- models
def load_sevennet(model_name: str):
    """SevenNet through the ``ase:`` spec of :func:`get_energy_model`, with its element set."""
    try:
        import sevenn.util
    except ImportError as exc:
        raise SystemExit(
            "sevenn is not installed in this environment; see the set-up section of "
            "benchmarks/second_opinion.py (it needs its own venv: e3nn >= 0.5)") from exc
    from xtalforge.screening.mlip import get_energy_model

    ckpt = Path(model_name)
    if not ckpt.is_file():
        ckpt = Path(sevenn.util.pretrained_name_to_path(model_name))
    model = get_energy_model("ase:sevenn.calculator.SevenNetCalculator", model=model_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = model.calculator()
    model.name = "sevennet"  # in failure reasons and progress bars, instead of "ase"
    from xtalforge.models.generator import file_sha256

    model.supported_atomic_numbers = frozenset(int(z) for z in calc.type_map)
    info = {"checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(ckpt),
            "sevenn_version": getattr(sevenn, "__version__", None),
            "device": str(calc.device), "n_elements": len(calc.type_map),
            "energy_model": model.info}
    return model, info


def chemical_potentials(model, cache: Path, data_dir: Path, workers: int
                        ) -> tuple[dict[str, float], dict[str, str]]:
    """``mlip_chemical_potentials`` over MP-20 val + test (parsed only without a valid cache)."""
    from xtalforge.screening.hull import mlip_chemical_potentials

    structures: list = []
    valid = False
    if cache.is_file():
        valid = json.loads(cache.read_text()).get("energy_model_fingerprint") == model.fingerprint
    if not valid:
        from xtalforge.data.mp20 import load_mp20_split

        logger.info("computing %s chemical potentials over MP-20 val + test", model.spec)
        structures = load_mp20_split(data_dir, workers=workers).reference
    return mlip_chemical_potentials(model, structures, cache_path=cache)


# ------------------------------------------------------------------------------- scoring
def mp2020_energies(structures: list, energies: np.ndarray) -> tuple[np.ndarray, list]:
    """MP2020-corrected total energies of uncorrected GGA/GGA+U-scale predictions.

    Returns
    -------
    tuple
        Corrected energies (NaN where the correction failed) and one reason or ``None`` each.
    """
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    compat = MaterialsProject2020Compatibility(check_potcar=False)
    out = np.full(len(structures), np.nan)
    reasons: list[str | None] = [None] * len(structures)
    for i, (s, e) in enumerate(zip(structures, energies, strict=True)):
        if s is None or not np.isfinite(e):
            continue
        symbols = {el.symbol for el in s.composition.elements}
        anion = "O" if "O" in symbols else "F" if "F" in symbols else None
        hubbards = ({el: u for el, u in compat.u_settings[anion].items() if el in symbols}
                    if anion else {})
        params = {"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry = compat.process_entry(ComputedStructureEntry(s, float(e),
                                                                    parameters=params))
        except Exception as exc:  # noqa: BLE001
            reasons[i] = f"MP2020 correction failed: {type(exc).__name__}: {exc}"[:300]
            continue
        if entry is None:
            reasons[i] = "MP2020 correction: entry judged incompatible"
        else:
            out[i] = entry.energy
    return out, reasons


def score(model, hull, entries: list[dict], min_vpa: float, batch_size: int,
          correction: str | None = None, label: str = "") -> dict[str, Any]:
    """Single points + E_hull of the entries' structures with one model (never raises).

    Returns a dict of arrays ``e_hull``, ``e_hull_uncorrected`` (with a correction),
    ``energy_per_atom``, ``error`` and the evaluation time ``seconds`` / count ``n_evaluated``.
    """
    from xtalforge.rewards.resources import GuardedEnergyModel
    from xtalforge.screening.metrics import structural_validity

    n = len(entries)
    errors: list[str | None] = [None] * n
    todo = []
    for i, en in enumerate(entries):
        s = en["structure"]
        if en["read_error"]:
            errors[i] = en["read_error"]
        elif s is None:
            errors[i] = "invalid structure (None)"
        else:
            ok, reason = structural_validity(s)
            if not ok:
                errors[i] = f"not evaluated: structurally invalid ({reason})"
            else:
                todo.append(i)
    guarded = GuardedEnergyModel(model, min_vpa)
    e_tot = np.full(n, np.nan)
    e_pa = np.full(n, np.nan)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = guarded.predict([entries[i]["structure"] for i in todo],
                                  batch_size=batch_size, progress=True)
    seconds = time.perf_counter() - t0
    n_model_calls = sum(1 for r in results if not (r.error or "").startswith("not evaluated"))
    for i, r in zip(todo, results, strict=True):
        if r.error:
            errors[i] = f"energy: {r.error}"
        else:
            e_tot[i], e_pa[i] = r.energy, r.energy_per_atom
    structs = [en["structure"] for en in entries]

    def hull_of(energies: np.ndarray, errs: list[str | None]) -> np.ndarray:
        out = np.full(n, np.nan)
        idx = [i for i in range(n) if np.isfinite(energies[i])]
        if idx:
            vals, reasons = hull.e_above_hull(
                [structs[i].composition for i in idx],
                [energies[i] / len(structs[i]) for i in idx], kind="total", return_reasons=True)
            out[idx] = vals
            for i, reason in zip(idx, reasons, strict=True):
                if reason and errs[i] is None:
                    errs[i] = f"hull: {reason}"
        return out

    res: dict[str, Any] = {"energy_per_atom": e_pa, "seconds": seconds,
                           "n_evaluated": n_model_calls}
    if correction == "MP2020":
        raw_errors = list(errors)
        res["e_hull_uncorrected"] = hull_of(e_tot, raw_errors)
        corrected, reasons = mp2020_energies(structs, e_tot)
        for i, reason in enumerate(reasons):
            if reason and errors[i] is None:
                errors[i] = reason
        res["e_hull"] = hull_of(corrected, errors)
        res["mp2020_correction_per_atom"] = np.array(
            [(corrected[i] - e_tot[i]) / len(structs[i]) if np.isfinite(corrected[i])
             else np.nan for i in range(n)])
    else:
        res["e_hull"] = hull_of(e_tot, errors)
    res["error"] = errors
    rate = n_model_calls / seconds if seconds > 0 else math.nan
    logger.info("%s: %d structures evaluated in %.1f s (%.2f structures/s)", label,
                n_model_calls, seconds, rate)
    return res


# ------------------------------------------------------------------------------- metrics
def _f(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def agreement(e_c: np.ndarray, e_s: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """Agreement of the metastable flags and ranks over the structures both models scored.

    CHGNet's flag is the "prediction", SevenNet's the "reference" (precision: share of
    CHGNet-metastable structures SevenNet also calls metastable; recall: share of
    SevenNet-metastable ones CHGNet also finds).
    """
    from scipy.stats import spearmanr

    both = np.isfinite(e_c) & np.isfinite(e_s)
    c, s = e_c[both] < threshold, e_s[both] < threshold
    n = int(both.sum())
    tp, fp = int((c & s).sum()), int((c & ~s).sum())
    fn, tn = int((~c & s).sum()), int((~c & ~s).sum())
    out: dict[str, Any] = {
        "n_both": n,
        "confusion": {"both_metastable": tp, "chgnet_only": fp, "sevennet_only": fn,
                      "neither": tn},
        "accuracy": None, "cohen_kappa": None, "precision_chgnet_vs_sevennet": None,
        "recall_chgnet_vs_sevennet": None, "spearman": None, "spearman_p": None,
        "mean_diff_sevennet_minus_chgnet": None, "mae": None,
    }
    if n == 0:
        return out
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    out["accuracy"] = po
    out["cohen_kappa"] = (po - pe) / (1 - pe) if pe < 1 else None
    out["precision_chgnet_vs_sevennet"] = tp / (tp + fp) if tp + fp else None
    out["recall_chgnet_vs_sevennet"] = tp / (tp + fn) if tp + fn else None
    if n >= 3:
        rho, p = spearmanr(e_c[both], e_s[both])
        out["spearman"], out["spearman_p"] = _f(rho), _f(p)
    d = e_s[both] - e_c[both]
    out["mean_diff_sevennet_minus_chgnet"] = float(d.mean())
    out["mae"] = float(np.abs(d).mean())
    return out


def _failed_high(e: np.ndarray) -> np.ndarray:
    """E_hull with failures set far above the threshold (failure-aware flags)."""
    return np.where(np.isfinite(e), e, 1e9)


def model_summary(e: np.ndarray, errors: list[str | None], n_entries: int,
                  threshold: float = THRESHOLD) -> dict:
    """Scored count, metastable shares and failures (with reasons) of one model."""
    ok = np.isfinite(e)
    meta = int((e[ok] < threshold).sum())
    failures = [{"index": i, "reason": errors[i] or "no E_hull"} for i in range(n_entries)
                if not ok[i]]
    return {
        "n_ok": int(ok.sum()),
        "n_metastable": meta,
        "metastable_share": meta / n_entries if n_entries else None,
        "metastable_share_scored": meta / int(ok.sum()) if ok.any() else None,
        "median_e_hull": _f(np.median(e[ok])) if ok.any() else None,
        "n_failed": len(failures),
        "failure_reasons": dict(Counter(_reason_kind(f["reason"]) for f in failures)
                                .most_common()),
        "failures": failures,
    }


def _reason_kind(reason: str) -> str:
    """Short class of a failure reason (for counts)."""
    for sep in (" (", ":"):
        if sep in reason:
            head = reason.split(sep)[0]
            if head in ("energy", "hull"):
                return ":".join(reason.split(":")[:2])[:80]
            return head[:80]
    return reason[:80]


# ------------------------------------------------------------------------------- outputs
def parity_plot(per_file: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                threshold: float = THRESHOLD, lim: float = 3.0) -> None:
    """CHGNet vs SevenNet E_hull, clipped to [0, lim], with the metastability lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=150)
    markers = "os^Dv<>p"
    for k, (name, (c, s)) in enumerate(per_file.items()):
        both = np.isfinite(c) & np.isfinite(s)
        ax.scatter(np.clip(c[both], 0, lim), np.clip(s[both], 0, lim), s=12, alpha=0.6,
                   marker=markers[k % len(markers)], label=f"{name} (n={int(both.sum())})")
    ax.plot([0, lim], [0, lim], color="0.5", lw=0.8, zorder=0)
    ax.axvline(threshold, color="C3", lw=0.8, ls="--")
    ax.axhline(threshold, color="C3", lw=0.8, ls="--")
    ax.set_xlim(-0.05, lim + 0.05)
    ax.set_ylim(-0.05, lim + 0.05)
    ax.set_xlabel("CHGNet E_hull (eV/atom, clipped to [0, 3])")
    ax.set_ylabel("SevenNet-0 E_hull (eV/atom, clipped to [0, 3])")
    ax.set_title(f"Second opinion: metastable if E_hull < {threshold} eV/atom", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def msun_confirmed(entries: list[dict], e_second: np.ndarray,
                   threshold: float = THRESHOLD) -> dict[str, float | None]:
    """The mSUN share of a samples file and the part of it the second model confirms.

    ``msun_chgnet_share`` is the share of entries flagged mSUN by the screening that wrote the
    file (CHGNet); ``msun_confirmed_share`` the share flagged mSUN *and* metastable
    (E_hull < ``threshold``) under the second model, over all entries (a failure of the second
    model is not a confirmation). Both are ``None`` when the file has no mSUN flags.
    """
    flags = [en.get("msun") for en in entries]
    if not entries or any(f is None for f in flags):
        return {"msun_chgnet_share": None, "msun_confirmed_share": None}
    flags_arr = np.array(flags, dtype=bool)
    ok = np.nan_to_num(e_second, nan=np.inf) < threshold  # a failure confirms nothing
    n = len(entries)
    return {"msun_chgnet_share": float(flags_arr.sum() / n),
            "msun_confirmed_share": float((flags_arr & ok).sum() / n)}


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown_table(files: dict[str, dict]) -> str:
    """One row per input file."""
    head = ("| file | entries | scored (both) | metastable CHGNet | metastable SevenNet | "
            "both / C only / S only / neither | accuracy | kappa | precision | recall | "
            "Spearman | failed C / S | mSUN (CHGNet) / also metastable for SevenNet |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, f in files.items():
        a, c, s = f["agreement"], f["chgnet"], f["sevennet"]
        cf = a["confusion"]
        lines.append(
            f"| {name} | {f['n_entries']} | {a['n_both']} | {_pct(c['metastable_share'])} | "
            f"{_pct(s['metastable_share'])} | {cf['both_metastable']} / {cf['chgnet_only']} / "
            f"{cf['sevennet_only']} / {cf['neither']} | {_num(a['accuracy'])} | "
            f"{_num(a['cohen_kappa'])} | {_num(a['precision_chgnet_vs_sevennet'])} | "
            f"{_num(a['recall_chgnet_vs_sevennet'])} | {_num(a['spearman'])} | "
            f"{c['n_failed']} / {s['n_failed']} | {_pct(f.get('msun_chgnet_share'))} / "
            f"{_pct(f.get('msun_confirmed_share'))} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("samples", nargs="+", type=Path, help="samples_*.json.gz files")
    ap.add_argument("--data-dir", type=Path, default=DATA, help="MP-20 CSV folder")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "second_opinion")
    ap.add_argument("--model", default="7net-0",
                    help="SevenNet pretrained name or checkpoint path (default 7net-0)")
    ap.add_argument("--sevennet-correction", choices=("MP2020", "none"), default="MP2020",
                    help="correction of SevenNet's uncorrected-MPtrj energies (module doc)")
    ap.add_argument("--recompute-chgnet", action="store_true",
                    help="compute CHGNet E_hull here instead of reading it from the files")
    ap.add_argument("--min-volume-per-atom", type=float, default=2.0,
                    help="cells denser than this (A^3/atom) are not evaluated")
    ap.add_argument("--batch-size", type=int, default=64, help="CHGNet batch size")
    ap.add_argument("--workers", type=int, default=2, help="CIF parsing processes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    for noisy in ("sevenn", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*TP accelerator.*")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from xtalforge.data.mp20 import mp20_formation_hull

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    sevennet, sevennet_info = load_sevennet(args.model)
    timings["sevennet_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    mu_cache = args.out / f"mu_sevennet_{sevennet_info['checkpoint_sha256'][:12]}.json"
    mu_s, mu_s_src = chemical_potentials(sevennet, mu_cache, args.data_dir, args.workers)
    timings["sevennet_mu_s"] = time.perf_counter() - t
    hull_s = mp20_formation_hull(args.data_dir, mu_s,
                                 f"SevenNet {args.model} single points, E_form = E - sum mu_a "
                                 f"n_a, {args.sevennet_correction} correction of E")
    correction = None if args.sevennet_correction == "none" else args.sevennet_correction

    chgnet = hull_c = None
    chgnet_info: dict[str, Any] = {"source": "samples files"}
    if args.recompute_chgnet:
        try:
            import chgnet as _  # noqa: F401
        except ImportError as exc:
            raise SystemExit("--recompute-chgnet needs chgnet in this environment "
                             "(pip install chgnet)") from exc
        from xtalforge.screening.mlip import get_energy_model

        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # CHGNet prints a banner
            chgnet = get_energy_model("chgnet")
        mu_c, _src = chemical_potentials(chgnet, args.out / "mu_chgnet.json", args.data_dir,
                                         args.workers)
        hull_c = mp20_formation_hull(args.data_dir, mu_c,
                                     "chgnet single points, E_form = E - sum mu_a n_a")
        timings["chgnet_load_and_mu_s"] = time.perf_counter() - t
        chgnet_info = {"source": "recomputed", "energy_model": chgnet.info,
                       "hull_convention": hull_c.convention}

    files: dict[str, dict] = {}
    records: dict[str, list] = {}
    parity: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in args.samples:
        name = path.name.removesuffix(".json.gz")
        entries = read_samples(path)
        n = len(entries)
        logger.info("%s: %d entries, %d structures", name, n,
                    sum(en["structure"] is not None for en in entries))
        if chgnet is not None:
            rc = score(chgnet, hull_c, entries, args.min_volume_per_atom, args.batch_size,
                       label=f"{name} CHGNet")
            e_c, err_c = rc["e_hull"], rc["error"]
        else:
            e_c = np.array([en["chgnet_e_hull"] for en in entries], dtype=float)
            err_c = [en["chgnet_error"] or (None if np.isfinite(en["chgnet_e_hull"]) else
                                            "no CHGNet E_hull in the samples file")
                     for en in entries]
            if n and not np.isfinite(e_c).any():
                logger.warning("%s holds no CHGNet E_hull; use --recompute-chgnet", name)
            rc = None
        rs = score(sevennet, hull_s, entries, args.min_volume_per_atom, 1, correction,
                   label=f"{name} SevenNet")
        e_s = rs["e_hull"]
        summary = {
            "path": str(path),
            "n_entries": n,
            "n_structures": sum(en["structure"] is not None for en in entries),
            "chgnet": model_summary(e_c, err_c, n),
            "sevennet": model_summary(e_s, rs["error"], n),
            "agreement": agreement(e_c, e_s),
            "agreement_failure_aware": {
                "note": "over all entries, a failure counts as not metastable",
                **{k: v for k, v in agreement(_failed_high(e_c), _failed_high(e_s)).items()
                   if k in ("n_both", "confusion", "accuracy", "cohen_kappa")}},
            "sevennet_seconds": rs["seconds"],
            "sevennet_n_evaluated": rs["n_evaluated"],
            "sevennet_structures_per_s": (rs["n_evaluated"] / rs["seconds"]
                                          if rs["seconds"] > 0 else None),
        }
        summary.update(msun_confirmed(entries, e_s))
        if "e_hull_uncorrected" in rs:
            summary["agreement_uncorrected"] = agreement(e_c, rs["e_hull_uncorrected"])
            summary["sevennet_uncorrected"] = {
                k: v for k, v in model_summary(rs["e_hull_uncorrected"], rs["error"], n).items()
                if k != "failures"}
        if rc is not None:
            summary["chgnet_seconds"] = rc["seconds"]
        files[name] = summary
        parity[name] = (e_c, e_s)
        records[name] = [{
            "index": en["index"],
            "formula": en["structure"].composition.reduced_formula if en["structure"] else None,
            "n_sites": len(en["structure"]) if en["structure"] else 0,
            "chgnet_e_hull": _f(e_c[i]),
            "chgnet_error": err_c[i] if not np.isfinite(e_c[i]) else None,
            "sevennet_e_hull": _f(e_s[i]),
            "sevennet_e_hull_uncorrected": _f(rs.get("e_hull_uncorrected", e_s)[i]),
            "sevennet_energy_per_atom": _f(rs["energy_per_atom"][i]),
            "mp2020_correction_per_atom": _f(rs.get("mp2020_correction_per_atom",
                                                    np.full(n, np.nan))[i]),
            "sevennet_error": rs["error"][i] if not np.isfinite(e_s[i]) else None,
        } for i, en in enumerate(entries)]

    timings["total_s"] = time.perf_counter() - t_start
    out = {
        "threshold_ev_per_atom": THRESHOLD,
        "metastable_definition": f"E_hull < {THRESHOLD} eV/atom",
        "agreement_definitions": {
            "reference": "SevenNet-0's flag; prediction: CHGNet's flag",
            "scored": "structures with a finite E_hull under both models",
        },
        "sevennet": {**sevennet_info, "correction": args.sevennet_correction,
                     "chemical_potentials": mu_s, "chemical_potentials_source": mu_s_src,
                     "hull_convention": hull_s.convention},
        "chgnet": chgnet_info,
        "protocol": {"single_points": True, "skip_structurally_invalid": True,
                     "min_volume_per_atom": args.min_volume_per_atom},
        "timings": timings,
        "files": files,
    }
    json_path = args.out / "second_opinion.json"
    json_path.write_text(json.dumps(out, indent=1, default=_f))
    with gzip.open(args.out / "second_opinion_records.json.gz", "wt") as fh:
        json.dump(records, fh)
    png = args.out / "second_opinion_parity.png"
    parity_plot(parity, png)
    logger.info("wrote %s, %s and %s", json_path, png,
                args.out / "second_opinion_records.json.gz")
    print(markdown_table(files))


if __name__ == "__main__":
    main()
