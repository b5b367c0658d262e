"""vLLM's own benchmark (`vllm bench serve`'s code), run the same way by every stage.

A sweep is the closed-loop concurrency levels (`c<N>`) and the open-loop request rates
(`r<R>`, Poisson or gamma arrivals) of the `bench` config, each run `repetitions` times after
`warmup_prompts` unmeasured requests, every repetition with other random prompts
(seed + repetition: none is served from the prefix cache an earlier one filled). A level's
result is its median repetition (by output throughput) with the spread of all of them.

All runs of a sweep execute in one process (`python -m ladder.bench PLAN`): importing vLLM's
benchmark module costs ~19 s of CPU on the 2-core sandbox, paid once instead of once per run,
and the process has a deadline, so a server that stops answering cannot hang a stage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

PERCENTILES = "50,90,99"
METRICS = ("ttft", "tpot", "itl", "e2el")


def metadata(cfg: dict[str, Any], versions: dict[str, Any], nodes: list[str], plan: dict[str, int],
             config_hash: str, model: str) -> dict[str, Any]:
    device = f"{cfg['cluster']['gpus_per_node']} GPU/node" if cfg["cluster"]["gpus_per_node"] else "cpu"
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cluster": cfg["cluster"]["name"], "nodes": nodes,
            "device": device, "model": model, "plan": plan, "config_hash": config_hash,
            "versions": versions.get("versions", {}), "bench_settings": cfg["bench"]}


PREFIX_CACHE = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")  # counters, in tokens


def bench_args(base_url: str, model: str, tokenizer: str, workload: dict[str, Any], out: Path, repetition: int,
               rate: float | None = None, concurrency: int | None = None,
               goodput: list[str] | None = None) -> list[str]:
    """`vllm bench serve` arguments for one run: open loop at `rate`, or closed loop at `concurrency`.

    workload: input_len, output_len, num_prompts, seed, warmup_prompts, burstiness. The API key
    travels in the environment (OPENAI_API_KEY), never on a command line."""
    w = workload
    # Each level and repetition its own prompts: vLLM caches prefixes by default, so a prompt sent again
    # skips its prefill (seen on an H200: after tune's first rate, 96.9 % of prompt tokens were cache hits).
    level = f"rate{rate:g}" if rate is not None else f"c{concurrency}"
    seed = w["seed"] + 1000 * (zlib.crc32(level.encode()) % 1_000_000) + repetition
    args = ["--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", str(w["input_len"]),
            "--random-output-len", str(w["output_len"]), "--ignore-eos", "--num-prompts", str(w["num_prompts"]),
            "--seed", str(seed), "--num-warmups", str(w["warmup_prompts"]),
            "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", PERCENTILES, "--disable-tqdm",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name]
    if goodput:
        args += ["--goodput", *goodput]
    if rate is not None:
        return args + ["--request-rate", f"{rate:g}", "--burstiness", str(w["burstiness"])]
    return args + ["--max-concurrency", str(concurrency)]


def run_bench(args: list[str]) -> dict[str, Any]:
    """One benchmark with vLLM's own code, in this process (its import is paid once)."""
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return bench_main(parser.parse_args(args))


def parse_result(raw: dict[str, Any]) -> dict[str, Any]:
    """The numbers we compare, from one `vllm bench serve` result JSON."""
    out: dict[str, Any] = {
        "completed": raw["completed"],
        "failed": raw.get("failed", raw["num_prompts"] - raw["completed"] if "num_prompts" in raw else 0),
        "duration_s": raw["duration"],
        "request_throughput": raw["request_throughput"],
        "output_throughput": raw["output_throughput"],
        "total_token_throughput": raw["total_token_throughput"],
        "request_goodput": raw.get("request_goodput"),  # with --goodput (the SLO) only
    }
    for m in METRICS:
        out[f"{m}_ms"] = {"mean": raw.get(f"mean_{m}_ms"), "median": raw.get(f"median_{m}_ms"),
                          **{f"p{p}": raw.get(f"p{p}_{m}_ms") for p in PERCENTILES.split(",")}}
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetition with the median output throughput, plus the spread over all of them.

    Failures are summed over the repetitions: one failed request in any of them counts."""
    ordered = sorted(runs, key=lambda r: r["output_throughput"])
    out = parse_result(ordered[len(ordered) // 2])
    out["failed"] = sum(parse_result(r)["failed"] for r in runs)
    tput = [r["output_throughput"] for r in runs]
    out["repetitions"] = {"n": len(runs), "output_throughput_min": min(tput), "output_throughput_max": max(tput),
                          "output_throughput_stdev": statistics.pstdev(tput)}
    return out


def levels(bench: dict[str, Any]) -> list[tuple[str, float | None, int | None]]:
    """(label, rate, concurrency) of every level of the sweep: closed loop first, then open loop."""
    return [(f"c{c}", None, c) for c in bench["concurrency"]] + [(f"r{r:g}", r, None) for r in bench["rates"]]


def prefix_cache(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """vLLM's prefix-cache counters over the sweep: the share of prompt tokens it did not compute."""
    if not before or not after:
        return {"hit_rate": None, "why": "the server's /metrics did not answer"}
    queried, hits = (after[k] - before[k] for k in PREFIX_CACHE)
    return {"prompt_tokens": queried, "hits": hits, "hit_rate": round(hits / queried, 4) if queried else None}


def run_sweep(base_url: str, model: str, tokenizer: str, bench: dict[str, Any], key: str, out_dir: Path,
              log: Path, run_timeout_s: float = 300,
              goodput: list[str] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The whole sweep in one child process (deadline: run_timeout_s per run); returns {level: median run}
    and the server's prefix-cache hits over it (ladder.bench.prefix_cache)."""
    from ladder.vllmserver import prometheus

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {}  # level -> its runs' result files
    plan = []
    for label, rate, conc in levels(bench):
        files[label] = [out_dir / f"bench-{label}-run{i}.json" for i in range(bench["repetitions"])]
        for i, out in enumerate(files[label]):
            out.unlink(missing_ok=True)
            plan.append(bench_args(base_url, model, tokenizer, bench, out, i, rate=rate, concurrency=conc,
                                   goodput=goodput))
    plan_file = out_dir / "plan.json"
    plan_file.write_text(json.dumps(plan, indent=1))
    env = dict(os.environ, OPENAI_API_KEY=key)  # how bench serve's openai backend sends the key
    timeout = 60 + run_timeout_s * len(plan)
    before = prometheus(base_url, PREFIX_CACHE)
    with open(log, "ab") as fh:
        fh.write(f"$ {sys.executable} -m ladder.bench {plan_file}  ({len(plan)} runs)\n".encode())
        fh.flush()
        try:
            rc = subprocess.run([sys.executable, "-m", "ladder.bench", str(plan_file)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"vllm bench serve: {len(plan)} runs not done after {timeout:.0f}s; see {log}") from None
    if rc != 0:
        raise RuntimeError(f"vllm bench serve exited with {rc}; see {log}")
    results = {}
    for label, runs in files.items():
        for f in runs:
            f.chmod(0o644)
        results[label] = median_run([json.loads(f.read_text()) for f in runs])
    return results, prefix_cache(before, prometheus(base_url, PREFIX_CACHE))


def ratios(multi: dict[str, dict[str, Any]], single: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Multinode / single ratios per level, both measured with identical settings."""
    def compared(r: dict[str, Any]) -> dict[str, float]:
        return {"output_throughput": r["output_throughput"], "request_throughput": r["request_throughput"],
                **{f"{m}_median": r[f"{m}_ms"]["median"] for m in ("ttft", "tpot", "e2el")}}

    return {level: {k: round(x / compared(single[level])[k], 3) for k, x in compared(m).items()}
            for level, m in multi.items() if single.get(level)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run every `vllm bench serve` argument list of PLAN, in order.")
    ap.add_argument("plan", type=Path, help="JSON list of argument lists (written by run_sweep)")
    a = ap.parse_args(argv)
    for args in json.loads(a.plan.read_text()):
        print(f"--- vllm bench serve {' '.join(args)}", flush=True)
        run_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
