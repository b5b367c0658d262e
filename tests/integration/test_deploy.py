"""Target deploy on the sandbox, after the 2-node ladder: replicas behind vllm-router, used by the
openai client; scaling with load, a replica's node killed under load, scale and stop.

One deployment serves every test of the module (a module fixture after the session's ladder run);
each test states what it needs of the ones before it, so each also passes alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import openai
import psutil
import pytest
from conftest import API_KEY, TWO, run_snakemake

from ladder.bench import bench_args
from ladder.sandbox import pids_in_namespaces
from ladder.vllmserver import resolve_model

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
# One replica to start, two at most; a replica runs at most 2 sequences at once, so 8 concurrent
# clients leave requests waiting and the scaler adds one after 6 s of that (the mean of about 3 samples,
# one per poll_s of 2 s).
DEPLOY = {"deploy": {"replicas": 1, "min_replicas": 1, "max_replicas": 2, "extra_args": ["--max-num-seqs=2"],
                     "scale_up_waiting": 2, "scale_up_after_s": 6, "scale_down_idle_s": 3600, "drain_s": 5}}


def deploy_cli(workdir: Path, sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ladder.deploy", "--results", str(workdir / "results"), *args],
                          env=sandbox.env(), capture_output=True, text=True, timeout=900)


def events(workdir: Path) -> list[dict]:
    path = workdir / "results" / "deploy" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def state(workdir: Path) -> dict:
    return json.loads((workdir / "results" / "deploy" / "state.json").read_text())


def serving(workdir: Path) -> dict[str, dict]:
    return {j: r for j, r in state(workdir)["replicas"].items() if r["state"] == "serving"}


def wait_for(what: str, pred, timeout: float, workdir: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out := pred():
            return out
        time.sleep(0.5)
    load = state(workdir).get("load") if (workdir / "results" / "deploy" / "state.json").exists() else None
    pytest.fail(f"{what} not within {timeout:.0f} s; events: {events(workdir)[-6:]}; the scaler's last sample: {load}")


class Load:
    """Bounded load: `clients` threads sending streaming completions until stopped (at most 3000 requests),
    each request's outcome recorded (the node-kill test). A load meant to fill a queue is BenchLoad."""

    def __init__(self, client: openai.OpenAI, clients: int, max_tokens: int = 64) -> None:
        self.client, self.max_tokens, self.stop = client, max_tokens, threading.Event()
        self.results: list[tuple[float, float, str]] = []  # (start, end, "ok" or the error)
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        while not self.stop.is_set() and len(self.results) < 3000:
            t = time.monotonic()
            try:
                chunks = list(self.client.completions.create(model="tiny", prompt="Tell me", stream=True,
                                                             max_tokens=self.max_tokens))
                # A stream cut by a dead server just ends: only a finish_reason says it completed.
                outcome = "ok" if any(c.choices and c.choices[0].finish_reason for c in chunks) else "cut short"
            except openai.APIError as err:
                outcome = f"{type(err).__name__}: {err}"[:200]
            self.results.append((t, time.monotonic(), outcome))

    def __enter__(self) -> Load:
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=120)
        assert not any(th.is_alive() for th in self.threads), "a request hung past the client's timeout"


def test_multinode_layout_replica_serves_over_ray_on_two_probed_nodes(sandbox, ladder_workdir, two_node_run):
    """deploy.layout multinode: a replica is the validated PP=2 layout, a Ray cluster inside its own
    2-node job (probed nodes only), behind the router; stop leaves nothing. First in the module: the
    module's deployment below starts after it (3 sandbox nodes)."""
    assert two_node_run.returncode == 0, two_node_run.stdout[-3000:]
    assert not (ladder_workdir / "results" / "deploy" / "endpoint.json").exists(), "a deployment is running"
    over = TWO | {"deploy": {"replicas": 1, "max_replicas": 1, "layout": "multinode", "drain_s": 5}}
    try:
        run = run_snakemake(sandbox, "deploy", overrides=over, workdir=ladder_workdir, timeout=900,
                            env={"LADDER_API_KEY": API_KEY})
        assert run.returncode == 0, run.stdout[-4000:]
        endpoint = json.loads((run.results / "deploy" / "endpoint.json").read_text())
        layout = endpoint["layout"]
        assert (layout["stage"], layout["pipeline_parallel_size"]) == ("multinode", 2), layout
        (replica,) = endpoint["replicas"]
        probed = {n["slurm_node"] for n in json.loads((run.results / "probe" / "nodes.json").read_text())["nodes"]}
        assert len(set(replica["nodes"])) == 2 and set(replica["nodes"]) <= probed, (replica, probed)
        own = json.loads((run.results / "deploy" / "replicas" / f"{replica['job']}.json").read_text())
        assert own["layout"] == {"tensor_parallel_size": 1, "pipeline_parallel_size": 2} and own["ray_bringup_s"] > 0
        client = openai.OpenAI(base_url=endpoint["url"], api_key=API_KEY, max_retries=0, timeout=60)
        r = client.completions.create(model="tiny", prompt="Hello", max_tokens=8)
        assert r.usage.completion_tokens == 8
        log = Path(own["log"]).read_text()
        assert "pipeline_parallel_size=2" in log and "'distributed_executor_backend': 'ray'" in log
    finally:
        stop = run_snakemake(sandbox, "deploy_stop", overrides=over, workdir=ladder_workdir, timeout=300)
    assert stop.returncode == 0, stop.stdout[-3000:]
    assert sandbox.running_jobs().strip() == "" and sandbox.stray_processes() == []
    # It drained and stopped its server and Ray itself, not killed by the job's cancellation.
    own = json.loads((ladder_workdir / "results" / "deploy" / "replicas" / f"{replica['job']}.json").read_text())
    assert own["state"] == "stopped" and "finished" in own, own


@pytest.fixture(scope="module")
def deployment(sandbox, ladder_workdir, two_node_run):
    """`snakemake deploy` after the 2-node ladder in the same work dir; stopped (and checked) at the end."""
    assert two_node_run.returncode == 0, two_node_run.stdout[-3000:]
    run = run_snakemake(sandbox, "deploy", overrides=TWO | DEPLOY, workdir=ladder_workdir, timeout=900,
                        env={"LADDER_API_KEY": API_KEY})
    yield run
    if (ladder_workdir / "results" / "deploy" / "endpoint.json").exists():
        run_snakemake(sandbox, "deploy_stop", overrides=TWO | DEPLOY, workdir=ladder_workdir, timeout=300)


@pytest.fixture
def client(deployment) -> openai.OpenAI:
    assert deployment.returncode == 0, deployment.stdout[-4000:]
    endpoint = json.loads((deployment.results / "deploy" / "endpoint.json").read_text())
    return openai.OpenAI(base_url=endpoint["url"], api_key=API_KEY, max_retries=0, timeout=60)


def test_deploy_serves_the_openai_client_through_the_router(deployment, client, ladder_workdir):
    assert set(deployment.submitted()) == set(), "deploy submits its replicas itself; every stage stays cached"
    endpoint = json.loads((deployment.results / "deploy" / "endpoint.json").read_text())
    assert endpoint["url"].startswith("http://127.0.0.1:") and endpoint["model"] == "tiny"
    assert len(endpoint["replicas"]) == 1 and endpoint["replicas"][0]["node"] in {"n1", "n2", "n3"}
    assert API_KEY not in json.dumps(endpoint)
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=8)
    assert r.choices[0].text and r.usage.completion_tokens == 8
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=8, stream=True))
    assert len(chunks) >= 2
    base = endpoint["url"].removesuffix("/v1")
    assert httpx2.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30).status_code == 401
    # The replica itself: a Slurm job on a sandbox node, bound to that node's fabric address.
    replica = endpoint["replicas"][0]
    assert replica["url"].startswith("http://10.78.")
    assert deployment.results.joinpath("deploy", "replicas", f"{replica['job']}.json").exists()


class BenchLoad:
    """Closed-loop load from `vllm bench serve` in a process of its own (8 in flight, 64 tokens each,
    at most 2000 requests): the full suite's pytest process, its client threads sharing one
    interpreter, twice kept only one request at a time at the replica (no queue, no scale-up)."""

    def __init__(self, workdir: Path) -> None:
        cfg = json.loads((workdir / "results" / "deploy" / "config.json").read_text())
        state_ = state(workdir)
        model_path, served = resolve_model(cfg["model"], Path(state_["cache"]))
        workload = {"input_len": 16, "output_len": 64, "num_prompts": 2000, "seed": 0, "warmup_prompts": 0,
                    "burstiness": 1.0}
        out = workdir / "results" / "deploy" / "scale-load.json"
        self.cmd = [sys.executable, "-m", "ladder.vllm_cli", "bench", "serve",
                    *bench_args(state_["router"]["url"], served, model_path, workload, out, 0, concurrency=8)]
        self.log = workdir / "results" / "logs" / "deploy" / "scale-load.log"

    def __enter__(self) -> BenchLoad:
        self.out = self.log.open("a")  # both loads of the test in one log
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, OPENAI_API_KEY=API_KEY), start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.out.close()


def test_queue_depth_scales_up_and_the_new_replica_takes_traffic(deployment, client, ladder_workdir):
    assert len(serving(ladder_workdir)) == 1, "starts from the deployment's one replica"
    with BenchLoad(ladder_workdir):
        wait_for("a scale_up decision", lambda: [e for e in events(ladder_workdir) if e["event"] == "scale_up"],
                 120, ladder_workdir)
    # The load stops at the decision: on 2 cores it would only slow the new replica's start.
    t_decided = time.monotonic()
    added = wait_for("a second replica serving", lambda: len(serving(ladder_workdir)) == 2 and serving(
        ladder_workdir), 600, ladder_workdir)
    new = max(added.values(), key=lambda r: r["submitted"])

    def served_by_new() -> bool:
        text = httpx2.get(f"{new['url']}/metrics", timeout=5).text
        return any(line.startswith("vllm:request_success_total") and float(line.split()[-1]) > 0
                   for line in text.splitlines())

    # Under load again: cache_aware keeps one client's sequential requests where it routed the first
    # (ties between idle replicas go one way: seen in the full run), and sends to the least loaded
    # replica once their requests in flight differ (deploy.balance_abs_threshold).
    with BenchLoad(ladder_workdir):
        wait_for("a request served by the new replica", served_by_new, 60, ladder_workdir)
    took_traffic_s = time.monotonic() - t_decided
    up = next(e for e in events(ladder_workdir) if e["event"] == "scale_up")
    assert "waiting per replica" in up["reason"]
    print(f"scale-up: decision to traffic on the new replica {took_traffic_s:.1f} s")


def kill_node_processes(sandbox, node: str) -> int:
    """Every process of the node but slurmd/slurmstepd, SIGKILLed: the node as if it died."""
    ino = os.stat(f"/run/netns/ladder{sandbox.instance}-{node}").st_ino
    killed = 0
    for pid in pids_in_namespaces(sandbox.instance):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ino:
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "slurmd" not in cmd and "slurmstepd" not in cmd:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def test_node_killed_under_load_only_its_requests_fail_and_a_replica_restarts(deployment, client, sandbox,
                                                                             ladder_workdir):
    if len(serving(ladder_workdir)) < 2:  # run alone: the scale-up test has not added the second replica
        assert deploy_cli(ladder_workdir, sandbox, "scale", "2").returncode == 0
    before = serving(ladder_workdir)
    victim_job, victim = min(before.items(), key=lambda kv: int(kv[0]))
    with Load(client, clients=4, max_tokens=32) as load:
        time.sleep(3)
        t_kill = time.monotonic()
        assert kill_node_processes(sandbox, victim["node"]) > 0
        lost = wait_for("the lost replica taken out", lambda: [e for e in events(ladder_workdir) if e["event"] ==
                                                               "replica_lost" and e["job"] == victim_job], 30,
                        ladder_workdir)
        out_s = time.monotonic() - t_kill
        time.sleep(5)  # requests sent after the loss
        t_after = time.monotonic()
        time.sleep(5)
    replaced = wait_for("a replacement serving", lambda: len(serving(ladder_workdir)) == len(before) and serving(
        ladder_workdir), 600, ladder_workdir)
    recovery_s = time.monotonic() - t_kill
    new_nodes = {r["node"] for j, r in replaced.items() if j not in before}
    assert new_nodes and victim["node"] not in new_nodes, (new_nodes, victim)
    assert victim["node"] in state(ladder_workdir)["excluded"]
    failed = [r for r in load.results if r[2] != "ok"]
    # Only requests in flight on the dead replica fail: sent before it was taken out, at most the
    # clients' number, never one sent after.
    assert all(start < t_kill + out_s for start, _, _ in failed) and len(failed) <= 4, failed
    assert [r for r in load.results if r[0] > t_after and r[2] == "ok"], "no request succeeded after the loss"
    assert lost[0]["node"] == victim["node"]
    print(f"node kill: taken out after {out_s:.1f} s, {len(failed)} requests failed, replacement serving "
          f"after {recovery_s:.1f} s on {sorted(new_nodes)}")


def test_scale_and_stop_leave_nothing_behind(deployment, client, sandbox, ladder_workdir):
    assert deployment.returncode == 0
    n = len(serving(ladder_workdir))
    if n > 1:
        run = run_snakemake(sandbox, "deploy_scale", overrides=TWO | DEPLOY | {"deploy": DEPLOY["deploy"] | {
            "replicas": 1}}, workdir=ladder_workdir, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:]
        assert len(serving(ladder_workdir)) == 1
        assert [e for e in events(ladder_workdir) if e["event"] == "scale_requested"]
    router = state(ladder_workdir)["router"]["url"]
    run = run_snakemake(sandbox, "deploy_stop", overrides=TWO | DEPLOY, workdir=ladder_workdir, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert not (ladder_workdir / "results" / "deploy" / "endpoint.json").exists()
    stopped = json.loads((ladder_workdir / "results" / "deploy" / "stopped.json").read_text())
    assert stopped["jobs_left"] == [] and not stopped["router_up"] and not stopped["controller_up"]
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{router}/health", timeout=3)
    assert sandbox.running_jobs().strip() == ""
    assert sandbox.stray_processes() == []
    # Each node's private /dev/shm, through its slurmd (the only process left there); the node killed
    # above is left out: what a SIGKILLed server had there stays until the node is rebooted.
    started = (ladder_workdir / "results" / "deploy" / "config.json").stat().st_mtime
    killed = set(state(ladder_workdir)["excluded"])
    for pid in pids_in_namespaces(sandbox.instance):
        if psutil.Process(pid).cmdline()[-1] in killed:  # slurmd -D -N <node>
            continue
        left = [f for f in Path(f"/proc/{pid}/root/dev/shm").glob("*") if f.stat().st_mtime >= started]
        assert left == [], left
    for f in (ladder_workdir / "results").rglob("*"):
        if f.is_file():
            assert API_KEY.encode() not in f.read_bytes(), f"API key leaked into {f}"
    client_err = None
    try:
        client.completions.create(model="tiny", prompt="x", max_tokens=2)
    except openai.APIConnectionError as err:
        client_err = err
    assert client_err is not None
