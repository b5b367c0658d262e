"""`python -m ladder.sandbox` up / status / down on a spare instance (default 8, 2 nodes).

`down` must leave no daemon, job process, namespace, veth or bridge of the instance,
also after its slurmds were killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox

def processes_of(sb) -> dict[int, str]:
    """pid -> command of every process started for this instance (they carry its SLURM_CONF)."""
    marker = f"SLURM_CONF={sb.slurm_conf}".encode()
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if marker in (p / "environ").read_bytes().split(b"\0"):
                found[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return found


def leftovers(sb) -> list[str]:
    out = []
    others_up = any(not n.name.startswith(f"ladder{sb.instance}-") for n in Path("/run/netns").glob("ladder*-*"))
    for pid, cmd in processes_of(sb).items():
        if cmd.startswith("munged") and others_up:
            continue  # shared with another sandbox that still needs it
        out.append(f"process {pid}: {cmd}")
    netns = Path("/run/netns")
    out += [f"namespace {n.name}" for n in netns.glob(f"ladder{sb.instance}-*")] if netns.exists() else []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == f"ladder{sb.instance}" or name.startswith(f"l{sb.instance}-"):
            out.append(f"link {name}")
    return out


def state(sb) -> dict:
    return json.loads((sb.state_dir / "state.json").read_text())


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def up(sb) -> None:
    res = sb.cli("up", "--nodes", str(sb.nodes))
    assert res.returncode == 0, res.stdout + res.stderr


def down_and_check(sb) -> None:
    res = sb.cli("down")
    assert res.returncode == 0, res.stdout + res.stderr
    assert leftovers(sb) == []
    assert not (sb.state_dir / "state.json").exists()


def test_up_status_down(spare_sandbox):
    sb = spare_sandbox
    up(sb)
    pids = state(sb)["pids"]
    assert {f"slurmd:n{i}" for i in range(1, sb.nodes + 1)} | {"slurmctld", "slurmdbd", "mariadbd"} <= pids.keys()
    assert sb.cli("status").returncode == 0
    # Real Slurm: one task per node, each in its own namespace.
    out = sb.slurm("srun", "-N", str(sb.nodes), "--ntasks-per-node=1", "-t", "1", "sh", "-c",
               "echo $(hostname) $(ip -4 -o addr show eth0 | awk '{print $4}')", timeout=60)
    assert sorted(out.split("\n")[:-1]) == [f"n{i} {sb.node_ip(i)}/24" for i in range(1, sb.nodes + 1)]
    # Idempotent: a second up keeps the running daemons.
    up(sb)
    assert state(sb)["pids"] == pids
    daemons = {p for p, cmd in processes_of(sb).items() if cmd.startswith(("slurmctld", "slurmd", "mariadbd"))}
    assert set(pids.values()) - {pids.get("munged")} <= daemons
    down_and_check(sb)
    assert sb.cli("status").returncode == 1


def step_tasks(sb) -> list[str]:
    """The job step's tasks (`sleep 600` on each node); srun itself runs as two `srun sleep 600`."""
    return [c for c in processes_of(sb).values() if c.endswith("sleep 600") and not c.startswith("srun")]


def test_down_after_kill9_of_slurmds(spare_sandbox):
    sb = spare_sandbox
    up(sb)
    # A running two-node job, so job processes live inside the node namespaces.
    jid = sb.slurm("sbatch", "--parsable", "-N", str(sb.nodes), "-t", "5", "-o", "/dev/null",
                   "--wrap", "srun sleep 600").strip()
    wait_until(lambda: sb.slurm("squeue", "-h", "-j", jid, "-o", "%T").strip() == "RUNNING", 30, f"job {jid}")
    wait_until(lambda: len(step_tasks(sb)) >= sb.nodes, 30, "a step task on every node")
    for role, pid in state(sb)["pids"].items():
        if role.startswith("slurmd:"):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(c.startswith("slurmd ") for c in processes_of(sb).values()), 10, "slurmd death")
    assert step_tasks(sb)  # orphans remain until down
    down_and_check(sb)
