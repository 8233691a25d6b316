"""User errors in the CLI: one `error:` line on stderr, exit code 2, no traceback.

A failed job is listed with its exception (exit code 1), stored on the run entry, and a fixed
configuration reruns the campaign id without --force-config.
"""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from xtalforge.cli import app
from xtalforge.stores.config import build_job_store
from xtalforge.stores.provenance import get_campaign

ENV = {"XTALFORGE_STORE": "", "XTALFORGE_DEBUG": ""}


def _invoke(args, root):
    return CliRunner().invoke(app, [*args, "--root", str(root)], env=ENV)


def _assert_user_error(result, *fragments, code=2):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """An embedded store holding a campaign 'small' (20 demo structures ingested)."""
    root = tmp_path_factory.mktemp("cli_errors")
    cfg = _write(root / "small.yaml",
                 {"campaign_id": "small", "dataset": {"source": "demo", "limit": 20}})
    r = _invoke(["run", str(cfg)], root)
    assert r.exit_code == 0 and "status: completed" in r.stdout, r.output
    # run ends with the summary demo prints
    assert "campaign small  status=completed" in r.stdout and "jobs: 1/1 finished" in r.stdout
    assert "structures/dataset: 20 documents" in r.stdout
    assert "query it with: xtalforge query --campaign small" in r.stdout
    return root


def test_failed_job_reason_is_printed_and_stored_then_a_fix_reruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    cfg = _write(tmp_path / "c.yaml", {"campaign_id": "c1", "dataset": {"source": "junk.csv"}})
    r = _invoke(["run", str(cfg)], tmp_path / "root")
    assert r.exit_code == 1, r.output
    assert "failed: ['ingest dataset']" in r.stdout
    assert "failed job 'ingest dataset': ValueError:" in r.stderr
    assert "no 'cif' column" in r.stderr and "Traceback" not in r.output
    store = build_job_store(None, tmp_path / "root")
    store.connect()
    run = get_campaign(store, "c1")["runs"][-1]
    assert "no 'cif' column" in run["errors"]["ingest dataset"]
    # status shows the last run's failures
    r = _invoke(["status", "--campaign", "c1"], tmp_path / "root")
    assert r.exit_code == 0 and "last run: job 'ingest dataset' failed: ValueError" in r.stdout

    # the user fixes the config: the campaign id is not bricked
    _write(cfg, {"campaign_id": "c1", "dataset": {"source": "demo", "limit": 10}})
    r = _invoke(["run", str(cfg)], tmp_path / "root")
    assert r.exit_code == 0, r.output
    assert "replaced the stored one" in r.stdout and "status: completed" in r.stdout
    store.connect()
    rec = get_campaign(store, "c1")
    assert len(rec["runs"]) == 2 and rec["runs"][1]["config_replaced"]["previous_config"][
        "dataset"] == {"source": "junk.csv"}
    assert rec["config"]["dataset"] == {"source": "demo", "limit": 10}

    # a job has finished now: a changed config is refused, with an accurate message
    _write(cfg, {"campaign_id": "c1", "dataset": {"source": "demo", "limit": 11}})
    r = _invoke(["run", str(cfg)], tmp_path / "root")
    _assert_user_error(r, "different configuration", "['ingest dataset']", "--force-config",
                       "rebuild the flow from the new configuration")
    # forced: the flow is rebuilt; the changed ingest job (limit 11) runs again
    r = _invoke(["run", str(cfg), "--force-config"], tmp_path / "root")
    assert r.exit_code == 0, r.output
    assert "rebuilt from the new configuration: kept [], rebuilt ['ingest dataset']" in r.stdout
    assert "ran 1 job(s) ['ingest dataset']" in r.stdout
    store.connect()
    assert get_campaign(store, "c1")["config"]["dataset"] == {"source": "demo", "limit": 11}


def test_run_missing_dataset_is_caught_before_the_store(tmp_path):
    cfg = _write(tmp_path / "c.yaml",
                 {"campaign_id": "m", "dataset": {"source": str(tmp_path / "none.csv")}})
    r = _invoke(["run", str(cfg)], tmp_path / "root")
    _assert_user_error(r, "dataset.source: not found:", "none.csv")
    assert not (tmp_path / "root" / "store").exists()


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ("campaign_id: x\nsampel: {n: 3}\n",
         ["unknown top-level key(s) ['sampel']", "'sample'", "'dataset'"]),
        ("campaign_id: x\ndataset: {source: demo, limit: ten}\n",
         ["dataset.limit: expected an integer or null, got 'ten'"]),
        ("campaign_id: x\ndataset: {sourc: demo}\n", ["unknown dataset settings ['sourc']"]),
        ("campaign_id: [x\n", ["not valid YAML", "line 2"]),
        ("- campaign_id\n", ["a campaign configuration is a mapping", "got list"]),
        ("dataset: {source: demo}\n", ["needs a campaign_id"]),
    ],
)
def test_run_config_errors(tmp_path, config, fragments):
    cfg = _write(tmp_path / "c.yaml", config)
    r = _invoke(["run", str(cfg)], tmp_path / "root")
    _assert_user_error(r, *fragments)


def test_debug_flag_keeps_the_traceback(tmp_path):
    cfg = _write(tmp_path / "c.yaml", "campaign_id: x\nsampel: 1\n")
    r = CliRunner().invoke(app, ["--debug", "run", str(cfg), "--root", str(tmp_path)], env=ENV)
    assert r.exit_code == 1 and r.exception is not None
    assert "sampel" in str(r.exception)


@pytest.mark.parametrize(
    ("store_text", "fragment"),
    [("docs_store: [\n", "not valid YAML"), ("- a\n- b\n", "got list")],
)
def test_malformed_store_file(tmp_path, store_text, fragment):
    store = _write(tmp_path / "store.yaml", store_text)
    cfg = _write(tmp_path / "c.yaml", {"campaign_id": "x", "dataset": {"source": "demo"}})
    r = _invoke(["run", str(cfg), "--store", str(store)], tmp_path)
    _assert_user_error(r, "store.yaml", fragment)
    r = _invoke(["status", "--store", str(store)], tmp_path)
    _assert_user_error(r, "store.yaml", fragment)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["history", "xf-nosuch"], ["no structure 'xf-nosuch'"]),
        (["query", "--sort-by", "nosuchcol"], ["cannot sort by 'nosuchcol'", "formula"]),
        (["query", "--stage", "bogus"], ["unknown stage 'bogus'", "dataset, sample, relaxed"]),
        (["query", "--limit", "-5"], ["--limit", "-5"]),
        (["query", "--format", "xml"], ["--format must be table, csv or json"]),
        (["query", "--columns", "formula,nope"], ["unknown columns ['nope']"]),
        (["query", "--campaign", "nosuch"], ["campaign 'nosuch' is not in this store", "small"]),
        (["export", "out", "--format", "zip"], ["--format must be cif or extxyz", "'zip'"]),
        (["export", "out", "--stage", "bogus"], ["unknown stage 'bogus'"]),
        (["status", "--campaign", "nosuch"], ["campaign 'nosuch' is not in this store",
                                              "campaigns here: small"]),
        (["table", "denovo", "--campaign", "nosuch"], ["campaign 'nosuch' is not in this store"]),
        (["report", "--campaign", "nosuch", "--out", "rep"], ["campaign 'nosuch' is not in"]),
        (["table", "nosuchtable"], ["unknown table 'nosuchtable'"]),
    ],
)
def test_read_command_errors(small_root, args, fragments):
    _assert_user_error(_invoke(args, small_root), *fragments)


def test_read_commands_still_work(small_root):
    r = _invoke(["query", "--campaign", "small", "--sort-by", "nsites", "--limit", "3",
                 "--format", "csv"], small_root)
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 4, r.output
    r = _invoke(["status"], small_root)
    assert r.exit_code == 0 and "campaign small" in r.stdout
    r = _invoke(["query", "--campaign", "small", "--unique"], small_root)  # not screened yet
    assert r.exit_code == 0 and "no matching structures" in r.stdout, r.output


def test_empty_store(tmp_path):
    r = _invoke(["status"], tmp_path)
    assert r.exit_code == 0 and "no campaigns in this store" in r.stdout
    _assert_user_error(_invoke(["table", "denovo"], tmp_path), "no campaigns in this store")


@pytest.mark.parametrize("command", [["status"], ["query", "--campaign", "x"], ["run"]])
def test_unreachable_mongodb_is_one_line_after_a_short_wait(tmp_path, command):
    uri = "mongodb://127.0.0.1:1/xf"  # port 1: connection refused
    if command == ["run"]:
        command = ["run", str(_write(tmp_path / "c.yaml", {"campaign_id": "m",
                                                            "dataset": {"source": "demo"}}))]
    r = CliRunner().invoke(app, [*command, "--store", uri, "--root", str(tmp_path)],
                           env={**ENV, "XTALFORGE_MONGO_TIMEOUT_S": "0.2"})
    _assert_user_error(r, "cannot reach the MongoDB server", "ServerSelectionTimeoutError",
                       "127.0.0.1:1", "XTALFORGE_MONGO_TIMEOUT_S")


def test_mongo_timeout_setting(monkeypatch):
    from xtalforge.stores.config import StoreConfigError, build_job_store, mongo_timeout_ms

    monkeypatch.delenv("XTALFORGE_MONGO_TIMEOUT_S", raising=False)
    assert mongo_timeout_ms("mongodb://h/db") == 5000
    assert mongo_timeout_ms("mongodb://h/db?serverSelectionTimeoutMS=100") is None
    monkeypatch.setenv("XTALFORGE_MONGO_TIMEOUT_S", "2.5")
    store = build_job_store("mongodb://h:27017/db")
    assert store.docs_store.mongoclient_kwargs == {"serverSelectionTimeoutMS": 2500}
    assert store.additional_stores["blobs"].mongoclient_kwargs == {
        "serverSelectionTimeoutMS": 2500}
    monkeypatch.setenv("XTALFORGE_MONGO_TIMEOUT_S", "soon")
    with pytest.raises(StoreConfigError, match="XTALFORGE_MONGO_TIMEOUT_S must be a number"):
        build_job_store("mongodb://h/db")
