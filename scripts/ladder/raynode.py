"""One node of a job's Ray cluster: ``python -m ladder.raynode <spec.json>`` (one srun task per node).

Supervises ``ray start --block`` bound to the node's address with this job's ports and
temp dir, until the driver asks it to stop (a STOP file on shared storage) or the step
is signalled.  Then it ends its own Ray processes (never ``ray stop``, which ends every
Ray process on the machine), keeps Ray's logs and removes its /dev/shm leftovers.
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
from pathlib import Path
from typing import Any

import psutil

from ladder.logs import tail
from ladder.poll import poll, tcp_open
from ladder.raycommand import Spec, node_env, ray_start_cmd
from ladder.sandbox import stop_pids

SHM_PATTERNS = ("psm_*", "*cpushm*", "sem.*", "plasma*")
RAY_LOGS = ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err", "python-core-driver-*.log",
            "worker-*.err", "runtime_env_agent.log")


def own_processes(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions this cluster's temp dir (raylet, gcs, workers, agents)."""
    me = os.getpid()
    return [p for p in psutil.process_iter(["cmdline", "name"])
            if p.pid != me and marker in " ".join(p.info["cmdline"] or [])]


def kill_tree(root: int, marker: str, grace: float = 5) -> None:
    children = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(root).children(recursive=True)
    stop_pids([root, *(p.pid for p in children + own_processes(marker))], grace)
    # gcs_server and raylet may ignore SIGTERM (DESIGN.md §7): stop_pids killed them; any started since go too.
    for p in own_processes(marker):
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


def copy_ray_logs(temp: Path, dest: Path) -> None:
    logs = temp / "session_latest" / "logs"
    for pattern in RAY_LOGS:
        for f in logs.glob(pattern):
            if f.stat().st_size:
                shutil.copy(f, dest / f.name)


def run_node(spec: Spec) -> int:
    """Supervise this node's `ray start --block` until the driver or the step stops it."""
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
        if not poll(lambda: tcp_open(head_ip, gcs), spec.join_timeout_s):
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
    left = [p.info["name"] for p in own_processes(marker)]
    copy_ray_logs(Path(marker), log_dir)
    removed = clean_shm(t0)
    shutil.rmtree(marker, ignore_errors=True)
    print(f"[{node}] stopped; processes left: {left}; /dev/shm files removed: {len(removed)}", flush=True)
    return 0 if stopping else (rc or 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("spec", type=Path, help="the cluster spec the driver wrote (JSON)")
    return run_node(Spec(**json.loads(ap.parse_args(argv).spec.read_text())))


if __name__ == "__main__":
    sys.exit(main())
