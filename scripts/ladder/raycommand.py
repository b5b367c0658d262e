"""What a Ray cluster inside one Slurm allocation runs, as data: the spec and command lines (pure).

``ladder.raynode`` runs these on each node, ``ladder.raycluster`` drives the nodes from
the stage script; both read the same ``Spec``.
"""

from __future__ import annotations

import ipaddress
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


# Interfaces of containers, VMs and overlays: an address there reaches no other node.
NOT_FABRIC = ("docker", "br-", "virbr", "veth", "cni", "flannel", "cali", "vxlan", "tun", "tap", "podman", "lxc")


def choose_nic(node: dict[str, Any], network: str = "auto") -> dict[str, str] | None:
    """The interface Ray, vLLM, NCCL and Gloo use on a probed node: {iface, ip, why}, or None.

    `network` (cluster.network): an interface name, an IPv4 CIDR, or "auto": among the up
    interfaces with an IPv4 (not loopback, not a container/VM bridge), InfiniBand (IPoIB: the
    device has an infiniband class, or the name starts with "ib") first, then the fastest link,
    then the one holding the default route, then by name.
    """
    up = [(n, ip) for n in node["nics"] for ip in n["ipv4"] if n["up"] and not ip.startswith("127.")]
    if network != "auto":
        if "/" in network:
            net = ipaddress.ip_network(network, strict=False)
            found = [(n, ip) for n, ip in up if ipaddress.ip_address(ip) in net]
            why = f"cluster.network={network}: its address is in that network"
        else:
            found = [(n, ip) for n, ip in up if n["name"] == network]
            why = f"cluster.network={network}"
        return {"iface": found[0][0]["name"], "ip": found[0][1], "why": why} if found else None
    skipped = sorted({n["name"] for n, _ in up if n["name"].startswith(NOT_FABRIC)})
    fabric = [(n, ip) for n, ip in up if not n["name"].startswith(NOT_FABRIC)]
    if not fabric:
        return None

    def ib(n: dict[str, Any]) -> bool:
        return bool(n.get("infiniband")) or n["name"].startswith("ib")

    best, ip = min(fabric, key=lambda c: (not ib(c[0]), -(c[0].get("speed_mbps") or 0),
                                          c[0]["name"] != node.get("default_route"), c[0]["name"]))
    attrs = [a for a, on in (("InfiniBand", ib(best)), (f"{best.get('speed_mbps')} Mb/s", best.get("speed_mbps")),
                             ("default route", best["name"] == node.get("default_route"))) if on]
    why = f"auto: {best['name']} ({', '.join(attrs) or 'first by name'}) of {', '.join(n['name'] for n, _ in fabric)}"
    return {"iface": best["name"], "ip": ip, "why": why + (f"; skipped {', '.join(skipped)}" if skipped else "")}


def addresses_from_probe(probe_nodes: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """node -> address and node -> its interface, as the probe chose them (nodes without one left out)."""
    found = {n["slurm_node"]: nic for n in probe_nodes if (nic := n.get("network") or choose_nic(n))}
    return {n: c["ip"] for n, c in found.items()}, {n: c["iface"] for n, c in found.items()}


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
