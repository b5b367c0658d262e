"""What a Ray cluster inside one Slurm allocation runs, as data: the spec and command lines (pure).

``ladder.raynode`` runs these on each node, ``ladder.raycluster`` drives the nodes from
the stage script; both read the same ``Spec``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Spec:
    job: str
    nodes: list[str]
    addrs: dict[str, str]  # node -> IPv4 the node's Ray registers (= VLLM_HOST_IP)
    ifaces: dict[str, str]  # node -> interface carrying that address (GLOO/NCCL_SOCKET_IFNAME)
    ports: dict[str, int]
    cpus: int
    gpus: int
    object_store_mb: int
    log_dir: str
    join_timeout_s: float
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every Ray process
    # Custom Ray resources every node registers (the caller names them: e.g. the CPU vLLM
    # plugin's worker slots; none on GPU nodes).
    resources: dict[str, float] = field(default_factory=dict)
    monitor_dir: str = ""  # per-node resource CSVs (ladder.monitor) while the cluster runs
    monitor_interval_s: float = 1.0

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.addrs[self.head]}:{self.ports['gcs']}"

    def temp_dir(self, node: str) -> str:
        # Unique per job and node; also how a node recognises this cluster's processes.
        return f"/tmp/ladder-ray-{self.job}-{node}"


def primary_nic(node: dict[str, Any]) -> tuple[str, str] | None:
    """(interface, IPv4) of a probed node's first up, non-loopback interface with an IPv4."""
    for nic in node["nics"]:
        ips = [ip for ip in nic["ipv4"] if not ip.startswith("127.")]
        if nic["up"] and nic["name"] != "lo" and ips:
            return nic["name"], ips[0]
    return None


def addresses_from_probe(probe_nodes: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """node -> address and node -> its interface, as the probe saw them (nodes without one left out)."""
    found = {n["slurm_node"]: nic for n in probe_nodes if (nic := primary_nic(n))}
    return {n: ip for n, (_, ip) in found.items()}, {n: iface for n, (iface, _) in found.items()}


def ray_start_cmd(spec: Spec, node: str) -> list[str]:
    p = spec.ports
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block",
           f"--node-ip-address={spec.addrs[node]}",
           f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
           f"--dashboard-agent-grpc-port={p['dashboard_agent_grpc']}",
           f"--dashboard-agent-listen-port={p['dashboard_agent_http']}",
           f"--runtime-env-agent-port={p['runtime_env_agent']}", f"--metrics-export-port={p['metrics_export']}",
           f"--min-worker-port={p['min_worker']}", f"--max-worker-port={p['max_worker']}",
           f"--num-cpus={spec.cpus}", f"--num-gpus={spec.gpus}",
           f"--object-store-memory={spec.object_store_mb * 2**20}",
           f"--temp-dir={spec.temp_dir(node)}", "--disable-usage-stats"]
    if spec.resources:
        cmd.append(f"--resources={json.dumps(spec.resources)}")
    if node == spec.head:
        # Dashboard off: nothing listens beyond what the cluster needs.
        # Even without the dashboard a process binds its port (8265 by default): keep it
        # inside this job's block and on loopback.
        cmd += ["--head", f"--port={p['gcs']}", f"--ray-client-server-port={p['client_server']}",
                "--include-dashboard=false", f"--dashboard-port={p['dashboard']}", "--dashboard-host=127.0.0.1"]
    else:
        cmd += [f"--address={spec.address}"]
    return cmd


def node_env(spec: Spec, node: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.env)
    # vLLM never copies VLLM_HOST_IP from the driver: each node states its own, and it
    # must equal the address its raylet registered (DESIGN.md §6-7).
    env.update(VLLM_HOST_IP=spec.addrs[node], GLOO_SOCKET_IFNAME=spec.ifaces[node],
               NCCL_SOCKET_IFNAME=spec.ifaces[node], RAY_USAGE_STATS_ENABLED="0")
    return env


def srun_nodes_cmd(spec: Spec, spec_file: Path, python: str) -> list[str]:
    """One srun step, a ``ladder.raynode`` task per node, logging to <log_dir>/<node>.log."""
    n = len(spec.nodes)
    # --overlap: later steps of this job (vLLM, checks) share these CPUs.
    return ["srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", "--overlap",
            f"--nodelist={','.join(spec.nodes)}", "--kill-on-bad-exit=0",
            f"--output={spec.log_dir}/%N.log", python, "-m", "ladder.raynode", str(spec_file)]
