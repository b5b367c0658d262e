"""`vllm bench serve` runs and their results: one sweep, same settings for every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PERCENTILES = "50,90,99"
METRICS = ("ttft", "tpot", "itl", "e2el")


def bench_command(base_url: str, model: str, tokenizer: str, bench: dict[str, Any], concurrency: int,
                  result_dir: Path, filename: str) -> list[str]:
    return [sys.executable, "-m", "ladder.vllm_cli", "bench", "serve", "--backend", "openai",
            "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(bench["input_len"]),
            "--random-output-len", str(bench["output_len"]), "--num-prompts", str(bench["num_prompts"]),
            "--max-concurrency", str(concurrency), "--seed", str(bench["seed"]), "--ignore-eos",
            "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", PERCENTILES,
            "--save-result", "--result-dir", str(result_dir), "--result-filename", filename]


def parse_result(raw: dict[str, Any]) -> dict[str, Any]:
    """The numbers we compare, from one `vllm bench serve` result JSON."""
    out: dict[str, Any] = {
        "completed": raw["completed"],
        "failed": raw.get("failed", raw["num_prompts"] - raw["completed"] if "num_prompts" in raw else 0),
        "duration_s": raw["duration"],
        "request_throughput": raw["request_throughput"],
        "output_throughput": raw["output_throughput"],
        "total_token_throughput": raw["total_token_throughput"],
    }
    for m in METRICS:
        out[f"{m}_ms"] = {"mean": raw.get(f"mean_{m}_ms"), "median": raw.get(f"median_{m}_ms"),
                          **{f"p{p}": raw.get(f"p{p}_{m}_ms") for p in PERCENTILES.split(",")}}
    return out


def run_sweep(base_url: str, model: str, tokenizer: str, bench: dict[str, Any], key: str, out_dir: Path,
              log: Path, timeout_s: float = 900) -> dict[str, dict[str, Any]]:
    """One `vllm bench serve` per concurrency level; returns {"c<N>": parsed}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    env = dict(os.environ, OPENAI_API_KEY=key)  # how bench serve's openai backend sends the key
    for c in bench["concurrency"]:
        name = f"bench-c{c}.json"
        cmd = bench_command(base_url, model, tokenizer, bench, c, out_dir, name)
        with open(log, "ab") as fh:
            fh.write(f"$ {' '.join(cmd)}\n".encode())
            fh.flush()
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
        if rc != 0:
            raise RuntimeError(f"vllm bench serve (concurrency {c}) exited with {rc}; see {log}")
        raw = json.loads((out_dir / name).read_text())
        (out_dir / name).chmod(0o644)
        results[f"c{c}"] = parse_result(raw)
    return results


def ratios(multi: dict[str, dict[str, Any]], single: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Multinode / single ratios per concurrency, both measured with identical settings."""
    out = {}
    for level, m in multi.items():
        s = single.get(level)
        if not s:
            continue
        out[level] = {
            "output_throughput": round(m["output_throughput"] / s["output_throughput"], 3),
            "request_throughput": round(m["request_throughput"] / s["request_throughput"], 3),
            "ttft_median": round(m["ttft_ms"]["median"] / s["ttft_ms"]["median"], 3),
            "tpot_median": round(m["tpot_ms"]["median"] / s["tpot_ms"]["median"], 3),
            "e2el_median": round(m["e2el_ms"]["median"] / s["e2el_ms"]["median"], 3),
        }
    return out
