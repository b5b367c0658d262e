"""Ray bring-up: ladder's polled readiness vs the fixed-sleep pattern of common Slurm+Ray templates.

Both run in one Slurm allocation, one after the other, with the same nodes, ports and
`ray start` arguments.  The template starts the head, sleeps 10 s, starts each worker
followed by a 5 s sleep, and then declares the cluster ready (the pattern of the
widely copied slurm-basic.sh); ladder starts every node at once and polls the GCS
until all joined.  For the template we also record whether every node had really
joined when it declared the cluster ready.

    python bench/ray_bringup.py --nodes 2 [--repeat 3]     # submits itself with sbatch --wait
Writes results/bench/ray_bringup.json (metadata, per-repeat times, ratio ladder/template).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from ladder import slurm  # noqa: E402
from ladder.poll import poll, tcp_open  # noqa: E402
from ladder.raycluster import RayCluster, Spec  # noqa: E402
from ladder.raycommand import node_env, ray_start_cmd  # noqa: E402
from ladder.verdict import write_json  # noqa: E402

HEAD_SLEEP, WORKER_SLEEP = 10, 5  # slurm-basic.sh


def spec_for(job: str, nodes: list[str], log_dir: Path) -> Spec:
    out = subprocess.run(["srun", "--overlap", f"--nodes={len(nodes)}", "--ntasks-per-node=1", sys.executable,
                          "-c", "import socket,os,psutil;"
                          "a=[(n,x.address) for n,l in psutil.net_if_addrs().items() if n!='lo' for x in l "
                          "if x.family==socket.AF_INET];print(os.environ['SLURMD_NODENAME'],a[0][0],a[0][1])"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    addrs, ifaces = {}, {}
    for line in out.split("\n"):
        if line.strip():
            node, iface, ip = line.split()
            addrs[node], ifaces[node] = ip, iface
    return Spec(job=job, nodes=nodes, addrs=addrs, ifaces=ifaces, ports=slurm.job_ports(int(job), 20000, 20000),
                cpus=1, gpus=0, object_store_mb=128, log_dir=str(log_dir), join_timeout_s=120)


def ladder_way(spec: Spec) -> float:
    cluster = RayCluster(spec)
    cluster.start()
    try:
        return cluster.wait()
    finally:
        cluster.stop()


def template_way(spec: Spec) -> tuple[float, bool]:
    """(seconds until the template declares the cluster ready, whether every node had joined by then)."""
    import ray

    procs = []
    t0 = time.monotonic()

    def launch(node: str) -> None:
        cmd = ["srun", "--overlap", "-N1", "-n1", f"--nodelist={node}", *ray_start_cmd(spec, node)]
        procs.append(subprocess.Popen(cmd, env=node_env(spec, node), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))

    try:
        launch(spec.head)
        time.sleep(HEAD_SLEEP)
        for node in spec.nodes[1:]:
            launch(node)
            time.sleep(WORKER_SLEEP)
        declared = time.monotonic() - t0
        joined = False
        if poll(lambda: tcp_open(spec.addrs[spec.head], spec.ports["gcs"]), 5):
            ray.init(address=spec.address, _node_ip_address=spec.addrs[spec.head], logging_level="warning",
                     log_to_driver=False)
            joined = sum(n["Alive"] for n in ray.nodes()) == len(spec.nodes)
            ray.shutdown()
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    return declared, joined


def inside(repeat: int, out: Path) -> int:
    import ray

    job = slurm.job_id()
    nodes = slurm.job_nodes(job)
    spec = spec_for(job, nodes, out.parent / "ray_bringup_logs")
    rows = []
    for i in range(repeat):
        lad = ladder_way(spec)
        declared, joined = template_way(spec)
        rows.append({"repeat": i, "ladder_ready_s": round(lad, 2), "template_declared_ready_s": round(declared, 2),
                     "template_all_joined_when_declared": joined})
        print(rows[-1], flush=True)
    lad = sorted(r["ladder_ready_s"] for r in rows)[len(rows) // 2]
    tpl = sorted(r["template_declared_ready_s"] for r in rows)[len(rows) // 2]
    write_json(out, {"metadata": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nodes": nodes, "job": job,
                                  "ray": ray.__version__, "template": f"head, sleep {HEAD_SLEEP}, "
                                  f"each worker + sleep {WORKER_SLEEP}"},
                     "runs": rows, "median_ladder_ready_s": lad, "median_template_ready_s": tpl,
                     "ratio_ladder_over_template": round(lad / tpl, 3),
                     "template_declared_ready_too_early": sum(not r["template_all_joined_when_declared"]
                                                              for r in rows)})
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "ray_bringup.json")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        return inside(a.repeat, a.out)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--wait", f"--nodes={a.nodes}", f"--ntasks={a.nodes}", "--cpus-per-task=1", "--mem=2000",
           f"--output={a.out.with_suffix('.log')}", "--time=20",
           f"--wrap={sys.executable} {Path(__file__).resolve()} --inside --repeat {a.repeat} --out {a.out}"]
    rc = subprocess.run(cmd).returncode
    print(a.out.read_text() if a.out.exists() else a.out.with_suffix(".log").read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())
