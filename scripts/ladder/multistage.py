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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ladder import slurm
from ladder.bench import metadata, ratios, run_sweep
from ladder.e2e import run_suite, soak
from ladder.goodput import tuned_serve_args
from ladder.logs import last_run, shorten
from ladder.plan import PlanError, make_plan, model_shape
from ladder.poll import poll
from ladder.raycluster import ClusterError, RayCluster, Spec, job_spec
from ladder.raystage import check_nodes, check_tasks
from ladder.singlestage import perf_checks
from ladder.verdict import Verdict, open_stage, stage_parser, write_json
from ladder.vllm_plugin import RAY_RESOURCE
from ladder.vllmserver import Server, ServerError, api_key, check_healthy, cpu_env, resolve_model, serve_args

WORKER_CLASS = "RayWorkerProc"  # vLLM's Ray worker actor (RayExecutorV2; the CPU and CUDA builds alike)
_PP_RANK = re.compile(r"_PP(\d+)")  # vLLM names it vllm_Worker_<instance>[_TP<t>][_PP<p>]; no _PP at PP=1


def port_free(ip: str, port: int) -> bool:
    """Can a server bind it as vLLM does (SO_REUSEADDR)? Connections of an earlier server on it, left in
    TIME_WAIT for a minute, do not stop that (the stage before in one allocation served on this port)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
        have = res.get("GPU", 0) if spec.gpus else res.get(RAY_RESOURCE, 0)
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


def pipeline_placement(actors: Iterable[dict[str, Any]], node_names: dict[str, str]) -> dict[int, str]:
    """PP rank -> node(s) its live vLLM workers run on, from Ray's actor table (node id -> node name)."""
    placed: dict[int, set[str]] = {}
    for actor in actors:
        if actor["ActorClassName"] == WORKER_CLASS and actor["State"] == "ALIVE":
            m = _PP_RANK.search(actor["Name"])
            node_id = actor["Address"]["NodeID"]
            placed.setdefault(int(m.group(1)) if m else 0, set()).add(node_names.get(node_id, node_id))
    return {rank: ",".join(sorted(nodes)) for rank, nodes in sorted(placed.items())}


@contextmanager
def ray_driver(spec: Spec) -> Iterator[None]:
    """A driver connection for the duration of a query (vLLM runs its own driver)."""
    import ray

    ray.init(address=spec.address, _node_ip_address=spec.addrs[spec.head], logging_level="warning",
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def placed_workers(cluster: RayCluster) -> dict[int, str]:
    """Where Ray placed vLLM's pipeline ranks. The actor table comes straight from the GCS: the state
    API (ray.util.state.list_actors) is served by the dashboard's state module, which ladder's Ray
    clusters do not run (dashboard off)."""
    from ray._private.state import actors

    with ray_driver(cluster.spec):
        node_names = {info["NodeID"]: node for node, info in cluster.alive_nodes().items()}
        return pipeline_placement(actors(actor_state_name="ALIVE").values(), node_names)


def lost_nodes(cluster: RayCluster, pipeline: list[str]) -> list[str]:
    """Pipeline nodes Ray no longer sees alive (after a failure under load); Ray marks a node dead once
    its health checks fail, so look for up to a minute."""
    with ray_driver(cluster.spec):
        return poll(lambda: [n for n in pipeline if n not in cluster.alive_nodes()], 60, max_delay=2)


@dataclass
class Run:
    """What every start of the multi-node service shares."""

    cfg: dict[str, Any]
    a: argparse.Namespace
    cluster: RayCluster
    model_path: str
    served: str
    key: str
    versions: dict[str, Any]
    tp: int


def serve_env(spec: Spec) -> dict[str, str]:
    """`vllm serve` on the head, driving the Ray cluster of `spec` over cluster.network's interface."""
    head = spec.head
    return spec.env | {"RAY_ADDRESS": spec.address, "VLLM_HOST_IP": spec.addrs[head],
                       "GLOO_SOCKET_IFNAME": spec.ifaces[head], "NCCL_SOCKET_IFNAME": spec.ifaces[head]}


def start(run: Run, pipeline: list[str]) -> Server:
    spec = run.cluster.spec
    args = serve_args(run.cfg, run.tp, len(pipeline), ray=True) + tuned_serve_args(run.a.results, run.cfg["tune"])
    srv = Server(run.model_path, run.served, spec.ports["serve"], run.key, run.a.log_dir / spec.head / "vllm-serve.log",
                 args=args, env=serve_env(spec))
    srv.start()
    return srv


def check(v: Verdict, run: Run, srv: Server, pipeline: list[str], attempt: int) -> None:
    """Placement, the end-to-end suite against the single stage's outputs, bench, soak, scaling."""
    cfg, a, pp = run.cfg, run.a, len(pipeline)
    tuned = tuned_serve_args(a.results, cfg["tune"])
    if cfg["tune"]["enabled"] and cfg["tune"]["apply"]:
        launched = (last_run(srv.log) or [""])[0].split()
        v.check("serves_tuned_settings", all(x in launched for x in tuned), tuned,
                "results/tune/best.json's serve_args on the server's command line",
                detail="tune.apply; [] = vLLM's defaults won the tune stage")
    placed = placed_workers(run.cluster)
    v.check("pipeline_rank_per_node", sorted(placed) == list(range(pp)) and set(placed.values()) == set(pipeline),
            placed, f"{pp} PP ranks on {', '.join(pipeline)}", detail="vLLM's Ray worker actors and their nodes")
    reference = json.loads((a.results / "single" / "outputs.json").read_text())["outputs"]
    e2e = run_suite(v, srv, reference, cfg["parallel"]["split_logprob_tolerance"])
    write_json(a.out_dir / "e2e.json", e2e | {"attempt": attempt, "pipeline": pipeline})
    results, cache = run_sweep(srv.base, run.served, run.model_path, cfg["bench"], run.key, a.out_dir / "raw",
                               a.log_dir / run.cluster.spec.head / "bench.log")
    meta = metadata(cfg, run.versions, pipeline, {"tensor_parallel_size": run.tp, "pipeline_parallel_size": pp},
                    a.config_hash, run.served)
    write_json(a.out_dir / "bench.json", {"metadata": meta | {"prefix_cache": cache}, "results": results})
    perf_checks(v, "multinode", results, cfg["references"].get(cfg["cluster"]["name"], {}), cache, cfg["bench"])
    if cfg["bench"]["soak_s"]:
        write_json(a.out_dir / "soak.json", soak(v, srv, cfg["bench"]["soak_s"], cfg["bench"]["soak_clients"]))
    single = json.loads((a.results / "single" / "bench.json").read_text())
    scaling = {
        "single": {"plan": single["metadata"]["plan"], "nodes": single["metadata"]["nodes"]},
        "multinode": {"plan": meta["plan"], "nodes": meta["nodes"], "tuned_args": tuned},
        "ratios_multinode_over_single": ratios(results, single["results"]),
        "note": "ratios of runs with identical bench settings; >1 throughput = faster multinode"
                + (f"; single served a proxy ({single['metadata']['proxy']['why']}): the ratios compare the "
                   "full model across nodes with that proxy on one node" if "proxy" in single["metadata"] else "")}
    tuned_bench = a.results / "tune" / "bench.json"
    if cfg["tune"]["enabled"] and tuned_bench.exists():
        # The same closed-loop levels, measured by tune on one node with the winning settings.
        tuned_single = json.loads(tuned_bench.read_text())
        scaling["ratios_multinode_over_tuned_single"] = ratios(results, tuned_single["results"])
        scaling["tuned_single"] = {"args": tuned_single["metadata"]["tuned_args"]}
    write_json(a.out_dir / "scaling.json", scaling)


def serve(v: Verdict, run: Run, pipeline: list[str], attempt: int) -> tuple[Server, Exception | None]:
    """One start -> wait -> check of the service on `pipeline`; the caller stops the server."""
    srv = start(run, pipeline)
    try:
        if check_healthy(v, srv, run.cfg["serve"]["health_timeout_s"],
                         f"attempt {attempt}, PP={len(pipeline)} on {', '.join(pipeline)}",
                         "time_to_healthy_s" + (f"_attempt{attempt}" if attempt > 1 else "")) is not None:
            check(v, run, srv, pipeline, attempt)
    except (ServerError, RuntimeError, OSError) as err:
        return srv, err
    return srv, None


def failover(v: Verdict, run: Run, pipeline: list[str], lost: list[str], first_check: int,
             err: Exception | None) -> list[str]:
    """A pipeline node died under load: what failed with it is recorded, not counted, and the service
    comes back on the nodes that are left (returned), degraded."""
    for c in v.checks[first_check:]:
        if c.ok is False:
            c.ok, c.detail = None, f"[lost with node {', '.join(lost)}] {c.detail}"
    v.check("node_lost", None, lost, detail=str(err or "requests failed")[:300])
    (run.a.out_dir / "failed_nodes.txt").write_text("\n".join(lost) + "\n")
    remaining = [n for n in pipeline if n not in lost]
    v.degraded_reason = (f"node(s) {', '.join(lost)} died while the service ran; restarted with "
                         f"PP={len(remaining)} on the remaining nodes")
    return remaining


def make_stage_plan(v: Verdict, cfg: dict[str, Any], nodes: list[str]) -> tuple[int, int] | None:
    """(TP, PP) for the nodes this job got; with allow_degraded the pipeline shrinks to fit."""
    if len(nodes) < cfg["cluster"]["nodes"]:
        v.degraded_reason = (f"ran on {len(nodes)} of {cfg['cluster']['nodes']} nodes; the pipeline shrank to fit "
                             "(faults.allow_degraded)")
    parallel = dict(cfg["parallel"])
    if cfg["faults"]["allow_degraded"] and isinstance(parallel["pipeline_parallel_size"], int):
        parallel["pipeline_parallel_size"] = min(parallel["pipeline_parallel_size"], len(nodes))
    try:
        plan = make_plan(parallel, len(nodes), cfg["cluster"]["gpus_per_node"], model_shape(cfg["model"]))
    except PlanError as err:
        v.check("plan", False, None, "a valid plan", detail=str(err))
        return None
    print(f"[multinode] plan: {plan.describe()}", flush=True)
    v.check("plan", True, plan.describe())
    return plan.tensor_parallel_size, plan.pipeline_parallel_size


def cluster_spec(cfg: dict[str, Any], a: argparse.Namespace, job: str, nodes: list[str],
                 probe: dict[str, dict[str, Any]], tp: int) -> Spec:
    """The job's Ray cluster (raycommand.job_spec) for vLLM: its port, and on CPU the platform plugin."""
    spec = job_spec(cfg, job, nodes, probe, a.log_dir / "ray", a.out_dir / "monitor")
    spec.env = {"VLLM_PORT": str(spec.ports["vllm"])}
    if cfg["env"]["flavor"] == "cpu":
        # The platform plugin (ladder.vllm_plugin) enables the Ray executor on CPU; its workers
        # are placed by a custom resource, tp slots per node, so pipeline ranks spread.
        spec.env |= cpu_env(a.cache.resolve()) | {"LADDER_CPU_RAY": "1"}
        spec.resources = {RAY_RESOURCE: tp}
    return spec


def bring_up(v: Verdict, cluster: RayCluster, probe: dict[str, dict[str, Any]], tp: int, pp: int) -> bool:
    """Ray on every node, the ray stage's checks again, then the placement precheck."""
    import ray

    cluster.start()
    try:
        v.metrics["ray_bringup_s"] = round(cluster.wait(), 2)
    except ClusterError as err:
        v.check("ray_nodes_joined", False, None, len(cluster.spec.nodes), detail=str(err))
        return False
    try:
        ids = check_nodes(v, cluster, probe, cluster.spec.cpus)
        check_tasks(v, ids, cluster.spec.addrs)
        return precheck(v, cluster, probe, tp, pp, cluster.spec.ports)
    finally:
        ray.shutdown()  # the driver's connection; vLLM's own driver connects next


def main(argv: list[str] | None = None) -> int:
    a, cfg, v = open_stage("multinode", stage_parser(__doc__, serving=True), argv)
    job = slurm.job_id()
    v.nodes = nodes = slurm.job_nodes(job)
    versions = json.loads((a.results / "env" / "versions.json").read_text())
    v.versions = {k: versions["versions"].get(k, "") for k in ("vllm", "torch", "ray")}
    layout = make_stage_plan(v, cfg, nodes)
    if layout is None:
        return v.finish(a.out_dir / "verdict.json")
    tp, pp = layout
    probe = {n["slurm_node"]: n for n in json.loads((a.results / "probe" / "nodes.json").read_text())["nodes"]}
    cluster = RayCluster(cluster_spec(cfg, a, job, nodes, probe, tp))
    srv: Server | None = None
    try:
        model_path, served = resolve_model(cfg["model"], a.cache.resolve())
        key = api_key(cfg["serve"]["api_key_env"], cfg["serve"]["api_key_file"])
        if not bring_up(v, cluster, probe, tp, pp):
            return v.finish(a.out_dir / "verdict.json")
        run = Run(cfg, a, cluster, model_path, served, key, versions, tp)
        pipeline, first_check = nodes[:pp], len(v.checks)
        srv, err = serve(v, run, pipeline, attempt=1)
        failed = err or any(c.ok is False for c in v.checks[first_check:])
        lost = lost_nodes(cluster, pipeline) if failed and cfg["faults"]["allow_degraded"] else []
        if lost and len(pipeline) > len(lost):
            srv.stop()
            srv, err = serve(v, run, failover(v, run, pipeline, lost, first_check, err), attempt=2)
        if err:
            raise err
    except (ServerError, RuntimeError, OSError) as err:
        v.check("serve", False, None, "a healthy multi-node service", detail=shorten(str(err)))
        print(str(err), file=sys.stderr, flush=True)
    finally:
        if srv:
            srv.stop()
        cluster.stop()
    return v.finish(a.out_dir / "verdict.json")


if __name__ == "__main__":
    sys.exit(main())
