"""Stage single: one node, `vllm serve` (TP = the node's GPUs, 1 on CPU), smoke, greedy outputs, bench.

Its bench.json is the baseline the multinode stage is compared with, and its
outputs.json the reference the distributed split must reproduce token for token.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ladder import slurm
from ladder.bench import run_sweep
from ladder.monitor import Sampler
from ladder.verdict import Verdict, reference_check, require_gate, write_json
from ladder.vllmserver import PROMPTS, Server, ServerError, api_key, cpu_env, resolve_model, serve_args, smoke


def metadata(cfg: dict[str, Any], versions: dict[str, Any], nodes: list[str], plan: dict[str, int],
             config_hash: str, model: str) -> dict[str, Any]:
    device = f"{cfg['cluster']['gpus_per_node']} GPU/node" if cfg["cluster"]["gpus_per_node"] else "cpu"
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cluster": cfg["cluster"]["name"], "nodes": nodes,
            "device": device, "model": model, "plan": plan, "config_hash": config_hash,
            "versions": versions.get("versions", {}), "bench_settings": cfg["bench"]}


def perf_checks(v: Verdict, stage: str, results: dict[str, dict[str, Any]], refs: dict[str, Any]) -> None:
    for level, r in results.items():
        v.check(f"bench_{level}_no_failed_requests", r["failed"] == 0 and r["completed"] > 0,
                r["completed"], "all completed", detail=f"{r['failed']} failed")
        reference_check(v, f"{stage}.output_throughput_{level}", r["output_throughput"], refs)
        reference_check(v, f"{stage}.ttft_median_ms_{level}", r["ttft_ms"]["median"], refs)
        reference_check(v, f"{stage}.tpot_median_ms_{level}", r["tpot_ms"]["median"], refs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gate", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True, help="results root (reads env/versions.json)")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="shared cache (models, compile caches)")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--log-dir", type=Path, required=True)
    ap.add_argument("--config-hash", default="")
    a = ap.parse_args(argv)
    require_gate(a.gate)
    cfg = json.loads(a.config.read_text())
    v = Verdict("single", config_hash=a.config_hash)
    node = socket.gethostname()
    v.nodes = [node]
    job = slurm.job_id()
    ports = slurm.job_ports(int(job), cfg["ray"]["port_base"], cfg["ray"]["port_range"])
    tp = max(cfg["cluster"]["gpus_per_node"], 1)
    env = cpu_env(a.cache.resolve()) if cfg["env"]["flavor"] == "cpu" else {}
    versions = json.loads((a.results / "env" / "versions.json").read_text())
    v.versions = {k: versions["versions"].get(k, "") for k in ("vllm", "torch", "ray")}
    logs = a.log_dir / node
    sampler = Sampler(a.out_dir / "monitor" / f"{node}.csv", node, cfg["monitor"]["interval_s"])
    srv = None
    try:
        t0 = time.monotonic()
        model_path, served = resolve_model(cfg["model"], a.cache.resolve())
        v.metrics["model_prepare_s"] = round(time.monotonic() - t0, 2)
        key = api_key(cfg["serve"]["api_key_env"], cfg["serve"]["api_key_file"])
        srv = Server(model_path, served, ports["serve"], key, logs / "vllm-serve.log",
                     args=serve_args(cfg, tp, 1, ray=False), env=env)
        sampler.start()
        srv.start()
        healthy = srv.wait_healthy(cfg["serve"]["health_timeout_s"])
        v.metrics["time_to_healthy_s"] = round(healthy, 1)
        v.check("healthy", True, round(healthy, 1), f"< {cfg['serve']['health_timeout_s']}", "s")
        smoke(v, srv)
        outputs = srv.greedy()
        write_json(a.out_dir / "outputs.json", {"model": served, "prompts": PROMPTS, "outputs": outputs})
        v.check("greedy_outputs", all(o["completion_tokens"] > 0 for o in outputs), len(outputs), len(PROMPTS))
        results = run_sweep(srv.base, served, model_path, cfg["bench"], key, a.out_dir / "raw", logs / "bench.log")
        meta = metadata(cfg, versions, [node], {"tensor_parallel_size": tp, "pipeline_parallel_size": 1},
                        a.config_hash, served)
        write_json(a.out_dir / "bench.json", {"metadata": meta, "results": results})
        perf_checks(v, "single", results, cfg["references"].get(cfg["cluster"]["name"], {}))
    except (ServerError, RuntimeError) as err:
        v.check("serve", False, None, "a healthy server", detail=str(err)[-1500:])
        print(str(err), file=sys.stderr, flush=True)
    finally:
        if srv:
            srv.stop()
        if sampler.is_alive():
            v.metrics.update(sampler.stop())
    return v.finish(a.out_dir / "verdict.json")


if __name__ == "__main__":
    sys.exit(main())
