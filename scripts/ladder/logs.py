"""Log helpers: the last lines of the log that explains a failure, the latest run of an appended log,
and vLLM's start-up phases (only its log says them)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path


def tail(path: Path, n: int = 15, indent: str = "    ") -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"{indent}(no log at {path})"
    return "\n".join(indent + line for line in lines[-n:])


def shorten(text: str, head: int = 500, end: int = 1500) -> str:
    """Keep what a diagnosis says first (what failed) and last (the log tail)."""
    return text if len(text) <= head + end else f"{text[:head]} … {text[-end:]}"


def last_run(log: Path) -> list[str]:
    """Lines of the latest start in an appended log (each start writes a `$ cmd` line); [] if unreadable."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    return lines[starts[-1]:] if starts else lines


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


def largest(lines: list[str], patterns: dict[str, re.Pattern[str]]) -> dict[str, float]:
    """Per pattern, the largest number its lines print: TP/PP ranks print their own, in parallel,
    so the slowest (or largest) rank counts."""
    out: dict[str, float] = {}
    for line in lines:
        for name, pat in patterns.items():
            if m := pat.search(line):
                out[name] = max(out.get(name, 0.0), float(m.group(1).replace(",", "")))
    return out


def vllm_phases(log: Path) -> dict[str, float]:
    """Seconds per start-up phase from one `vllm serve` log (missing phases are left out)."""
    lines = last_run(log)
    if not lines:
        return {}
    found = largest(lines, _PATTERNS)
    warm = warm_end = None
    for line in lines:
        t = _ts(line)
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


STARTUP = "startup_"  # verdict metric prefix: startup_model_load, startup_compile_warmup, ...


def startup_metrics(log: Path) -> dict[str, float]:
    """vLLM's start-up phases as verdict metrics, so the report reads them from the verdict."""
    return {STARTUP + k: x for k, x in vllm_phases(log).items()}


# Per GPU (each rank prints its own; the largest counts). CPU builds print neither the KV line
# nor a GiB figure for the weights on every release, so a CPU run may record nothing.
MEMORY = {
    "weights_gib_per_gpu": re.compile(r"Model loading took ([0-9.]+) ?GiB"),
    "kv_cache_gib_per_gpu": re.compile(r"Available KV cache memory: ([0-9.]+) GiB"),
    "kv_cache_tokens": re.compile(r"GPU KV cache size: ([0-9,]+) tokens"),
}


def vllm_memory(log: Path) -> dict[str, float]:
    """Weights and KV cache a `vllm serve` allocated (what quantization saves), from its log."""
    return largest(last_run(log), MEMORY)
