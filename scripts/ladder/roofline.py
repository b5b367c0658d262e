"""Single-stream decode roofline: how close one request's decode gets to the HBM limit.

At concurrency 1 every decoded token reads all of a GPU's weights once, so the fastest
possible single-stream decode is ``HBM bandwidth / weight bytes per GPU`` tokens/s
(KV-cache and activation traffic are small next to the weights at short context). The
single stage measures the bandwidth on its own GPU (a large device-to-device copy,
bytes read + written over time), takes the weight bytes from vLLM's "Model loading
took X GiB" line (else the config's parameter count x dtype bytes / TP) and reports
``roofline_ratio`` = measured single-stream tok/s (1000 / median TPOT at concurrency 1)
/ roofline tok/s.

    python -m ladder.roofline measure [--mib 4096] [--iters 20]   # prints JSON (needs a GPU)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ladder.logs import vllm_memory
from ladder.plan import dims

GIB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "auto": 2}


def decode_roofline_tok_s(bandwidth_bytes_s: float, weight_bytes_per_gpu: float) -> float:
    """Upper bound on single-stream decode speed: one full read of the weights per token."""
    if bandwidth_bytes_s <= 0 or weight_bytes_per_gpu <= 0:
        raise ValueError("bandwidth and weight bytes must be positive")
    return bandwidth_bytes_s / weight_bytes_per_gpu


def single_stream_tok_s(tpot_median_ms: float) -> float:
    """Decode speed of one stream from vLLM bench's median time per output token."""
    if tpot_median_ms <= 0:
        raise ValueError("TPOT must be positive")
    return 1000.0 / tpot_median_ms


def copy_bandwidth(size_bytes: int, seconds_per_copy: float) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    return 2 * size_bytes / seconds_per_copy


def param_count(cfg: dict[str, Any]) -> int:
    """Parameters of a Llama-style decoder (GQA attention, gated MLP, RMSNorm) from config.json."""
    d, cfg = dims(cfg), cfg.get("text_config", cfg)
    h, heads, kv, head_dim = d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"], d["head_dim"]
    per_layer = d["linear_per_layer"] + 2 * h  # + input and post-attention norms
    if cfg.get("attention_bias"):
        per_layer += heads * head_dim + 2 * kv * head_dim + h
    embed = d["vocab_size"] * h * (1 if d["tie_word_embeddings"] else 2)
    return d["num_hidden_layers"] * per_layer + embed + h  # + final norm


def weight_bytes_from_config(cfg: dict[str, Any], dtype: str, tp: int = 1) -> float:
    """Per-GPU weight bytes: parameters x dtype bytes, split over TP ranks."""
    torch_dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    nbytes = DTYPE_BYTES.get(dtype if dtype != "auto" else str(torch_dtype), 2)
    return param_count(cfg) * nbytes / tp


def summarize(bandwidth_bytes_s: float, weight_bytes_per_gpu: float, tpot_median_ms: float,
              weight_source: str) -> dict[str, Any]:
    """Every input and the ratio, as the verdict and roofline.json record them."""
    roof = decode_roofline_tok_s(bandwidth_bytes_s, weight_bytes_per_gpu)
    measured = single_stream_tok_s(tpot_median_ms)
    return {
        "hbm_bandwidth_gb_s": round(bandwidth_bytes_s / 1e9, 1),
        "weight_gib_per_gpu": round(weight_bytes_per_gpu / GIB, 3),
        "weight_source": weight_source,
        "roofline_tok_s": round(roof, 1),
        "tpot_median_ms_c1": round(tpot_median_ms, 3),
        "single_stream_tok_s": round(measured, 1),
        "roofline_ratio": round(measured / roof, 3),
    }


def measure(mib: int = 4096, iters: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Device-to-device copy of `mib` MiB on cuda:0 (this job's first visible GPU), timed with CUDA events."""
    import torch

    size = mib * 2**20
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    src.fill_(1)
    dst = torch.empty_like(src)
    for _ in range(warmup):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    times.sort()
    median = times[len(times) // 2]
    return {"device": torch.cuda.get_device_name(0), "bytes_per_copy": size, "iters": iters,
            "median_s": median, "best_s": times[0],
            "bandwidth_bytes_s": copy_bandwidth(size, median),
            "best_bandwidth_bytes_s": copy_bandwidth(size, times[0])}


def measure_in_subprocess(timeout: float = 180, python: str = sys.executable) -> dict[str, Any]:
    """Run `measure` in its own process, so its CUDA context is gone before vLLM starts."""
    proc = subprocess.run([python, "-m", "ladder.roofline", "measure"], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bandwidth measurement failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weight_bytes(server_log: Path, model_path: str, dtype: str, tp: int) -> tuple[float, str]:
    """(bytes per GPU, source): vLLM's own report, else the config's parameter count."""
    if gib := vllm_memory(server_log).get("weights_gib_per_gpu"):  # the largest rank's
        return gib * GIB, "vLLM log: Model loading took ... GiB"
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    return weight_bytes_from_config(cfg, dtype, tp), f"config.json parameter count x {dtype} bytes / TP={tp}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="HBM copy bandwidth of this job's first GPU (JSON on stdout)")
    m.add_argument("--mib", type=int, default=4096)
    m.add_argument("--iters", type=int, default=20)
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.mib, a.iters)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
