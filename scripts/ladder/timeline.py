"""Where a stage's time went: Slurm queue wait, Ray join, and vLLM's start-up phases.

The vLLM phases come from its own log lines (timestamps and the durations it prints),
the queue wait from Slurm's record of the job, the rest from the stage's metrics.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from ladder.logs import last_run

_TS = re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d)")
# CPU builds print "Initializing model" + "Loading weights"; CUDA builds one "Model loading
# took <GiB> and <s> seconds" line; "torch.compile takes" became "took" in later releases.
_PATTERNS = {
    "model_load": re.compile(r"Loading weights took ([0-9.]+) seconds"),
    "model_init": re.compile(r"Initializing model took ([0-9.]+) seconds"),
    "model_loading": re.compile(r"Model loading took [0-9.]+ GiB(?: memory)? and ([0-9.]+) seconds"),
    "init_engine": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s"),
    "torch_compile": re.compile(r"torch\.compile (?:takes|took) ([0-9.]+) s in total"),
}


def _ts(line: str) -> datetime | None:
    m = _TS.search(line)
    return datetime.strptime("2000-" + m.group(1), "%Y-%m-%d %H:%M:%S") if m else None


def vllm_phases(log: Path) -> dict[str, float]:
    """Seconds per start-up phase from one `vllm serve` log (missing phases are left out)."""
    try:
        lines = last_run(log)
    except OSError:
        return {}
    found: dict[str, float] = {}
    first = warm = warm_end = None
    for line in lines:
        t = _ts(line)
        if t and first is None:
            first = t
        for name, pat in _PATTERNS.items():
            m = pat.search(line)
            if m:
                # Ranks (TP/PP workers) run these phases in parallel: the slowest one counts.
                found[name] = max(found.get(name, 0.0), float(m.group(1)))
        if t and "Warming up model for the compilation" in line and warm is None:
            warm = t
        if t and warm and warm_end is None and ("KV cache on node" in line or "saved AOT compiled" in line):
            warm_end = t
    load = found.get("model_loading") or found.get("model_load", 0) + found.get("model_init", 0)
    out = {"model_load": round(load, 2)}
    if "torch_compile" in found:
        out["compile_warmup"] = round(found["torch_compile"], 2)
    elif warm and warm_end:
        out["compile_warmup"] = float((warm_end - warm).seconds)
    if "init_engine" in found:
        # The rest of engine init: memory profiling, KV-cache allocation, graph capture.
        out["kv_cache_profile"] = round(max(found["init_engine"] - out.get("compile_warmup", 0), 0), 2)
    return out


def queue_wait_s(job: str) -> float | None:
    """Submit-to-start from slurmctld (kept MinJobAge after the end), else sacct; None if unknown."""
    if not job:
        return None
    for cmd in (["scontrol", "show", "job", "-o", job],
                ["sacct", "-n", "-X", "-P", "-j", job, "-o", "Submit,Start"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "SubmitTime=" in out:
            f = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
            sub, start = f.get("SubmitTime"), f.get("StartTime")
        elif "|" in out:
            sub, start = out.strip().splitlines()[0].split("|")[:2]
        else:
            continue
        try:
            return (datetime.fromisoformat(start) - datetime.fromisoformat(sub)).total_seconds()
        except (TypeError, ValueError):
            continue
    return None


def stage_breakdown(stage: str, verdict: dict[str, Any], wall_s: float | None, results: Path) -> dict[str, float]:
    """One bar of the report's time chart: named phases plus 'other' up to the stage's wall time."""
    m = verdict.get("metrics", {})
    parts: dict[str, float] = {}
    q = queue_wait_s(verdict.get("slurm_job", ""))
    if q is not None:
        parts["queue_wait"] = q
    if "bringup_s" in m or "ray_bringup_s" in m:
        parts["ray_join"] = float(m.get("bringup_s", m.get("ray_bringup_s", 0)))
    logs = sorted((results / "logs" / stage).glob("*/vllm-serve.log"))
    if logs:
        phases = vllm_phases(logs[0])
        parts.update(phases)
        healthy = float(m.get("time_to_healthy_s", 0))
        parts["api_ready_rest"] = max(healthy - sum(phases.values()), 0.0)
    bench = results / stage / "bench.json"
    if bench.exists():
        import json

        parts["benchmark"] = sum(r["duration_s"] for r in json.loads(bench.read_text())["results"].values())
    if wall_s is not None:
        parts["other"] = max(wall_s - sum(v for k, v in parts.items() if k != "queue_wait"), 0.0)
    return {k: round(v, 2) for k, v in parts.items()}
