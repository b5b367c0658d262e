"""NCCL all-reduce across the Ray cluster's GPUs: correct sum, bus bandwidth, transport.

One Ray actor per GPU (rank), torch.distributed over NCCL with the rendezvous on the
head node at this job's port.  NCCL's own debug output says which network it used
("NET/IB" = InfiniBand/RoCE verbs, "NET/Socket" = plain TCP); a silent fall-back to
sockets between nodes fails the check unless ray.allow_socket_transport is set.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from ladder.verdict import Verdict

# What NCCL really used for a connection ("Channel 00/0 : 2[2] -> 0[1] [receive] via NET/Socket/0"),
# else which network it set up ("NET/Socket : Using [0]eth0:..."). "NET/IB : No device found."
# names IB without using it, so lines without "via" or "Using" never count.
_VIA_NET = re.compile(r"\bvia NET/(\w+)")
_USING_NET = re.compile(r"\bNET/(\w+) ?: Using\b")
_NO_DEVICE = re.compile(r"\bNET/(\w+) ?: No device found")


def transports_in(text: str) -> Counter[str]:
    """NET transports of one NCCL debug log: connections made ("via NET/X"), else networks set up."""
    absent = set(_NO_DEVICE.findall(text)) | {"Plugin"}  # NCCL prints "NET/IB : Using [RO]" even then
    return Counter(_VIA_NET.findall(text) or [m for m in _USING_NET.findall(text) if m not in absent])


def nccl_transports(log_dir: Path) -> dict[str, int]:
    """Count the NET transports NCCL reported in its debug files (NCCL_DEBUG_FILE)."""
    return dict(sum((transports_in(f.read_text(errors="replace")) for f in log_dir.glob("nccl.*.log")), Counter()))


def bus_bandwidth(size_bytes: int, seconds: float, world: int) -> float:
    """nccl-tests' all-reduce bus bandwidth in GB/s: algbw * 2(n-1)/n."""
    return size_bytes / seconds * 2 * (world - 1) / world / 1e9


def check_allreduce(v: Verdict, ids: dict[str, str], spec: Any, ray_cfg: dict[str, Any]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    log_dir = Path(spec.log_dir) / "nccl"
    log_dir.mkdir(parents=True, exist_ok=True)
    world = len(ids) * spec.gpus
    size = ray_cfg["allreduce_mb"] * 2**20
    master = (spec.addrs[spec.head], spec.ports["torch_dist"])

    @ray.remote(num_gpus=1, num_cpus=0)
    class Rank:
        def run(self, rank: int, iters: int = 10) -> dict[str, Any]:
            import os
            import time

            import torch
            import torch.distributed as dist

            os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), NCCL_DEBUG="INFO",
                              NCCL_DEBUG_SUBSYS="INIT,NET", NCCL_DEBUG_FILE=f"{log_dir}/nccl.%h.%p.log")
            dist.init_process_group("nccl", rank=rank, world_size=world)
            dev = torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
            x = torch.full((size // 4,), float(rank + 1), device=dev)
            dist.all_reduce(x)
            torch.cuda.synchronize()
            first = float(x[0].item())
            y = torch.ones(size // 4, device=dev)
            for _ in range(3):
                dist.all_reduce(y)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(y)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / iters
            dist.destroy_process_group()
            return {"sum": first, "seconds": dt, "host": os.uname().nodename}

    # Ranks in node order, spec.gpus on each node.
    actors = [Rank.options(scheduling_strategy=NodeAffinitySchedulingStrategy(ids[node], soft=False)).remote()
              for node in spec.nodes for _ in range(spec.gpus)]
    results = ray.get([a.run.remote(rank) for rank, a in enumerate(actors)], timeout=600)
    want = world * (world + 1) / 2
    v.check("nccl_allreduce_sum", all(r["sum"] == want for r in results), results[0]["sum"], want,
            detail=f"{world} ranks on {len(ids)} nodes")
    busbw = bus_bandwidth(size, max(r["seconds"] for r in results), world)
    v.metrics["allreduce_busbw_gbps"] = round(busbw, 2)
    threshold = ray_cfg["min_busbw_gbps"]
    v.check("nccl_busbw", None if threshold is None else busbw >= threshold, round(busbw, 2), threshold, "GB/s",
            detail="no threshold configured" if threshold is None else "")
    seen = nccl_transports(log_dir)
    transport = "IB" if "IB" in seen else ("Socket" if "Socket" in seen else (next(iter(seen), "none")))
    v.metrics["nccl_transport"] = transport  # type: ignore[assignment]
    if len(ids) < 2:
        v.check("nccl_transport", None, transport, detail="single node: no inter-node transport")
    else:
        ok = transport == "IB" or (transport == "Socket" and ray_cfg["allow_socket_transport"])
        v.check("nccl_transport", ok, transport, "IB" + (" or Socket" if ray_cfg["allow_socket_transport"] else ""),
                detail=f"NCCL debug NET lines: {seen}; sockets between nodes fail unless ray.allow_socket_transport")
    for f in log_dir.glob("nccl.*.log"):
        f.chmod(0o644)
