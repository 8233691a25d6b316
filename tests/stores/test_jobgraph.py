"""rebuild_with_kept_jobs: which jobs of a rebuilt flow take the stored jobs' uuids."""

from __future__ import annotations

from jobflow import Flow, job

from xtalforge.stores.jobgraph import iter_jobs, rebuild_with_kept_jobs


@job
def make_value(x: int) -> int:
    return x


@job
def combine(a: int, b: int, c: int = 0) -> int:
    return a - b + c


def _flow(x: int, y: int, c: int = 0, swap: bool = False) -> Flow:
    a, b = make_value(x), make_value(y)
    a.name, b.name = "a", "b"
    last = combine(b.output, a.output, c) if swap else combine(a.output, b.output, c)
    return Flow([a, b, last])


def _stored(flow: Flow) -> Flow:
    return Flow.from_dict(flow.as_dict())  # as the campaign record holds it


def test_unchanged_flow_keeps_every_uuid():
    old = _stored(_flow(1, 2))
    done = {j.uuid for j in iter_jobs(old)}
    new, plan = rebuild_with_kept_jobs(_flow(1, 2), old, done)
    assert plan["kept"] == ["a", "b", "combine"] and plan["rebuilt"] == []
    assert [j.uuid for j in iter_jobs(new)] == [j.uuid for j in iter_jobs(old)]
    # references of the rebuilt flow point at the stored uuids
    last = list(iter_jobs(new))[-1]
    assert [r.uuid for r in last.function_args[:2]] == [j.uuid for j in iter_jobs(old)][:2]


def test_a_changed_job_and_its_downstream_are_rebuilt():
    old = _stored(_flow(1, 2))
    old_uuids = {j.name: j.uuid for j in iter_jobs(old)}
    done = set(old_uuids.values())
    new, plan = rebuild_with_kept_jobs(_flow(1, 5), old, done)
    assert plan["kept"] == ["a"] and plan["rebuilt"] == ["b", "combine"]
    got = {j.name: j.uuid for j in iter_jobs(new)}
    assert got["a"] == old_uuids["a"]
    assert got["b"] != old_uuids["b"] and got["combine"] != old_uuids["combine"]
    # only a downstream setting changed: both upstream jobs are kept
    _, plan = rebuild_with_kept_jobs(_flow(1, 2, c=3), old, done)
    assert plan["kept"] == ["a", "b"] and plan["rebuilt"] == ["combine"]
    # the same jobs wired the other way round: the downstream job is not the stored one
    _, plan = rebuild_with_kept_jobs(_flow(1, 2, swap=True), old, done)
    assert plan["kept"] == ["a", "b"] and plan["rebuilt"] == ["combine"]


def test_matched_unfinished_job_is_resumed_not_kept():
    old = _stored(_flow(1, 2))
    first = next(iter(iter_jobs(old)))
    _, plan = rebuild_with_kept_jobs(_flow(1, 2), old, {first.uuid})
    assert plan["kept"] == ["a"] and plan["resumed"] == ["b", "combine"]
