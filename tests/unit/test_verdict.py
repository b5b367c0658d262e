"""The verdict contract (DESIGN.md §1) and ReFrame-style reference checks."""

from __future__ import annotations

import json
import math

import pytest

from ladder.verdict import STATUSES, Verdict, read_verdict, reference_check, require_gate

pytestmark = pytest.mark.unit

CONTRACT_KEYS = {"stage", "status", "started", "finished", "slurm_job", "nodes", "config_hash", "versions",
                 "checks", "metrics"}


def test_all_ok_is_pass(tmp_path):
    v = Verdict("probe", config_hash="abc", nodes=["n1", "n2"])
    assert v.check("nodes_reported", True, 2, 2, "nodes")
    rc = v.finish(tmp_path / "verdict.json")
    data = json.loads((tmp_path / "verdict.json").read_text())
    assert rc == 0
    assert data["status"] == "pass"
    assert data.keys() >= CONTRACT_KEYS
    assert data["checks"] == [{"name": "nodes_reported", "ok": True, "value": 2, "expected": 2, "unit": "nodes",
                               "detail": ""}]
    assert data["finished"] and data["config_hash"] == "abc" and data["nodes"] == ["n1", "n2"]


def test_one_failed_check_fails_and_exits_nonzero(tmp_path):
    v = Verdict("ray")
    v.check("a", True)
    assert v.check("b", False, 1, 2) is False
    v.degraded_reason = "n2 excluded"  # a failure wins over degraded
    (tmp_path / "v.json").write_text("{}")  # an earlier run's
    assert v.finish(tmp_path / "v.json") == 1
    # No verdict.json: the next run re-runs the stage even when Snakemake keeps failed outputs.
    assert not (tmp_path / "v.json").exists()
    data = read_verdict(tmp_path / "verdict.failed.json")
    assert data["status"] == "fail"
    assert [c.name for c in v.failed] == ["b"]


def test_degraded_passes_the_gate(tmp_path):
    v = Verdict("multinode")
    v.check("served", True)
    v.degraded_reason = "ran on 1 of 2 nodes"
    assert v.finish(tmp_path / "v.json") == 0
    assert require_gate(tmp_path / "v.json")["status"] == "degraded"


def test_not_applicable_check_does_not_fail(tmp_path):
    v = Verdict("env")
    v.check("lock_matches", True, 0, 0)
    assert v.check("nccl_available", None, detail="cpu") is True
    assert v.finish(tmp_path / "v.json") == 0
    assert read_verdict(tmp_path / "v.json")["checks"][1]["ok"] is None


@pytest.mark.parametrize("checks", [[], [("nccl_available", None)]], ids=["no-checks", "only-not-applicable"])
def test_verdict_that_checked_nothing_fails(tmp_path, checks):
    v = Verdict("x")
    for name, ok in checks:
        v.check(name, ok)
    assert v.finish(tmp_path / "v.json") == 1
    data = read_verdict(tmp_path / "verdict.failed.json")
    assert data["status"] == "fail" and data["checks"][-1]["name"] == "checked_something"


def test_slurm_job_from_environment(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert Verdict("probe").slurm_job == "4242"


def test_gate_closed_on_fail(tmp_path):
    v = Verdict("probe")
    v.check("nodes_reported", False, 1, 2)
    v.finish(tmp_path / "v.json")
    with pytest.raises(SystemExit, match="probe stage failed"):
        require_gate(tmp_path / "verdict.failed.json")


def test_read_verdict_rejects_unknown_status(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"stage": "x", "status": "ok"}))
    with pytest.raises(ValueError, match="not one of"):
        read_verdict(tmp_path / "v.json")
    assert STATUSES == ("pass", "fail", "degraded")


def test_written_atomically_and_not_world_writable(tmp_path):
    path = tmp_path / "sub" / "v.json"
    v = Verdict("x")
    v.check("a", True)
    v.finish(path)
    assert path.exists() and not path.with_suffix(".json.tmp").exists()
    assert path.stat().st_mode & 0o777 == 0o644


REFS = {"single.tok_s": [100.0, -0.1, 0.2, "tok/s"], "ray.bringup_s": [10.0, None, 0.5, "s"]}


@pytest.mark.parametrize(("metric", "value", "ok"), [
    ("single.tok_s", 100.0, True),
    ("single.tok_s", 90.0, True),     # exactly at the lower bound
    ("single.tok_s", 89.9, False),
    ("single.tok_s", 120.0, True),    # exactly at the upper bound
    ("single.tok_s", 120.1, False),
    ("ray.bringup_s", 0.1, True),     # no lower bound
    ("ray.bringup_s", 15.0, True),
    ("ray.bringup_s", 15.01, False),
])
def test_reference_tolerances(metric, value, ok):
    v = Verdict("single")
    assert reference_check(v, metric, value, REFS) is ok
    check = v.checks[-1]
    assert check.name == f"perf:{metric}" and check.ok is ok
    assert check.expected == REFS[metric][:3] and check.unit == REFS[metric][3]
    assert v.metrics[metric] == value


def test_reference_failure_fails_the_verdict(tmp_path):
    v = Verdict("single")
    reference_check(v, "single.tok_s", 50.0, REFS)
    assert v.finish(tmp_path / "v.json") == 1
    assert "allowed [90, 120]" in read_verdict(tmp_path / "verdict.failed.json")["checks"][0]["detail"]


def test_missing_reference_only_records(tmp_path):
    v = Verdict("single")
    v.check("healthy", True)
    assert reference_check(v, "single.ttft_ms", 87.5, REFS) is True
    check = v.checks[-1]
    assert check.ok is None and check.expected is None and "no reference" in check.detail
    assert v.metrics["single.ttft_ms"] == 87.5
    assert v.finish(tmp_path / "v.json") == 0


def test_reference_with_both_bounds_open():
    v = Verdict("single")
    assert reference_check(v, "m", 1e9, {"m": [1.0, None, None, "x"]}) is True
    assert math.isinf(float(v.checks[-1].detail.split("[")[1].split(",")[0]))


def test_failed_stage_keeps_its_measurements_beside_the_outputs_snakemake_deletes(tmp_path):
    stage = tmp_path / "single"
    (stage / "monitor").mkdir(parents=True)
    (stage / "bench.json").write_text("{}")
    (stage / "monitor" / "n1.csv").write_text("t,node\n")
    v = Verdict("single")
    v.check("healthy", True)
    v.check("perf:x", False)
    assert v.finish(stage / "verdict.json") == 1
    assert (stage / "failed" / "bench.json").exists() and (stage / "failed" / "monitor" / "n1.csv").exists()
    v = Verdict("single")
    v.check("healthy", True)
    assert v.finish(stage / "verdict.json") == 0
    assert not (stage / "failed").exists()  # a pass clears the copies of an earlier failure
