"""The whole ladder on the sandbox: env -> probe -> ray -> single -> multinode -> report.

Real Slurm jobs through the plugin, real Ray across network namespaces, real vLLM on
CPU with pipeline parallel through the Ray executor.  One work directory: 2 nodes
first, then 3 nodes by changing the config alone.  The runs are module fixtures, so
every test passes alone (it runs what it needs) and the runs happen once per session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import API_KEY, TWO

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

STAGES = ["env", "probe", "ray", "single", "multinode"]
# 3 nodes (and the failover from 3 to 2) without the tune and the soak, one repetition of the
# closed-loop levels; the 2-node run is the session's (conftest.two_node_run).
THREE = {"cluster": {"nodes": 3}, "bench": {"rates": [], "repetitions": 1}, "tune": {"enabled": False}}


@pytest.fixture(scope="module")
def workdir(ladder_workdir) -> Path:
    return ladder_workdir


@pytest.fixture(scope="module")
def three_node_run(sandbox, workdir, two_node_run):
    """Then 3 nodes by changing cluster.nodes alone, in the same work dir (after the 2-node run)."""
    from conftest import run_snakemake

    return run_snakemake(sandbox, "all", overrides=THREE, workdir=workdir, timeout=2400,
                         env={"LADDER_API_KEY": API_KEY})


def verdict(run, stage: str) -> dict:
    return json.loads((run.results / stage / "verdict.json").read_text())


def check_ladder(run, sandbox, nodes: int) -> None:
    assert run.returncode == 0, run.stdout[-5000:]
    for stage in STAGES:
        v = verdict(run, stage)
        assert v["status"] == "pass", (stage, [c for c in v["checks"] if c["ok"] is False])
    single = json.loads((run.results / "single" / "bench.json").read_text())
    for level, r in single["results"].items():
        assert r["output_throughput"] > 0 and r["completed"] > 0 and r["failed"] == 0, level
    assert single["metadata"]["versions"]["vllm"] and single["metadata"]["config_hash"]
    for stage in ("single", "multinode"):  # vLLM's prefix-cache counters, read around each bench
        prefilled = {c["name"]: c for c in verdict(run, stage)["checks"]}["bench_prompts_prefilled"]
        assert prefilled["ok"] is True, prefilled
    multi = verdict(run, "multinode")
    checks = {c["name"]: c for c in multi["checks"]}
    # Every pipeline rank on its own node, read from vLLM's own log.
    placed = checks["pipeline_rank_per_node"]["value"]  # rank -> node; Ray may order the nodes freely
    assert sorted(placed) == [str(i) for i in range(nodes)] and set(placed.values()) == {f"n{i}" for i in
                                                                                          range(1, nodes + 1)}
    assert checks["outputs_match_single"]["ok"] is True
    cases = [c["name"] for c in json.loads((run.results / "multinode" / "e2e.json").read_text())["cases"]]
    assert cases[0] == "models_list" and "outputs_match_single" in cases and "plan" not in cases  # the suite's only
    for name in ("models_list", "completion", "chat", "streaming", "concurrent_clients", "no_key_401",
                 "max_tokens", "alive_after_malformed"):
        assert checks[name]["ok"] is True, checks[name]
    scaling = json.loads((run.results / "multinode" / "scaling.json").read_text())
    assert scaling["multinode"]["plan"]["pipeline_parallel_size"] == nodes
    assert all(r["output_throughput"] > 0 for r in scaling["ratios_multinode_over_single"].values())
    log = (run.results / "logs" / "multinode" / "n1" / "vllm-serve.log").read_text()
    assert "--distributed-executor-backend ray" in log and f"--pipeline-parallel-size {nodes}" in log
    for i in range(2, nodes + 1):
        assert f"ip={sandbox.fabric_ip(i)}" in log  # a worker really ran on that node, over its fabric
    # Report with real data and non-empty plots.
    html = (run.results / "report" / "index.html").read_text()
    for stage in STAGES:
        assert f"<td>{stage}</td>" in html
    for png in ("throughput.png", "latency.png", "breakdown.png", "monitor-multinode.png"):
        data = (run.results / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert (run.results / "single" / "monitor" / "n1.csv").stat().st_size > 100
    assert {p.stem for p in (run.results / "multinode" / "monitor").glob("*.csv")} == {f"n{i}" for i in
                                                                                    range(1, nodes + 1)}
    # Nothing left behind: no Ray, vLLM or srun process of the run in any node.
    assert sandbox.stray_processes() == []


def no_secret_anywhere(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            assert API_KEY.encode() not in f.read_bytes(), f"API key leaked into {f}"
            assert not f.stat().st_mode & 0o002, f"{f} is world-writable"


def test_ladder_two_nodes(two_node_run, sandbox, workdir):
    run = two_node_run
    check_ladder(run, sandbox, 2)
    soak = json.loads((run.results / "multinode" / "soak.json").read_text())
    assert soak["failed"] == 0 and soak["ok"] > 10, soak
    # Every level of the default bench, closed and open loop, 3 repetitions each: the median run and the spread.
    levels = {"c1", "c4", "r4", "r16"}
    for stage in ("single", "multinode"):
        results = json.loads((run.results / stage / "bench.json").read_text())["results"]
        assert set(results) == levels, (stage, sorted(results))
        for level, r in results.items():
            rep = r["repetitions"]
            assert rep["n"] == 3 and rep["output_throughput_min"] <= r["output_throughput"] <= \
                rep["output_throughput_max"], (stage, level, rep)
        raw = {p.name for p in (run.results / stage / "raw").glob("bench-*-run*.json")}
        assert raw == {f"bench-{lv}-run{i}.json" for lv in levels for i in range(3)}, (stage, sorted(raw))
    scaling = json.loads((run.results / "multinode" / "scaling.json").read_text())
    assert set(scaling["ratios_multinode_over_single"]) == levels
    no_secret_anywhere(run.results)
    no_secret_anywhere(workdir / ".snakemake")
    print(f"2-node ladder: {run.elapsed:.0f}s")


def test_tune_finds_goodput_against_defaults_and_multinode_serves_it(two_node_run):
    run = two_node_run
    assert run.returncode == 0, run.stdout[-3000:]
    tune = run.results / "tune"
    v = verdict(run, "tune")
    assert v["status"] == "pass", [c for c in v["checks"] if c["ok"] is False]
    sweep = json.loads((tune / "sweep.json").read_text())
    names = [c["name"] for c in sweep["candidates"]]
    assert names[0] == "defaults" and len(names) >= 2, names
    defaults = sweep["candidates"][0]
    assert defaults["points"] and all(p["runs"] == 3 for p in defaults["points"]), defaults
    assert (tune / "runs" / "defaults" / "rate8-run2.json").exists()  # 3 repetitions of vLLM's own result JSON
    best = json.loads((tune / "best.json").read_text())
    assert best["goodput_req_s"] > 0 and best["name"] in names and best["metadata"]["slo"]["ttft_ms"] > 0
    assert best["gain_over_defaults"] == v["metrics"].get("goodput_gain_over_defaults")
    assert (tune / "sweep.csv").read_text().count("\n") >= 2
    baseline = json.loads((tune / "bench.json").read_text())
    assert set(baseline["results"]) == {"c1", "c4"} and baseline["results"]["c1"]["repetitions"]["n"] == 3
    # multinode serves the winner and is compared with both baselines.
    checks = {c["name"]: c for c in verdict(run, "multinode")["checks"]}
    assert checks["serves_tuned_settings"]["ok"] is True and checks["serves_tuned_settings"]["value"] == \
        best["serve_args"]
    log = (run.results / "logs" / "multinode" / "n1" / "vllm-serve.log").read_text()
    assert " ".join(best["serve_args"]) in log
    scaling = json.loads((run.results / "multinode" / "scaling.json").read_text())
    assert set(scaling["ratios_multinode_over_tuned_single"]) == {"c1", "c4"}
    html = (run.results / "report" / "index.html").read_text()
    assert "Tune: goodput under the SLO" in html and "multinode / tuned single" in html and "<td>tune</td>" in html
    for png in ("tune-goodput.png", "tune-pareto.png"):  # drawn by the report from the declared sweep.json
        assert (run.results / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run.results / "report" / "tune-goodput.png").stat().st_size > 5000


def test_changing_the_slo_reruns_tune_and_what_follows_only(run_dag, workdir, two_node_run):
    assert two_node_run.returncode == 0, two_node_run.stdout[-3000:]
    slo = {"tune": TWO["tune"] | {"slo": {"ttft_ms": 900}}}
    run = run_dag("all", overrides=TWO | slo, workdir=workdir, timeout=120, extra=("-n",))
    assert run.returncode == 0, run.stdout[-3000:]
    table = run.stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    jobs = set(re.findall(r"^(\w+)\s+\d+\s*$", table, flags=re.M))
    assert jobs == {"stage_config", "tune", "multinode", "report", "all"}, run.stdout[-3000:]
    # the stage configs rewritten are those of the stages that read tune's output or settings
    configs = set(re.findall(r"output: results/\.config/(\w+)\.json", run.stdout))
    assert configs == {"tune", "multinode", "report"}, run.stdout[-3000:]


def test_report_renders_in_chromium(two_node_run, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is needed for this test (`make test` installs it)"
    assert two_node_run.returncode == 0, two_node_run.stdout[-3000:]
    index = two_node_run.results / "report" / "index.html"
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
                    f"--screenshot={shot}", index.as_uri()], check=True, timeout=120, capture_output=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
    shutil.copy(shot, two_node_run.results / "report" / "screenshot.png")


@pytest.mark.parametrize(("serve", "message"), [
    ({"extra_args": ["--max-model-len=100000"]}, "exited with"),  # crashes at start-up
    ({"health_timeout_s": 10}, "not healthy after 10s"),  # never healthy in time
], ids=["server-crashes", "never-healthy"])
def test_server_failure_fails_with_log_tail_and_no_orphans(run_dag, sandbox, workdir, two_node_run, serve, message):
    assert two_node_run.returncode == 0, "needs env, probe and ray validated in the work dir"
    run = run_dag("results/single/verdict.json", overrides={"cluster": {"nodes": 2}, "serve": serve},
                  workdir=workdir, timeout=600)
    assert run.returncode != 0
    v = json.loads((run.results / "single" / "verdict.failed.json").read_text())
    healthy = next(c for c in v["checks"] if c["name"] == "healthy")  # the check carries the real outcome
    assert healthy["ok"] is False, healthy
    detail = healthy["detail"]
    assert message in detail and "last lines of" in detail and "vllm-serve.log" in detail, detail
    assert set(run.submitted()) == {"single"}  # env, probe, ray stay cached
    assert sandbox.stray_processes() == []


def test_ladder_three_nodes_by_config_alone(three_node_run, sandbox):
    run = three_node_run
    check_ladder(run, sandbox, 3)
    assert "env" not in run.submitted(), "env must stay cached when only cluster.nodes changes"
    print(f"3-node ladder: {run.elapsed:.0f}s")


def test_rerun_submits_nothing(run_dag, workdir, three_node_run):
    assert three_node_run.returncode == 0, three_node_run.stdout[-3000:]
    run = run_dag("all", overrides=THREE, workdir=workdir, timeout=120)
    assert run.returncode == 0 and run.submitted() == {}, run.stdout[-3000:]
    assert "Nothing to be done" in run.stdout


def test_node_dies_under_load_service_restarts_degraded(sandbox, workdir, three_node_run):
    """Kill every Ray/vLLM process of n3 while the 3-node service runs: the stage notices, restarts the
    service with PP=2 on n1 and n2, re-runs the end-to-end suite, and passes as degraded."""
    import signal
    import time

    import yaml
    from conftest import BIN, ROOT, make_config

    from ladder.sandbox import pids_in_namespaces

    assert three_node_run.returncode == 0, "needs the validated 3-node ladder (single's outputs) in the work dir"
    cfg = make_config(THREE | {"faults": {"allow_degraded": True}})
    cfg_file = workdir / "failover.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = workdir / "results" / "logs" / "multinode" / "multinode.log"
    log.unlink(missing_ok=True)
    proc = subprocess.Popen([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
                             "--configfile", str(cfg_file), "--profile", str(ROOT / "profiles" / "sandbox"),
                             "--forcerun", "multinode", "--", "results/multinode/verdict.json"],
                            cwd=workdir, env=sandbox.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not (log.exists() and "ok   healthy" in log.read_text()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(1)
    time.sleep(5)  # under load now (end-to-end suite)
    ns_inode = os.stat(f"/run/netns/ladder{sandbox.instance}-n3").st_ino
    killed = []
    for pid in pids_in_namespaces(sandbox.instance):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ns_inode:
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "slurmd" not in cmd and "slurmstepd" not in cmd:
            os.kill(pid, signal.SIGKILL)
            killed.append(cmd[:60])
    assert killed, "nothing of the service ran on n3"
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-5000:]
    v = json.loads((workdir / "results" / "multinode" / "verdict.json").read_text())
    assert v["status"] == "degraded", [c for c in v["checks"] if c["ok"] is False]
    assert "n3" in v["degraded_reason"]
    checks = [c for c in v["checks"] if c["name"] == "pipeline_rank_per_node"]
    assert checks[-1]["ok"] is True and checks[-1]["value"] == {"0": "n1", "1": "n2"}
    outputs = [c for c in v["checks"] if c["name"] == "outputs_match_single"]
    assert outputs[-1]["ok"] is True  # the suite re-ran on the smaller pipeline
    assert (workdir / "results" / "multinode" / "failed_nodes.txt").read_text().split() == ["n3"]
    assert sandbox.stray_processes() == []
