"""The command a lab runs, `snakemake all --profile profiles/slurm --configfile config/site-sandbox.yaml`,
on the sandbox shaped like a site (accounting with an account and QoS, a fabric NIC ib0 beside eth0
and docker0), through the report, its stages in one allocation as the overlay asks. The test adds only
what every sandbox test adds (the env prefix, the compile backend) and a small benchmark, in a config
file before the site overlay.
"""

from __future__ import annotations

import json

import pytest
from conftest import API_KEY, ROOT, run_snakemake

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SMALL = {"cluster": {"nodes": 2}, "tune": {"enabled": False},
         "bench": {"num_prompts": 4, "concurrency": [1], "rates": [], "repetitions": 1, "input_len": 32,
                   "output_len": 16}}
STAGES = ("env", "probe", "ray", "single", "multinode")


def test_site_overlay_with_the_slurm_profile_through_the_report(sandbox, tmp_path):
    run = run_snakemake(sandbox, "all", workdir=tmp_path / "site", overrides=SMALL, profile="slurm",
                        configfiles=(ROOT / "config" / "site-sandbox.yaml",), timeout=1800,
                        env={"LADDER_API_KEY": API_KEY})
    assert run.returncode == 0, run.stdout[-5000:]
    assert f"Using profile {ROOT / 'profiles' / 'slurm'}" in run.stdout
    for stage in STAGES:
        v = json.loads((run.results / stage / "verdict.json").read_text())
        assert v["status"] == "pass", (stage, [c for c in v["checks"] if c["ok"] is False])
    assert (run.results / "report" / "index.html").exists()
    # The overlay queues once (cluster.one_allocation): one Slurm job ran every stage, under the overlay's
    # account, QoS and partition as Slurm's accounting has it, and each stage's verdict names it.
    jobs = run.submitted()
    assert list(jobs) == ["stages_" + "_".join(sorted(STAGES))], jobs
    job = next(iter(jobs.values()))
    row = sandbox.slurm("sacct", "-n", "-P", "-X", "-j", str(job), "-o", "Account,QOS,Partition,State")
    assert row.strip() == "lab|normal|debug|COMPLETED", row
    assert {json.loads((run.results / s / "verdict.json").read_text())["slurm_job"] for s in STAGES} == {str(job)}
    # The fabric the overlay names carried Ray, vLLM's Gloo/NCCL interface and the transfer's bytes.
    ray = {c["name"]: c for c in json.loads((run.results / "ray" / "verdict.json").read_text())["checks"]}
    assert ray["n1->n2:transfer_on_ib0"]["ok"] is True and ray["n2:ray_ip"]["value"].startswith("10.78.")
    multi = {c["name"]: c for c in json.loads((run.results / "multinode" / "verdict.json").read_text())["checks"]}
    for node in ("n1", "n2"):
        check = multi[f"precheck:{node}:ip_on_interface"]
        assert check["ok"] is True and check["expected"] == "an address of ib0", check
        assert multi[f"{node}:vllm_host_ip"]["value"].startswith("10.78."), multi[f"{node}:vllm_host_ip"]
    nodes = json.loads((run.results / "probe" / "nodes.json").read_text())["nodes"]
    assert {n["network"]["iface"] for n in nodes} == {"ib0"}
    assert sandbox.stray_processes() == []
