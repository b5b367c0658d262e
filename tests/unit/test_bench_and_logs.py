"""Parsing of vllm bench serve results, of vLLM's start-up logs and Ray's actor table (placement)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from ladder import monitor, timeline
from ladder.bench import bench_args, levels, median_run, parse_result, ratios
from ladder.logs import startup_metrics, vllm_memory, vllm_phases
from ladder.multistage import pipeline_placement

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


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


WORKLOAD = {"input_len": 64, "output_len": 32, "num_prompts": 5, "seed": 3, "warmup_prompts": 2, "burstiness": 0.5,
            "concurrency": [1, 4], "rates": [2.5], "repetitions": 3}


def test_bench_args_closed_and_open_loop():
    closed = " ".join(bench_args("http://127.0.0.1:9", "m", "/tok", WORKLOAD, Path("/r/f.json"), 1, concurrency=4))
    for part in ("--random-input-len 64", "--random-output-len 32", "--num-prompts 5",
                 "--num-warmups 2", "--max-concurrency 4", "--base-url http://127.0.0.1:9", "--save-result",
                 "--result-dir /r", "--result-filename f.json"):
        assert part in closed, part
    assert "--request-rate" not in closed and "--goodput" not in closed
    args = bench_args("http://127.0.0.1:9", "m", "/tok", WORKLOAD, Path("/r/f.json"), 0, rate=2.5,
                      goodput=["ttft:100"])
    opened = " ".join(args)
    assert "--request-rate 2.5 --burstiness 0.5" in opened and "--goodput ttft:100" in opened
    assert "--max-concurrency" not in opened
    assert not any("key" in c.lower() for c in args), "the API key travels in the environment only"


def seed(**level) -> int:
    args = bench_args("http://127.0.0.1:9", "m", "/tok", WORKLOAD, Path("/r/f.json"), level.pop("run"), **level)
    return int(args[args.index("--seed") + 1])


def test_every_level_and_run_sends_its_own_prompts():
    """A prompt sent again is a prefix-cache hit: a level after the first would measure no prefill."""
    runs = [dict(concurrency=c, run=i) for c in (1, 4, 16) for i in range(3)]
    runs += [dict(rate=r, run=i) for r in (2.5, 4, 96) for i in range(3)]
    seeds = [seed(**r) for r in runs]
    assert len(set(seeds)) == len(runs) and all(0 <= s < 2**32 for s in seeds)
    assert seed(concurrency=4, run=1) == seed(concurrency=4, run=1)  # the same prompts for every candidate


def test_levels_closed_loop_then_open_loop():
    assert levels(WORKLOAD) == [("c1", None, 1), ("c4", None, 4), ("r2.5", 2.5, None)]
    assert levels(WORKLOAD | {"rates": []}) == [("c1", None, 1), ("c4", None, 4)]


def test_median_run_keeps_the_median_repetition_its_spread_and_every_failure():
    raw = json.loads((DATA / "bench-c1.json").read_text())
    runs = [dict(raw, output_throughput=t, failed=f, median_ttft_ms=t) for t, f in ((30.0, 0), (10.0, 1), (20.0, 0))]
    m = median_run(runs)
    assert m["output_throughput"] == 20.0 and m["ttft_ms"]["median"] == 20.0  # one run, not a mix of runs
    assert m["repetitions"]["n"] == 3
    assert (m["repetitions"]["output_throughput_min"], m["repetitions"]["output_throughput_max"]) == (10.0, 30.0)
    assert m["failed"] == 1  # a failure in any repetition counts


def worker(name: str, node_id: str, state: str = "ALIVE", cls: str = "RayWorkerProc") -> dict:
    """One row of Ray's actor table (ray._private.state.actors), the fields placement reads."""
    return {"ActorClassName": cls, "Name": name, "State": state, "Address": {"NodeID": node_id, "IPAddress": ""}}


NODES = {"id1": "n1", "id2": "n2", "id3": "n3"}


def test_pipeline_placement_from_ray_actors():
    actors = [worker("vllm_Worker_a1b2c_PP0", "id1"), worker("vllm_Worker_a1b2c_PP1", "id2"),
              worker("vllm_Worker_a1b2c_PP2", "id3", state="DEAD"),  # the old world before a failover
              worker("ray_helper", "id3", cls="Helper")]
    assert pipeline_placement(actors, NODES) == {0: "n1", 1: "n2"}


def test_pipeline_placement_detects_packing_and_split_tp_groups():
    packed = [worker("vllm_Worker_x_PP0", "id1"), worker("vllm_Worker_x_PP1", "id1")]
    assert pipeline_placement(packed, NODES) == {0: "n1", 1: "n1"}
    split = [worker(f"vllm_Worker_x_TP{t}_PP{p}", node) for t, p, node in
             ((0, 0, "id1"), (1, 0, "id2"), (0, 1, "id2"), (1, 1, "id2"))]
    assert pipeline_placement(split, NODES) == {0: "n1,n2", 1: "n2"}


def test_pipeline_placement_pp1_has_no_rank_in_the_name():
    assert pipeline_placement([worker("vllm_Worker_x", "id2"), worker("vllm_Worker_x_TP1", "id2")],
                              NODES) == {0: "n2"}


def test_vllm_phases_from_cpu_log():
    # vLLM 0.32 (CPU): "Initializing model" + "Loading weights" lines, no compile total; the warm-up runs
    # from "Warming up model" to "KV cache on node"; both starts in this log, the slowest counts.
    phases = vllm_phases(DATA / "vllm-serve-cpu.log")
    assert phases == {"model_load": round(0.182580 + 0.01, 2), "compile_warmup": 30.0,
                      "kv_cache_profile": round(30.83 - 30.0, 2)}


class Ticks:
    """A stop event that lets exactly `n` sampling intervals pass, with no waiting."""

    def __init__(self, n: int) -> None:
        self.n = n

    def wait(self, _timeout: float) -> bool:
        self.n -= 1
        return self.n < 0

    def set(self) -> None:
        pass


def test_sampler_writes_one_row_per_interval_and_measures_its_cost(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor, "_gpu_handles", list)  # node rows only, whatever this host has
    clock = itertools.count(step=0.002)  # every sample costs 2 ms of the sampler thread's CPU time
    monkeypatch.setattr(monitor.time, "thread_time", lambda: next(clock))
    s = monitor.Sampler(tmp_path / "n1.csv", "n1", interval_s=0.5)
    s._stop_event = Ticks(3)
    s.start()
    s.join(timeout=30)
    rows = list(csv.DictReader((tmp_path / "n1.csv").open()))
    assert [r["node"] for r in rows] == ["n1"] * 3
    assert s.stop() == {"monitor_samples": 3, "monitor_cpu_ms_per_sample": 2.0, "monitor_cpu_pct": 0.4}


def test_vllm_phases_from_gpu_pipeline_log():
    # vLLM 0.26 (CUDA), PP=2 on nvidia-h200-x2: the two ranks load and compile in parallel.
    phases = vllm_phases(DATA / "vllm-serve-gpu-pp2.log")
    assert phases["model_load"] == 2.3
    assert phases["compile_warmup"] == 17.83
    assert phases["kv_cache_profile"] == round(43.14 - 17.83, 2)


def test_time_breakdown_reads_the_phases_the_stage_recorded_not_its_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(timeline, "queue_wait_s", lambda job: 2.0)
    metrics = startup_metrics(DATA / "vllm-serve-cpu.log") | {"time_to_healthy_s": 40.0, "bringup_s": 5.0}
    parts = timeline.stage_breakdown("single", {"slurm_job": "7", "metrics": metrics}, 100.0, tmp_path)
    assert parts == {"queue_wait": 2.0, "ray_join": 5.0, "model_load": 0.19, "compile_warmup": 30.0,
                     "kv_cache_profile": 0.83, "api_ready_rest": round(40 - 31.02, 2), "other": 55.0}


@pytest.mark.parametrize(("log", "expected"), [
    # vLLM 0.26 on one H200 (bf16 Llama-3-8B shape) and PP=2 over two: per GPU, the larger rank counts.
    (ROOT / "gpu/results/h200x2-pp2/logs/single-vllm-serve.log",
     {"weights_gib_per_gpu": 14.96, "kv_cache_gib_per_gpu": 112.33, "kv_cache_tokens": 920192}),
    (DATA / "vllm-serve-gpu-pp2.log", {"weights_gib_per_gpu": 7.48}),
])
def test_vllm_memory_from_gpu_logs(log, expected):
    assert vllm_memory(log) == expected
