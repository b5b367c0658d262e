"""Parsing of vllm bench serve results and of vLLM's logs (placement, start-up phases)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ladder.bench import bench_command, parse_result, ratios
from ladder.e2e import outputs_equal
from ladder.monitor import Sampler
from ladder.multistage import pipeline_placement
from ladder.timeline import vllm_phases

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data"


def test_parse_real_bench_result():
    raw = json.loads((DATA / "bench-c1.json").read_text())
    r = parse_result(raw)
    assert r["completed"] == raw["completed"] > 0 and r["failed"] == 0
    assert r["output_throughput"] == raw["output_throughput"] > 0
    assert r["ttft_ms"]["median"] == raw["median_ttft_ms"] and r["ttft_ms"]["p99"] == raw["p99_ttft_ms"]
    assert set(r) >= {"tpot_ms", "itl_ms", "e2el_ms", "request_throughput", "total_token_throughput"}


def test_ratios_are_multinode_over_single():
    raw = json.loads((DATA / "bench-c1.json").read_text())
    single = {"c1": parse_result(raw)}
    faster = dict(raw, output_throughput=raw["output_throughput"] * 2, median_ttft_ms=raw["median_ttft_ms"] / 2)
    r = ratios({"c1": parse_result(faster), "c9": parse_result(raw)}, single)
    assert r == {"c1": {**r["c1"], "output_throughput": 2.0, "ttft_median": 0.5}}
    assert "c9" not in r  # no single-node baseline at that level: no ratio


def test_bench_command_uses_identical_settings():
    bench = {"input_len": 64, "output_len": 32, "num_prompts": 5, "seed": 3, "concurrency": [1]}
    cmd = bench_command("http://127.0.0.1:9", "m", "/tok", bench, 4, Path("/r"), "f.json")
    joined = " ".join(cmd)
    for part in ("bench serve", "--random-input-len 64", "--random-output-len 32", "--num-prompts 5", "--seed 3",
                 "--max-concurrency 4", "--base-url http://127.0.0.1:9", "--save-result"):
        assert part in joined, part
    assert not any("key" in c.lower() for c in cmd), "the API key travels in the environment only"


def test_pipeline_placement_from_ray_prefixes():
    addrs = {"n1": "10.77.0.11", "n2": "10.77.0.12"}
    placed = pipeline_placement(DATA / "vllm-serve-pp2.log", addrs, head="n1", world=2)
    assert placed == {0: "n1", 1: "n2"}


def test_pipeline_placement_detects_packing(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("\n".join(
        f"(RayWorkerProc pid={p}) (Worker pid={p}) INFO rank {r} in world size 2 is assigned as DP rank 0, "
        f"PP rank {r}, TP rank 0" for p, r in ((11, 0), (12, 1))))
    assert pipeline_placement(log, {"n1": "10.0.0.1", "n2": "10.0.0.2"}, head="n1", world=2) == {0: "n1", 1: "n1"}


def test_pipeline_placement_ignores_an_earlier_world(tmp_path):
    """After a failover to PP=2, late lines of the old PP=3 workers must not count."""
    log = tmp_path / "serve.log"
    old = "(RayWorkerProc pid=9, ip=10.0.0.2) rank 2 in world size 3 is assigned as DP rank 0, PP rank 2, TP rank 0"
    new = [f"(RayWorkerProc pid={p}{ip}) rank {r} in world size 2 is assigned as DP rank 0, PP rank {r}, TP rank 0"
           for p, ip, r in ((11, "", 0), (12, ", ip=10.0.0.2", 1))]
    log.write_text("\n".join(["$ vllm serve ...", new[0], old, new[1]]))
    addrs = {"n1": "10.0.0.1", "n2": "10.0.0.2"}
    assert pipeline_placement(log, addrs, head="n1", world=2) == {0: "n1", 1: "n2"}


def test_vllm_phases_from_cpu_log():
    phases = vllm_phases(DATA / "vllm-serve-cpu.log")
    assert phases["model_load"] > 0
    assert phases["compile_warmup"] > 0
    assert phases["kv_cache_profile"] >= 0


def test_outputs_equal_names_differing_prompts():
    want = [{"prompt": "a", "text": "x"}, {"prompt": "b", "text": "y"}]
    assert outputs_equal([{"prompt": "a", "text": "x"}, {"prompt": "b", "text": "y"}], want) == []
    assert outputs_equal([{"prompt": "a", "text": "x"}, {"prompt": "b", "text": "z"}], want) == ["b"]


def test_sampler_writes_rows_and_measures_its_cost(tmp_path):
    s = Sampler(tmp_path / "n1.csv", "n1", interval_s=0.1)
    s.start()
    time.sleep(0.55)
    cost = s.stop()
    rows = (tmp_path / "n1.csv").read_text().splitlines()
    assert rows[0].startswith("t,node,cpu_pct") and len(rows) >= 4
    assert cost["monitor_samples"] == len(rows) - 1
    assert 0 < cost["monitor_cpu_ms_per_sample"] < 50


def test_vllm_phases_from_gpu_pipeline_log():
    # vLLM 0.26 (CUDA), PP=2 on nvidia-h200-x2: the two ranks load and compile in parallel.
    phases = vllm_phases(DATA / "vllm-serve-gpu-pp2.log")
    assert phases["model_load"] == 2.3
    assert phases["compile_warmup"] == 17.83
    assert phases["kv_cache_profile"] == round(43.14 - 17.83, 2)
