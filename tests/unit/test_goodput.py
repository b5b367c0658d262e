"""The SLO search of the tune stage (ladder.goodput), on vllm bench serve result fields."""

import json

import pytest

from ladder.goodput import DEFAULTS, Candidate, candidates, pick, rate_point, slo_args, tuned_serve_args
from ladder.tune import option, search_rates

pytestmark = pytest.mark.unit


def run(goodput: float, throughput: float = 10.0, **kw) -> dict:
    return {"request_goodput": goodput, "request_throughput": throughput, "completed": 40, "failed": 0,
            "output_throughput": throughput * 32, "p99_ttft_ms": 100.0, "p99_tpot_ms": 5.0, "p99_e2el_ms": 300.0, **kw}


def test_candidates_defaults_first_then_grid_in_order_and_capped():
    got = candidates({"max_num_seqs": [8, 16], "max_num_batched_tokens": [512], "async_scheduling": []}, 10)
    assert [c["_benchmark_name"] for c in got] == [DEFAULTS, "cand1", "cand2"]
    assert got[1] == {"_benchmark_name": "cand1", "max_num_seqs": 8, "max_num_batched_tokens": 512}
    assert len(candidates({"max_num_seqs": [1, 2, 3]}, 2)) == 2
    assert candidates({}, 4) == [{"_benchmark_name": DEFAULTS}]


def test_slo_args_skip_missing_targets():
    assert slo_args({"ttft_ms": 500, "tpot_ms": 50.5, "e2el_ms": None, "percentile": 90}) == ["ttft:500", "tpot:50.5"]


def test_rate_meets_slo_on_the_median_attainment():
    p = rate_point(8, [run(9.5), run(8.0), run(9.2)], percentile=90)
    assert p.attainment == 0.92 and p.meets_slo and p.goodput == 9.2 and (p.goodput_min, p.goodput_max) == (8.0, 9.5)
    assert not rate_point(8, [run(8.5), run(8.0), run(9.2)], percentile=90).meets_slo
    # A run with failed requests never meets it, whatever the goodput says.
    assert not rate_point(8, [run(10, failed=1)] * 3, percentile=90).meets_slo


def test_capacity_is_the_highest_rate_before_the_first_miss():
    c = Candidate("x", {})
    c.points = [rate_point(r, [run(g, r)] * 3, 90) for r, g in ((4, 4.0), (8, 7.9), (16, 9.0), (32, 31.0))]
    assert c.best.rate == 8 and c.score == 7.9  # 32 meets it again, but only after 16 broke it: not trusted


def test_pick_winner_and_gain_over_defaults():
    d, a, b = Candidate(DEFAULTS, {}), Candidate("cand1", {"max_num_seqs": 8}), Candidate("cand2", {}, error="boom")
    d.points = [rate_point(4, [run(4.0, 4)] * 3, 90), rate_point(8, [run(5.0, 8)] * 3, 90)]
    a.points = [rate_point(4, [run(4.0, 4)] * 3, 90), rate_point(8, [run(7.8, 8)] * 3, 90)]
    best, defaults, gain = pick([d, a, b])
    assert best is a and defaults is d and gain == round(7.8 / 4.0, 3)


def test_pick_prefers_defaults_on_a_tie_and_reports_no_gain_without_a_defaults_score():
    d, a = Candidate(DEFAULTS, {}), Candidate("cand1", {"max_num_seqs": 8})
    d.points = a.points = [rate_point(4, [run(4.0, 4)] * 3, 90)]
    assert pick([d, a])[0] is d
    d.points = [rate_point(4, [run(1.0, 4)] * 3, 90)]
    assert pick([d, a])[2] is None and pick([d, a])[0] is a
    best, _, gain = pick([Candidate(DEFAULTS, {}, error="no server")])
    assert best is None and gain is None


def test_options_as_vllm_serve_arguments():
    assert option("max_num_seqs", 8) == ["--max-num-seqs", "8"]
    assert option("async_scheduling", True) == ["--async-scheduling"]
    assert option("enable_chunked_prefill", False) == ["--no-enable-chunked-prefill"]
    assert option("cuda_graph_sizes", [1, 8]) == ["--cuda-graph-sizes", "1", "8"]


def test_tuned_args_only_when_enabled_applied_and_written(tmp_path):
    tune = {"enabled": True, "apply": True}
    assert tuned_serve_args(tmp_path, tune) == []
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "best.json").write_text(json.dumps({"serve_args": ["--max-num-seqs", "8"]}))
    assert tuned_serve_args(tmp_path, tune) == ["--max-num-seqs", "8"]
    assert tuned_serve_args(tmp_path, tune | {"apply": False}) == []


def test_space_errors_name_gpu_settings_on_cpu_and_an_empty_slo():
    from ladder.goodput import space_errors

    tune = {"enabled": True, "space": {"max_num_seqs": [8], "kv_cache_dtype": ["fp8"]},
            "slo": {"ttft_ms": 500, "tpot_ms": None, "e2el_ms": None}}
    assert space_errors(tune, 0) == ["tune.space.kv_cache_dtype: a GPU setting, but cluster.gpus_per_node is 0"]
    assert space_errors(tune, 8) == []
    assert space_errors(tune | {"slo": {"ttft_ms": None, "tpot_ms": None, "e2el_ms": None}}, 8) == [
        "tune.slo: give at least one of ttft_ms, tpot_ms, e2el_ms"]
    assert space_errors(tune | {"enabled": False}, 0) == []


def test_a_later_candidate_searches_from_the_rate_the_best_so_far_sustained():
    assert search_rates([16, 4, 8], 2, 0) == [4, 8, 16, 32, 64]  # the first: every rate, then doubled
    assert search_rates([4, 8, 16], 2, 16) == [16, 32, 64]  # it wins only by sustaining more than 16
    assert search_rates([4, 8, 16], 0, 9) == [16]
    assert search_rates([4, 8, 16], 0, 99) == [16]  # above every rate: still measured at the highest
