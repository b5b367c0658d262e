"""Orchestration overhead of the env -> probe -> ray DAG on the sandbox cluster.

Runs the real DAG (snakemake --profile profiles/sandbox) in a fresh work directory per
run, interleaved: with the Slurm executor plugin as it comes (`--executor slurm`, its
status-check defaults), as the profile has it (`slurm-sandbox`: the plugin with its back-off
capped, tuned intervals), and as the profile has it with `cluster.one_allocation` (the
stages as one Snakemake job group: one Slurm job). A job per stage splits every stage's
wall time into

  gap_before_s  previous stage seen finished (or Snakemake start) -> this one submitted
  work_s        the stage's own work (Snakemake's benchmark: TSV, column s)
  queue_s       sbatch accepted -> resources allocated   (slurmctld log)
  in_job_s      job allocated -> job done, minus work_s  (jobstep Snakemake start-up, srun)
  detect_s      job done (slurmctld) -> Snakemake reports it finished (status checks)
  overhead_s    submitted -> seen finished, minus work_s (= everything but the work)
and for the whole DAG: wall time, work, overhead and shutdown (last stage seen -> exit);
with one allocation the same fields describe its one job (work = the stages' work summed).
Every variant's overhead per stage is its DAG overhead divided by the number of stages.

Timestamps: slurmctld's log (milliseconds) and the arrival time of Snakemake's own
output lines. Writes results/bench/orchestration.json with metadata and the ratios
tuned/default and one_allocation/tuned measured in the same invocation.

    python bench/orchestration.py [--instance 7] [--nodes 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from snakemake.utils import update_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK_ROOT = ROOT / ".cache" / "bench"  # the runs' work directories (--keep leaves them there)
TARGET = "results/ray/verdict.json"
STAGES = ("env", "probe", "ray")

# The plugin as it comes: its defaults (Snakemake's own for the interval); the sandbox's
# status command and log folder, so only the status checks differ.
DEFAULTS = {"executor": "slurm", "slurm-init-seconds-before-status-checks": "40",
            "seconds-between-status-checks": "10", "slurm-status-command": "squeue",
            "slurm-logdir": "results/logs/slurm"}
TUNED_KEYS = ("executor", "slurm-sandbox-init-seconds-before-status-checks", "seconds-between-status-checks")
VARIANTS = ("default", "tuned", "one_allocation")
STAGE_FIELDS = ("gap_before_s", "work_s", "overhead_s", "queue_s", "in_job_s", "detect_s")

# The log folder names the rule (rule_<rule>/) or the group (group_stages_<rules>/).
SUBMIT = re.compile(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: \S*/(?:rule|group)_(\w+)/")
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")
CTLD = re.compile(r"^\[(\S+)\] (?:_slurm_rpc_submit_batch_job: JobId=(\d+) "
                  r"|(?:sched: Allocate|sched/backfill: _start_job: Started) JobId=(\d+) "
                  r"|_job_complete: JobId=(\d+) done)")


def bench_config(nodes: int, one_allocation: bool = False) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text()) or {}
    update_config(cfg, {"cluster": {"nodes": nodes, "one_allocation": one_allocation}})
    prefix = Path(cfg.get("env", {}).get("prefix", ".venv"))
    cfg.setdefault("env", {})["prefix"] = str(prefix if prefix.is_absolute() else ROOT / prefix)
    return cfg


def tuned_settings() -> dict[str, str]:
    prof = yaml.safe_load((ROOT / "profiles" / "sandbox" / "config.yaml").read_text())
    return {k: str(prof[k]) for k in TUNED_KEYS}


def ctld_events(log: Path, offset: int) -> dict[int, dict[str, float]]:
    """jobid -> {submit, start, end} (epoch seconds) from slurmctld's log, read from offset."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        m = CTLD.match(line)
        if not m:
            continue
        t = dt.datetime.fromisoformat(m[1]).timestamp()
        for group, key in ((2, "submit"), (3, "start"), (4, "end")):
            if m[group]:
                out.setdefault(int(m[group]), {})[key] = t
    return out


def run_once(variant: str, settings: dict[str, str], cfg: dict[str, Any], env: dict[str, str],
             ctld_log: Path, keep: bool) -> dict[str, Any]:
    # On storage the sandbox nodes share (the repo's ignored .cache): each node has a /tmp of its own.
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    wd = Path(tempfile.mkdtemp(prefix=f"ladder-bench-{variant}-", dir=WORK_ROOT))
    cfg_file = wd / "bench-config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(wd), "--configfile",
           str(cfg_file), "--profile", str(ROOT / "profiles" / "sandbox")]
    for k, v in settings.items():
        cmd += [f"--{k}", str(v)]
    cmd.append(TARGET)
    offset = ctld_log.stat().st_size
    submitted: dict[str, tuple[int, float]] = {}  # rule or group -> (slurm job id, seen at)
    finished: dict[str, float] = {}
    lines = []
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.time()
        lines.append(line)
        if m := SUBMIT.search(line):
            submitted[m[2]] = (int(m[1]), now)
        elif m := FINISHED.search(line):
            finished[m[2]] = now
    rc = proc.wait()
    t_end = time.time()
    # Each Slurm job and the stages it ran: one each, or one group named after them (stages_env_probe_ray).
    jobs = {name: [st for st in STAGES if st in name.split("_")] for name in submitted}
    ran = sorted(st for rules in jobs.values() for st in rules)
    if rc != 0 or ran != sorted(STAGES):
        raise SystemExit(f"{variant} run failed (exit {rc}, submitted {sorted(submitted)}):\n{''.join(lines[-40:])}")
    events = ctld_events(ctld_log, offset)
    stages = {}
    previous = t0
    for name in sorted(jobs, key=lambda n: submitted[n][1]):
        jid, t_sub = submitted[name]
        ev = events.get(jid, {})
        work = sum(float(next(csv_rows(wd / "results" / "benchmarks" / f"{st}.tsv"))["s"]) for st in jobs[name])
        seen = max(finished[st] for st in jobs[name])
        wall = seen - t_sub
        row = {"slurm_job": jid, "gap_before_s": t_sub - previous, "work_s": work, "wall_s": wall,
               "overhead_s": wall - work}
        if {"submit", "start", "end"} <= ev.keys():
            row |= {"queue_s": ev["start"] - ev["submit"], "in_job_s": ev["end"] - ev["start"] - work,
                    "detect_s": seen - ev["end"]}
        stages[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        previous = seen
    total_work = sum(s["work_s"] for s in stages.values())
    result = {"variant": variant, "settings": settings, "workdir": str(wd) if keep else None,
              "dag_wall_s": round(t_end - t0, 3), "work_s": round(total_work, 3),
              "overhead_s": round(t_end - t0 - total_work, 3),
              "overhead_per_stage_s": round((t_end - t0 - total_work) / len(STAGES), 3),
              "shutdown_s": round(t_end - previous, 3), "stages": stages}
    if not keep:
        shutil.rmtree(wd, ignore_errors=True)
    return result


def csv_rows(path: Path):
    header, *rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        yield dict(zip(header, r, strict=False))


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(xs: list[float]) -> float:
        return round(statistics.fmean(xs), 3)

    out: dict[str, Any] = {}
    for variant in VARIANTS:
        rs = [r for r in runs if r["variant"] == variant]
        out[variant] = {"runs": len(rs), **{k: mean([r[k] for r in rs]) for k in
                                            ("dag_wall_s", "work_s", "overhead_s", "overhead_per_stage_s",
                                             "shutdown_s")},
                        "stages": {job: {k: mean([r["stages"][job][k] for r in rs])
                                         for k in STAGE_FIELDS if all(k in r["stages"][job] for r in rs)}
                                   for job in rs[0]["stages"]}}
    for a, b in (("tuned", "default"), ("one_allocation", "tuned")):
        out[f"ratio_{a}_over_{b}"] = {k: round(out[a][f"{k}_s"] / out[b][f"{k}_s"], 3)
                                      for k in ("dag_wall", "overhead")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instance", type=int, default=int(os.environ.get("LADDER_TEST_SANDBOX", "7")),
                    help="sandbox instance (default 7, the test sandbox; it is brought up when down)")
    ap.add_argument("--sandbox-nodes", type=int, default=3, help="nodes of the sandbox when it must be started")
    ap.add_argument("--nodes", type=int, default=2, help="cluster.nodes for the probe stage")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "orchestration.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    a = ap.parse_args(argv)

    from ladder import sandbox as sb

    state_dir = sb.default_state(a.instance).resolve()
    if sb.status(state_dir) != 0:
        up = subprocess.run([sys.executable, "-m", "ladder.sandbox", "--instance", str(a.instance), "up",
                             "--nodes", str(a.sandbox_nodes)], cwd=ROOT)
        if up.returncode:
            return up.returncode
    conf = state_dir / "etc" / "slurm.conf"
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    ctld_log = state_dir / "log" / "slurmctld.log"
    cfgs = {v: bench_config(a.nodes, one_allocation=v == "one_allocation") for v in VARIANTS}
    tuned = tuned_settings()
    variants = {"default": DEFAULTS, "tuned": tuned, "one_allocation": tuned}
    runs = []
    for i in range(a.repeat):
        for name, settings in variants.items():
            print(f"[{i + 1}/{a.repeat}] {name}: {settings}", flush=True)
            r = run_once(name, settings, cfgs[name], env, ctld_log, a.keep)
            print(f"  DAG {r['dag_wall_s']:.1f}s = work {r['work_s']:.1f}s + overhead {r['overhead_s']:.1f}s"
                  f" (shutdown {r['shutdown_s']:.1f}s)", flush=True)
            for st, row in r["stages"].items():
                print(f"  {st:20s} " + " ".join(f"{k[:-2]} {row[k]:.1f}" for k in STAGE_FIELDS if k in row), flush=True)
            runs.append(r)
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c %m"], env=env, capture_output=True, text=True).stdout
    slurm = subprocess.run(["sinfo", "--version"], env=env, capture_output=True, text=True).stdout.strip()
    report = {
        "benchmark": "orchestration",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "versions": {"python": platform.python_version(), "snakemake": version("snakemake"),
                     "snakemake-executor-plugin-slurm": version("snakemake-executor-plugin-slurm"),
                     "snakemake-executor-plugin-slurm-jobstep": version("snakemake-executor-plugin-slurm-jobstep"),
                     "slurm": slurm},
        "sandbox": {"instance": a.instance, "nodes": sinfo.split("\n")[:-1]},
        "dag": {"target": TARGET, "stages": list(STAGES), "cluster_nodes": a.nodes},
        "config_hash": hashlib.sha256(json.dumps(cfgs["tuned"], sort_keys=True).encode()).hexdigest()[:12],
        "settings": variants,
        "summary": summarize(runs),
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
