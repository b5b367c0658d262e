"""Slurm helpers: node lists, the allocation's nodes, per-job ports."""

from __future__ import annotations

import os
import subprocess
from typing import Any


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a Slurm hostlist such as ``n[1-3,7],gpu-a``, expanded by Slurm itself.

    One ``scontrol show hostnames`` call for the whole list (it needs only a slurm.conf,
    no controller); callers run where Slurm is installed (inside a job, or after ``sinfo``).
    """
    if not nodelist.strip():
        return []
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist.strip()], capture_output=True, text=True,
                         timeout=30)
    # scontrol exits 0 on a bad list and only says so on stderr.
    if out.returncode != 0 or out.stderr.strip():
        raise ValueError(f"scontrol cannot expand node list {nodelist!r}: {out.stderr.strip()}")
    return out.stdout.split()


def job_id() -> str:
    jid = os.environ.get("SLURM_JOB_ID", "")
    if not jid:
        raise SystemExit("SLURM_JOB_ID is not set: this command must run inside a Slurm job")
    return jid


def job_nodes(jid: str | None = None) -> list[str]:
    """Nodes of the allocation. The Snakemake plugin strips SLURM_JOB_NODELIST, so ask squeue."""
    jid = jid or job_id()
    out = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%N"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"squeue could not list the nodes of job {jid}: {out.stderr.strip()}")
    return expand_nodelist(out.stdout.strip())


def partition_nodes(partition: str | None) -> list[str]:
    """Every node of the partition (the default one when None)."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N", *(["-p", partition] if partition else [])],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise SystemExit(f"sinfo could not list the nodes of partition {partition or '(default)'}: "
                         f"{out.stderr.strip()}")
    return sorted(set(out.stdout.split()))


def gres(cluster: dict[str, Any]) -> str:
    """The per-node GPU request for the cluster section: gpu:<type>:N with cluster.gpu_type, else gpu:N."""
    kind = f"{cluster['gpu_type']}:" if cluster["gpu_type"] else ""
    return f"gpu:{kind}{cluster['gpus_per_node']}"


PORTS_PER_JOB = 40


def job_ports(jid: int, base: int, span: int) -> dict[str, int]:
    """A block of ports unique to this Slurm job inside [base, base+span).

    Two runs on one cluster get different job ids and so different blocks (until the
    range wraps, span/40 jobs later); the defaults of Ray and vLLM are never used.
    """
    if span < 5 * PORTS_PER_JOB:
        raise ValueError(f"port range {span} too small: needs at least {5 * PORTS_PER_JOB} ports")
    if base + span > 65535:
        raise ValueError(f"port range {base}+{span} exceeds 65535")
    blocks = span // PORTS_PER_JOB
    start = base + (jid % blocks) * PORTS_PER_JOB
    names = ["gcs", "serve", "node_manager", "object_manager", "client_server", "dashboard_agent_grpc",
             "dashboard_agent_http", "runtime_env_agent", "metrics_export", "torch_dist", "vllm",
             "dashboard"]
    ports = {n: start + i for i, n in enumerate(names)}
    # vLLM takes a few ports upward of VLLM_PORT; Ray's workers get the upper half.
    ports["min_worker"] = start + PORTS_PER_JOB // 2
    ports["max_worker"] = start + PORTS_PER_JOB - 1
    return ports

