"""The stage verdict contract (DESIGN.md §1) and ReFrame-style reference checks.

Every stage writes ``results/<stage>/verdict.json``; the next stage takes it as input
(the gate) and the report reads all of them.  ``Verdict.finish`` writes the file and
returns the process exit code, so a failing check stops Snakemake downstream.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("pass", "fail", "degraded")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Check:
    name: str
    ok: bool | None  # None = not applicable (recorded with the reason in detail)
    value: Any = None
    expected: Any = None
    unit: str = ""
    detail: str = ""


@dataclass
class Verdict:
    stage: str
    config_hash: str = ""
    slurm_job: str = field(default_factory=lambda: os.environ.get("SLURM_JOB_ID", ""))
    nodes: list[str] = field(default_factory=list)
    started: str = field(default_factory=now)
    finished: str = ""
    status: str = "fail"
    versions: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    degraded_reason: str = ""

    def check(self, name: str, ok: bool | None, value: Any = None, expected: Any = None,
              unit: str = "", detail: str = "") -> bool:
        self.checks.append(Check(name, ok, value, expected, unit, detail))
        mark = {True: "ok  ", False: "FAIL", None: "n/a "}[ok]
        print(f"[{self.stage}] {mark} {name}: {value!r} (expected {expected!r}{' ' + unit if unit else ''})"
              f"{' - ' + detail if detail else ''}", flush=True)
        return bool(ok) or ok is None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def finish(self, path: Path | str) -> int:
        if not any(c.ok is not None for c in self.checks):
            # A stage that checked nothing has not shown that anything works.
            self.check("checked_something", False, len(self.checks), ">= 1 check that ran",
                       detail="no check of this stage passed or failed (all absent or not applicable)")
        self.status = "fail" if self.failed else "degraded" if self.degraded_reason else "pass"
        self.finished = now()
        path = Path(path)
        # A failed stage leaves no verdict.json, so the next run re-runs it even where Snakemake keeps
        # a failed job's outputs (--keep-incomplete, which one_allocation needs: on a group's failure
        # Snakemake would delete every stage's outputs). Copies of the verdict and measurements stay.
        failed_copy = path.with_name("verdict.failed.json")
        kept = path.with_name("failed")
        shutil.rmtree(kept, ignore_errors=True)
        if self.status == "fail":
            path.unlink(missing_ok=True)
            write_json(failed_copy, asdict(self))
            for f in path.parent.iterdir():
                if f.is_dir():
                    shutil.copytree(f, kept / f.name, dirs_exist_ok=True)
                elif f.suffix in (".json", ".csv") and f.name not in (path.name, failed_copy.name):
                    kept.mkdir(exist_ok=True)
                    shutil.copy2(f, kept / f.name)
        else:
            write_json(path, asdict(self))
            failed_copy.unlink(missing_ok=True)
        print(f"[{self.stage}] verdict: {self.status}"
              + (f" ({', '.join(c.name for c in self.failed)})" if self.failed else ""), flush=True)
        return 1 if self.status == "fail" else 0


def write_json(path: Path, data: Any) -> None:
    """Write atomically and readable by the lab, never world-writable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.chmod(0o644)
    tmp.replace(path)


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or ``default`` where it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def read_verdict(path: Path | str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("status") not in STATUSES:
        raise ValueError(f"{path}: status {data.get('status')!r} is not one of {STATUSES}")
    return data


def require_gate(path: Path | str) -> dict[str, Any]:
    """The previous stage's verdict must be pass or degraded; else refuse to run."""
    data = read_verdict(path)
    if data["status"] == "fail":
        raise SystemExit(f"gate closed: {path} says the {data['stage']} stage failed")
    return data


def reference_check(verdict: Verdict, metric: str, value: float, references: dict[str, list[Any]]) -> bool:
    """Compare ``value`` with ``references[metric] = [ref, lower, upper, unit]`` (fractions of ref).

    A missing reference only records the number (ok=None); ReFrame's convention.
    """
    verdict.metrics[metric] = value
    ref = references.get(metric)
    if ref is None:
        return verdict.check(f"perf:{metric}", None, value, None, detail="no reference for this cluster")
    target, lower, upper, unit = ref
    lo = target * (1 + lower) if lower is not None else float("-inf")
    hi = target * (1 + upper) if upper is not None else float("inf")
    ok = lo <= value <= hi
    return verdict.check(f"perf:{metric}", ok, round(value, 4), [target, lower, upper], unit,
                         detail=f"allowed [{lo:.4g}, {hi:.4g}]")


def open_stage(stage: str, ap: argparse.ArgumentParser,
               argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any], Verdict]:
    """A node stage's start: its arguments, its gate (exits if closed), its config and its verdict."""
    a = ap.parse_args(argv)
    require_gate(a.gate)
    return a, json.loads(a.config.read_text()), Verdict(stage, config_hash=a.config_hash)


def stage_parser(description: str, *, serving: bool = False) -> argparse.ArgumentParser:
    """The arguments every node stage takes from its rule (gate, results root, resolved config,
    logs, config hash); the vLLM stages also take the shared cache and their output directory."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--gate", type=Path, required=True, help="the previous stage's verdict (must not be fail)")
    ap.add_argument("--results", type=Path, required=True, help="results root (probe, env, single outputs)")
    ap.add_argument("--config", type=Path, required=True, help="validated config with defaults (JSON)")
    ap.add_argument("--log-dir", type=Path, required=True)
    ap.add_argument("--config-hash", default="")
    if serving:
        ap.add_argument("--cache", type=Path, required=True, help="shared cache (models, compile caches)")
        ap.add_argument("--out-dir", type=Path, required=True)
    return ap
