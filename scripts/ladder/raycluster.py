"""A Ray cluster inside one Slurm allocation: start, wait, stop (used by ray and multinode).

The driver (the stage script on the allocation's first node) writes a spec and runs
one srun step with a task per node; each task runs ``python -m ladder.raycluster node``,
which supervises ``ray start --block`` bound to its node's address with this job's
ports and temp dir.  Readiness is polled against the GCS with a deadline; a node
that does not join is named with its step and last log lines.  Stop signals the
srun step; each node task then ends its own Ray processes (never ``ray stop``, which
ends every Ray process on the machine) and removes its /dev/shm leftovers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ladder.logs import tail

# The custom resource every node registers; vLLM's Ray executor on CPU places its
# workers with it (the platform plugin defines the name).
from ladder.vllm_plugin import RAY_RESOURCE as CPU_SLOT_RESOURCE

SHM_PATTERNS = ("psm_*", "*cpushm*", "sem.*", "plasma*")


class ClusterError(RuntimeError):
    def __init__(self, message: str, nodes: list[str]) -> None:
        super().__init__(message)
        self.nodes = nodes  # the nodes that failed


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
    slots: int = 1  # CPU_SLOT_RESOURCE per node = vLLM workers a node takes (TP on CPU)
    monitor_dir: str = ""  # per-node resource CSVs (ladder.monitor) while the cluster runs
    monitor_interval_s: float = 1.0

    @property
    def head(self) -> str:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.addrs[self.head]}:{self.ports['gcs']}"

    def temp_dir(self, node: str) -> str:
        # Unique per job and node; also how stop recognises this cluster's processes.
        return f"/tmp/ladder-ray-{self.job}-{node}"


def addresses_from_probe(probe_nodes: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """Each node's first non-loopback IPv4 and its interface, as the probe saw them."""
    addrs, ifaces = {}, {}
    for node in probe_nodes:
        for nic in node["nics"]:
            ips = [ip for ip in nic["ipv4"] if not ip.startswith("127.")]
            if nic["up"] and nic["name"] != "lo" and ips:
                addrs[node["slurm_node"]], ifaces[node["slurm_node"]] = ips[0], nic["name"]
                break
    return addrs, ifaces


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
           f"--resources={json.dumps({CPU_SLOT_RESOURCE: spec.slots})}",
           f"--object-store-memory={spec.object_store_mb * 2**20}",
           f"--temp-dir={spec.temp_dir(node)}", "--disable-usage-stats"]
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


def wait_tcp(host: str, port: int, deadline: float) -> bool:
    delay = 0.1
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
    return False


def own_processes(marker: str) -> list[int]:
    """PIDs whose command line mentions this cluster's temp dir (raylet, gcs, workers, agents)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def kill_tree(root: int, marker: str, grace: float = 5) -> None:
    import psutil

    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    procs += [psutil.Process(p) for p in own_processes(marker) if psutil.pid_exists(p)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    # gcs_server and raylet may ignore SIGTERM (DESIGN.md §7).
    for p in alive + [psutil.Process(p) for p in own_processes(marker) if psutil.pid_exists(p)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def clean_shm(since: float) -> list[str]:
    removed = []
    for pattern in SHM_PATTERNS:
        for f in Path("/dev/shm").glob(pattern):
            try:
                if f.stat().st_mtime >= since and f.stat().st_uid == os.getuid():
                    f.unlink()
                    removed.append(f.name)
            except OSError:
                continue
    return removed


def run_node(spec: Spec) -> int:
    """One srun task: supervise this node's `ray start --block` until the step is signalled."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if node not in spec.addrs:
        print(f"[{node}] not in the cluster spec {spec.nodes}", flush=True)
        return 2
    t0 = time.time()
    log_dir = Path(spec.log_dir) / node
    log_dir.mkdir(parents=True, exist_ok=True)
    marker = spec.temp_dir(node)
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        print(f"[{node}] signal {signum}: stopping this node's Ray", flush=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if node != spec.head:
        head_ip, gcs = spec.addrs[spec.head], spec.ports["gcs"]
        print(f"[{node}] step=wait-head: waiting for the GCS at {head_ip}:{gcs}", flush=True)
        if not wait_tcp(head_ip, gcs, time.monotonic() + spec.join_timeout_s):
            print(f"[{node}] step=wait-head: GCS {head_ip}:{gcs} unreachable after {spec.join_timeout_s}s", flush=True)
            return 3
    cmd = ray_start_cmd(spec, node)
    step = "start-head" if node == spec.head else "join"
    print(f"[{node}] step={step}: {' '.join(cmd)}", flush=True)
    with open(log_dir / "ray-start.log", "ab") as fh:
        proc = subprocess.Popen(cmd, env=node_env(spec, node), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stop_file = Path(spec.log_dir) / "STOP"
    sampler = None
    if spec.monitor_dir:
        from ladder.monitor import Sampler

        sampler = Sampler(Path(spec.monitor_dir) / f"{node}.csv", node, spec.monitor_interval_s)
        sampler.start()
    while not stopping and proc.poll() is None:
        stopping = stop_file.exists()
        time.sleep(0.2)
    rc = proc.poll()
    if rc is not None and not stopping:
        print(f"[{node}] step={step}: ray start exited with {rc}; last lines:\n{tail(log_dir / 'ray-start.log')}",
              flush=True)
    kill_tree(proc.pid, marker)
    if sampler:
        print(f"[{node}] monitor: {sampler.stop()}", flush=True)
    left = own_processes(marker)
    copy_ray_logs(Path(marker), log_dir)
    removed = clean_shm(t0)
    shutil.rmtree(marker, ignore_errors=True)
    names = [Path(f"/proc/{p}/comm").read_text().strip() for p in left if Path(f"/proc/{p}/comm").exists()]
    print(f"[{node}] stopped; processes left: {names}; /dev/shm files removed: {len(removed)}", flush=True)
    return 0 if stopping else (rc or 1)


def copy_ray_logs(temp: Path, dest: Path) -> None:
    logs = temp / "session_latest" / "logs"
    for pattern in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err", "python-core-driver-*.log",
                    "worker-*.err", "runtime_env_agent.log"):
        for f in logs.glob(pattern):
            if f.stat().st_size:
                shutil.copy(f, dest / f.name)


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
        n = len(self.spec.nodes)
        # --overlap: later steps of this job (vLLM, checks) share these CPUs.
        cmd = ["srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", "--overlap",
               f"--nodelist={','.join(self.spec.nodes)}", "--kill-on-bad-exit=0",
               f"--output={log_dir}/%N.log", self.python, "-m", "ladder.raycluster", "node", str(spec_file)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, start_new_session=True)

    def alive_nodes(self) -> dict[str, dict[str, Any]]:
        import ray

        by_ip = {ip: n for n, ip in self.spec.addrs.items()}
        return {by_ip.get(x["NodeManagerAddress"], x["NodeManagerAddress"]): x for x in ray.nodes() if x["Alive"]}

    def wait(self) -> float:
        """Block until every node joined; return seconds since start. Raises ClusterError."""
        import ray

        deadline = self.started + self.spec.join_timeout_s
        head_ip = self.spec.addrs[self.spec.head]
        joined: dict[str, Any] = {}
        if not wait_tcp(head_ip, self.spec.ports["gcs"], deadline):
            raise ClusterError(self.diagnose("start-head", [self.spec.head]), [self.spec.head])
        ray.init(address=self.spec.address, _node_ip_address=head_ip, logging_level="warning",
                 log_to_driver=False)
        delay = 0.2
        while time.monotonic() < deadline:
            joined = self.alive_nodes()
            if all(n in joined for n in self.spec.nodes):
                return time.monotonic() - self.started
            if self.proc and self.proc.poll() is not None:
                break  # a node task exited: no point waiting for the deadline
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        missing = [n for n in self.spec.nodes if n not in joined]
        raise ClusterError(self.diagnose("join", missing), missing)

    def diagnose(self, step: str, missing: list[str]) -> str:
        waited = time.monotonic() - self.started
        parts = [f"Ray cluster not ready after {waited:.0f}s (deadline {self.spec.join_timeout_s:.0f}s): "
                 f"step '{step}' failed on node(s) {', '.join(missing)}"]
        if self.proc and self.proc.poll() is not None:
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
        if not self.proc or self.proc.poll() is not None:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("node", help="run this node's part (one srun task per node)")
    n.add_argument("spec", type=Path)
    a = ap.parse_args(argv)
    return run_node(Spec(**json.loads(a.spec.read_text())))


if __name__ == "__main__":
    sys.exit(main())
