"""One runner per campaign: the run lease, a second run refused, a killed run taken over."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xtalforge.flows.runner import run_campaign
from xtalforge.stores.config import build_job_store
from xtalforge.stores.provenance import get_campaign, list_campaigns
from xtalforge.stores.runlock import (
    CampaignLocked,
    RunLock,
    get_lock,
    holder_alive,
    lock_id,
    run_state,
)

ROOT = Path(__file__).resolve().parents[2]

JOBS = '''
import os, sys
from pathlib import Path
from jobflow import Flow, job

@job
def hold(flag_dir: str):
    """In the blocking child (XF_BLOCK set): say 'started', then wait for a line on stdin."""
    if os.environ.get("XF_BLOCK"):
        Path(flag_dir, "started").write_text(str(os.getpid()))
        sys.stdin.readline()
    return 1

def flow(flag_dir):
    return Flow([hold(flag_dir)])
'''

CHILD = '''
import sys
from xtalforge.flows.runner import run_campaign
from xtalforge.stores.config import build_job_store
import xf_lock_jobs
root, cid = sys.argv[1], sys.argv[2]
out = run_campaign(lambda: xf_lock_jobs.flow(root), cid, build_job_store("embedded", root),
                   config={"k": 1}, root_dir=root + "/runs")
print("STATUS", out["status"])
'''


@pytest.fixture
def jobs_module(tmp_path, monkeypatch):
    """A module with a job that blocks in the child process; importable by both processes."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "xf_lock_jobs.py").write_text(textwrap.dedent(JOBS))
    (mod_dir / "child.py").write_text(textwrap.dedent(CHILD))
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.delenv("XF_BLOCK", raising=False)
    import xf_lock_jobs

    return mod_dir, xf_lock_jobs


def _start_blocked_child(mod_dir: Path, root: Path, cid: str) -> subprocess.Popen:
    env = {**os.environ, "XF_BLOCK": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(mod_dir), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, str(mod_dir / "child.py"), str(root), cid],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )
    started = root / "started"
    while not started.exists():  # the child holds the lease once its job has started
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        os.sched_yield()
    return proc


def test_second_concurrent_run_is_refused_naming_the_holder(jobs_module, tmp_path):
    mod_dir, jobs = jobs_module
    root = tmp_path / "camp"
    root.mkdir()
    proc = _start_blocked_child(mod_dir, root, "twice")
    try:
        store = build_job_store("embedded", root)
        with pytest.raises(CampaignLocked) as info:
            run_campaign(lambda: jobs.flow(str(root)), "twice", store, config={"k": 1})
        msg = str(info.value)
        assert f"pid {proc.pid} on host" in msg and "already being run" in msg
        rec = get_campaign(store, "twice")
        assert rec["status"] == "running" and len(rec["runs"]) == 1
        assert run_state(store, rec)[0] == "running"
        # the lease document never shows up as a campaign
        assert [r["campaign_id"] for r in list_campaigns(store)] == ["twice"]
        # the CLI: one error line naming the holder, exit code 2, nothing written
        from typer.testing import CliRunner

        from xtalforge.cli import app

        cfg = tmp_path / "c.yaml"
        cfg.write_text("campaign_id: twice\ndataset: {source: demo, limit: 2}\n")
        r = CliRunner().invoke(app, ["run", str(cfg), "--root", str(root)],
                               env={"XTALFORGE_STORE": "", "XTALFORGE_DEBUG": ""})
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith(f"error: campaign 'twice' is already being run by pid "
                                   f"{proc.pid} on host"), r.stderr
        assert "Traceback" not in r.output
    finally:
        out, err = proc.communicate("go\n")
    assert proc.returncode == 0, err
    assert "STATUS completed" in out
    store = build_job_store("embedded", root)
    store.connect()
    assert get_lock(store, "twice") is None  # released
    rec = get_campaign(store, "twice")
    assert rec["status"] == "completed" and len(rec["runs"]) == 1
    # no duplicate job documents from the refused run
    assert store.docs_store.count({}) == 1
    out = run_campaign(lambda: jobs.flow(str(root)), "twice", store, config={"k": 1})
    assert out["skipped"] == ["hold"] and out["ran"] == []


def test_killed_run_shows_interrupted_and_is_taken_over(jobs_module, tmp_path):
    mod_dir, jobs = jobs_module
    root = tmp_path / "camp"
    root.mkdir()
    proc = _start_blocked_child(mod_dir, root, "killed")
    proc.kill()  # SIGKILL: no cleanup, the lease document stays
    proc.communicate()
    store = build_job_store("embedded", root)
    store.connect()
    rec = get_campaign(store, "killed")
    assert rec["status"] == "running"  # what the record says ...
    held = get_lock(store, "killed")
    assert held["pid"] == proc.pid and not holder_alive(held)
    status, note = run_state(store, rec)  # ... and what status reports
    assert status == "interrupted"
    assert f"pid {proc.pid}" in note and "run the same command again to resume" in note
    from typer.testing import CliRunner

    from xtalforge.cli import app

    r = CliRunner().invoke(app, ["status", "--root", str(root)],
                           env={"XTALFORGE_STORE": "", "XTALFORGE_DEBUG": ""})
    assert r.exit_code == 0, r.output
    assert "status=interrupted" in r.stdout and "status=running" not in r.stdout
    assert "to resume" in r.stdout
    out = run_campaign(lambda: jobs.flow(str(root)), "killed", store, config={"k": 1})
    assert out["status"] == "completed" and out["ran"] == ["hold"]
    assert out["took_over_lock_of"]["pid"] == proc.pid
    rec = get_campaign(store, "killed")
    assert len(rec["runs"]) == 2 and "killed" in rec["runs"][0]["interrupted"]
    assert get_lock(store, "killed") is None


def _fake_lease(store, cid, host, expires_in_s):
    t = dt.datetime.now(dt.timezone.utc)
    store.additional_stores["campaigns"]._collection.insert_one({
        "_id": lock_id(cid), "lock_for": cid, "token": "other", "host": host, "pid": 1,
        "acquired_at": t.isoformat(), "heartbeat_at": t.isoformat(),
        "expires_at": (t + dt.timedelta(seconds=expires_in_s)).isoformat(),
    })


def test_lease_on_another_host_is_alive_until_it_expires():
    store = build_job_store("memory")
    store.connect()
    _fake_lease(store, "remote", "elsewhere.example", 60)
    with pytest.raises(CampaignLocked, match="pid 1 on host elsewhere.example"):
        RunLock(store, "remote").acquire()
    store.additional_stores["campaigns"]._collection.delete_many({})
    _fake_lease(store, "remote", "elsewhere.example", -1)  # no heartbeat for its TTL
    lock = RunLock(store, "remote", heartbeat_s=3600).acquire()
    try:
        assert lock.took_over["host"] == "elsewhere.example"
        assert get_lock(store, "remote")["token"] == lock.token
        with pytest.raises(CampaignLocked):  # now held by this (live) process
            RunLock(store, "remote").acquire()
    finally:
        lock.release()
    assert get_lock(store, "remote") is None


def test_renew_moves_the_expiry_and_notices_a_lost_lease():
    store = build_job_store("memory")
    store.connect()
    lock = RunLock(store, "beat", ttl_s=100, heartbeat_s=3600).acquire()
    try:
        before = get_lock(store, "beat")["expires_at"]
        coll = store.additional_stores["campaigns"]._collection
        coll.update_one({"_id": lock_id("beat")}, {"$set": {"expires_at": "2000-01-01T00:00:00"}})
        assert lock.renew(store.additional_stores["campaigns"])
        assert get_lock(store, "beat")["expires_at"] >= before
        coll.update_one({"_id": lock_id("beat")}, {"$set": {"token": "thief"}})
        assert not lock.renew(store.additional_stores["campaigns"])
    finally:
        lock.release()
    assert get_lock(store, "beat")["token"] == "thief"  # another run's lease is not deleted
