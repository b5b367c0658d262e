"""Target deploy: what the ladder validated, kept running as a service.

`start` (rule deploy) starts vllm-router on the submit host and a controller beside it. The
controller submits `deploy.replicas` Slurm jobs, each serving a validated layout on a node group of
its own (deploy.layout: single's, TP = a node's GPUs; or multinode's, TP x PP over nodes with a Ray
cluster inside the job); registers a replica with the router once it is
healthy; takes it out within seconds when its job ends or its /health stops answering (watchdog)
and, with deploy.restart, starts a replacement on the nodes that remain; and moves the replica
count between deploy.min_replicas and max_replicas by queue depth (scaler). `start` returns once
every replica is registered and a request passed through the router. `status`, `scale N` and
`stop` act on the running deployment.

Files, under results/deploy/: endpoint.json (what a client needs, never the key), state.json (the
controller's view; only it writes there), events.jsonl (every replica start, loss, restart and
scaling decision with its reason), replicas/<job>.json (each replica's own account).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import openai

from ladder import raycommand, slurm
from ladder.goodput import tuned_serve_args
from ladder.logs import tail
from ladder.poll import poll, tcp_open
from ladder.raycluster import ClusterError, RayCluster
from ladder.raynode import clean_shm
from ladder.sandbox import pid_alive, spawn, stop_pids
from ladder.verdict import now, read_json, write_json
from ladder.vllmserver import (
    Server,
    ServerError,
    api_key,
    attempt,
    cpu_env,
    healthy,
    prometheus,
    resolve_model,
    serve_args,
)

JOB_NAME = "ladder-replica"
LIVE_JOB = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")
SCRIPTS = Path(__file__).resolve().parents[1]
# vllm-router's policies for one model that `bench --policy` compares (deploy.policy offers these
# but power_of_two, which vllm-router cannot start without 2 workers: config/schema.yaml; not
# sticky_least_loaded: without a session key it sent every request to one replica, measured 2026-12-04).
POLICIES = ("round_robin", "power_of_two", "random", "cache_aware")
METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


class DeployError(RuntimeError):
    pass


class Paths:
    """Where a deployment keeps its files (results/deploy/) and its logs (results/logs/deploy/)."""

    def __init__(self, results: Path) -> None:
        self.results, self.dir, self.logs = results, results / "deploy", results / "logs" / "deploy"
        self.events = self.dir / "events.jsonl"
        self.key = results.parent / ".deploy" / "api_key"  # the key `start` makes (key_of)
        self.state, self.endpoint, self.request, self.config, self.stopped = (
            self.dir / f"{name}.json" for name in ("state", "endpoint", "request", "config", "stopped"))

    def replica(self, job: str) -> Path:
        return self.dir / "replicas" / f"{job}.json"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def metrics(url: str) -> dict[str, float] | None:
    """The queue figures of one vLLM server's /metrics (None when it does not answer)."""
    got = prometheus(url, METRICS)
    return None if got is None else {k.removeprefix("vllm:"): v for k, v in got.items()}


# ---------------------------------------------------------------- replica (inside its Slurm job)

def probed(results: Path) -> dict[str, dict[str, Any]]:
    """node -> what the probe found there (results/probe/nodes.json)."""
    return {n["slurm_node"]: n for n in (read_json(results / "probe" / "nodes.json", {}) or {}).get("nodes", [])}


def bind_address(cfg: dict[str, Any], node: str, results: Path) -> str:
    """The node's address on cluster.network, as the probe chose it (probed live on a node the probe never saw)."""
    nodes = probed(results)
    if node in nodes and (nic := nodes[node].get("network")):
        return str(nic["ip"])
    from ladder import probe

    nic = raycommand.choose_nic({"nics": probe.nics(), "default_route": probe.default_route()},
                                cfg["cluster"]["network"])
    if not nic:
        raise DeployError(f"{node}: no interface matches cluster.network={cfg['cluster']['network']}")
    return nic["ip"]


def replica_layout(results: Path, choice: str) -> dict[str, Any]:
    """The validated layout every replica serves: single's (TP = a node's GPUs) or multinode's (TP x PP
    over nodes through Ray), as their bench.json recorded it. auto: multinode's when single served a
    proxy (the model does not fit one node), else single's (a node per replica, no Ray in the way)."""
    single = (read_json(results / "single" / "bench.json", {}) or {}).get("metadata", {})
    stage = ("multinode" if "proxy" in single else "single") if choice == "auto" else choice
    plan = (read_json(results / stage / "bench.json", {}) or {}).get("metadata", {}).get("plan")
    if not plan:
        raise DeployError(f"deploy.layout={choice}: results/{stage}/bench.json holds no plan (run `all` first)")
    return {"stage": stage, "tensor_parallel_size": plan["tensor_parallel_size"],
            "pipeline_parallel_size": plan["pipeline_parallel_size"], "validated_by": f"results/{stage}/verdict.json"}


def capacity_problem(replicas: int, layout: dict[str, Any], usable: list[str]) -> str | None:
    """Replicas that could never all start: each takes PP nodes of its own (--exclusive)."""
    need = replicas * layout["pipeline_parallel_size"]
    if usable and need > len(usable):
        return (f"deploy.replicas={replicas}: {need} node(s) needed ({layout['pipeline_parallel_size']} per replica), "
                f"the partition has {len(usable)} usable: {', '.join(usable)}")
    return None


def usable_nodes(partition: list[str], unprobed: list[str]) -> list[str]:
    return sorted(set(partition) - set(unprobed))


def ray_cluster(cfg: dict[str, Any], paths: Paths, a: argparse.Namespace, job: str, tp: int) -> RayCluster:
    """Ray over this job's nodes, addressed as the probe chose (the controller only places a
    multi-node replica on probed nodes)."""
    from ladder.multistage import cluster_spec

    nodes, known = slurm.job_nodes(job), probed(paths.results)
    if missing := [n for n in nodes if n not in known]:
        raise DeployError(f"nodes {', '.join(missing)} were not probed (results/probe/nodes.json): no address")
    where = argparse.Namespace(cache=a.cache, log_dir=paths.logs / f"replica-{job}", out_dir=paths.dir / "replicas")
    return RayCluster(cluster_spec(cfg, where, job, nodes, known, tp))


def replica(a: argparse.Namespace) -> int:
    """One replica: `vllm serve` (over a Ray cluster of the job's nodes when PP > 1) until its job is
    cancelled; TERM drains it first."""
    paths, cfg = Paths(a.results), json.loads(a.config.read_text())
    job, node, t0 = slurm.job_id(), socket.gethostname(), time.time()
    report = paths.replica(job)
    # The cores this job may use (Slurm's cpuset, or the sandbox node's): vLLM on CPU binds within them.
    record = {"job": job, "node": node, "state": "starting", "started": now(), "cpus": len(os.sched_getaffinity(0))}
    write_json(report, record)
    stop = {"signal": 0}

    def on_term(signum: int, _frame: Any) -> None:
        stop.update(signal=signum)

    signal.signal(signal.SIGTERM, on_term)
    srv, cluster = None, None
    try:
        host = bind_address(cfg, node, paths.results)
        port = slurm.job_ports(int(job), cfg["ray"]["port_base"], cfg["ray"]["port_range"])["serve"]
        model_path, served = resolve_model(cfg["model"], a.cache.resolve())
        tp, pp = a.tp, a.pp
        env = cpu_env(a.cache.resolve()) if cfg["env"]["flavor"] == "cpu" else {}
        if pp > 1:
            from ladder.multistage import serve_env

            cluster = ray_cluster(cfg, paths, a, job, tp)
            record["nodes"] = cluster.spec.nodes
            write_json(report, record)
            cluster.start()
            record["ray_bringup_s"] = round(cluster.wait(), 1)
            import ray

            # This driver's connection goes (vLLM's own connects next), and with it the SIGTERM handler
            # ray.init installed over ours: the replica must still drain on TERM.
            ray.shutdown()
            signal.signal(signal.SIGTERM, on_term)
            env = serve_env(cluster.spec)
        srv = Server(model_path, served, port, key_of(cfg, paths), paths.logs / f"replica-{job}-{node}.log",
                     args=serve_args(cfg, tp, pp, ray=pp > 1) + tuned_serve_args(paths.results, cfg["tune"])
                     + cfg["deploy"]["extra_args"],
                     env=env, host=host)
        srv.start()
        record |= {"url": srv.base, "log": str(srv.log), "layout": {"tensor_parallel_size": tp,
                                                                      "pipeline_parallel_size": pp}}
        write_json(report, record)
        record["healthy_s"] = round(srv.wait_healthy(cfg["serve"]["health_timeout_s"]), 1)
        write_json(report, record | {"state": "healthy"})
        while not stop["signal"] and srv.proc and srv.proc.poll() is None:
            time.sleep(0.5)
        if stop["signal"]:
            # Slurm's --signal before the wall time, or stop/scale-down: finish what is in flight.
            write_json(report, record | {"state": "draining", "drain_started": now()})
            poll(lambda: (metrics(srv.base) or {}).get("num_requests_running", 0) == 0,
                 cfg["deploy"]["drain_s"], max_delay=1)
            record["state"] = "stopped"
            return 0
        record |= {"state": "failed", "detail": f"vllm serve exited with {srv.proc.returncode if srv.proc else '?'}; "
                                                f"last lines of {srv.log}:\n{tail(srv.log, 15)}"}
        return 1
    except (ServerError, DeployError, ClusterError, OSError) as err:
        record |= {"state": "failed", "detail": str(err)[-3000:]}
        return 1
    finally:
        if srv:
            srv.stop()
        if cluster:
            cluster.stop()
        # What the server left in the node's /dev/shm (the job has the node to itself: --exclusive).
        record["shm_removed"] = clean_shm(t0)
        write_json(report, record | {"finished": now()})


def key_of(cfg: dict[str, Any], paths: Paths) -> str:
    """serve.api_key_file, else the key `start` wrote for this deployment (0600, outside results/)."""
    s = cfg["serve"]
    return api_key(s["api_key_env"], s["api_key_file"] or str(paths.key))


# ---------------------------------------------------------------- controller (watchdog + scaler)

def append_event(paths: Paths, kind: str, **fields: Any) -> None:
    line = json.dumps({"t": now(), "event": kind, **fields})
    with open(paths.events, "a") as fh:
        fh.write(line + "\n")
    print(line, flush=True)


class Controller:
    """Reconciles the replica jobs with the target count; the only writer of state.json and events."""

    def __init__(self, paths: Paths, cfg: dict[str, Any]) -> None:
        self.paths, self.cfg, self.d = paths, cfg, cfg["deploy"]
        self.state: dict[str, Any] = read_json(paths.state)
        self.busy_since: float | None = None  # first sample of the queue the scaler is watching
        self.queue: list[tuple[float, float]] = []  # (time, requests waiting per replica) of the last scale_up_after_s
        self.idle_since = time.monotonic()
        self.running = True
        self.event = functools.partial(append_event, paths)  # event(kind, **fields): events.jsonl and stdout

    @property
    def replicas(self) -> dict[str, dict[str, Any]]:
        return self.state["replicas"]

    def router(self, action: str, url: str) -> int:
        r = httpx2.post(f"{self.state['router']['url']}/{action}", params={"url": url}, timeout=30)
        return r.status_code

    def sbatch(self) -> str:
        c, d = self.cfg["cluster"], self.d
        # A node of its own, all of it: on unequal nodes each replica gets what its node has.
        lay = self.state["layout"]
        cmd = ["sbatch", "--parsable", f"--job-name={JOB_NAME}", f"--nodes={lay['pipeline_parallel_size']}",
               "--ntasks-per-node=1", "--exclusive", f"--mem={c['mem_mb_per_node']}",
               f"--time={d['wall_time_min']}", f"--signal=B:TERM@{d['drain_s'] + 10}",
               f"--output={self.paths.logs / 'slurm-%j.log'}", f"--chdir={self.paths.results.parent}"]
        cmd += [f"--{key}={c[key]}" for key in ("partition", "account", "qos", "constraint", "reservation") if c[key]]
        if c["gpus_per_node"]:
            cmd.append(f"--gres={slurm.gres(c)}")
        if avoid := sorted(set(self.state["excluded"]) | set(self.state["unprobed"])):
            cmd.append(f"--exclude={','.join(avoid)}")
        cmd.append(f"--wrap=exec env PYTHONPATH={SCRIPTS} {sys.executable} -m ladder.deploy"
                   f" --results {self.paths.results} replica --config {self.paths.config}"
                   f" --cache {self.state['cache']} --tp {lay['tensor_parallel_size']}"
                   f" --pp {lay['pipeline_parallel_size']}")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise DeployError(f"sbatch refused a replica: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def jobs(self) -> dict[str, str]:
        """job -> Slurm state, for the replicas Slurm still knows."""
        ids = ",".join(self.replicas)
        if not ids:
            return {}
        out = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
        return dict(ln.split() for ln in out.stdout.splitlines() if ln.strip())

    def add(self, reason: str) -> None:
        job = self.sbatch()
        self.replicas[job] = {"state": "submitted", "node": "", "url": "", "submitted": time.time(),
                              "failures": 0, "reason": reason}
        self.event("replica_submitted", job=job, reason=reason)

    def take_out(self, job: str, state: str, why: str) -> None:
        r = self.replicas[job]
        if r.get("url") and r["state"] == "serving":
            with contextlib.suppress(httpx2.TransportError):
                self.router("remove_worker", r["url"])
        r["state"] = state
        self.event(f"replica_{state}", job=job, node=r["node"], reason=why)
        if state == "lost":
            subprocess.run(["scancel", job], capture_output=True, timeout=30)
            if r["node"] and r["node"] not in self.state["excluded"]:
                self.state["excluded"].append(r["node"])

    def watch(self) -> None:
        """Watchdog: register healthy replicas, take out ended or unresponsive ones."""
        jobs = self.jobs()
        for job, r in list(self.replicas.items()):
            if r["state"] in ("lost", "stopped", "failed"):
                continue
            own = read_json(self.paths.replica(job), {})
            r["node"], r["nodes"] = own.get("node", r["node"]), own.get("nodes", r.get("nodes", []))
            slurm_state = jobs.get(job, "ENDED")
            if slurm_state not in LIVE_JOB:
                if r["state"] == "draining":
                    r["state"] = "stopped"
                    self.event("replica_stopped", job=job, node=r["node"])
                else:
                    why = own.get("detail") or f"its Slurm job ended ({slurm_state})"
                    self.take_out(job, "lost" if r["state"] == "serving" else "failed", why[-600:])
                continue
            if own.get("state") == "failed":
                self.take_out(job, "lost" if r["state"] == "serving" else "failed", own.get("detail", "")[-600:])
            elif own.get("state") == "draining" and r["state"] == "serving":
                self.take_out(job, "draining", "its job is draining (wall time near, or cancelled)")
            elif r["state"] == "submitted" and own.get("state") == "healthy":
                r["url"] = own["url"]
                status = self.router("add_worker", r["url"])
                if status == 200:
                    r |= {"state": "serving", "registered": time.time()}
                    self.event("replica_serving", job=job, node=r["node"], url=r["url"],
                               seconds_from_submit=round(r["registered"] - r["submitted"], 1))
                else:
                    self.event("router_refused", job=job, status=status)
            elif r["state"] == "serving":
                r["failures"] = 0 if healthy(r["url"], timeout=3) else r["failures"] + 1
                if r["failures"] >= self.d["health_failures"]:
                    self.take_out(job, "lost", f"/health failed {r['failures']} times in a row")

    def scale(self, loads: list[dict[str, float]]) -> None:
        """Scaler: a queue of deploy.scale_up_waiting per replica or more (the mean of the samples over
        scale_up_after_s) for scale_up_after_s adds one;
        no request at all for scale_down_idle_s removes one; always within [min_replicas, max_replicas]."""
        t, target = time.monotonic(), self.state["target"]
        request = read_json(self.paths.request)
        if request and request.get("id") != self.state.get("request_id"):
            self.state["request_id"] = request["id"]
            self.state["target"] = request["replicas"]
            self.event("scale_requested", replicas=request["replicas"], was=target, reason="ladder.deploy scale")
            return
        serving = sum(r["state"] == "serving" for r in self.replicas.values())
        self.state["load"] = {"sampled": len(loads), "serving": serving}  # a replica's /metrics may not answer
        if not loads:
            return
        waiting = sum(m["num_requests_waiting"] for m in loads) / len(loads)
        busy = sum(m["num_requests_running"] + m["num_requests_waiting"] for m in loads)
        # The queue's mean over the window, not every sample: the gauge dips each time a request ends
        # and its client has not sent the next one yet.
        after = self.d["scale_up_after_s"]
        self.queue = [(ts, w) for ts, w in self.queue if t - ts < after] + [(t, waiting)]
        mean = sum(w for _, w in self.queue) / len(self.queue)
        self.busy_since = (self.busy_since or t) if mean >= self.d["scale_up_waiting"] else None
        self.state["load"] |= {"waiting_per_replica": round(waiting, 2), "window_mean": round(mean, 2)}
        self.idle_since = self.idle_since if busy == 0 else t
        starting = any(r["state"] == "submitted" for r in self.replicas.values())
        if (self.busy_since and t - self.busy_since >= after and target < self.d["max_replicas"]
                and not starting):  # one at a time: a replica still starting (or pending) counts as added
            self.state["target"] = target + 1
            self.event("scale_up", replicas=target + 1, reason=f"{mean:.1f} requests waiting per replica "
                       f"(mean of {len(self.queue)} samples) >= {self.d['scale_up_waiting']} for "
                       f"{t - self.busy_since:.0f} s")
            self.busy_since, self.queue = None, []
        elif t - self.idle_since >= self.d["scale_down_idle_s"] and target > self.d["min_replicas"]:
            self.state["target"] = target - 1
            self.event("scale_down", replicas=target - 1, reason=f"no request for {t - self.idle_since:.0f} s")
            self.idle_since = t

    def reconcile(self) -> None:
        """Start or drain replicas until as many are up (or coming) as the target says."""
        up = [j for j, r in self.replicas.items() if r["state"] in ("submitted", "serving")]
        lost = sum(r["state"] == "lost" for r in self.replicas.values())
        target = self.state["target"] if self.d["restart"] else self.state["target"] - lost
        for _ in range(target - len(up)):
            self.add("restart" if lost else "target")
        for job in sorted(up, key=int, reverse=True)[: max(len(up) - max(target, 0), 0)]:
            self.take_out(job, "draining", f"target is {target} replicas")
            subprocess.run(["scancel", "--batch", "--signal=TERM", job], capture_output=True, timeout=30)

    def loop(self) -> None:
        signal.signal(signal.SIGTERM, lambda s, f: setattr(self, "running", False))
        self.state["controller_pid"] = os.getpid()
        while self.running:
            try:
                self.watch()
                serving = [r["url"] for r in self.replicas.values() if r["state"] == "serving"]
                self.scale([m for u in serving if (m := metrics(u)) is not None])
                self.reconcile()
            except (DeployError, httpx2.TransportError, subprocess.TimeoutExpired, OSError) as err:
                self.event("controller_error", reason=str(err)[-600:])
            self.state["updated"] = now()
            write_json(self.paths.state, self.state)
            time.sleep(self.d["poll_s"])


# ---------------------------------------------------------------- start / status / scale / stop

def router_cmd(d: dict[str, Any], host: str, port: int, prom: int, policy: str, workers: list[str] = ()) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "vllm-router"), "--host", host, "--port", str(port), "--policy", policy,
           "--prometheus-host", host, "--prometheus-port", str(prom),
           "--health-check-interval-secs", str(d["health_interval_s"]),
           "--health-failure-threshold", str(d["health_failures"]), "--log-level", "warning",
           "--balance-abs-threshold", str(d["balance_abs_threshold"]),
           "--balance-rel-threshold", str(d["balance_rel_threshold"])]
    return cmd + (["--worker-urls", *workers] if workers else [])


def wait_router(host: str, port: int, pid: int, log: Path) -> None:
    if not poll(lambda: tcp_open(host, port) or not pid_alive(pid), 30) or not pid_alive(pid):
        raise DeployError(f"vllm-router did not listen on {host}:{port}; last lines of {log}:\n{tail(log)}")


def start(a: argparse.Namespace) -> int:
    paths, cfg = Paths(a.results), json.loads(a.config.read_text())
    d = cfg["deploy"]
    old = read_json(paths.state)
    if old and pid_alive(old.get("controller_pid")):
        raise DeployError(f"a deployment is running (controller pid {old['controller_pid']}): "
                          "`python -m ladder.deploy stop` first")
    layout = replica_layout(paths.results, d["layout"])
    # A replica over several nodes is addressed as the probe found them: only probed nodes for it.
    partition = slurm.partition_nodes(cfg["cluster"]["partition"])
    unprobed = sorted(set(partition) - set(probed(paths.results))) if layout["pipeline_parallel_size"] > 1 else []
    if problem := capacity_problem(d["replicas"], layout, usable_nodes(partition, unprobed)):
        raise DeployError(problem)  # before the router or any job
    for f in (paths.state, paths.events, paths.request, paths.stopped):
        f.unlink(missing_ok=True)
    paths.dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.config, cfg)
    if not cfg["serve"]["api_key_file"]:
        # Replicas read the key from a file only the user can read, never from results/ or argv.
        paths.key.parent.mkdir(mode=0o700, exist_ok=True)
        paths.key.touch(mode=0o600)
        paths.key.chmod(0o600)
        paths.key.write_text(api_key(cfg["serve"]["api_key_env"], None))
    key = key_of(cfg, paths)
    host = d["router_host"]
    port, prom = d["router_port"] or free_port(host), free_port(host)
    router_log = paths.logs / "router.log"
    pid = spawn(router_cmd(d, host, port, prom, d["policy"]), router_log)
    state = {"router": {"url": f"http://{host}:{port}", "pid": pid, "metrics_port": prom, "log": str(router_log),
                        "policy": d["policy"]},
             "target": d["replicas"], "replicas": {}, "excluded": [], "unprobed": unprobed, "layout": layout,
             "cache": str(a.cache.resolve()),
             "started": now(), "config_hash": a.config_hash}
    write_json(paths.state, state)
    wait_router(host, port, pid, router_log)
    controller = spawn([sys.executable, "-m", "ladder.deploy", "--results", str(paths.results), "controller"],
                       paths.logs / "controller.log")
    t0 = time.monotonic()

    def ready() -> bool:
        s = read_json(paths.state, {})
        if not pid_alive(controller):
            raise DeployError(f"the controller exited; last lines of {paths.logs / 'controller.log'}:\n"
                              f"{tail(paths.logs / 'controller.log')}")
        states = [r["state"] for r in s.get("replicas", {}).values()]
        if "failed" in states:
            raise DeployError("a replica failed to start:\n" + replica_diagnosis(paths, s))
        return states.count("serving") >= d["replicas"]

    try:
        if not poll(ready, d["start_timeout_s"], max_delay=2):
            raise DeployError(f"not every replica served within {d['start_timeout_s']} s (deploy.start_timeout_s):\n"
                              + replica_diagnosis(paths, read_json(paths.state, {})))
        smoke_through_router(state["router"]["url"], key, cfg)
    except (DeployError, ServerError) as err:
        print(f"deploy failed: {err}", file=sys.stderr, flush=True)
        stop(paths)
        return 1
    s = read_json(paths.state)
    write_json(a.out, {
        "url": f"{state['router']['url']}/v1", "model": cfg["model"]["name"], "policy": d["policy"],
        "api_key": f"from {cfg['serve']['api_key_file'] or paths.key}",
        "replicas": [{"job": j, "node": r["node"], "nodes": r.get("nodes", [r["node"]]), "url": r["url"]}
                     for j, r in s["replicas"].items()
                     if r["state"] == "serving"],
        "layout": layout | {"tuned_args": tuned_serve_args(a.results, cfg["tune"])},
        "started": state["started"], "ready_s": round(time.monotonic() - t0, 1),
        "metrics": f"http://{host}:{prom}/metrics",
        "stop": "python -m ladder.deploy stop (or: snakemake --profile <profile> deploy_stop)"})
    print(f"deployed: {state['router']['url']}/v1 with {d['replicas']} replicas", flush=True)
    return 0


def replica_diagnosis(paths: Paths, state: dict[str, Any]) -> str:
    lines = []
    for job, r in state.get("replicas", {}).items():
        own = read_json(paths.replica(job), {})
        lines.append(f"  job {job} on {r.get('node') or '?'}: {r['state']}; {own.get('detail', '')[-1200:]}")
        if own.get("log"):
            lines.append(tail(Path(own["log"]), 10))
    return "\n".join(lines) or "  no replica was submitted"


def smoke_through_router(url: str, key: str, cfg: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    model = cfg["model"]["name"]  # the served name (resolve_model)
    status, r = attempt(lambda: client.completions.create(model=model, prompt="Hello", max_tokens=8))
    if status != 200 or not r.choices[0].text:
        raise DeployError(f"smoke completion through the router failed ({status}): {str(r)[:300]}")
    status, chunks = attempt(lambda: [c for c in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True)])
    if status != 200 or len(chunks) < 2:
        raise DeployError(f"smoke streaming chat through the router failed ({status}): {str(chunks)[:300]}")


def status(paths: Paths) -> dict[str, Any]:
    s = read_json(paths.state)
    if not s:
        raise DeployError(f"no deployment: {paths.state} does not exist")
    rows = []
    for job, r in s["replicas"].items():
        if r["state"] in ("stopped",):
            continue
        row = {"job": job, "node": r["node"], "state": r["state"], "url": r["url"]}
        if r["state"] == "serving":
            row |= {"healthy": healthy(r["url"], timeout=3)} | (metrics(r["url"]) or {})
        rows.append(row)
    return {"router": s["router"]["url"], "router_up": pid_alive(s["router"]["pid"]),
            "controller_up": pid_alive(s.get("controller_pid")), "target": s["target"],
            "serving": sum(r["state"] == "serving" for r in rows), "degraded": bool(s["excluded"]),
            "excluded_nodes": s["excluded"], "replicas": rows}


def scale(paths: Paths, n: int, timeout: float) -> dict[str, Any]:
    s = read_json(paths.state)
    if not s or not pid_alive(s.get("controller_pid")):
        raise DeployError("no running deployment to scale")
    cfg = read_json(paths.config)
    d = cfg["deploy"]
    if not d["min_replicas"] <= n <= d["max_replicas"]:
        raise DeployError(f"scale {n}: outside deploy.min_replicas..max_replicas "
                          f"({d['min_replicas']}..{d['max_replicas']})")
    partition = slurm.partition_nodes(cfg["cluster"]["partition"])
    if problem := capacity_problem(n, s["layout"], usable_nodes(partition, s["unprobed"])):
        raise DeployError(problem)
    write_json(paths.request, {"id": time.time_ns(), "replicas": n})

    def done() -> bool:
        return sum(r["state"] == "serving" for r in read_json(paths.state)["replicas"].values()) == n

    if not poll(done, timeout, max_delay=2):
        raise DeployError(f"not {n} replicas serving after {timeout:.0f} s:\n"
                          + replica_diagnosis(paths, read_json(paths.state)))
    return status(paths)


def stop(paths: Paths) -> dict[str, Any]:
    """Controller first (no restart behind our back), then drain and cancel every replica, then the router."""
    s = read_json(paths.state)
    if not s:
        raise DeployError(f"no deployment: {paths.state} does not exist")
    stop_pids([s["controller_pid"]] if s.get("controller_pid") else [], grace=20)
    s = read_json(paths.state)
    cfg = read_json(paths.config)
    jobs = [j for j, r in s["replicas"].items() if r["state"] not in ("stopped", "lost", "failed")]
    for j in jobs:
        if (url := s["replicas"][j]["url"]) and s["replicas"][j]["state"] == "serving":
            with contextlib.suppress(httpx2.TransportError):
                httpx2.post(f"{s['router']['url']}/remove_worker", params={"url": url}, timeout=30)

    def queued() -> list[str]:
        return subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i"], capture_output=True, text=True,
                              timeout=30).stdout.split() if jobs else []

    if jobs:
        # TERM to the replica's own process: it lets in-flight requests finish (deploy.drain_s).
        subprocess.run(["scancel", "--batch", "--signal=TERM", *jobs], capture_output=True, timeout=30)
        # Draining, then the server's and (multi-node replicas) Ray's own shutdown (Server.stop's and
        # RayCluster.stop's graces) before the jobs are cancelled outright.
        if not poll(lambda: not queued(), cfg["deploy"]["drain_s"] + 90, max_delay=1):
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
            poll(lambda: not queued(), 60, max_delay=1)
    stop_pids([s["router"]["pid"]], grace=20)
    left = queued()
    result = {"stopped": now(), "replicas_stopped": jobs, "jobs_left": left,
              "router_up": pid_alive(s["router"]["pid"]), "controller_up": pid_alive(s.get("controller_pid"))}
    for j in jobs:
        s["replicas"][j]["state"] = "stopped"
    s["stopped"] = result["stopped"]
    write_json(paths.state, s)
    append_event(paths, "deployment_stopped", reason=f"ladder.deploy stop: {len(jobs)} replica(s) drained")
    write_json(paths.stopped, result)
    paths.endpoint.unlink(missing_ok=True)
    if left or result["router_up"] or result["controller_up"]:
        raise DeployError(f"stop left something running: {result}")
    return result


def bench(paths: Paths, cache: Path, timeout: float, policies: list[str]) -> dict[str, Any]:
    """`vllm bench serve` (the bench section's levels, goodput under tune.slo) through the router with
    1 replica, then 2 on separate nodes, then the 2 behind a router of each of `policies` (one of its
    own per policy, same replicas; the policies twice, in mirrored order, so drift over the run favours
    none), in one run; results/deploy/bench.json with the ratios, the goodput per policy, metadata."""
    from ladder.bench import metadata, ratios, run_sweep
    from ladder.goodput import slo_args

    cfg, state = read_json(paths.config), read_json(paths.state)
    d = cfg["deploy"]
    model_path, served = resolve_model(cfg["model"], cache.resolve())
    key, slo = key_of(cfg, paths), slo_args(cfg["tune"]["slo"])
    sweeps: list[str] = []

    def sweep(url: str, name: str) -> dict[str, Any]:
        # Fresh prompts per sweep: a later sweep must not hit what an earlier one left in a prefix cache.
        sweeps.append(name)
        workload = cfg["bench"] | {"seed": cfg["bench"]["seed"] + 1000 * len(sweeps)}
        try:
            return run_sweep(url, served, model_path, workload, key, paths.dir / "bench-raw" / name,
                             paths.logs / "bench.log", goodput=slo)[0]  # a router: no vLLM /metrics of its own
        except RuntimeError as err:
            raise DeployError(str(err)) from None

    results, nodes = {}, {}
    for n in (1, 2):
        scale(paths, n, timeout)
        serving = {j: r for j, r in read_json(paths.state)["replicas"].items() if r["state"] == "serving"}
        nodes[n] = sorted(r["node"] for r in serving.values())
        results[str(n)] = sweep(state["router"]["url"], f"replicas{n}")
    top = f"c{max(cfg['bench']['concurrency'])}"
    by_policy: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for policy in policies + policies[::-1]:
        host = d["router_host"]
        port, prom = free_port(host), free_port(host)
        log = paths.logs / f"router-bench-{policy}.log"
        pid = spawn(router_cmd(d, host, port, prom, policy, [r["url"] for r in serving.values()]), log)
        try:
            wait_router(host, port, pid, log)
            by_policy[policy].append(sweep(f"http://{host}:{port}", f"policy-{policy}-{len(by_policy[policy]) + 1}"))
        finally:
            stop_pids([pid], 10)
    by_level = ratios(results["2"], results["1"])
    versions = read_json(paths.results / "env" / "versions.json", {})
    meta = metadata(cfg, versions, sorted(set(nodes[1] + nodes[2])), {"replicas": [1, 2]}, state["config_hash"], served)
    cpus = {r["node"]: read_json(paths.replica(j), {}).get("cpus") for j, r in serving.items()}
    goodput = {p: round(sum(r[top]["request_goodput"] or 0 for r in runs) / len(runs), 3)
               for p, runs in by_policy.items()}
    out = {"metadata": meta | {"replica_nodes": nodes, "replica_cpus": cpus, "policy": d["policy"], "slo": slo,
                               "sweeps": sweeps},
           "results": results, "ratios_2_over_1": by_level,
           "ratio_2_over_1": by_level.get(top, {}).get("output_throughput"),
           "policies": by_policy, "goodput_by_policy": goodput,
           "best_policy": max(goodput, key=lambda p: goodput[p]) if goodput else None,
           "note": f"goodput: req/s meeting {' '.join(slo)} at {top}, mean of each policy's two sweeps; replicas on "
                   "separate nodes" + (" of one machine sharing its cores: the ratio shows the router's overhead, not "
                                       "two machines' capacity" if cfg["env"]["flavor"] == "cpu" else "")}
    write_json(paths.dir / "bench.json", out)
    return {k: out[k] for k in ("ratio_2_over_1", "goodput_by_policy", "best_policy")} | {"nodes": nodes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start", help="router, controller and replicas; returns once all serve (rule deploy)")
    p.add_argument("--config", type=Path, required=True, help="results/.config/deploy.json")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="endpoint.json")
    p.add_argument("--config-hash", default="")
    p = sub.add_parser("replica", help="(inside a replica's Slurm job)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    sub.add_parser("controller", help="(started by start) watchdog and scaler")
    sub.add_parser("status", help="per-replica health, load and queue (JSON)")
    p = sub.add_parser("scale", help="set the replica count and wait until that many serve")
    p.add_argument("replicas", type=int)
    p.add_argument("--timeout", type=float, default=900)
    sub.add_parser("stop", help="drain and cancel every replica, stop the router and the controller")
    p = sub.add_parser("bench", help="vllm bench serve through the router, 1 replica then 2, then 2 behind a "
                                     "router of each --policy (deploy/bench.json)")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--policy", action="append", default=[], choices=POLICIES, dest="policies",
                   help="also measure the 2 replicas behind this router policy (repeatable)")
    p.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args(argv)
    a.results = a.results.resolve()
    paths = Paths(a.results)
    try:
        if a.cmd == "start":
            return start(a)
        if a.cmd == "replica":
            return replica(a)
        if a.cmd == "controller":
            Controller(paths, read_json(paths.config)).loop()
            return 0
        result = {"status": lambda: status(paths), "scale": lambda: scale(paths, a.replicas, a.timeout),
                  "stop": lambda: stop(paths), "bench": lambda: bench(paths, a.cache, a.timeout, a.policies)}[a.cmd]()
        print(json.dumps(result, indent=1))
        return 0
    except DeployError as err:
        print(f"ladder.deploy {a.cmd}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
