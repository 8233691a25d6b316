"""Validation tables, figures, report, CLI and ReportMaker from a hand-built campaign store.

The store holds a training set, two checkpoints' samples (one failed decode), screening results
and mock-VASP-like DFT results (one failed DFT run); every number is checked against values
computed here from the same input lists, independently of xtalforge.reports.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from xtalforge.reports import figures as F
from xtalforge.reports import tables as T
from xtalforge.reports.classification import classification_counts, compare_ehull
from xtalforge.reports.cli import register
from xtalforge.reports.report import build_report
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import bulk_upsert, make_result_doc, make_structure_doc
from xtalforge.stores.provenance import new_campaign_record, upsert_campaign
from xtalforge.stores.results import CampaignResults

CID = "rep"
TOL = 1e-8

# ---------------------------------------------------------------------- the campaign's inputs
PROTO_SG = {"rocksalt": 225, "cscl": 221, "zincblende": 216}


def proto(kind: str, a: str, b: str) -> Structure:
    if kind == "rocksalt":
        return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.0), [a, b],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])
    if kind == "cscl":
        return Structure(Lattice.cubic(3.6), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Structure.from_spacegroup("F-43m", Lattice.cubic(5.6), [a, b],
                                     [[0, 0, 0], [0.25, 0.25, 0.25]])


TRAIN = [("rocksalt", "Na", "Cl"), ("rocksalt", "Mg", "O"), ("rocksalt", "Sr", "O")]
# checkpoint -> list of (prototype, A, B, mlip e_hull, unique, novel, smact, dft) where dft is
# None (not sent to DFT), "fail" (failed VASP run), "pending" (flow stored, no VASP) or
# (dft e_hull, band gap, eps_elec)
SAMPLES = {
    "ckA": [
        ("rocksalt", "Na", "Cl", 0.0, True, False, True, (0.01, 2.7, 2.0)),
        ("cscl", "Cs", "I", -0.01, True, True, True, (-0.005, 3.0, 3.0)),
        ("zincblende", "Zn", "S", 0.05, True, True, True, (0.12, 3.3, 2.5)),
        ("rocksalt", "Mg", "O", 0.1, True, True, True, (0.1, 3.31, 1.5)),
        ("cscl", "K", "Br", 0.2, False, True, True, "fail"),
        ("zincblende", "Ga", "As", 0.099, True, True, False, (0.02, 1.0, 4.0)),
        ("rocksalt", "Ca", "S", 0.0, True, True, True, None),
        ("cscl", "Li", "F", 0.5, True, False, True, None),
    ],
    "ckB": [
        ("rocksalt", "K", "Cl", 0.02, True, True, True, (0.0, 2.9, 2.2)),
        ("cscl", "Rb", "Cl", 0.0, True, True, True, (0.0, 0.0, 10.0)),
        ("zincblende", "Cd", "Se", 0.3, True, False, True, (0.25, 3.1, 3.0)),
        ("rocksalt", "Sr", "O", 0.08, True, True, True, (0.05, 5.0, 1.9)),
        ("cscl", "Tl", "Br", -0.02, True, True, True, "pending"),
        ("zincblende", "In", "P", 0.15, True, True, True, None),
    ],
}
N_FAILED = {"ckA": 1, "ckB": 0}  # undecodable samples (structure None)
COVERAGE = {"ckA": 0.4}
CURVES = [{"step": i, "reward": 0.1 * i, "kl": 0.01 * i, "clip_fraction": 0.2}
          for i in range(30)]
HULL_CONV = {"energy_source": "mlip", "energy_kind": "total", "reference_set": "toy set",
             "correction": "none", "n_entries": 12, "fingerprint": "feedc0ffee1234567"}
MLIP = {"name": "chgnet", "spec": "chgnet", "dtype": "float32", "device": "cpu"}
DFT_CONV = {"energy": "VASP static", "correction": "MaterialsProject2020Compatibility",
            "reference_files": ["mp_entries.json.gz"]}


def flags(e: float, u: bool, n: bool) -> dict[str, bool]:
    stable = e <= 0 + TOL
    meta = e < 0.1
    return {"stable": stable, "metastable": meta, "sun": stable and u and n,
            "msun": meta and u and n}


def _rows():
    """Flat per-sample list of dicts (the expected values)."""
    out = []
    for ck, items in SAMPLES.items():
        for i, (kind, a, b, e, u, n, sm, dft) in enumerate(items):
            s = proto(kind, a, b)
            out.append({"ck": ck, "i": i, "kind": kind, "sg": PROTO_SG[kind], "e": e,
                        "unique": u, "novel": n, "smact": sm, "dft": dft,
                        "formula": s.composition.reduced_formula, "structure": s,
                        **flags(e, u, n)})
    return out


ROWS = _rows()


def build_store(root) -> None:
    store = build_job_store("embedded", root)
    store.connect()
    coll = store.additional_stores["structures"]
    docs = []
    for j, (kind, a, b) in enumerate(TRAIN):
        docs.append(make_structure_doc(proto(kind, a, b), structure_id=f"train-{j}",
                                       campaign_id=CID, stage="dataset",
                                       lineage={"split": "train"}))
    for r in ROWS:
        sid = f"{r['ck']}-{r['i']}"
        extra = {"spacegroup": r["sg"]} if sid == "ckA-0" else {}  # one stored space group
        docs.append(make_structure_doc(r["structure"], structure_id=sid, campaign_id=CID,
                                       stage="sample", lineage={"checkpoint_id": r["ck"]},
                                       **extra))
        docs.append(make_result_doc(
            sid, campaign_id=CID, stage="screen", e_above_hull=r["e"], unique=r["unique"],
            novel=r["novel"], smact_valid=r["smact"], struct_valid=True, stable=r["stable"],
            metastable=r["metastable"], sun=r["sun"], msun=r["msun"],
            hull_convention=HULL_CONV, mlip=MLIP))
        if r["dft"] == "fail":
            docs.append(make_result_doc(sid, campaign_id=CID, stage="dft", dft_status="failed",
                                        errors=["VASP: ZBRENT error, custodian gave up"],
                                        dft_e_above_hull=None, dft_hull_convention=DFT_CONV))
        elif r["dft"] == "pending":
            docs.append(make_result_doc(sid, campaign_id=CID, stage="dft",
                                        dft_status="pending: no VASP", dft_e_above_hull=None))
        elif r["dft"] is not None:
            de, gap, eps = r["dft"]
            docs.append(make_result_doc(sid, campaign_id=CID, stage="dft", dft_e_above_hull=de,
                                        dft_band_gap=gap, dft_eps_elec=eps, dft_status="completed",
                                        dft_fom=gap * eps, dft_task_uuids=["t-" + sid],
                                        dft_hull_convention=DFT_CONV))
    for ck, nf in N_FAILED.items():
        for k in range(nf):
            docs.append(make_structure_doc(None, structure_id=f"{ck}-fail{k}", campaign_id=CID,
                                           stage="sample", errors=["decode: NaN lattice"],
                                           lineage={"checkpoint_id": ck}))
    bulk_upsert(coll, docs)
    upsert_campaign(store, new_campaign_record(CID, {"campaign_id": CID}, "{}"))
    store.docs_store.update([
        {"uuid": "job-rl", "index": 1, "name": "rl fine-tune", "completed_at": "2025-01-02",
         "metadata": {"campaign_id": CID}, "output": {"curves": CURVES}},
        {"uuid": "job-screen", "index": 1, "name": "screen", "completed_at": "2025-01-03",
         "metadata": {"campaign_id": CID},
         "output": {"summary": {"coverage": COVERAGE["ckA"], "checkpoint_id": "ckA"}}},
    ], key=["uuid", "index"])
    store.close()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    build_store(root)
    res = CampaignResults.open(CID, "embedded", root)
    return root, res, res.to_dataframe(include_structures=True)


def _pct(n, d):
    return 100.0 * n / d


def _png_ok(path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 200


# ---------------------------------------------------------------------- classification
def test_classification_primitives_by_hand():
    c = classification_counts([True, True, False, False, True], [True, False, True, False, True])
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 1, 1)
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == pytest.approx(2 / 3)
    assert c["accuracy"] == pytest.approx(3 / 5)
    assert math.isnan(classification_counts([False], [False])["precision"])  # 0/0 is NaN
    cmp = compare_ehull([0.0, 0.1, np.nan, 0.3, -0.3], [0.0, 0.05, 0.2, None, 0.1],
                        window=(-0.2, 0.2))
    assert cmp.counts == {"n_total": 5, "n_nan_dft": 1, "n_nan_mlip": 1, "n_nan_both": 0,
                          "n_excluded_nan": 2, "n_outside_window": 1, "n_used": 2}
    # strict metastability on both sides: DFT 0.1 is not metastable, MLIP 0.05 is -> FP
    assert cmp.metastable["fp"] == 1 and cmp.metastable["tp"] == 1


# ---------------------------------------------------------------------- tables
def test_mlip_vs_dft_table(campaign):
    _, _, df = campaign
    t = T.mlip_vs_dft_table(df)
    pairs = [(r["e"], r["dft"][0]) for r in ROWS if isinstance(r["dft"], tuple)]
    m = np.array([p[0] for p in pairs])
    d = np.array([p[1] for p in pairs])
    n_fail = sum(r["dft"] == "fail" for r in ROWS)
    row = t.data.iloc[0]
    assert row["N"] == len(pairs) == 9 and row["N excluded (NaN)"] == n_fail == 1
    assert row["MAE (eV/atom)"] == pytest.approx(np.mean(np.abs(m - d)))
    assert row["RMSE (eV/atom)"] == pytest.approx(np.sqrt(np.mean((m - d) ** 2)))
    r2 = 1 - np.sum((m - d) ** 2) / np.sum((d - d.mean()) ** 2)
    assert row["R2"] == pytest.approx(r2)
    assert row["Pearson r2"] == pytest.approx(np.corrcoef(d, m)[0, 1] ** 2)
    for name, truth, pred in (("stable", d <= TOL, m <= TOL), ("metastable", d < 0.1, m < 0.1)):
        tp = int(np.sum(truth & pred))
        fp = int(np.sum(~truth & pred))
        fn = int(np.sum(truth & ~pred))
        tn = int(np.sum(~truth & ~pred))
        p, rc = tp / (tp + fp), tp / (tp + fn)
        assert row[f"Precision ({name})"] == pytest.approx(p)
        assert row[f"Recall ({name})"] == pytest.approx(rc)
        assert row[f"F1 ({name})"] == pytest.approx(2 * p * rc / (p + rc))
        assert row[f"Accuracy ({name})"] == pytest.approx((tp + tn) / len(d))
    # the same counts worked out on paper from SAMPLES
    v = t.values["all"]
    assert (v["stable_tp"], v["stable_fp"], v["stable_fn"], v["stable_tn"]) == (2, 1, 1, 5)
    assert (v["metastable_tp"], v["metastable_fp"], v["metastable_fn"],
            v["metastable_tn"]) == (6, 1, 0, 2)
    md = t.to_markdown()
    assert "N = 9 structures compared (1 excluded" in md and "chgnet" in md
    assert "1 DFT calculations pending, not counted" in md
    assert "reference_set=toy set" in md
    assert "DFT hull convention: energy=VASP static" in md
    # near-hull window drops the 0.25 eV/atom pair
    tw = T.mlip_vs_dft_table(df, window=(-0.2, 0.2))
    assert tw.data.iloc[0]["N"] == 8 and tw.data.iloc[0]["N outside window"] == 1


def test_denovo_table(campaign):
    _, res, df = campaign
    t = T.build_table("denovo", res, df=df)
    data = t.data.set_index("Model")
    for ck, items in SAMPLES.items():
        rows = [r for r in ROWS if r["ck"] == ck]
        n = len(items) + N_FAILED[ck]  # failed decodes are in the denominator
        got = data.loc[ck]
        assert got["N"] == n and got["N failed"] == N_FAILED[ck]
        assert got["N no E_hull"] == N_FAILED[ck]  # the failed decodes were never screened
        assert got["mSUN (%)"] == pytest.approx(_pct(sum(r["msun"] for r in rows), n))
        assert got["Uniqueness (%)"] == pytest.approx(_pct(sum(r["unique"] for r in rows), n))
        assert got["Novelty (%)"] == pytest.approx(_pct(sum(r["novel"] for r in rows), n))
        assert got["Comp. validity (%)"] == pytest.approx(_pct(sum(r["smact"] for r in rows),
                                                               n))
        assert got["Metastability (%)"] == pytest.approx(
            _pct(sum(r["e"] < 0.1 for r in rows), n))
    assert data.loc["ckA", "mSUN (%)"] == pytest.approx(100 * 4 / 9)  # worked out on paper
    assert data.loc["ckA", "1/(1+FMD) (%)"] == pytest.approx(100 * COVERAGE["ckA"])
    assert math.isnan(data.loc["ckB", "1/(1+FMD) (%)"])
    md = t.to_markdown()
    assert "N = 15 generated structures" in md and "| ckB | 6 | 0 |" in md
    assert "n/a" in md  # ckB coverage


def test_property_targeting_table(campaign):
    _, _, df = campaign
    t = T.property_targeting_table(df)
    data = t.data.set_index("Model")
    for ck, items in SAMPLES.items():
        rows = [r for r in ROWS if r["ck"] == ck]
        n = len(items) + N_FAILED[ck]
        gaps = [r["dft"][1] if isinstance(r["dft"], tuple) else None for r in rows]
        in_w = [g is not None and 2.7 <= g <= 3.3 for g in gaps]
        n_msun_w = sum(w and r["msun"] for w, r in zip(in_w, rows, strict=True))
        n_msun_gap = sum(g is not None and r["msun"] for g, r in zip(gaps, rows, strict=True))
        got = data.loc[ck]
        assert got["N"] == n
        assert got["N DFT gap"] == sum(g is not None for g in gaps)
        assert got["N in window"] == sum(in_w)
        assert got["N mSUN in window"] == n_msun_w
        assert got["mSUN in window / N (%)"] == pytest.approx(_pct(n_msun_w, n))
        assert got["mSUN in window / mSUN with gap (%)"] == pytest.approx(
            _pct(n_msun_w, n_msun_gap))
    # on paper: ckA has gaps 2.7 and 3.3 (inclusive) and 3.0 in the window, 3.31 outside
    assert data.loc["ckA", "N in window"] == 3 and data.loc["ckA", "N mSUN in window"] == 2


def test_fom_table(campaign):
    _, res, df = campaign
    t = T.build_table("fom", res, df=df)
    exp = sorted(((r["dft"][1] * r["dft"][2], r["formula"], r["dft"][0]) for r in ROWS
                  if isinstance(r["dft"], tuple)), reverse=True)
    assert list(t.data["Formula"]) == [f for _, f, _ in exp]
    assert np.allclose(t.data["FoM (eV)"], [v for v, _, _ in exp])
    assert np.allclose(t.data["E_hull (eV/atom)"], [e for _, _, e in exp])
    train = {proto(*x).composition.reduced_formula for x in TRAIN}
    assert list(t.data["In training set"]) == [f in train for _, f, _ in exp]
    assert t.bold_rows == [f not in train for _, f, _ in exp]
    md = t.to_markdown()
    assert "**SrO**" not in md and "| **CsI** |" in md  # novel formulas in bold
    tex = t.to_latex()
    assert "\\textbf{CsI}" in tex and "\\begin{tabular}" in tex
    assert len(T.fom_table(df, max_e_hull=0.1).data) == sum(
        1 for _, _, e in exp if e < 0.1)


def test_sun_per_spacegroup_table(campaign):
    _, res, df = campaign
    t = T.sun_per_spacegroup_table(df, symprec=0.1)
    data = t.data
    # from the store alone (structures fetched for samples without a stored space group)
    pd.testing.assert_frame_equal(T.build_table("sun-per-spacegroup", res).data, data)
    n_fail = sum(N_FAILED.values())
    for sg in PROTO_SG.values():
        rows = [r for r in ROWS if r["sg"] == sg]
        got = data[data["Space group"] == sg].iloc[0]
        assert got["N"] == len(rows)
        assert got["N SUN"] == sum(r["sun"] for r in rows)
        assert got["N mSUN"] == sum(r["msun"] for r in rows)
        assert got["mSUN (%)"] == pytest.approx(_pct(sum(r["msun"] for r in rows), len(rows)))
        assert got["Stable (%)"] == pytest.approx(_pct(sum(r["stable"] for r in rows),
                                                       len(rows)))
    unknown = data[data["Symbol"] == "unknown"].iloc[0]
    assert unknown["N"] == n_fail and data["N"].sum() == len(ROWS) + n_fail
    # S.S.U.N. with a target column: rows whose detected group equals the target and are mSUN
    df2 = df.copy()
    df2["target_sg"] = 225
    t2 = T.sun_per_spacegroup_table(df2, target_col="target_sg")
    row = t2.data[t2.data["Space group"] == 225].iloc[0]
    assert row["N"] == len(ROWS) + n_fail
    assert row["N S.S.U.N."] == sum(r["msun"] and r["sg"] == 225 for r in ROWS)


def test_renderers_csv_roundtrip(campaign):
    _, res, df = campaign
    t = T.build_table("denovo", res, df=df)
    back = pd.read_csv(io.StringIO(t.to_csv()), comment="#")
    assert list(back.columns) == list(t.data.columns)
    assert np.allclose(back["mSUN (%)"], t.data["mSUN (%)"])
    assert t.to_csv().startswith("# De novo generation benchmark")
    with pytest.raises(ValueError):
        t.render("xlsx")
    with pytest.raises(ValueError):
        T.build_table("nope", res)


# ---------------------------------------------------------------------- figures and report
def test_figures(tmp_path):
    rng = np.random.default_rng(0)
    d = rng.uniform(-0.1, 0.4, 200)
    _png_ok(F.parity_plot(d, d + rng.normal(0, 0.03, 200), tmp_path / "p.png"))
    _png_ok(F.parity_plot(np.r_[d, d], np.r_[d, d], tmp_path / "hex.png", hexbin_above=100))
    _png_ok(F.histogram_plot({"a": d, "b": [np.nan, 1.0]}, tmp_path / "h.png", "x (eV)", "t"))
    _png_ok(F.element_frequency_plot({"O": 10, "Fe": 3, "La": 1, "U": 2},
                                     tmp_path / "pt.png"))
    _png_ok(F.plot_training_curves(pd.DataFrame(CURVES), tmp_path / "c.png"))
    _png_ok(F.plot_training_curves({"reward": [1, 2, 3]}, tmp_path / "c2.png"))
    assert F._grid_position(57) == (3, 8.5) and F._grid_position(26) == (8.0, 4.0)


def test_build_report_and_curves(campaign, tmp_path):
    _, res, _ = campaign
    curves = F.load_training_curves(res)
    assert curves is not None and list(curves["step"]) == list(range(30))
    path = build_report(res, tmp_path / "rep")
    text = path.read_text()
    for title in ("De novo generation benchmark", "MLIP versus DFT", "Property targeting",
                  "Figure of merit", "S.U.N. per space group", "RL training curves"):
        assert f"## {title}" in text
    assert "not run" not in text and "**failed:**" not in text
    d, n_pending = T.dft_rows(res.to_dataframe())
    assert n_pending == 1 and len(d) == sum(isinstance(r["dft"], tuple) or r["dft"] == "fail"
                                            for r in ROWS)
    for png in ("parity_mlip_dft", "band_gap_hist", "e_hull_hist", "element_frequency",
                "sun_per_spacegroup", "rl_training_curves"):
        _png_ok(tmp_path / "rep" / "figures" / f"{png}.png")
        assert f"figures/{png}.png" in text
    assert (tmp_path / "rep" / "tables" / "fom.tex").is_file()


def test_report_tolerates_missing_stages(tmp_path):
    store = build_job_store("memory", tmp_path)
    store.connect()
    bulk_upsert(store.additional_stores["structures"], [make_structure_doc(
        proto("rocksalt", "Na", "Cl"), structure_id="d0", campaign_id="empty",
        stage="dataset")])
    res = CampaignResults(store, "empty")
    text = build_report(res, tmp_path / "r").read_text()
    assert text.count("not run") >= 5 and "**failed:**" not in text


def test_cli_table_and_report(campaign, tmp_path):
    root, _, _ = campaign
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    r = runner.invoke(app, ["table", "denovo", "--campaign", CID, "--root", str(root),
                            "--format", "csv"])
    assert r.exit_code == 0, r.output
    back = pd.read_csv(io.StringIO(r.output), comment="#").set_index("Model")
    assert back.loc["ckB", "N"] == 6
    rows_b = [x for x in ROWS if x["ck"] == "ckB"]
    assert back.loc["ckB", "mSUN (%)"] == pytest.approx(_pct(sum(x["msun"] for x in rows_b), 6))
    r = runner.invoke(app, ["table", "mlip-vs-dft", "-c", CID, "--root", str(root),
                            "--format", "latex", "--output", str(tmp_path / "t.tex")])
    assert r.exit_code == 0, r.output
    assert "\\toprule" in (tmp_path / "t.tex").read_text()
    r = runner.invoke(app, ["table", "bogus", "-c", CID, "--root", str(root)])
    assert r.exit_code == 2
    r = runner.invoke(app, ["report", "-c", CID, "--root", str(root), "--out",
                            str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "report.md").is_file()


def test_report_maker_runs_as_a_job(tmp_path):
    from jobflow import run_locally

    from xtalforge.makers.report import ReportMaker

    root = tmp_path / "c"
    build_store(root)
    store = build_job_store("embedded", root)
    job = ReportMaker(outdir=str(tmp_path / "out")).make()
    job.update_metadata({"campaign_id": CID})
    responses = run_locally(job, store=store, ensure_success=True)
    out = responses[job.uuid][1].output
    assert out["campaign_id"] == CID and out["report"].endswith("report.md")
    by_model = {r["Model"]: r for r in out["denovo"]}
    assert by_model["ckA"]["N"] == 9
    assert by_model["ckA"]["mSUN (%)"] == pytest.approx(100 * 4 / 9)
    assert out["mlip_vs_dft"]["all"]["stable_tp"] == 2
    assert (tmp_path / "out" / "report.md").is_file()


def test_dft_hull_footnote_names_the_convention_engine_and_settings():
    conv = {"convention": "self-consistent", "engine": "cp2k",
            "settings_fingerprint": "55f3007c4c66f09b", "energy": "CP2K total energy",
            "correction": "none", "conventions": {"mp2020": "…", "self-consistent": "…"}}
    df = pd.DataFrame({"e_above_hull": [0.1], "dft_e_above_hull": [0.2],
                       "dft_hull_convention": [conv]})
    lines = T.describe_conventions(df)
    dft = [ln for ln in lines if ln.startswith("DFT hull convention:")]
    assert dft == ["DFT hull convention: convention=self-consistent, engine=cp2k, "
                   "settings_fingerprint=55f3007c4c66f09b, energy=CP2K total energy, "
                   "correction=none"]
