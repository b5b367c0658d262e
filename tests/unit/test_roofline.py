"""ladder.roofline: the arithmetic of the single-stream decode roofline (no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder.roofline import (
    GIB,
    copy_bandwidth,
    decode_roofline_tok_s,
    param_count,
    single_stream_tok_s,
    summarize,
    weight_bytes,
    weight_bytes_from_config,
)
from ladder.tinymodel import SHAPES

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data"

LLAMA3_8B = SHAPES["llama3-8b"]


def test_llama3_8b_parameter_count_is_the_published_one():
    assert param_count(LLAMA3_8B) == 8_030_261_248


def test_weight_bytes_bf16_and_tensor_parallel():
    full = weight_bytes_from_config(LLAMA3_8B, "bfloat16")
    assert full == 2 * 8_030_261_248
    assert round(full / GIB, 2) == 14.96  # what vLLM reports for this shape on one H200 (DESIGN.md)
    assert weight_bytes_from_config(LLAMA3_8B, "bfloat16", tp=2) == full / 2
    assert weight_bytes_from_config(LLAMA3_8B, "float32") == 2 * full


def test_tied_embeddings_count_once():
    tied = dict(LLAMA3_8B, tie_word_embeddings=True)
    assert param_count(LLAMA3_8B) - param_count(tied) == 128256 * 4096


def test_roofline_reproduces_the_recorded_h200_figures():
    # One H200: 4.25 TB/s copy bandwidth, 14.96 GiB of weights -> 264.6 tok/s; TPOT 4.83 ms -> 0.78.
    roof = decode_roofline_tok_s(4.25e12, 14.96 * GIB)
    assert roof == pytest.approx(264.6, abs=0.1)
    assert single_stream_tok_s(4.83) / roof == pytest.approx(0.78, abs=0.01)


def test_copy_bandwidth_counts_read_and_write():
    assert copy_bandwidth(4 * GIB, 0.002) == pytest.approx(2 * 4 * GIB / 0.002)


def test_weight_bytes_from_captured_vllm_logs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    # CUDA (vLLM 0.26, PP=2): "Model loading took 7.48 GiB and ... seconds" per rank.
    found, source = weight_bytes(DATA / "vllm-serve-gpu-pp2.log", str(tmp_path), "bfloat16", 1)
    assert (found, source) == (pytest.approx(7.48 * GIB), "vLLM log: Model loading took ... GiB")
    # CPU (vLLM 0.32) prints no weight size: the config's parameter count is used instead.
    found, source = weight_bytes(DATA / "vllm-serve-cpu.log", str(tmp_path), "bfloat16", 2)
    assert found == weight_bytes_from_config(LLAMA3_8B, "bfloat16", tp=2)
    assert source.startswith("config.json parameter count")


def test_weight_bytes_takes_the_largest_rank(tmp_path):
    log = tmp_path / "vllm-serve.log"
    log.write_text("INFO ... [gpu_model_runner.py:2000] Model loading took 7.4860 GiB memory and 2.1 seconds\n"
                   "(RayWorkerProc pid=12) INFO Model loading took 7.5123 GiB and 3.0 seconds\n")
    assert weight_bytes(log, str(tmp_path), "bfloat16", 1)[0] == pytest.approx(7.5123 * GIB)


def test_summarize_records_every_input():
    s = summarize(4.25e12, 14.96 * GIB, 4.83, "config")
    assert s == {"hbm_bandwidth_gb_s": 4250.0, "weight_gib_per_gpu": 14.96, "weight_source": "config",
                 "roofline_tok_s": 264.6, "tpot_median_ms_c1": 4.83, "single_stream_tok_s": 207.0,
                 "roofline_ratio": 0.783}


@pytest.mark.parametrize(("bw", "wb"), [(0, 1), (1, 0), (-1, 5)])
def test_roofline_rejects_non_positive_inputs(bw, wb):
    with pytest.raises(ValueError):
        decode_roofline_tok_s(bw, wb)
