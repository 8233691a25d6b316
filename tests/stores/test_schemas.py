"""Typed stage documents: a store written by the campaign code reads back through the models."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from jobflow import Flow
from jobflow.core.reference import OutputReference
from monty.json import MontyDecoder
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from xtalforge.flows.runner import run_campaign
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.pretrain import LDMTrainMaker, PretrainMaker, VAETrainMaker
from xtalforge.makers.sample import SampleMaker
from xtalforge.makers.screening import HullMaker, ScreenMaker
from xtalforge.models.training import TrainConfig
from xtalforge.reports.tables import iter_job_outputs, stored_coverage
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import find, make_result_doc, make_structure_doc
from xtalforge.stores.results import CampaignResults
from xtalforge.stores.schemas import (
    STAGE_MODELS,
    DatasetDoc,
    HullConvention,
    HullOutput,
    IngestOutput,
    JobOutput,
    SampleDoc,
    SampleOutput,
    ScreenDoc,
    ScreenOutput,
    StageDoc,
    TrainOutput,
    VAETrainOutput,
    query_columns,
    validate_document,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """An embedded store written by the campaign's own makers (tiny CPU models, CHGNet)."""
    root = tmp_path_factory.mktemp("schemas")
    store = build_job_store(None, root)

    def flow():
        ing = IngestDatasetMaker(source="demo", limit=40).make()
        train = TrainConfig(steps=5, batch_size=16)
        pre = PretrainMaker(
            vae_maker=VAETrainMaker(train=train, device="cpu"),
            ldm_maker=LDMTrainMaker(train=train, device="cpu"),
        ).make(ing.output)
        smp = SampleMaker(n=6, batch_size=6, device="cpu").make(pre.output["checkpoint"])
        hull = HullMaker(kind="mlip", mlip="chgnet", device="cpu").make(ing.output)
        scr = ScreenMaker(mlip="chgnet", device="cpu", k=3).make(smp.output, hull.output)
        return Flow([ing, pre, smp, hull, scr])

    out = run_campaign(flow, "schemas", store, root_dir=root / "runs")
    assert out["status"] == "completed", out
    # read it back through a fresh store object, as a later session would
    again = build_job_store(None, root)
    again.connect()
    return again


def test_every_stored_document_validates_and_keeps_its_keys(written):
    docs = find(written.additional_stores["structures"], {"campaign_id": "schemas"})
    by_stage: dict[str, int] = {}
    for d in docs:
        model = validate_document(d)
        assert type(model) is STAGE_MODELS[d["stage"]]
        by_stage[d["stage"]] = by_stage.get(d["stage"], 0) + 1
        # every stored key is read, named by the schema (no stage writes undeclared keys)
        assert model.model_extra == {}, (d["stage"], sorted(model.model_extra))
        dumped = model.model_dump(exclude_unset=True)
        assert set(dumped) == set(d) - {"_id"}
    assert by_stage == {"dataset": 40, "sample": 6, "screen": 6}


def test_hull_convention_is_typed(written):
    screens = find(written.additional_stores["structures"], {"stage": "screen"})
    conv = ScreenDoc.model_validate(screens[0]).hull_convention
    assert isinstance(conv, HullConvention)
    assert conv.energy_source == "mlip" and conv.energy_kind == "total"
    assert conv.n_entries > 0 and len(conv.fingerprint) == 64
    assert conv.model_extra == {}
    with pytest.raises(ValidationError, match="fingerprint"):
        HullConvention.model_validate({k: v for k, v in screens[0]["hull_convention"].items()
                                       if k != "fingerprint"})


def test_query_columns_come_from_the_schema(written):
    cols = query_columns()
    assert cols[:2] == ["structure_id", "stage"]
    assert {"lineage.checkpoint_id", "e_above_hull", "msun", "dft_e_above_hull"} <= set(cols)
    df = CampaignResults(written, "schemas").to_dataframe()
    # every column the stages have written so far is there (the DFT one comes with DFT)
    assert set(cols) - set(df.columns) == {"dft_e_above_hull"}
    import xtalforge.cli as cli

    assert cli._DEFAULT_COLUMNS == cols


def test_documents_built_by_the_helpers_validate():
    s = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    d = make_structure_doc(s, structure_id="xf-1", campaign_id="c", stage="dataset",
                           lineage={"source": "demo"}, split="train")
    m = DatasetDoc.model_validate(d)
    assert m.reduced_formula == "NaCl" and m.lineage.source == "demo" and m.valid
    bad = make_structure_doc(None, structure_id="xf-2", campaign_id="c", stage="sample",
                             errors=["decode failed"])
    assert SampleDoc.model_validate(bad).valid is False
    r = make_result_doc("xf-1", campaign_id="c", stage="screen", e_above_hull=float("nan"),
                        custom_metric=1.5)
    m = validate_document(r)
    assert isinstance(m, ScreenDoc) and m.e_above_hull is None
    assert m.model_extra == {"custom_metric": 1.5}  # extra keys stay readable
    assert type(validate_document({**r, "stage": "custom"})) is StageDoc


def test_a_document_that_breaks_its_schema_is_an_error():
    r = make_result_doc("xf-1", campaign_id="c", stage="screen", e_above_hull="high")
    with pytest.raises(ValidationError, match="e_above_hull"):
        validate_document(r)
    with pytest.raises(ValidationError, match="dataset"):
        DatasetDoc.model_validate({**r, "stage": "screen"})


def test_every_field_is_described():
    import xtalforge.stores.schemas as schemas

    outputs = {m for m in vars(schemas).values()
               if isinstance(m, type) and issubclass(m, JobOutput) and m is not JobOutput}
    assert len(outputs) >= 12
    for model in {*STAGE_MODELS.values(), HullConvention, *outputs}:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


# ----------------------------------------------------------------------------- job outputs
OUTPUT_MODELS = {
    "ingest dataset": IngestOutput,
    "train vae": VAETrainOutput,
    "train ldm": TrainOutput,
    "sample": SampleOutput,
    "reference hull": HullOutput,
    "screen": ScreenOutput,
}


def _job_docs(store) -> dict[str, dict]:
    docs = store.query({"metadata.campaign_id": "schemas"}, load=True)
    return {d["name"]: {k: v for k, v in d.items() if k != "_id"} for d in docs}


def _plain(output: dict) -> dict:
    """A stored output as the code before output schemas stored it: a plain dict."""
    return {k: v for k, v in output.items() if not k.startswith("@")}


def test_job_outputs_are_stored_as_their_schema(written):
    docs = _job_docs(written)
    assert set(docs) == set(OUTPUT_MODELS)
    for name, d in docs.items():
        out, model = d["output"], OUTPUT_MODELS[name]
        assert (out["@module"], out["@class"]) == (model.__module__, model.__name__), name
        m = MontyDecoder().process_decoded(out)
        assert type(m) is model
        # every key the job returned is declared, and no key was added by a default: the
        # stored output keeps exactly the keys the job returned before it was typed
        assert m.model_extra == {}, (name, sorted(m.model_extra))
        assert m.model_fields_set == set(model.model_fields), name
        assert _same(dict(m), _plain(out))


def test_references_resolve_to_the_typed_outputs(written):
    uuid = _job_docs(written)["sample"]["uuid"]
    whole = OutputReference(uuid).resolve(written)
    assert isinstance(whole, SampleOutput) and isinstance(whole, Mapping)
    ckpt = OutputReference(uuid)["checkpoint"].resolve(written)  # index access, as flows do
    assert ckpt == whole.checkpoint == whole["checkpoint"]
    assert OutputReference(uuid).checkpoint.resolve(written) == ckpt  # attribute access
    assert whole.get("job_uuid") == uuid and whole.get("nope", 1) == 1
    with pytest.raises(KeyError):
        whole["nope"]
    # a reference to a key the schema does not name fails when the flow is built
    with pytest.raises(AttributeError, match="nope"):
        OutputReference(uuid, output_schema=SampleOutput)["nope"]


def _same(a, b) -> bool:
    """Equal, NaN included (screening summaries hold NaN metrics)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_outputs_stored_as_plain_dicts_read_the_same(written):
    """A store written before the outputs were typed (plain dict outputs) reads the same."""
    from xtalforge.stores.jobgraph import completed_uuids

    typed = _job_docs(written)
    old = build_job_store("memory")
    old.connect()
    old.docs_store.update([{**d, "output": _plain(d["output"])} for d in typed.values()],
                          key=["uuid", "index"])
    uuids = [d["uuid"] for d in typed.values()]
    assert completed_uuids(old, uuids) == completed_uuids(written, uuids) == set(uuids)
    for d in typed.values():
        ref = OutputReference(d["uuid"])
        old_out = ref.resolve(old)
        assert type(old_out) is dict
        assert _same(old_out, dict(ref.resolve(written)))
        for key in old_out:
            assert _same(ref[key].resolve(old), ref[key].resolve(written))
    new_rows = {d["name"]: _plain(d["output"])
                for d in iter_job_outputs(CampaignResults(written, "schemas"))}
    old_rows = {d["name"]: d["output"] for d in iter_job_outputs(CampaignResults(old, "schemas"))}
    assert _same(new_rows, old_rows)
    cov = stored_coverage(CampaignResults(written, "schemas"))
    assert cov and cov == stored_coverage(CampaignResults(old, "schemas"))
