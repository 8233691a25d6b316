"""stage_job: one decorator tags every stage's resource; routing reads the tag, not the name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from jobflow import Flow, Job, Maker, run_locally
from pydantic import BaseModel, Field

import xtalforge.makers
from xtalforge.makers.base import (
    RESOURCE_KEY,
    RESOURCE_KINDS,
    apply_routes,
    job_resource,
    stage_job,
)
from xtalforge.stores.jobgraph import iter_jobs

#: Resource each Maker's jobs run on.
EXPECTED = {
    "IngestDatasetMaker": "cpu",
    "VAETrainMaker": "gpu",
    "LDMTrainMaker": "gpu",
    "PretrainMaker": "gpu",
    "SampleMaker": "gpu",
    "RLFineTuneMaker": "gpu",
    "SurrogateTrainMaker": "gpu",
    "HullMaker": "gpu",
    "ScreenMaker": "gpu",
    "DFTCollectMaker": "cpu",
    "DFTValidationMaker": "cpu",
    "ReportMaker": "cpu",
    "WyckoffPretrainMaker": "gpu",
    "PPOFineTuneMaker": "gpu",
    "SFTFineTuneMaker": "gpu",
}


def all_makers() -> list[type[Maker]]:
    found = {}
    for info in pkgutil.iter_modules(xtalforge.makers.__path__):
        mod = importlib.import_module(f"xtalforge.makers.{info.name}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, Maker) and cls.__module__.startswith("xtalforge.makers"):
                found[cls.__name__] = cls
    return [found[k] for k in sorted(found)]


def build(cls: type[Maker]) -> Job | Flow:
    maker = cls()
    params = [p for p in inspect.signature(maker.make).parameters.values()
              if p.default is inspect.Parameter.empty]
    return maker.make(*(["ref"] * len(params)))


def test_every_maker_is_listed():
    assert sorted(c.__name__ for c in all_makers()) == sorted(EXPECTED)


@pytest.mark.parametrize("cls", all_makers(), ids=lambda c: c.__name__)
def test_every_make_is_a_stage_job_with_its_resource(cls):
    out = build(cls)
    jobs = list(iter_jobs(out))
    assert jobs
    for j in jobs:
        assert j.metadata[RESOURCE_KEY] == EXPECTED[cls.__name__]
        assert j.config.expose_store  # every stage reads and writes the campaign store


@pytest.mark.parametrize("cls", all_makers(), ids=lambda c: c.__name__)
def test_routing_ignores_names(cls):
    maker = cls()
    maker.name = "pretrain sample screen fine-tune"  # names that once meant "gpu"
    params = [p for p in inspect.signature(maker.make).parameters.values()
              if p.default is inspect.Parameter.empty]
    out = maker.make(*(["ref"] * len(params)))
    kind = EXPECTED[cls.__name__]
    routes = {k: {"worker": f"{k}_worker"} for k in RESOURCE_KINDS}
    routed = apply_routes(out, routes)
    assert set(routed) == {kind}
    for j in iter_jobs(out):
        assert j.config.manager_config["worker"] == f"{kind}_worker"


@stage_job(resource="gpu", data="history")
def _train(n: int) -> dict:
    return {"n": n, "history": list(range(n))}


class _Out(BaseModel):
    n: int = Field(description="a count")


@stage_job(resource="cpu", output_schema=_Out)
def _count(n: int) -> dict:
    return {"n": n}


@pytest.fixture
def memory_jobstore():
    from xtalforge.stores.config import build_job_store

    store = build_job_store("memory")
    store.connect()
    return store


def test_stage_job_fixes_store_data_schema_and_resource(memory_jobstore):
    a, b = _train(3), _train(4)
    assert job_resource(a) == "gpu" and a.metadata is not b.metadata
    assert a._kwargs == {"data": "history"}
    c = _count(a.output["n"])
    assert c.output_schema is _Out
    with pytest.raises(AttributeError):
        c.output["not_a_field"]  # the schema checks references when the flow is built
    responses = run_locally(Flow([a, c]), store=memory_jobstore, ensure_success=True)
    assert responses[c.uuid][1].output == _Out(n=3)
    # the large key went to the "data" additional store
    doc = memory_jobstore.query_one({"uuid": a.uuid}, load=False)
    assert "blob_uuid" in doc["output"]["history"]


def test_stage_job_needs_a_known_resource():
    with pytest.raises(ValueError, match="tpu"):
        stage_job(resource="tpu")
    with pytest.raises(TypeError):
        stage_job(lambda: None)  # resource is required
