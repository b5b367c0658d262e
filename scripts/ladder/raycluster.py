"""A Ray cluster inside one Slurm allocation, driven from the stage script: start, wait, stop.

The driver (the stage script on the allocation's first node) writes the spec and runs
one srun step with a ``ladder.raynode`` task per node (commands: ``ladder.raycommand``).
Readiness is polled against the GCS with a deadline; a node that does not join is
named with its step and last log lines.  Stop asks the node tasks to end their own Ray
(a STOP file), then signals the srun step if they do not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ladder.logs import tail
from ladder.poll import poll, tcp_open
from ladder.raycommand import Spec, addresses_from_probe, srun_nodes_cmd
from ladder.slurm import job_ports


class ClusterError(RuntimeError):
    def __init__(self, message: str, nodes: list[str]) -> None:
        super().__init__(message)
        self.nodes = nodes  # the nodes that failed


def job_spec(cfg: dict[str, Any], job: str, nodes: list[str], probe: dict[str, dict[str, Any]], log_dir: Path,
             monitor_dir: Path) -> Spec:
    """Slurm job `job`'s cluster (cluster, ray, monitor sections) at the probe's addresses (none if unprobed)."""
    addrs, ifaces = addresses_from_probe([probe[n] for n in nodes if n in probe])
    c, r = cfg["cluster"], cfg["ray"]
    return Spec(job=job, nodes=nodes, addrs=addrs, ifaces=ifaces,
                ports=job_ports(int(job), r["port_base"], r["port_range"]), cpus=c["cpus_per_node"],
                gpus=c["gpus_per_node"], object_store_mb=r["object_store_mb"], log_dir=str(log_dir),
                join_timeout_s=r["join_timeout_s"], monitor_dir=str(monitor_dir),
                monitor_interval_s=cfg["monitor"]["interval_s"])


class RayCluster:
    """Driver-side handle: start the srun step, wait until every node joined, stop."""

    def __init__(self, spec: Spec, python: str = sys.executable) -> None:
        self.spec = spec
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        log_dir = Path(self.spec.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        spec_file = log_dir / "cluster-spec.json"
        spec_file.write_text(json.dumps(asdict(self.spec), indent=1))
        (log_dir / "STOP").unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(srun_nodes_cmd(self.spec, spec_file, self.python), start_new_session=True)

    def exited(self) -> bool:
        """The node tasks' srun step has ended (a node task failed: waiting longer is pointless)."""
        return bool(self.proc and self.proc.poll() is not None)

    def alive_nodes(self) -> dict[str, dict[str, Any]]:
        """Slurm node -> Ray's record of it (GCS: NodeID, Resources, NodeManagerAddress), alive ones only."""
        import ray

        by_ip = {ip: n for n, ip in self.spec.addrs.items()}
        return {by_ip.get(x["NodeManagerAddress"], x["NodeManagerAddress"]): x for x in ray.nodes() if x["Alive"]}

    def wait(self) -> float:
        """Block until every node joined; return seconds since start. Raises ClusterError."""
        import ray

        deadline = self.started + self.spec.join_timeout_s
        head_ip = self.spec.addrs[self.spec.head]

        def connected() -> bool:
            # The GCS port opens before the GCS serves: under load ray.init can give up
            # ("Failed to connect to GCS", even InvalidAuthToken) on a head that is still starting.
            if self.exited():
                raise ClusterError(self.diagnose("start-head", [self.spec.head]), [self.spec.head])
            if not tcp_open(head_ip, self.spec.ports["gcs"]):
                return False
            try:
                ray.init(address=self.spec.address, _node_ip_address=head_ip, logging_level="warning",
                         log_to_driver=False)
                return True
            except ConnectionError as err:
                print(f"head not serving yet: {str(err).splitlines()[-1][:200]}", flush=True)
                ray.shutdown()
                return False

        if not poll(connected, deadline - time.monotonic()):
            raise ClusterError(self.diagnose("start-head", [self.spec.head]), [self.spec.head])

        def missing() -> list[str]:
            joined = self.alive_nodes()
            return [n for n in self.spec.nodes if n not in joined]

        poll(lambda: not missing() or self.exited(), deadline - time.monotonic())
        if left := missing():
            raise ClusterError(self.diagnose("join", left), left)
        return time.monotonic() - self.started

    def diagnose(self, step: str, missing: list[str]) -> str:
        waited = time.monotonic() - self.started
        parts = [f"Ray cluster not ready after {waited:.0f}s (deadline {self.spec.join_timeout_s:.0f}s): "
                 f"step '{step}' failed on node(s) {', '.join(missing)}"]
        if self.proc and self.exited():
            parts.append(f"the srun step of the node tasks already exited with {self.proc.returncode}")
        for node in missing:
            log = Path(self.spec.log_dir) / f"{node}.log"
            parts.append(f"--- {node}: last lines of {log}\n{tail(log)}")
            start_log = Path(self.spec.log_dir) / node / "ray-start.log"
            if start_log.exists():
                parts.append(f"--- {node}: last lines of {start_log}\n{tail(start_log)}")
        return "\n".join(parts)

    def stop(self, timeout: float = 45) -> None:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception as err:  # never let a shutdown error keep the cluster alive
            print(f"ray.shutdown: {err}", flush=True)
        if not self.proc or self.exited():
            return
        # Node tasks watch for this file on shared storage and stop their own Ray
        # cleanly; signalling srun would make Slurm SIGKILL the step after KillWait.
        (Path(self.spec.log_dir) / "STOP").touch()
        try:
            self.proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            print(f"node tasks did not stop within {timeout}s; terminating the srun step", flush=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # srun killed outright: slurmd then kills whatever is left of the step.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
