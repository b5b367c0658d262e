"""Stage single: one node, `vllm serve` (TP = the node's GPUs, 1 on CPU), smoke, greedy outputs, bench.

Its bench.json is the baseline the multinode stage is compared with, and its
outputs.json the reference the distributed split must reproduce token for token.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ladder import plan, roofline, slurm, vllmserver
from ladder.bench import metadata, run_sweep
from ladder.logs import shorten
from ladder.monitor import Sampler
from ladder.verdict import Verdict, open_stage, reference_check, stage_parser, write_json
from ladder.vllmserver import Server, ServerError, api_key, check_healthy, cpu_env, resolve_model, serve_args, smoke


def perf_checks(v: Verdict, stage: str, results: dict[str, dict[str, Any]], refs: dict[str, Any],
                cache: dict[str, Any], bench: dict[str, Any]) -> None:
    # Random prompts share no prefix: only vllm bench's own test request and warm-ups repeat a run's first
    # prompt, so at most (warm-ups + 1) of every (prompts + warm-ups + 1) prompts can hit the cache.
    bound = (bench["warmup_prompts"] + 1) / (bench["num_prompts"] + bench["warmup_prompts"] + 1) + 0.05
    rate = cache["hit_rate"]
    v.check("bench_prompts_prefilled", None if rate is None else rate <= bound, rate, f"<= {bound:.3f}",
            "of prompt tokens from the prefix cache", detail=cache.get("why") or
            f"{cache['hits']:.0f} of {cache['prompt_tokens']:.0f} prompt tokens were prefix-cache hits")
    for level, r in results.items():
        v.check(f"bench_{level}_no_failed_requests", r["failed"] == 0 and r["completed"] > 0,
                r["completed"], "all completed", detail=f"{r['failed']} failed")
        reference_check(v, f"{stage}.output_throughput_{level}", r["output_throughput"], refs)
        reference_check(v, f"{stage}.ttft_median_ms_{level}", r["ttft_ms"]["median"], refs)
        reference_check(v, f"{stage}.tpot_median_ms_{level}", r["tpot_ms"]["median"], refs)


def roofline_checks(v: Verdict, out_dir: Path, bandwidth: dict[str, Any] | None, results: dict[str, dict[str, Any]],
                    log: Path, model_path: str, dtype: str, tp: int, refs: dict[str, Any]) -> None:
    """Single-stream decode vs the HBM roofline (GPU nodes only; ladder.roofline)."""
    if bandwidth is None:
        return
    c1 = results.get("c1")
    if not c1 or not c1["tpot_ms"]["median"]:
        v.check("roofline_ratio", None, detail="bench.concurrency has no 1: no single-stream TPOT to compare")
        return
    wbytes, source = roofline.weight_bytes(log, model_path, dtype, tp)
    summary = roofline.summarize(bandwidth["bandwidth_bytes_s"], wbytes, c1["tpot_ms"]["median"], source)
    summary |= {"tensor_parallel_size": tp, "device": bandwidth["device"],
                "copy_bytes": bandwidth["bytes_per_copy"], "copy_median_s": bandwidth["median_s"],
                "best_hbm_bandwidth_gb_s": round(bandwidth["best_bandwidth_bytes_s"] / 1e9, 1)}
    write_json(out_dir / "roofline.json", summary)
    for key in ("hbm_bandwidth_gb_s", "weight_gib_per_gpu", "roofline_tok_s", "single_stream_tok_s"):
        v.metrics[key] = summary[key]
    reference_check(v, "single.roofline_ratio", summary["roofline_ratio"], refs)
    v.metrics["roofline_ratio"] = summary["roofline_ratio"]


def check(v: Verdict, a: argparse.Namespace, cfg: dict[str, Any], srv: Server, versions: dict[str, Any], tp: int,
          bandwidth: dict[str, Any] | None, fit: plan.Fit | None) -> None:
    """Smoke requests, the greedy reference outputs, the bench sweep and its reference checks."""
    smoke(v, srv)
    outputs, prompts = srv.greedy(), vllmserver.PROMPTS
    write_json(a.out_dir / "outputs.json", {"model": srv.served_name, "prompts": prompts, "outputs": outputs})
    v.check("greedy_outputs", all(o["completion_tokens"] > 0 for o in outputs), len(outputs), len(prompts))
    results, cache = run_sweep(srv.base, srv.served_name, srv.model_path, cfg["bench"], srv.key, a.out_dir / "raw",
                               srv.log.parent / "bench.log")
    meta = metadata(cfg, versions, v.nodes, {"tensor_parallel_size": tp, "pipeline_parallel_size": 1},
                    a.config_hash, srv.served_name)
    if fit and fit.proxy_layers:
        meta["proxy"] = {"layers": fit.proxy_layers, "of": fit.layers, "why": fit.describe()}
    write_json(a.out_dir / "bench.json", {"metadata": meta | {"prefix_cache": cache}, "results": results})
    refs = cfg["references"].get(cfg["cluster"]["name"], {})
    perf_checks(v, "single", results, refs, cache, cfg["bench"])
    roofline_checks(v, a.out_dir, bandwidth, results, srv.log, srv.model_path, cfg["model"]["dtype"], tp, refs)


def model_fit(v: Verdict, cfg: dict[str, Any], probe_node: dict[str, Any], model_path: str,
              tp: int) -> plan.Fit | None:
    """On GPU nodes: does the full model fit this node? Else the proxy single serves (ladder.plan.Fit)."""
    devices = probe_node["gpus"]["devices"]
    if not cfg["cluster"]["gpus_per_node"] or not devices:
        return None
    m = cfg["model"]
    model_cfg = json.loads((Path(model_path) / "config.json").read_text())
    dtype = m["dtype"] if m["dtype"] != "auto" else str(model_cfg.get("torch_dtype") or model_cfg.get("dtype"))
    nbytes = roofline.DTYPE_BYTES.get(dtype, 2)
    fit = plan.fit_one_node(model_cfg, nbytes, tp, min(d["memory_mib"] for d in devices) * 2**20,
                            m["max_model_len"], fp8_weights=m["quantization"] == "fp8",
                            kv_bytes=1 if m["kv_cache_dtype"].startswith("fp8") else nbytes)
    need, have = round(fit.need_bytes() / plan.GIB, 2), f"<= {fit.node_bytes / plan.GIB:.1f}"
    v.metrics["model_need_gib"] = need
    if fit.proxy_layers is None:
        v.check("model_fits_one_node", True, need, have, "GiB", detail=fit.describe())
    elif m["load_format"] != "dummy":
        v.check("model_fits_one_node", False, need, have, "GiB", detail=fit.describe() + "; ladder serves a proxy "
                "only with model.load_format: dummy (the checkpoint holds weights for every layer)")
    else:
        v.check("model_fits_one_node", None, fit.proxy_layers, fit.layers, "layers served", detail=fit.describe())
        v.metrics["proxy_layers"] = fit.proxy_layers
    return fit


def main(argv: list[str] | None = None) -> int:
    a, cfg, v = open_stage("single", stage_parser(__doc__, serving=True), argv)
    node = socket.gethostname()
    v.nodes = [node]
    job = slurm.job_id()
    ports = slurm.job_ports(int(job), cfg["ray"]["port_base"], cfg["ray"]["port_range"])
    tp = max(cfg["cluster"]["gpus_per_node"], 1)
    env = cpu_env(a.cache.resolve()) if cfg["env"]["flavor"] == "cpu" else {}
    versions = json.loads((a.results / "env" / "versions.json").read_text())
    v.versions = {k: versions["versions"].get(k, "") for k in ("vllm", "torch", "ray")}
    sampler = Sampler(a.out_dir / "monitor" / f"{node}.csv", node, cfg["monitor"]["interval_s"])
    probe = {n["slurm_node"]: n for n in json.loads((a.results / "probe" / "nodes.json").read_text())["nodes"]}
    if found := plan.quantization_problems(cfg["model"], cfg["env"]["flavor"], list(probe.values())):
        v.check("quantization", False, None, "supported by the nodes", detail="; ".join(found))
        return v.finish(a.out_dir / "verdict.json")
    srv = None
    try:
        t0 = time.monotonic()
        model_path, served = resolve_model(cfg["model"], a.cache.resolve())
        v.metrics["model_prepare_s"] = round(time.monotonic() - t0, 2)
        fit = model_fit(v, cfg, probe.get(node, next(iter(probe.values()))), model_path, tp)
        if v.failed:
            return v.finish(a.out_dir / "verdict.json")
        key = api_key(cfg["serve"]["api_key_env"], cfg["serve"]["api_key_file"])
        bandwidth = None
        if cfg["cluster"]["gpus_per_node"]:
            # Before vLLM takes the GPU; in a subprocess so its CUDA context is gone after.
            try:
                bandwidth = roofline.measure_in_subprocess()
                v.metrics["hbm_copy_s"] = round(bandwidth["median_s"], 6)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as err:
                v.check("hbm_bandwidth", None, detail=f"not measured: {err}"[:500])
        srv = Server(model_path, served, ports["serve"], key, a.log_dir / node / "vllm-serve.log",
                     args=serve_args(cfg, tp, 1, ray=False) + (fit.serve_args() if fit else []), env=env)
        sampler.start()
        srv.start()
        if check_healthy(v, srv, cfg["serve"]["health_timeout_s"]) is not None:
            check(v, a, cfg, srv, versions, tp, bandwidth, fit)
    except (ServerError, RuntimeError) as err:
        v.check("serve", False, None, "a healthy server", detail=shorten(str(err)))
        print(str(err), file=sys.stderr, flush=True)
    finally:
        if srv:
            srv.stop()
        if sampler.is_alive():
            v.metrics.update(sampler.stop())
    return v.finish(a.out_dir / "verdict.json")


if __name__ == "__main__":
    sys.exit(main())
