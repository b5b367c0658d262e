"""Goodput under an SLO from `vllm bench serve` runs: the rate a server setting sustains, and the best setting.

Pure logic over `vllm bench serve` result JSONs (one per candidate, rate and repetition). vLLM
counts a request as good when it meets every SLO given with `--goodput`; a rate *meets the SLO*
when, in the median repetition, at least `percentile` % of its requests were good. A candidate's
capacity is the highest rate tried that meets it (rates above a failing one are not trusted:
queueing only grows with load); its score is the goodput there.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from itertools import product, takewhile
from pathlib import Path
from typing import Any

DEFAULTS = "defaults"


def candidates(space: dict[str, list[Any]], limit: int) -> list[dict[str, Any]]:
    """vLLM's defaults first, then the grid of `space` (Cartesian product, in order), at most `limit` in all."""
    keys = [k for k, v in space.items() if v]
    grid = [dict(zip(keys, values, strict=True)) for values in product(*(space[k] for k in keys))] if keys else []
    named = [{"_benchmark_name": DEFAULTS}]
    named += [{"_benchmark_name": f"cand{i}", **c} for i, c in enumerate(grid, 1)]
    return named[:max(limit, 1)]


def slo_args(slo: dict[str, Any]) -> list[str]:
    """`--goodput` items for vllm bench serve (milliseconds)."""
    return [f"{k}:{slo[f'{k}_ms']:g}" for k in ("ttft", "tpot", "e2el") if slo.get(f"{k}_ms")]


@dataclass
class RatePoint:
    rate: float
    runs: int
    goodput: float  # median request goodput, req/s
    goodput_min: float
    goodput_max: float
    throughput: float  # median request throughput, req/s
    output_tok_s: float
    attainment: float  # median fraction of requests that met every SLO
    ttft_p99_ms: float | None
    tpot_p99_ms: float | None
    e2el_p99_ms: float | None
    meets_slo: bool


@dataclass
class Candidate:
    name: str
    args: dict[str, Any]
    points: list[RatePoint] = field(default_factory=list)
    error: str = ""
    memory: dict[str, float] = field(default_factory=dict)  # what its server's log says it allocated

    @property
    def best(self) -> RatePoint | None:
        """The highest rate that meets the SLO with every lower rate meeting it too."""
        meeting = list(takewhile(lambda p: p.meets_slo, sorted(self.points, key=lambda p: p.rate)))
        return meeting[-1] if meeting else None

    @property
    def score(self) -> float:
        return self.best.goodput if self.best else 0.0

    def as_dict(self) -> dict[str, Any]:
        b = self.best
        return {"name": self.name, "args": self.args, "error": self.error, "score_goodput": self.score,
                "max_rate_meeting_slo": b.rate if b else None, "memory": self.memory,
                "points": [asdict(p) for p in self.points]}


def rate_point(rate: float, runs: list[dict[str, Any]], percentile: float) -> RatePoint:
    def med(key: str) -> float | None:
        vals = [float(r[key]) for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    goodputs = [float(r.get("request_goodput") or 0.0) for r in runs]
    attain = [float(r.get("request_goodput") or 0.0) / float(r["request_throughput"])
              if r.get("request_throughput") else 0.0 for r in runs]
    attainment = statistics.median(attain)
    completed = all(r.get("completed", 0) > 0 and not r.get("failed") for r in runs)
    return RatePoint(rate=rate, runs=len(runs), goodput=statistics.median(goodputs), goodput_min=min(goodputs),
                     goodput_max=max(goodputs), throughput=med("request_throughput") or 0.0,
                     output_tok_s=med("output_throughput") or 0.0, attainment=round(attainment, 4),
                     ttft_p99_ms=med("p99_ttft_ms"), tpot_p99_ms=med("p99_tpot_ms"), e2el_p99_ms=med("p99_e2el_ms"),
                     meets_slo=completed and attainment >= percentile / 100)


def pick(cands: list[Candidate]) -> tuple[Candidate | None, Candidate | None, float | None]:
    """(best, defaults, gain = best score / defaults score; None when the defaults meet the SLO at no rate)."""
    defaults = next((c for c in cands if c.name == DEFAULTS), None)
    scored = [c for c in cands if c.best]
    best = max(scored, key=lambda c: (c.score, c.name == DEFAULTS)) if scored else None
    gain = round(best.score / defaults.score, 3) if best and defaults and defaults.score else None
    return best, defaults, gain


def tuned_serve_args(results: Path, tune: dict[str, Any]) -> list[str]:
    """The winning `vllm serve` arguments for the stages after tune ([] unless tune ran and applies)."""
    best = results / "tune" / "best.json"
    if not (tune["enabled"] and tune["apply"] and best.exists()):
        return []
    return list(json.loads(best.read_text())["serve_args"])


GPU_ONLY = ("gpu_memory_utilization", "cuda_graph_sizes", "kv_cache_dtype", "quantization")


def space_errors(tune: dict[str, Any], gpus_per_node: int) -> list[str]:
    """Bad `tune` settings, named by key, before anything is submitted."""
    if not tune["enabled"]:
        return []
    errors = [f"tune.space.{k}: a GPU setting, but cluster.gpus_per_node is 0"
              for k in GPU_ONLY if tune["space"].get(k) and not gpus_per_node]
    if not any(tune["slo"].get(f"{k}_ms") for k in ("ttft", "tpot", "e2el")):
        errors.append("tune.slo: give at least one of ttft_ms, tpot_ms, e2el_ms")
    return errors
