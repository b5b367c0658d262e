"""The real env -> probe DAG through snakemake-executor-plugin-slurm on the test sandbox.

One work directory for the module: the 2-node run builds it, the re-run must submit
nothing, the 3-node run must re-run probe only (env stays cached).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.sandbox

PROBE = "results/probe/verdict.json"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probe-dag")


def check_probe(run, sandbox, nodes: int) -> None:
    assert run.returncode == 0, run.stdout[-4000:]
    verdict = json.loads((run.results / "probe" / "verdict.json").read_text())
    names = [f"n{i}" for i in range(1, nodes + 1)]
    assert verdict["status"] == "pass", verdict["checks"]
    assert all(c["ok"] is not False for c in verdict["checks"])
    assert verdict["nodes"] == names
    # Gathered by a real Slurm job that ran on exactly those nodes.
    jid = verdict["slurm_job"]
    assert int(jid) in sandbox.job_ids()
    assert sandbox.slurm("squeue", "-h", "-t", "all", "-j", jid, "-o", "%N").strip() == f"n[1-{nodes}]"
    inventory = json.loads((run.results / "probe" / "nodes.json").read_text())["nodes"]
    assert [n["slurm_node"] for n in inventory] == names
    for i, n in enumerate(inventory, start=1):
        # Its own hostname (UTS namespace) and its own IP (network namespace).
        assert n["hostname"] == f"n{i}"
        ips = {nic["name"]: nic["ipv4"] for nic in n["nics"] if nic["name"] != "lo"}
        assert ips == {"eth0": [sandbox.node_ip(i)], "ib0": [sandbox.fabric_ip(i)], "docker0": ["172.17.0.1"]}
        assert n["default_route"] == "eth0"  # the management network
        # Ray, vLLM, NCCL and Gloo go over the fabric, never the bridge (cluster.network: auto).
        assert n["network"] == {"iface": "ib0", "ip": sandbox.fabric_ip(i),
                                "why": "auto: ib0 (InfiniBand, 10000 Mb/s) of eth0, ib0; skipped docker0"}
        assert n["gpus"]["kind"] == "cpu-only" and n["gpus"]["count"] == 0
        assert n["memory"]["total_mib"] > 0 and n["cpu"]["logical"] >= 1
        log = run.results / "logs" / "probe" / f"n{i}.log"
        assert f"'iface': 'ib0', 'ip': '{sandbox.fabric_ip(i)}'" in log.read_text()
    assert (run.results / "benchmarks" / "probe.tsv").exists()
    assert list((run.results / "logs" / "slurm" / "rule_probe").glob("*.log"))


@pytest.fixture(scope="module")
def two_node_probe(sandbox, workdir):
    """env + probe on 2 nodes in the module's work dir, and the jobs Slurm knew before."""
    from conftest import run_snakemake

    before = sandbox.job_ids()
    return before, run_snakemake(sandbox, PROBE, overrides={"cluster": {"nodes": 2}}, workdir=workdir, timeout=300)


def test_probe_two_nodes(two_node_probe, sandbox):
    before, run = two_node_probe
    check_probe(run, sandbox, 2)
    submitted = run.submitted()
    assert set(submitted) == {"env", "probe"}, run.stdout[-3000:]
    assert set(submitted.values()) == sandbox.job_ids() - before
    env = json.loads((run.results / "env" / "verdict.json").read_text())
    assert env["status"] == "pass" and env["versions"]["snakemake"] and env["versions"]["ray"]
    print(f"2-node env+probe: {run.elapsed:.1f}s")


def test_rerun_submits_nothing(run_dag, sandbox, workdir, two_node_probe):
    assert two_node_probe[1].returncode == 0
    before = sandbox.job_ids()
    run = run_dag(PROBE, overrides={"cluster": {"nodes": 2}}, workdir=workdir, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Nothing to be done" in run.stdout
    assert run.submitted() == {}
    assert sandbox.job_ids() == before
    assert run.elapsed < 10, f"no-op re-run took {run.elapsed:.1f}s"
    print(f"no-op re-run: {run.elapsed:.1f}s")


def test_probe_three_nodes_reruns_probe_only(run_dag, sandbox, workdir, two_node_probe):
    assert two_node_probe[1].returncode == 0
    before = sandbox.job_ids()
    env_mtime = (workdir / "results" / "env" / "verdict.json").stat().st_mtime
    run = run_dag(PROBE, overrides={"cluster": {"nodes": 3}}, workdir=workdir, timeout=300)
    check_probe(run, sandbox, 3)
    # cluster.nodes is not part of env's config hash: env stays cached.
    assert set(run.submitted()) == {"probe"}, run.stdout[-3000:]
    assert len(sandbox.job_ids() - before) == 1
    assert (workdir / "results" / "env" / "verdict.json").stat().st_mtime == env_mtime
    print(f"3-node probe: {run.elapsed:.1f}s")


def test_probe_one_node(run_dag, sandbox, workdir, two_node_probe):
    # A one-task job must not take the plugin's MPI path: it refuses one task, and
    # Snakemake 9 lost that error in its submit thread and waited forever (seen on GPU).
    assert two_node_probe[1].returncode == 0, "env must be validated in the work dir"
    run = run_dag(PROBE, overrides={"cluster": {"nodes": 1}}, workdir=workdir, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:]
    assert set(run.submitted()) == {"probe"}, run.stdout[-3000:]
    verdict = json.loads((run.results / "probe" / "verdict.json").read_text())
    assert verdict["status"] == "pass", verdict["checks"]
    assert len(verdict["nodes"]) == 1
    jid = verdict["slurm_job"]
    assert sandbox.slurm("squeue", "-h", "-t", "all", "-j", jid, "-o", "%N").strip() == verdict["nodes"][0]
    # The rule's own srun ran the node task (its per-node log).
    assert (run.results / "logs" / "probe" / f"{verdict['nodes'][0]}.log").exists()


def test_site_settings_reach_slurm_and_every_job(run_dag, sandbox):
    """cluster.account / exclusive / stage_time_min arrive in the sbatch of each stage job (as Slurm records
    them) and env.setup runs first in every job's shell."""
    site = {"cluster": {"nodes": 1, "account": "lab", "exclusive": True, "stage_time_min": {"probe": 7}},
            "env": {"setup": ["echo ladder-site-setup on $(hostname)",
                              f"export MODULEPATH={ROOT / 'tests' / 'data' / 'modulefiles'}"],
                    "modules": ["ladder-site/1.0"]}}
    run = run_dag(PROBE, overrides=site, timeout=180)
    assert run.returncode == 0, run.stdout[-4000:]
    jobs = run.submitted()
    for rule, minutes in (("env", "30"), ("probe", "7")):
        job = sandbox.slurm("scontrol", "show", "job", str(jobs[rule]))
        assert "Account=lab" in job and "OverSubscribe=NO" in job, job
        assert f"TimeLimit=00:{int(minutes):02d}:00" in job, job
        log = run.results / "logs" / "slurm" / f"rule_{rule}" / f"{jobs[rule]}.log"
        assert "ladder-site-setup on n1" in log.read_text(), log.read_text()[-2000:]
    # Lmod loaded the module in the job, and the node task ran with it.
    (node,) = json.loads((run.results / "probe" / "nodes.json").read_text())["nodes"]
    assert node["modules"] == ["ladder-site/1.0"]


@pytest.mark.parametrize(("overrides", "named"), [
    ({"cluster": {"nodse": 2}}, "'nodse' was unexpected"),
    ({"clustr": {"nodes": 2}}, "'clustr' was unexpected"),
    ({"cluster": {"nodes": "two"}}, "On instance['cluster']['nodes']"),
    ({"ray": {"port_base": 80}}, "On instance['ray']['port_base']"),
    ({"parallel": {"pipeline_parallel_size": 5}}, "parallel.pipeline_parallel_size=5 exceeds cluster.nodes=2"),
], ids=["misspelt-key", "misspelt-section", "wrong-type", "out-of-range", "plan"])
def test_bad_config_fails_fast_without_jobs(run_dag, sandbox, overrides, named):
    before = sandbox.job_ids()
    run = run_dag(PROBE, overrides=overrides, timeout=60)
    assert run.returncode != 0
    assert named in run.stdout, run.stdout[-3000:]
    assert run.elapsed < 10, f"rejection took {run.elapsed:.1f}s"
    assert run.submitted() == {}
    assert sandbox.job_ids() == before
    assert not (run.results / "env").exists()
