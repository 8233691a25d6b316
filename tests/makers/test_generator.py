"""The old module path of the generator makers: stored flow graphs that name it still load."""

from __future__ import annotations

import json

from jobflow import Job

from xtalforge.makers.pretrain import VAETrainMaker
from xtalforge.makers.sample import SampleMaker

#: A sampling job as the code before the split serialised it (campaign records and
#: jobflow-remote job documents hold such graphs).
OLD_JOB = {
    "@module": "jobflow.core.job", "@class": "Job", "@version": "0.4.0",
    "function": {
        "@module": "xtalforge.makers.generator", "@callable": "SampleMaker.make",
        "@bound": {
            "@module": "xtalforge.makers.generator", "@class": "SampleMaker",
            "@version": "0.1.0", "name": "sample", "n": 2, "num_atoms": None,
            "batch_size": 1000, "chunk_size": 2000, "steps": 50, "eta": 0.0, "dtype": "fp32",
            "device": "auto", "seed": 0, "label": "base",
        },
    },
    "function_args": [{"checkpoint_id": "c1", "sha256": "ab", "path": None}],
    "function_kwargs": {}, "output_schema": None,
    "uuid": "37a8ba11-31a4-44ce-8407-fe864aacc887", "index": 1, "name": "sample",
    "metadata": {},
    "config": {
        "@module": "jobflow.core.job", "@class": "JobConfig", "@version": "0.4.0",
        "resolve_references": True, "on_missing_references": "error", "manager_config": {},
        "expose_store": True, "pass_manager_config": True, "response_manager_config": {},
    },
    "hosts": [], "metadata_updates": [], "config_updates": [], "name_updates": [],
}


def test_an_old_job_document_loads():
    job = Job.from_dict(json.loads(json.dumps(OLD_JOB)))
    maker = job.function.__self__
    assert type(maker) is SampleMaker  # the class of xtalforge.makers.sample
    assert (maker.n, maker.label) == (2, "base")
    assert job.function_args == [{"checkpoint_id": "c1", "sha256": "ab", "path": None}]
    # jobs of an old graph keep no output schema: their outputs stay plain dicts, as before
    assert job.output_schema is None


def test_new_jobs_name_the_new_modules():
    d = json.loads(SampleMaker(n=2).make("gen.pt").to_json())
    assert d["function"]["@module"] == "xtalforge.makers.sample"
    assert d["output_schema"]["@callable"] == "SampleOutput"
    d = json.loads(VAETrainMaker().make().to_json())
    assert d["function"]["@bound"]["@module"] == "xtalforge.makers.pretrain"
