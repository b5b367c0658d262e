"""Where a stage's time went: Slurm queue wait, Ray join, and vLLM's start-up phases.

The queue wait comes from Slurm's record of the job, everything else from the stage's verdict
(the stages put vLLM's start-up phases there, parsed from the server's log: ladder.logs).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from ladder.logs import STARTUP


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
    phases = {k[len(STARTUP):]: float(x) for k, x in m.items() if k.startswith(STARTUP)}
    if phases:
        parts.update(phases)
        healthy = float(m.get("time_to_healthy_s", 0))
        parts["api_ready_rest"] = max(healthy - sum(phases.values()), 0.0)
    bench = results / stage / "bench.json"
    if bench.exists():
        parts["benchmark"] = sum(r["duration_s"] for r in json.loads(bench.read_text())["results"].values())
    if wall_s is not None:
        parts["other"] = max(wall_s - sum(v for k, v in parts.items() if k != "queue_wait"), 0.0)
    return {k: round(v, 2) for k, v in parts.items()}
