"""Stage probe: what every allocated node really has.

``node`` runs once per node (one srun task each) and writes ``<dir>/<host>.json``;
``summarize`` runs on the batch host, merges them into ``nodes.json`` and checks the
node count and GPU counts against the config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from ladder import slurm
from ladder.monitor import visible_indices
from ladder.raycommand import choose_nic
from ladder.verdict import Verdict, write_json


def cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo's fields, the first processor's value of each ({} where it is not readable)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for key, _, value in (line.partition(":") for line in lines):
        fields.setdefault(key.strip(), value.strip())
    return fields


def nics() -> list[dict[str, Any]]:
    stats = psutil.net_if_stats()
    out = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        st = stats.get(name)
        out.append({
            "name": name,
            "up": bool(st and st.isup),
            "speed_mbps": st.speed if st else 0,
            "mtu": st.mtu if st else 0,
            "ipv4": [a.address for a in addrs if a.family == socket.AF_INET],
            "ipv6": [a.address for a in addrs if a.family == socket.AF_INET6],
            "infiniband": Path(f"/sys/class/net/{name}/device/infiniband").exists(),
        })
    return out


def default_route() -> str | None:
    """The interface of the IPv4 default route (/proc/net/route: destination 00000000)."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return None
    return next((f[0] for f in (line.split() for line in lines) if len(f) > 1 and f[1] == "00000000"), None)


def gpus() -> dict[str, Any]:
    """GPUs through NVML; a node without a driver is cpu-only, not an error.

    ``count`` is what this job can use (see visible_indices); ``host_count`` every GPU of the host.
    """
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError
        return {"kind": "cpu-only", "count": 0, "devices": [], "reason": f"{type(err).__name__}: {err}"}
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        n = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        devices = []
        for i, h in enumerate(handles):
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            devices.append({"index": i, "name": pynvml.nvmlDeviceGetName(h), "uuid": pynvml.nvmlDeviceGetUUID(h),
                            "memory_mib": mem.total // 2**20, "pci_bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
                            "compute_capability": f"{cc[0]}.{cc[1]}"})
        topo = {}
        for i in range(n):
            for j in range(i + 1, n):
                try:
                    level = pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j])
                    topo[f"{i}-{j}"] = _TOPO.get(level, str(level))
                except pynvml.NVMLError as err:
                    topo[f"{i}-{j}"] = f"unknown ({err})"
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = visible_indices(cvd, n)
        if cvd is not None:  # UUIDs (GPU-...) name devices too
            ids = {x.strip() for x in cvd.split(",")}
            visible += [d["index"] for d in devices if d["uuid"] in ids and d["index"] not in visible]
        return {"kind": "nvidia", "count": len(visible), "host_count": n, "visible": visible,
                "visible_uuids": [devices[i]["uuid"] for i in visible],
                "driver": pynvml.nvmlSystemGetDriverVersion(),
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}", "devices": devices, "topology": topo}
    finally:
        pynvml.nvmlShutdown()


# nvmlGpuTopologyLevel_t, named as nvidia-smi topo -m names them.
_TOPO = {0: "SELF/NV", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


def slurm_view(host: str) -> dict[str, Any]:
    out = subprocess.run(["scontrol", "show", "node", host, "-o"], capture_output=True, text=True, timeout=30)
    fields = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    return {"gres": fields.get("Gres", ""), "cpus": fields.get("CPUTot", ""), "state": fields.get("State", ""),
            "real_memory_mb": fields.get("RealMemory", ""),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "step_gpus": os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS")}


def probe_node(shared: Path) -> dict[str, Any]:
    host = socket.gethostname()
    vm = psutil.virtual_memory()
    du = shutil.disk_usage(shared)
    cpu = cpuinfo()
    return {
        "hostname": host,
        "slurm_node": os.environ.get("SLURMD_NODENAME", host),
        "kernel": platform.release(),
        "cpu": {"model": cpu.get("model name") or platform.processor() or "unknown", "logical": psutil.cpu_count(),
                "physical": psutil.cpu_count(logical=False), "affinity": len(os.sched_getaffinity(0)),
                # The CPU features vLLM's FP8 KV cache on CPU needs (either one): model.kv_cache_dtype checks.
                "fp8_isa": sorted({"avx512f", "amx_tile"} & set(cpu.get("flags", "").split()))},
        "memory": {"total_mib": vm.total // 2**20, "available_mib": vm.available // 2**20},
        "disk": {"path": str(shared.resolve()), "free_gib": round(du.free / 2**30, 1),
                 "total_gib": round(du.total / 2**30, 1)},
        "nics": nics(),
        "default_route": default_route(),
        "modules": [m for m in os.environ.get("LOADEDMODULES", "").split(":") if m],  # env.modules, as loaded
        "gpus": gpus(),
        "slurm": slurm_view(os.environ.get("SLURMD_NODENAME", host)),
    }


def summarize(node_dir: Path, expected_nodes: list[str], gpus_per_node: int, v: Verdict,
              network: str = "auto") -> list[dict[str, Any]]:
    """The nodes' reports, each with the interface chosen for Ray, vLLM, NCCL and Gloo (`network`,
    cluster.network; ladder.raycommand.choose_nic) and why; the checks go to `v`."""
    found = {d["slurm_node"]: d for d in (json.loads(f.read_text()) for f in sorted(node_dir.glob("*.json")))}
    nodes = [found[n] for n in expected_nodes if n in found]
    missing = [n for n in expected_nodes if n not in found]
    v.nodes = expected_nodes
    v.check("nodes_reported", not missing, len(nodes), len(expected_nodes), "nodes",
            detail=f"missing: {', '.join(missing)}" if missing else "")
    for n in nodes:
        name = n["slurm_node"]
        v.check(f"{name}:gpus", n["gpus"]["count"] == gpus_per_node, n["gpus"]["count"], gpus_per_node, "GPUs",
                detail=n["gpus"].get("reason", "") if n["gpus"]["count"] != gpus_per_node else n["gpus"]["kind"])
        n["network"] = choose_nic(n, network)
        v.check(f"{name}:address", n["network"] is not None, n["network"] and n["network"]["ip"],
                f"an IPv4 of cluster.network={network}",
                detail=n["network"]["why"] if n["network"] else "NICs: " + ", ".join(
                    f"{c['name']} {c['ipv4']}{'' if c['up'] else ' down'}" for c in n["nics"]))
    ips = [n["network"] and n["network"]["ip"] for n in nodes]
    v.check("distinct_addresses", len(set(ips)) == len(ips), len(set(ips)), len(ips), "addresses",
            detail="Ray and vLLM need one IP per node")
    # Nodes that share a host (or a misconfigured gres.conf) must not hand out the same GPU twice.
    owners: dict[str, list[str]] = {}
    for n in nodes:
        for uuid in n["gpus"].get("visible_uuids", []):
            owners.setdefault(uuid, []).append(n["slurm_node"])
    shared = {u: ns for u, ns in owners.items() if len(ns) > 1}
    if owners:
        v.check("distinct_gpus", not shared, len(owners), sum(n["gpus"]["count"] for n in nodes), "GPUs",
                detail=f"GPUs visible on several nodes: {shared}" if shared else "each node sees its own GPUs")
    hosts = [n["hostname"] for n in nodes]
    v.check("distinct_hostnames", len(set(hosts)) == len(hosts), len(set(hosts)), len(hosts))
    return nodes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("node", help="probe this node (one srun task per node)")
    n.add_argument("--out-dir", type=Path, required=True)
    n.add_argument("--shared", type=Path, default=Path("."), help="shared path whose free disk is reported")
    s = sub.add_parser("summarize", help="merge per-node results and write the verdict")
    for p in (n, s):
        p.add_argument("--network", default="auto", help="cluster.network: interface name, IPv4 CIDR or auto")
    s.add_argument("--node-dir", type=Path, required=True)
    s.add_argument("--expected-nodes", help="comma-separated allocation node list (default: this Slurm job's)")
    s.add_argument("--gpus-per-node", type=int, required=True)
    s.add_argument("--config-hash", default="")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--verdict", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "node":
        data = probe_node(a.shared)
        write_json(a.out_dir / f"{data['slurm_node']}.json", data)
        print(json.dumps({k: data[k] for k in ("hostname", "cpu", "memory")}), flush=True)
        print(f"gpus: {data['gpus']['kind']} x{data['gpus']['count']}; network: {choose_nic(data, a.network)}")
        return 0
    v = Verdict("probe", config_hash=a.config_hash)
    expected = [x for x in a.expected_nodes.split(",") if x] if a.expected_nodes else slurm.job_nodes()
    nodes = summarize(a.node_dir, expected, a.gpus_per_node, v, a.network)
    v.metrics["gpus_total"] = sum(n["gpus"]["count"] for n in nodes)
    v.metrics["cpus_total"] = sum(n["cpu"]["affinity"] for n in nodes)
    write_json(a.out, {"nodes": nodes})
    return v.finish(a.verdict)


if __name__ == "__main__":
    sys.exit(main())
