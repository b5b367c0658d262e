"""The whole ladder on real NVIDIA GPUs (gpu/run_ladder.sh with a config/gpu overlay).

Runs where NVIDIA GPUs are present, after gpu/stage.sh (gpu/README.md): 4+ GPUs ->
2 sandbox nodes x 2 GPUs, TP=2 x PP=2 (config/gpu/h200x4-tp2pp2.yaml); 2-3 GPUs ->
2 nodes x 1 GPU, PP=2 (h200x2-pp2.yaml); 1 GPU -> one node, env..single. Skipped only
when no NVIDIA GPU is present (CI has none).
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


@pytest.mark.skipif(GPUS == 0, reason="no NVIDIA GPU present (NVML/nvidia-smi found none)")
def test_ladder_on_gpus(tmp_path: Path) -> None:
    assert Path("/tmp/gpu-env.sh").is_file(), "GPUs present but the bundle is not staged: run gpu/stage.sh"
    overlay, stages, env = layout(GPUS)
    if GPUS == 1:
        extra = tmp_path / "one-node.yaml"
        extra.write_text("cluster:\n  nodes: 1\n")
        env["EXTRA_CONFIG"] = str(extra)
    work = tmp_path / "work"
    env = dict(os.environ, WORK=str(work), OUT=str(tmp_path / "out"), DEADLINE_S="3000", **env)
    res = subprocess.run(["bash", str(ROOT / "gpu" / "run_ladder.sh"), str(ROOT / "config" / "gpu" / overlay),
                          *stages], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    results = work / "results"
    for stage in stages or ["env", "probe", "ray", "single", "multinode"]:
        v = json.loads((results / stage / "verdict.json").read_text())
        assert v["status"] == "pass", (stage, [c for c in v["checks"] if c["ok"] is False])
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
