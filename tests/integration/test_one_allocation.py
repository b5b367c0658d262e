"""cluster.one_allocation: the stages a run needs reach Slurm as one job (a Snakemake job group), and each
stage still writes its verdict, gates the next and is cached.

One module fixture: env -> probe -> ray in one job with probe failing (cluster.network names a network
no node has), the same config again, then the fixed config, then that again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_snakemake

pytestmark = pytest.mark.sandbox

TARGET = "results/ray/verdict.json"
ONE = {"cluster": {"one_allocation": True}}
NO_NIC = {"cluster": {"one_allocation": True, "network": "10.99.0.0/24"}}
def verdicts(results: Path) -> dict[str, Any]:
    """stage -> its verdict.json (or 'verdict.failed.json: <status>' / None), read now."""
    out: dict[str, Any] = {}
    for stage in ("env", "probe", "ray"):
        ok, failed = results / stage / "verdict.json", results / stage / "verdict.failed.json"
        out[stage] = (json.loads(ok.read_text()) if ok.exists()
                      else f"verdict.failed.json: {json.loads(failed.read_text())['status']}" if failed.exists()
                      else None)
    return out


@pytest.fixture(scope="module")
def runs(sandbox, tmp_path_factory) -> dict[str, Any]:
    wd = tmp_path_factory.mktemp("one-allocation")
    bad = run_snakemake(sandbox, TARGET, workdir=wd, overrides=NO_NIC, timeout=300)
    after_bad = verdicts(bad.results)
    bad_again = run_snakemake(sandbox, TARGET, workdir=wd, overrides=NO_NIC, timeout=300)
    probe_log = (wd / "results" / "logs" / "probe" / "probe.log").read_text()  # the next runs overwrite it
    good = run_snakemake(sandbox, TARGET, workdir=wd, overrides=ONE, timeout=300)
    after_good = verdicts(good.results)
    again = run_snakemake(sandbox, TARGET, workdir=wd, overrides=ONE, timeout=120)
    return {"bad": bad, "after_bad": after_bad, "bad_again": bad_again, "probe_log": probe_log, "good": good,
            "after_good": after_good, "again": again}


def test_failed_stage_keeps_the_validated_stages_of_its_allocation(runs):
    bad = runs["bad"]
    assert bad.returncode != 0, bad.stdout[-3000:]
    # One Slurm job ran every stage that needed running.
    assert list(bad.submitted()) == ["stages_env_probe_ray"], bad.stdout[-3000:]
    v = runs["after_bad"]
    assert isinstance(v["env"], dict) and v["env"]["status"] == "pass", v
    assert v["probe"] == "verdict.failed.json: fail", v
    assert v["ray"] is None, v  # gated: never ran


def test_failed_stage_runs_again_with_the_same_config(runs):
    # Nothing changed, yet the failed stage is not taken as done: one job for it and the stage after it.
    again = runs["bad_again"]
    assert again.returncode != 0 and list(again.submitted()) == ["stages_probe_ray"], again.stdout[-3000:]
    assert "verdict: fail" in runs["probe_log"], runs["probe_log"]


def test_rerun_after_the_fix_is_one_job_of_only_the_stages_left(runs):
    good, before, after = runs["good"], runs["after_bad"], runs["after_good"]
    assert good.returncode == 0, good.stdout[-3000:]
    jobs = good.submitted()
    assert list(jobs) == ["stages_probe_ray"], good.stdout[-3000:]
    job = str(jobs["stages_probe_ray"])
    # env was not run again; probe and ray ran in that one job, each with its own verdict.
    assert after["env"]["slurm_job"] == before["env"]["slurm_job"] != job
    assert [after[s]["status"] for s in ("probe", "ray")] == ["pass", "pass"], after
    assert after["probe"]["slurm_job"] == after["ray"]["slurm_job"] == job


def test_validated_run_is_cached(runs):
    again = runs["again"]
    assert again.returncode == 0 and again.submitted() == {}, again.stdout[-3000:]
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]
