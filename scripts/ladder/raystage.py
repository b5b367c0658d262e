"""Stage ray: bring up Ray across the allocation and verify it, then stop it.

Checks: every node joined; per-node CPU/GPU resources and registered IP match the
allocation and the probe; a task pinned to each node answers with that node's
hostname and VLLM_HOST_IP; a cross-node object transfer (MB/s); on GPU nodes an
NCCL all-reduce across nodes (sum, bus bandwidth, the transport NCCL chose).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ladder import slurm
from ladder.raycluster import ClusterError, RayCluster, job_spec
from ladder.verdict import Verdict, open_stage, stage_parser, write_json


def check_nodes(v: Verdict, cluster: RayCluster, probe: dict[str, dict[str, Any]], cpus: int) -> dict[str, str]:
    """Resources and addresses as Ray reports them; returns node -> Ray node id."""
    joined = cluster.alive_nodes()
    ids = {}
    for node in cluster.spec.nodes:
        info = joined.get(node)
        if info is None:
            v.check(f"{node}:joined", False, False, True)
            continue
        ids[node] = info["NodeID"]
        res = info["Resources"]
        want_gpus = probe[node]["gpus"]["count"] if node in probe else cluster.spec.gpus
        v.check(f"{node}:ray_cpus", res.get("CPU", 0) == cpus, res.get("CPU", 0), cpus, "CPUs")
        v.check(f"{node}:ray_gpus", res.get("GPU", 0) == want_gpus, res.get("GPU", 0), want_gpus, "GPUs",
                detail="expected = GPUs the probe found on this node")
        v.check(f"{node}:ray_ip", info["NodeManagerAddress"] == cluster.spec.addrs[node],
                info["NodeManagerAddress"], cluster.spec.addrs[node], detail="Ray's registered IP vs the probe's")
    return ids


def check_tasks(v: Verdict, ids: dict[str, str], addrs: dict[str, str]) -> None:
    import socket

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def whoami() -> tuple[str, str]:
        import os

        return socket.gethostname(), os.environ.get("VLLM_HOST_IP", "")

    refs = {n: whoami.options(scheduling_strategy=NodeAffinitySchedulingStrategy(i, soft=False)).remote()
            for n, i in ids.items()}
    for node, ref in refs.items():
        host, vllm_ip = ray.get(ref, timeout=60)
        v.check(f"{node}:task_hostname", host == node, host, node)
        v.check(f"{node}:vllm_host_ip", vllm_ip == addrs[node], vllm_ip, addrs[node],
                detail="VLLM_HOST_IP seen by a Ray worker must equal the node's Ray IP")


def check_transfer(v: Verdict, ids: dict[str, str], head: str, size_mb: int, ifaces: dict[str, str]) -> None:
    """Head -> every other node: an object of size_mb, its rate, and that its bytes arrived on the
    node's chosen interface (the interface's receive counter, read on the node before and after)."""
    import numpy as np
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def consume(arr: Any) -> float:
        return float(arr.sum())

    @ray.remote(num_cpus=0)
    def received(iface: str) -> int | None:
        counters = psutil.net_io_counters(pernic=True).get(iface)
        return counters.bytes_recv if counters else None

    others = [n for n in ids if n != head]
    if not others:
        v.check("object_transfer", None, detail="single node: no cross-node transfer")
        return
    arr = np.ones(size_mb * 2**20 // 8, dtype=np.float64)
    rates = []
    for node in others:
        strategy = NodeAffinitySchedulingStrategy(ids[node], soft=False)
        ray.get(consume.options(scheduling_strategy=strategy).remote(np.ones(8)), timeout=60)  # warm worker
        ref = ray.put(arr)
        before = ray.get(received.options(scheduling_strategy=strategy).remote(ifaces[node]), timeout=60)
        t0 = time.perf_counter()
        total = ray.get(consume.options(scheduling_strategy=strategy).remote(ref), timeout=300)
        dt = time.perf_counter() - t0
        after = ray.get(received.options(scheduling_strategy=strategy).remote(ifaces[node]), timeout=60)
        rates.append(size_mb / dt)
        v.check(f"{head}->{node}:object_transfer", total == arr.size, total, float(arr.size),
                detail=f"{size_mb} MB in {dt:.3f}s = {size_mb / dt:.0f} MB/s")
        got = None if before is None or after is None else round((after - before) / 2**20, 1)
        # Counters see every byte with its headers; 0.9 leaves room for a counter read racing the end.
        v.check(f"{head}->{node}:transfer_on_{ifaces[node]}", got is not None and got >= 0.9 * size_mb, got,
                f">= 0.9 x {size_mb}", "MiB", detail=f"received on {node}'s {ifaces[node]} (the probe's choice) "
                "while the object moved")
        del ref
    v.metrics["transfer_mb_s_min"] = round(min(rates), 1)


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser(__doc__)
    ap.add_argument("--verdict", type=Path, required=True)
    a, cfg, v = open_stage("ray", ap, argv)
    job = slurm.job_id()
    v.nodes = nodes = slurm.job_nodes(job)
    want = cfg["cluster"]["nodes"]
    if len(nodes) < want:
        v.degraded_reason = f"ran on {len(nodes)} of {want} nodes ({', '.join(nodes)}); failed nodes were excluded"
    probe = {n["slurm_node"]: n for n in json.loads((a.results / "probe" / "nodes.json").read_text())["nodes"]}
    spec = job_spec(cfg, job, nodes, probe, a.log_dir, a.verdict.parent / "monitor")
    unknown = [n for n in nodes if n not in spec.addrs]
    if unknown:
        v.check("nodes_probed", False, unknown, "every allocated node in probe/nodes.json",
                detail="re-run the probe stage on this allocation's nodes")
        return v.finish(a.verdict)
    cluster = RayCluster(spec)
    try:
        import ray

        v.versions["ray"] = ray.__version__
        cluster.start()
        try:
            bringup = cluster.wait()
        except ClusterError as err:
            v.check("nodes_joined", False, None, len(nodes), "nodes", detail=str(err))
            print(str(err), file=sys.stderr, flush=True)
            # faults.exclude_on_failure: the retry allocates without these nodes.
            (a.verdict.parent / "failed_nodes.txt").write_text("\n".join(err.nodes) + "\n")
            return v.finish(a.verdict)
        v.metrics["bringup_s"] = round(bringup, 2)
        v.check("nodes_joined", True, len(nodes), len(nodes), "nodes", detail=f"all joined in {bringup:.1f}s")
        ids = check_nodes(v, cluster, probe, spec.cpus)
        check_tasks(v, ids, spec.addrs)
        check_transfer(v, ids, spec.head, cfg["ray"]["transfer_mb"], spec.ifaces)
        if spec.gpus:
            from ladder.collective import check_allreduce

            check_allreduce(v, ids, spec, cfg["ray"])
        else:
            v.check("nccl_allreduce", None, detail="not applicable: no GPUs on these nodes (cluster.gpus_per_node=0)")
        public = {k: val for k, val in spec.__dict__.items() if k != "env"}
        write_json(a.verdict.parent / "cluster.json", {"spec": public, "bringup_s": round(bringup, 2)})
    finally:
        cluster.stop()
    return v.finish(a.verdict)


if __name__ == "__main__":
    sys.exit(main())
