"""Stage multinode: vLLM on the Ray backend across nodes (TP inside a node, PP across).

Plan -> Ray cluster (ladder.raycluster) -> placement precheck -> `vllm serve
--distributed-executor-backend ray` on the head node -> every pipeline rank on its own
node -> end-to-end suite (outputs must equal the single stage's) -> the same bench as
single -> scaling ratios.  Everything it started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ladder import slurm
from ladder.bench import ratios, run_sweep
from ladder.e2e import run_suite, soak
from ladder.logs import shorten
from ladder.plan import PlanError, make_plan, model_shape
from ladder.raycluster import ClusterError, RayCluster, Spec, addresses_from_probe
from ladder.raystage import check_nodes, check_tasks
from ladder.singlestage import metadata, perf_checks
from ladder.verdict import Verdict, require_gate, stage_parser, write_json
from ladder.vllmserver import Server, ServerError, api_key, cpu_env, last_run, resolve_model, serve_args

_WORKER = re.compile(r"\(RayWorker\w* pid=\d+(?:, ip=([0-9.]+))?\)")
_PP_RANK = re.compile(r"in world size (\d+) is assigned as .*\bPP rank (\d+)")


def port_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def precheck(v: Verdict, cluster: RayCluster, probe: dict[str, dict[str, Any]], tp: int, pp: int,
             ports: dict[str, int]) -> bool:
    """Placement checks before vLLM starts: the most reported multi-node failures, named."""
    joined = cluster.alive_nodes()
    spec = cluster.spec
    for node in spec.nodes[:pp]:
        res = joined.get(node, {}).get("Resources", {})
        have = res.get("GPU", 0) if spec.gpus else res.get("ladder_cpu_slot", 0)
        what = "GPUs" if spec.gpus else "CPU worker slots"
        v.check(f"precheck:{node}:{what.split()[0].lower()}_for_tp", have >= tp, have, f">= {tp}", what)
        nic = next((n for n in probe[node]["nics"] if n["name"] == spec.ifaces[node]), None)
        v.check(f"precheck:{node}:ip_on_interface", bool(nic and spec.addrs[node] in nic["ipv4"]),
                spec.addrs[node], f"an address of {spec.ifaces[node]}",
                detail="GLOO/NCCL_SOCKET_IFNAME must carry the Ray IP")
    for name in ("serve", "vllm"):
        v.check(f"precheck:port_{name}_free", port_free("127.0.0.1", ports[name]) and
                port_free(spec.addrs[spec.head], ports[name]), ports[name], "free")
    return not v.failed


def pipeline_placement(log: Path, addrs: dict[str, str], head: str, world: int) -> dict[int, str]:
    """PP rank -> node, from vLLM's rank assignment lines in the server log.

    Ray prefixes a worker's output with ``(RayWorkerProc pid=…, ip=…)``; the ip is left
    out for workers on the driver's own node (the head).
    """
    by_ip = {ip: n for n, ip in addrs.items()}
    placement = {}
    for line in last_run(log):
        m = _WORKER.search(line)
        r = _PP_RANK.search(line)
        # Only this start's world: after a restart Ray may still forward lines of the old workers.
        if m and r and int(r.group(1)) == world:
            placement[int(r.group(2))] = by_ip.get(m.group(1), m.group(1)) if m.group(1) else head
    return dict(sorted(placement.items()))


def lost_nodes(cluster: RayCluster, pipeline: list[str]) -> list[str]:
    """Pipeline nodes Ray no longer sees alive (after a failure under load)."""
    import ray

    try:
        if not ray.is_initialized():
            spec = cluster.spec
            ray.init(address=spec.address, _node_ip_address=spec.addrs[spec.head], logging_level="warning",
                     log_to_driver=False)
        deadline = time.monotonic() + 60  # Ray marks a node dead after its health checks fail
        while time.monotonic() < deadline:
            alive = cluster.alive_nodes()
            lost = [n for n in pipeline if n not in alive]
            if lost:
                return lost
            time.sleep(2)
        return []
    finally:
        ray.shutdown()


class Service:
    """One start of the multi-node service and everything run against it."""

    def __init__(self, cfg: dict[str, Any], a: argparse.Namespace, cluster: RayCluster, model_path: str,
                 served: str, key: str, vllm_env: dict[str, str], versions: dict[str, Any]) -> None:
        self.cfg, self.a, self.cluster = cfg, a, cluster
        self.model_path, self.served, self.key = model_path, served, key
        self.vllm_env, self.versions = vllm_env, versions
        self.srv: Server | None = None
        self.first_check = 0

    def run(self, v: Verdict, tp: int, pipeline: list[str], attempt: int = 1) -> Server:
        cfg, a, spec = self.cfg, self.a, self.cluster.spec
        pp = len(pipeline)
        self.first_check = len(v.checks)
        head = spec.head
        # RAY_DEDUP_LOGS=0: Ray folds look-alike worker lines ("[repeated 2x across cluster]"),
        # which hides the rank assignments the placement check reads.
        env = self.vllm_env | {"RAY_ADDRESS": spec.address, "VLLM_HOST_IP": spec.addrs[head], "RAY_DEDUP_LOGS": "0",
                               "GLOO_SOCKET_IFNAME": spec.ifaces[head], "NCCL_SOCKET_IFNAME": spec.ifaces[head]}
        self.srv = srv = Server(self.model_path, self.served, spec.ports["serve"], self.key,
                                a.log_dir / head / "vllm-serve.log", args=serve_args(cfg, tp, pp, ray=True), env=env)
        srv.start()
        healthy = srv.wait_healthy(cfg["serve"]["health_timeout_s"])
        v.metrics["time_to_healthy_s" if attempt == 1 else f"time_to_healthy_s_attempt{attempt}"] = round(healthy, 1)
        v.check("healthy", True, round(healthy, 1), f"< {cfg['serve']['health_timeout_s']}", "s",
                detail=f"attempt {attempt}, PP={pp} on {', '.join(pipeline)}")
        placed = pipeline_placement(srv.log, spec.addrs, head, world=tp * pp)
        v.check("pipeline_rank_per_node", sorted(placed) == list(range(pp)) and set(placed.values()) == set(pipeline),
                placed, f"{pp} PP ranks on {', '.join(pipeline)}",
                detail="from vLLM's rank assignment lines, prefixed by Ray with each worker's node IP")
        reference = json.loads((a.results / "single" / "outputs.json").read_text())["outputs"]
        e2e = run_suite(v, srv, reference)
        write_json(a.out_dir / "e2e.json", e2e | {"attempt": attempt, "pipeline": pipeline})
        results = run_sweep(srv.base, self.served, self.model_path, cfg["bench"], self.key, a.out_dir / "raw",
                            a.log_dir / head / "bench.log")
        meta = metadata(cfg, self.versions, pipeline, {"tensor_parallel_size": tp, "pipeline_parallel_size": pp},
                        a.config_hash, self.served)
        write_json(a.out_dir / "bench.json", {"metadata": meta, "results": results})
        perf_checks(v, "multinode", results, cfg["references"].get(cfg["cluster"]["name"], {}))
        if cfg["bench"]["soak_s"]:
            write_json(a.out_dir / "soak.json", soak(v, srv, cfg["bench"]["soak_s"], cfg["bench"]["soak_clients"]))
        single = json.loads((a.results / "single" / "bench.json").read_text())
        write_json(a.out_dir / "scaling.json", {
            "single": {"plan": single["metadata"]["plan"], "nodes": single["metadata"]["nodes"]},
            "multinode": {"plan": meta["plan"], "nodes": meta["nodes"]},
            "ratios_multinode_over_single": ratios(results, single["results"]),
            "note": "ratios of runs with identical bench settings; >1 throughput = faster multinode"})
        return srv


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser(__doc__, serving=True)
    a = ap.parse_args(argv)
    require_gate(a.gate)
    cfg = json.loads(a.config.read_text())
    v = Verdict("multinode", config_hash=a.config_hash)
    job = slurm.job_id()
    nodes = slurm.job_nodes(job)
    v.nodes = nodes
    if len(nodes) < cfg["cluster"]["nodes"]:
        v.degraded_reason = (f"ran on {len(nodes)} of {cfg['cluster']['nodes']} nodes; the pipeline shrank to fit "
                             "(faults.allow_degraded)")
    versions = json.loads((a.results / "env" / "versions.json").read_text())
    v.versions = {k: versions["versions"].get(k, "") for k in ("vllm", "torch", "ray")}
    gpus = cfg["cluster"]["gpus_per_node"]
    parallel = dict(cfg["parallel"])
    if cfg["faults"]["allow_degraded"] and isinstance(parallel["pipeline_parallel_size"], int):
        parallel["pipeline_parallel_size"] = min(parallel["pipeline_parallel_size"], len(nodes))
    try:
        plan = make_plan(parallel, len(nodes), gpus, model_shape(cfg["model"]))
    except PlanError as err:
        v.check("plan", False, None, "a valid plan", detail=str(err))
        return v.finish(a.out_dir / "verdict.json")
    print(f"[multinode] plan: {plan.describe()}", flush=True)
    v.check("plan", True, plan.describe())
    tp, pp = plan.tensor_parallel_size, plan.pipeline_parallel_size
    probe = {n["slurm_node"]: n for n in json.loads((a.results / "probe" / "nodes.json").read_text())["nodes"]}
    addrs, ifaces = addresses_from_probe([probe[n] for n in nodes if n in probe])
    ports = slurm.job_ports(int(job), cfg["ray"]["port_base"], cfg["ray"]["port_range"])
    cache = a.cache.resolve()
    vllm_env = {"VLLM_PORT": str(ports["vllm"])}
    if cfg["env"]["flavor"] == "cpu":
        # The platform plugin (ladder.vllm_plugin) enables the Ray executor on CPU.
        vllm_env |= cpu_env(cache) | {"LADDER_CPU_RAY": "1"}
    spec = Spec(job=job, nodes=nodes, addrs=addrs, ifaces=ifaces, ports=ports, cpus=cfg["cluster"]["cpus_per_node"],
                gpus=gpus, object_store_mb=cfg["ray"]["object_store_mb"], log_dir=str(a.log_dir / "ray"),
                join_timeout_s=cfg["ray"]["join_timeout_s"], env=vllm_env, slots=tp,
                monitor_dir=str(a.out_dir / "monitor"), monitor_interval_s=cfg["monitor"]["interval_s"])
    cluster = RayCluster(spec)
    ctx: Service | None = None
    try:
        model_path, served = resolve_model(cfg["model"], cache)
        key = api_key(cfg["serve"]["api_key_env"], cfg["serve"]["api_key_file"])
        cluster.start()
        try:
            v.metrics["ray_bringup_s"] = round(cluster.wait(), 2)
        except ClusterError as err:
            v.check("ray_nodes_joined", False, None, len(nodes), detail=str(err))
            return v.finish(a.out_dir / "verdict.json")
        ids = check_nodes(v, cluster, probe, spec.cpus)
        check_tasks(v, ids, addrs)
        if not precheck(v, cluster, probe, tp, pp, ports):
            return v.finish(a.out_dir / "verdict.json")
        import ray

        ray.shutdown()  # the driver's connection; vLLM's own driver connects next
        ctx = Service(cfg, a, cluster, model_path, served, key, vllm_env, versions)
        pipeline = nodes[:pp]
        err: Exception | None = None
        try:
            ctx.run(v, tp, pipeline)
        except (ServerError, RuntimeError, OSError) as e:
            err = e
        failed_now = err or any(c.ok is False for c in v.checks[ctx.first_check:])
        lost = lost_nodes(cluster, pipeline) if failed_now and cfg["faults"]["allow_degraded"] else []
        if lost and len(pipeline) > len(lost):
            # A node of the pipeline died under load: what failed with it is recorded, not
            # counted, and the service comes back on the nodes that are left.
            for c in v.checks[ctx.first_check:]:
                if c.ok is False:
                    c.ok, c.detail = None, f"[lost with node {', '.join(lost)}] {c.detail}"
            v.check("node_lost", None, lost, detail=str(err or "requests failed")[:300])
            (a.out_dir / "failed_nodes.txt").write_text("\n".join(lost) + "\n")
            v.degraded_reason = (f"node(s) {', '.join(lost)} died while the service ran; restarted with "
                                 f"PP={len(pipeline) - len(lost)} on the remaining nodes")
            if ctx.srv:
                ctx.srv.stop()
            ctx.run(v, tp, [n for n in pipeline if n not in lost], attempt=2)
        elif err:
            raise err
    except (ServerError, RuntimeError, OSError) as err:
        v.check("serve", False, None, "a healthy multi-node service", detail=shorten(str(err)))
        print(str(err), file=sys.stderr, flush=True)
    finally:
        if ctx and ctx.srv:
            ctx.srv.stop()
        cluster.stop()
    return v.finish(a.out_dir / "verdict.json")


if __name__ == "__main__":
    sys.exit(main())
