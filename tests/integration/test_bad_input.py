"""Bad input is refused with a message naming the key or file, before any Slurm job."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.sandbox


@pytest.mark.parametrize(("overrides", "named"), [
    ({"cluster": {"gpus_per_node": 4}, "env": {"flavor": "cuda"}, "parallel": {"tensor_parallel_size": 3}},
     "parallel.tensor_parallel_size=3 does not divide cluster.gpus_per_node=4"),
    ({"cluster": {"nodes": 2}, "parallel": {"pipeline_parallel_size": 3}},
     "parallel.pipeline_parallel_size=3 exceeds cluster.nodes=2"),
    ({"model": {"name": "llama", "path": "/nonexistent/llama"}}, "model.path: /nonexistent/llama"),
    ({"ray": {"port_range": 150}}, "['ray']['port_range']"),
    ({"cluster": {"partition": "no_such_partition"}}, "cluster.partition='no_such_partition'"),
    ({"model": {"name": "tiny; rm -rf /"}}, "['model']['name']"),
    ({"serve": {"extra_args": ["--x=$(reboot)"]}}, "['serve']['extra_args']"),
    ({"cluster": {"nodes": 2}, "bench": {"concurrency": []}}, "['bench']['concurrency']"),
    ({"serve": {"api_key_file": "/nonexistent/key"}}, "serve.api_key_file: /nonexistent/key"),
], ids=["tp-not-dividing-gpus", "pp-over-nodes", "missing-model-path", "port-range-too-small",
        "no-such-partition", "shell-metacharacters-model", "shell-metacharacters-args", "empty-sweep",
        "missing-key-file"])
def test_rejected_before_submission(run_dag, sandbox, overrides, named):
    before = sandbox.job_ids()
    run = run_dag("all", overrides=overrides, timeout=60)
    assert run.returncode != 0
    assert named in run.stdout, run.stdout[-3000:]
    assert run.elapsed < 10, f"rejection took {run.elapsed:.1f}s"
    assert sandbox.job_ids() == before and run.submitted() == {}


def test_malformed_yaml_names_the_file(sandbox, tmp_path):
    """The lab's config/config.yaml broken: the error names the file and the line, nothing is submitted."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for part in ("Snakefile", "rules", "config", "scripts", "envs", "report", "profiles"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / part)
    (repo / "config" / "config.yaml").write_text("cluster:\n  nodes: 2\n   partition: [oops\n")
    before = sandbox.job_ids()
    res = subprocess.run([str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
                          "--profile", str(repo / "profiles" / "sandbox"), "all"],
                         env=sandbox.env(), capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"{repo / 'config' / 'config.yaml'} is not valid YAML (line 3" in out, out[-2000:]
    assert sandbox.job_ids() == before


@pytest.mark.parametrize(("overrides", "named"), [
    ({"cluster": {"nodes": 5}}, "cluster.nodes=5: the default partition has 3 node(s) (n1, n2, n3)"),
    ({"ray": {"port_base": 20000}}, "ray.port_base/ray.port_range: ports 20000-39999 overlap"),
    ({"model": {"max_model_len": 2048}}, "model.max_model_len=2048: the model's max_position_embeddings is 512"),
    ({"cluster": {"account": "nosuch"}}, "cluster.account=nosuch: user root has no association with it in Slurm"),
    ({"cluster": {"qos": "gold"}}, "cluster.qos=gold: Slurm knows no such QoS"),
    ({"cluster": {"qos": "short"}}, "cluster.time_min/stage_time_min: above QoS short's MaxWall of 5 min: env 30 min"),
], ids=["more-nodes-than-the-partition", "ports-in-the-ephemeral-range", "context-beyond-the-model",
        "unknown-account", "unknown-qos", "time-above-the-qos-limit"])
def test_config_the_cluster_cannot_run_is_refused(run_dag, sandbox, overrides, named):
    before = sandbox.job_ids()
    run = run_dag("all", overrides=overrides, timeout=60)
    assert run.returncode != 0 and named in run.stdout, run.stdout[-3000:]
    assert run.elapsed < 10 and sandbox.job_ids() == before


ONE_RULE = """
rule stuck:
    output: "stuck.txt"
    resources: nodes={nodes}, tasks={nodes}, cpus_per_task=1, mem_mb=100, runtime={minutes}, slurm_extra="{extra}"{more}
    shell: "hostname > {{output}}"
"""


def run_one_rule(sandbox, tmp_path, nodes: int, extra: str, patience_min: float, minutes: int = 5, more: str = ""):
    """One job through profiles/sandbox's executor (the preflight is ladder's Snakefile's: not here)."""
    (tmp_path / "Snakefile").write_text(ONE_RULE.format(nodes=nodes, extra=extra, minutes=minutes, more=more))
    try:
        res = subprocess.run([str(BIN / "snakemake"), "stuck.txt", "-s", str(tmp_path / "Snakefile"), "--directory",
                              str(tmp_path), "--profile", str(ROOT / "profiles" / "sandbox"),
                              "--config", f"faults={{pending_patience_min: {patience_min}}}"],
                             env=sandbox.env(), capture_output=True, text=True, timeout=120)
    finally:  # a watch that failed leaves the job pending: not for the next test
        left = [line.split()[0] for line in sandbox.slurm("squeue", "-h", "-o", "%i %Z").splitlines()
                if line.split()[1:] == [str(tmp_path)]]
        if left:
            sandbox.slurm("scancel", *left)
    return res.returncode, res.stdout + res.stderr


def test_job_that_can_never_start_is_cancelled_with_its_reason(sandbox, tmp_path):
    """5 nodes of a 3-node partition pend for ever: cancelled at a status check. Slurm names it
    PartitionNodeLimit, or PartitionConfig (seen in CI, where slurmctld had just started)."""
    rc, out = run_one_rule(sandbox, tmp_path, 5, "", 30)
    assert rc != 0 and re.search(r"can never start: Partition(NodeLimit|Config); cancelled", out), out[-3000:]
    assert "stuck" not in sandbox.running_jobs()


def test_job_waiting_on_a_drained_node_is_reported_then_cancelled(sandbox, tmp_path):
    sandbox.slurm("scontrol", "update", "nodename=n3", "state=drain", "reason=ladder-test")
    try:
        rc, out = run_one_rule(sandbox, tmp_path, 1, "--nodelist=n3", 0.1)
    finally:
        sandbox.slurm("scontrol", "update", "nodename=n3", "state=resume")
    assert rc != 0, out[-3000:]
    assert "is pending: ReqNodeNotAvail, UnavailableNodes:n3" in out, out[-3000:]
    assert "(faults.pending_patience_min) for unavailable nodes: ReqNodeNotAvail" in out, out[-3000:]
    assert "stuck" not in sandbox.running_jobs()


def test_job_above_its_qos_wall_time_is_cancelled_with_its_reason(sandbox, tmp_path):
    """The sandbox's QoS 'short' allows 5 minutes: a 10-minute job under it pends for ever."""
    rc, out = run_one_rule(sandbox, tmp_path, 1, "", 30, minutes=10, more=', qos="short"')
    assert rc != 0 and "can never start: QOSMaxWallDurationPerJobLimit; cancelled" in out, out[-3000:]


def test_slurm_itself_refuses_an_unknown_account_and_accounts_every_job(sandbox, tmp_path):
    """Accounting as a site has it: associations enforced by slurmctld, finished jobs in sacct."""
    res = subprocess.run(["sbatch", "-A", "nosuch", "--wrap", "true"], env=sandbox.env(), capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode != 0 and "Invalid account" in res.stderr, res.stderr
    jid = sandbox.slurm("sbatch", "--parsable", "--wait", "-o", str(tmp_path / "out"), "--wrap", "true").strip()
    assert sandbox.slurm("sacct", "-n", "-X", "-P", "-j", jid, "-o", "account,state").split() == ["lab|COMPLETED"]
