"""The ladder on real NVIDIA GPUs (gpu/run_ladder.sh with a config/gpu overlay).

Runs where NVIDIA GPUs are present, after gpu/stage.sh (gpu/README.md): 4+ GPUs ->
2 sandbox nodes x 2 GPUs, TP=2 x PP=2 (config/gpu/h200x4-tp2pp2.yaml); 2-3 GPUs ->
2 nodes x 1 GPU, PP=2 (h200x2-pp2.yaml); 1 GPU -> one node, env..single. Then tune with
FP8 candidates (h200-tune.yaml) and the Llama-3-70B shape (h200-70b.yaml). Skipped only
when no NVIDIA GPU is present (CI has none). LADDER_GPU_WORK=<dir> keeps each test's work
directory there, so a test cut off by a 10-minute device call resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def nvidia_gpus() -> int:
    """NVIDIA GPUs on this machine (NVML, else nvidia-smi -L); 0 without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    if not shutil.which("nvidia-smi"):
        return 0
    res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in res.stdout.splitlines()) if res.returncode == 0 else 0


GPUS = nvidia_gpus()


def layout(gpus: int) -> tuple[str, list[str], dict[str, str]]:
    if gpus >= 4:
        return "h200x4-tp2pp2.yaml", [], {}
    if gpus >= 2:
        return "h200x2-pp2.yaml", [], {"SB_NODES": "2"}
    return "h200x2-pp2.yaml", ["env", "probe", "ray", "single"], {"SB_NODES": "1"}


needs_gpu = pytest.mark.skipif(GPUS == 0, reason="no NVIDIA GPU present (NVML/nvidia-smi found none)")


def run_ladder(tmp_path: Path, overlay: str, stages: list[str], env: dict[str, str]) -> Path:
    """gpu/run_ladder.sh with `overlay` (cluster.nodes: 1 on a one-GPU machine); the results directory."""
    assert Path("/tmp/gpu-env.sh").is_file(), "GPUs present but the bundle is not staged: run gpu/stage.sh"
    if GPUS == 1:
        extra = tmp_path / "one-node.yaml"
        extra.write_text("cluster:\n  nodes: 1\n")
        env = env | {"EXTRA_CONFIG": str(extra), "SB_NODES": "1"}
    keep = os.environ.get("LADDER_GPU_WORK")
    work = Path(keep) / Path(overlay).stem if keep else tmp_path / "work"
    env = dict(os.environ, WORK=str(work), OUT=str(tmp_path / "out"), DEADLINE_S="3000", **env)
    res = subprocess.run(["bash", str(ROOT / "gpu" / "run_ladder.sh"), str(ROOT / "config" / "gpu" / overlay),
                          *stages], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    results = work / "results"
    for stage in stages or ["env", "probe", "ray", "single", "multinode"]:
        v = json.loads((results / stage / "verdict.json").read_text())
        assert v["status"] == "pass", (stage, [c for c in v["checks"] if c["ok"] is False])
    return results


@needs_gpu
def test_ladder_on_gpus(tmp_path: Path) -> None:
    overlay, stages, env = layout(GPUS)
    results = run_ladder(tmp_path, overlay, stages, env)
    probe = json.loads((results / "probe" / "verdict.json").read_text())
    assert {c["name"]: c["ok"] for c in probe["checks"]}.get("distinct_gpus") is True
    single = json.loads((results / "single" / "bench.json").read_text())
    assert all(r["completed"] > 0 and r["failed"] == 0 for r in single["results"].values())
    roof = json.loads((results / "single" / "roofline.json").read_text())
    assert 0 < roof["roofline_ratio"] < 1.2, roof
    if not stages:
        ray = {c["name"]: c for c in json.loads((results / "ray" / "verdict.json").read_text())["checks"]}
        assert ray["nccl_allreduce_sum"]["ok"] is True
        multi = {c["name"]: c for c in json.loads((results / "multinode" / "verdict.json").read_text())["checks"]}
        assert multi["outputs_match_single"]["ok"] is True
        assert (results / "multinode" / "scaling.json").is_file()


@needs_gpu
def test_tune_fp8_against_defaults_on_one_gpu(tmp_path: Path) -> None:
    """tune on one GPU: vLLM's defaults (bf16) vs FP8 weights + FP8 KV cache, same run, same GPU."""
    results = run_ladder(tmp_path, "h200-tune.yaml", ["env", "probe", "ray", "single", "tune"], {})
    sweep = {c["name"]: c for c in json.loads((results / "tune" / "sweep.json").read_text())["candidates"]}
    defaults, fp8 = sweep["defaults"], sweep["cand1"]
    assert fp8["args"] == {"quantization": "fp8", "kv_cache_dtype": "fp8"} and not fp8["error"], fp8
    # FP8 weights hold about half the bytes of bf16 (embeddings and norms stay in bf16).
    saved = fp8["memory"]["weights_gib_per_gpu"] / defaults["memory"]["weights_gib_per_gpu"]
    assert 0.45 < saved < 0.75, (fp8["memory"], defaults["memory"])
    # and an FP8 KV cache holds about twice the tokens in the memory left.
    assert fp8["memory"]["kv_cache_tokens"] > 1.5 * defaults["memory"]["kv_cache_tokens"]
    assert defaults["points"] and all(p["runs"] == 3 for p in defaults["points"])
    best = json.loads((results / "tune" / "best.json").read_text())
    assert best["goodput_req_s"] > 0 and best["gain_over_defaults"] > 0
    print(json.dumps({k: [c["score_goodput"], c["memory"]] for k, c in sweep.items()}))


@needs_gpu
def test_llama3_70b_shape_single_serves_its_proxy(tmp_path: Path) -> None:
    """141 GB of bf16 weights do not fit one H200: single serves the documented proxy and says so;
    with two GPUs multinode (PP=2) serves all 80 layers."""
    stages = [] if GPUS >= 2 else ["env", "probe", "ray", "single"]
    results = run_ladder(tmp_path, "h200-70b.yaml", stages, {"SB_NODES": "2"} if GPUS >= 2 else {})
    single = json.loads((results / "single" / "verdict.json").read_text())
    fit = next(c for c in single["checks"] if c["name"] == "model_fits_one_node")
    assert fit["ok"] is None and 0 < fit["value"] < 80 == fit["expected"], fit
    assert single["metrics"]["proxy_layers"] == fit["value"]
    bench = json.loads((results / "single" / "bench.json").read_text())
    assert bench["metadata"]["proxy"]["of"] == 80
    if GPUS >= 2:
        multi = {c["name"]: c for c in json.loads((results / "multinode" / "verdict.json").read_text())["checks"]}
        assert multi["outputs_match_single"]["ok"] is not False



@needs_gpu
def test_fp8_single_judged_by_references_of_an_earlier_run(tmp_path: Path) -> None:
    """FP8 weights + FP8 KV cache through single: its roofline uses the bytes vLLM loaded (about half of
    bf16's) and every performance check has a reference from gpu/results/h200-tune-sat (pass or fail)."""
    results = run_ladder(tmp_path, "h200-fp8.yaml", ["env", "probe", "ray", "single"], {})
    roof = json.loads((results / "single" / "roofline.json").read_text())
    assert roof["weight_gib_per_gpu"] < 10 and 0 < roof["roofline_ratio"] < 1.2, roof
    perf = [c for c in json.loads((results / "single" / "verdict.json").read_text())["checks"]
            if c["name"].startswith("perf:")]
    assert perf and all(c["ok"] in (True, False) for c in perf), perf
