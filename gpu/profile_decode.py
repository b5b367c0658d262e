#!/usr/bin/env python3
"""Where single-stream decode time goes: vLLM's own torch profiler around one request (issue 19, item 2).

Runs ON THE GPU MACHINE after `gpu/run_ladder.sh` (its /scratch/ladder/venv and model), outside Slurm:

    /scratch/ladder/venv/bin/python gpu/profile_decode.py run config/gpu/h200-tune.yaml --out $OUT/profile-bf16
    python3 gpu/profile_decode.py analyze TRACE.pt.trace.json.gz [--config-json M/config.json] > summary.json

`run` starts `vllm serve` with the overlay's model and the ladder's own flags (ladder.vllmserver.serve_args,
as the single stage does) plus `--profiler-config` (torch profiler, no stacks or shapes), sends warm-up
requests, one measured request, then `/start_profile`, one request of the same shape (512 prompt
tokens, 128 output tokens, greedy, ignore_eos), `/stop_profile`, stops the server and summarises the
trace into `<out>/summary.json` (the trace itself stays in /tmp: it is tens of MB).

`analyze` (pure, stdlib only) finds vLLM's engine steps by their GPU-side ranges
(`execute_context_<n>(<tokens>)_generation_<n>(<tokens>)`, gpu_user_annotation), keeps the decode steps
(no prompt tokens) and reports per decode step: the period (one step's start to the next), GPU busy time
(union of kernels), idle time (inside steps and between them), kernel time by category (GEMM, attention,
norm/activation/elementwise, FP8 activation quantization, sampling, memcpy, other), gaps between kernels
by size, the top kernels, and the CPU side in the same window (step ranges, eager aten ops, CUDA runtime). With the
model's config.json it adds the bytes the GEMMs read per step and their effective bandwidth.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import statistics
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

GIB = 2**30
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # ladder, for both subcommands

# Order matters: FlashAttention kernels are cutlass kernels too; cutlass FP8 GEMMs contain "fp8".
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("attention", re.compile(r"flash|fmha|attn|attention|reshape_and_cache|paged|concat_and_cache", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|matmul|scaled_mm|wgmma|splitk|gemv", re.I)),
    ("fp8_quant", re.compile(r"quant|fp8|float8|e4m3|scaled_fp8", re.I)),
    ("sampling", re.compile(r"sampl|topk|top_k|top_p|softmax|argmax|argsort|sort|gumbel|exponential|penalt|"
                            r"logprob|multinomial|ArgMax|MaxOps", re.I)),
    ("norm_act", re.compile(r"rms|norm|silu|act_and_mul|gelu|rotary|rope|triton_|elementwise|vectorized|"
                            r"add|mul|copy|fill|index|embedding|cat|gather|scatter|where|reduce", re.I)),
]


def category(name: str, cat: str) -> str:
    if cat == "gpu_memcpy":
        return "memcpy"
    if cat == "gpu_memset":
        return "memset"
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def load_trace(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def short(name: str, n: int = 140) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


def gemm_bytes_per_step(cfg: dict[str, Any], fp8: bool) -> dict[str, float]:
    """Bytes the linear layers (q, k, v, o, gate, up, down per layer, plus lm_head) read per decode step.

    The input embedding is not among them (one row per token), though vLLM's loaded weights count it.
    Online FP8 quantizes the decoder's linear layers; lm_head stays in the model dtype (2 bytes)."""
    from ladder.plan import dims

    s = dims(cfg)
    layer_bytes = s["num_hidden_layers"] * s["linear_per_layer"] * (1 if fp8 else 2)
    lm_head = embed = s["vocab_size"] * s["hidden_size"] * 2
    return {"decoder_linear_gib": round(layer_bytes / GIB, 3), "lm_head_gib": round(lm_head / GIB, 3),
            "gemm_read_gib_per_step": round((layer_bytes + lm_head) / GIB, 3),
            "input_embedding_gib_not_read": round(embed / GIB, 3)}


STEP = re.compile(r"execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)")


def analyze(trace: dict[str, Any], model_cfg: dict[str, Any] | None = None, fp8: bool = False,
            hbm_gb_s: float | None = None) -> dict[str, Any]:
    ev = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    gpu = sorted((e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    if not gpu:
        raise ValueError("no GPU kernels in the trace")
    runtime = [e for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    cpu_ann = [e for e in ev if e.get("cat") == "user_annotation"]
    # vLLM names every engine step execute_context_<n>(<tokens>)_generation_<n>(<tokens>); the profiler
    # projects that CPU range onto the GPU (gpu_user_annotation): the span of the step's kernels.
    spans = sorted((e for e in ev if e.get("cat") == "gpu_user_annotation" and STEP.fullmatch(e["name"])),
                   key=lambda e: e["ts"])
    kinds: dict[str, int] = defaultdict(int)
    for e in spans:
        kinds[e["name"]] += 1
    out: dict[str, Any] = {"kernels_in_trace": len(gpu), "step_spans": dict(kinds)}
    # Decode steps: no prompt tokens in the step, one or more sequences generating.
    decode = [e for e in spans if (m := STEP.fullmatch(e["name"])) and m[1] == "0" and int(m[3]) > 0]
    if len(decode) >= 2:
        lo, hi = decode[0]["ts"], decode[-1]["ts"] + decode[-1]["dur"]
        steps = len(decode)
        starts = [e["ts"] for e in decode]
        periods = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        out["step_period_ms_median"] = round(statistics.median(periods) / 1000, 4)
        out["step_gpu_span_ms_median"] = round(statistics.median(e["dur"] for e in decode) / 1000, 4)
        between = sum(b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(decode, decode[1:], strict=False))
        out["between_steps_ms_per_step"] = round(between / steps / 1000, 4)
    else:  # no step ranges: the whole GPU window as one
        lo, hi = gpu[0]["ts"], max(k["ts"] + k["dur"] for k in gpu)
        steps = 1
    win = [k for k in gpu if lo <= k["ts"] < hi]
    window_us = hi - lo
    busy_us = union_us([(k["ts"], min(k["ts"] + k["dur"], hi)) for k in win])
    out["decode_steps"] = steps
    out["decode_window_ms"] = round(window_us / 1000, 3)
    out["per_step"] = {"wall_ms": round(window_us / steps / 1000, 4), "gpu_busy_ms": round(busy_us / steps / 1000, 4),
                       "gpu_idle_ms": round((window_us - busy_us) / steps / 1000, 4),
                       "gpu_busy_share": round(busy_us / window_us, 4),
                       "kernels": round(len(win) / steps, 1)}
    cats: dict[str, float] = defaultdict(float)
    kernels: dict[str, dict[str, Any]] = {}
    for k in win:
        c = category(k["name"], k["cat"])
        cats[c] += k["dur"]
        s = kernels.setdefault(k["name"], {"category": c, "count": 0, "total_us": 0.0})
        s["count"] += 1
        s["total_us"] += k["dur"]
    ranked = sorted(cats.items(), key=lambda x: -x[1])
    out["kernel_ms_per_step"] = {c: round(v / steps / 1000, 4) for c, v in ranked}
    out["kernel_share_of_step_wall"] = {c: round(v / window_us, 4) for c, v in ranked}
    # Gaps between one kernel's end and the next one's start (GPU idle), by size.
    buckets = {"lt_2us": 0.0, "2_10us": 0.0, "10_50us": 0.0, "50_200us": 0.0, "ge_200us": 0.0}
    counts = dict.fromkeys(buckets, 0)
    end = win[0]["ts"] + win[0]["dur"] if win else lo
    for k in win[1:]:
        g = k["ts"] - end
        if g > 0:
            b = ("lt_2us" if g < 2 else "2_10us" if g < 10 else "10_50us" if g < 50 else "50_200us" if g < 200
                 else "ge_200us")
            buckets[b] += g
            counts[b] += 1
        end = max(end, k["ts"] + k["dur"])
    out["gaps_ms_per_step"] = {b: round(v / steps / 1000, 4) for b, v in buckets.items()}
    out["gaps_per_step"] = {b: round(v / steps, 2) for b, v in counts.items()}
    top = sorted(kernels.items(), key=lambda x: -x[1]["total_us"])[:15]
    out["top_kernels"] = [{"name": short(n), "category": s["category"], "per_step": round(s["count"] / steps, 2),
                           "us_per_step": round(s["total_us"] / steps, 2),
                           "mean_us": round(s["total_us"] / s["count"], 2)} for n, s in top]
    # CPU side in the same window: vLLM's step ranges, aten ops run eagerly, CUDA runtime calls.
    def per_name(events: list[dict[str, Any]], n: int) -> dict[str, Any]:
        d: dict[str, list[float]] = defaultdict(list)
        for e in events:
            if lo <= e["ts"] <= hi:
                d[e["name"]].append(e["dur"])
        ranked = sorted(d.items(), key=lambda x: -sum(x[1]))[:n]
        return {k: {"per_step": round(len(v) / steps, 2), "mean_us": round(statistics.fmean(v), 2),
                    "us_per_step": round(sum(v) / steps, 2)} for k, v in ranked}

    out["cpu_step_ranges"] = per_name(cpu_ann, 5)
    out["cpu_ops"] = per_name([e for e in ev if e.get("cat") == "cpu_op"], 10)
    out["cuda_runtime"] = per_name(runtime, 8)
    if model_cfg:
        b = gemm_bytes_per_step(model_cfg, fp8)
        gemm_ms = cats.get("gemm", 0.0) / steps / 1000
        b["gemm_ms_per_step"] = round(gemm_ms, 4)
        b["gemm_effective_gb_s"] = round(b["gemm_read_gib_per_step"] * GIB / gemm_ms / 1e6, 1) if gemm_ms else None
        if hbm_gb_s:
            b["hbm_copy_gb_s"] = hbm_gb_s
            b["gemm_share_of_copy_bandwidth"] = round(b["gemm_effective_gb_s"] / hbm_gb_s, 4) if gemm_ms else None
            b["gemm_bytes_roofline_ms_per_step"] = round(b["gemm_read_gib_per_step"] * GIB / (hbm_gb_s * 1e9) * 1000, 4)
        out["bytes"] = b
    return out


def per_forward(summary: dict[str, Any], model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A whole-window analysis (no decode step spans found: `decode_steps` 1) re-expressed per forward pass.

    The forward passes are counted from the trace's own CPU step ranges in the summary (every
    execute_context_* range that computed prompt tokens or generated); GEMM kernels called once per layer in
    every decode step (count = decode steps x layers) are matched to the layer's weight matrices by size
    order (largest time <-> largest matrix), lm_head's is the GEMM called once per forward pass."""
    a = summary["analysis"]
    if a["decode_steps"] != 1:
        raise ValueError("already per step: per-forward is for a whole-window analysis")
    steps = {n: r["count"] for n, r in a["cpu_ranges"].items() if (m := STEP.fullmatch(n))}
    decode = sum(c for n, c in steps.items() if (m := STEP.fullmatch(n)) and m[1] == "0" and int(m[3]) > 0)
    prefill = sum(c for n, c in steps.items() if (m := STEP.fullmatch(n)) and int(m[1]) > 0)
    fwd = decode + prefill
    cfg = model_cfg.get("text_config", model_cfg)
    h, inter, layers, vocab = (int(cfg[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "vocab_size"))
    heads, kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    hd = int(cfg.get("head_dim") or h // heads)
    wbytes = 1 if summary["model"].get("quantization") == "fp8" else 2
    matrices = sorted([("gate_up", h * 2 * inter), ("down", inter * h), ("qkv", h * (heads + 2 * kv) * hd),
                       ("o", heads * hd * h)], key=lambda x: -x[1])
    bw = summary["hbm_copy_gb_s"]
    out: dict[str, Any] = {
        "forward_passes": fwd, "decode_steps": decode, "prefill_steps": prefill, "step_ranges": steps,
        "window_ms_per_forward": round(a["decode_window_ms"] / fwd, 4),
        "gpu_busy_ms_per_forward": round(a["per_step"]["gpu_busy_ms"] / fwd, 4),
        "gpu_idle_ms_per_forward": round(a["per_step"]["gpu_idle_ms"] / fwd, 4),
        "gpu_busy_share": a["per_step"]["gpu_busy_share"],
        "kernels_per_forward": round(a["per_step"]["kernels"] / fwd, 1),
        "kernel_ms_per_forward": {c: round(v / fwd, 4) for c, v in a["kernel_ms_per_step"].items()},
        "kernel_share_of_window": a["kernel_share_of_step_wall"],
        "gaps_ms_per_forward": {b: round(v / fwd, 4) for b, v in a["gaps_ms_per_step"].items()},
        "gaps_per_forward": {b: round(v / fwd, 1) for b, v in a["gaps_per_step"].items()},
    }
    b = gemm_bytes_per_step(model_cfg, summary["model"].get("quantization") == "fp8")
    gemm_ms = a["kernel_ms_per_step"]["gemm"] / fwd
    b |= {"gemm_ms_per_forward": round(gemm_ms, 4),
          "gemm_effective_gb_s": round(b["gemm_read_gib_per_step"] * GIB / gemm_ms / 1e6, 1),
          "hbm_copy_gb_s": bw,
          "gemm_floor_ms_per_forward": round(b["gemm_read_gib_per_step"] * GIB / (bw * 1e9) * 1000, 4)}
    b["gemm_share_of_copy_bandwidth"] = round(b["gemm_effective_gb_s"] / bw, 4)
    out["bytes"] = b
    gemms = [k for k in a["top_kernels"] if k["category"] == "gemm"]
    per_layer = sorted((k for k in gemms if k["per_step"] == decode * layers), key=lambda k: -k["mean_us"])
    kernels = []
    if len(per_layer) == len(matrices):
        for k, (name, params) in zip(per_layer, matrices, strict=True):
            nbytes = params * wbytes
            kernels.append({"kernel": k["name"], "matrix": name, "mib": round(nbytes / 2**20, 1),
                            "mean_us": k["mean_us"], "gb_s": round(nbytes / k["mean_us"] / 1e3, 1),
                            "share_of_copy_bandwidth": round(nbytes / k["mean_us"] / 1e3 / bw, 4)})
    lm = [k for k in gemms if k["per_step"] == fwd and k["mean_us"] > 50]
    if lm:
        nbytes = vocab * h * 2
        kernels.append({"kernel": lm[0]["name"], "matrix": "lm_head", "mib": round(nbytes / 2**20, 1),
                        "mean_us": lm[0]["mean_us"], "gb_s": round(nbytes / lm[0]["mean_us"] / 1e3, 1),
                        "share_of_copy_bandwidth": round(nbytes / lm[0]["mean_us"] / 1e3 / bw, 4)})
    out["gemm_kernels"] = kernels
    if per_layer:
        layer_us = sum(k["mean_us"] for k in per_layer)
        layer_bytes = sum(p for _, p in matrices) * wbytes
        out["decoder_layer_gemm_us"] = round(layer_us, 2)
        out["decoder_layer_gemm_gb_s"] = round(layer_bytes / layer_us / 1e3, 1)
    if w := summary.get("weights_gib_loaded"):
        out["roofline_tok_s_loaded_weights"] = summary["roofline_tok_s_loaded_weights"]
        out["roofline_tok_s_gemm_bytes"] = round(bw * 1e9 / (b["gemm_read_gib_per_step"] * GIB), 1)
        out["embedding_share_of_loaded_weights"] = round(b["input_embedding_gib_not_read"] / w, 4)
        tok = summary["unprofiled_tok_s"]
        out["unprofiled_tok_s"] = tok
        out["roofline_ratio_loaded_weights"] = round(tok / summary["roofline_tok_s_loaded_weights"], 4)
        out["roofline_ratio_gemm_bytes"] = round(tok / out["roofline_tok_s_gemm_bytes"], 4)
        out["profiled_tpot_ms"] = summary["profiled"]["tpot_ms"]
        out["profiler_slowdown"] = round(summary["profiled"]["tpot_ms"] / summary["unprofiled_tpot_ms_median"], 4)
    return out


# ------------------------------------------------------------------ on the GPU machine
def _post(url: str, key: str, timeout: float) -> int:
    req = urllib.request.Request(url, data=b"", method="POST", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status


def _stream(srv: Any, prompt: list[int], max_tokens: int) -> dict[str, float]:
    """One greedy streamed completion: TTFT and time per output token (client side)."""
    t0 = time.perf_counter()
    stamps = []
    stream = srv.client.completions.create(model=srv.served_name, prompt=prompt, max_tokens=max_tokens,
                                           temperature=0.0, stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text is not None:
            stamps.append(time.perf_counter())
    e2e = time.perf_counter() - t0
    ttft = stamps[0] - t0
    return {"ttft_ms": round(ttft * 1000, 3), "e2e_ms": round(e2e * 1000, 3), "chunks": len(stamps),
            "tpot_ms": round((e2e - ttft) * 1000 / (max_tokens - 1), 4)}


def run(a: argparse.Namespace) -> int:
    import random

    import yaml

    root = Path(__file__).resolve().parents[1]
    # The server and the bandwidth measurement are `python -m ladder...` children.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "scripts"), os.environ.get("PYTHONPATH")]))
    from ladder import roofline
    from ladder.vllmserver import Server, serve_args

    ov = yaml.safe_load(Path(a.overlay).read_text())
    model = {"max_model_len": 512, "dtype": "auto", "load_format": "auto", "quantization": None,
             "kv_cache_dtype": "auto"} | ov["model"]
    cfg = {"model": model, "serve": {"enforce_eager": False, "extra_args": []} | {
        k: v for k, v in ov.get("serve", {}).items() if k in ("enforce_eager", "extra_args")}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tdir = Path(a.trace_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"overlay": a.overlay, "model": model, "command": " ".join(sys.argv)}
    bw = roofline.measure_in_subprocess()
    result["hbm_copy_gb_s"] = round(bw["bandwidth_bytes_s"] / 1e9, 1)
    prof = {"profiler": "torch", "torch_profiler_dir": str(tdir), "torch_profiler_with_stack": False,
            "torch_profiler_record_shapes": False, "ignore_frontend": True}
    args = serve_args(cfg, 1, 1, ray=False) + ["--profiler-config", json.dumps(prof)]
    srv = Server(model["path"], model["name"], a.port, "profile-" + str(random.getrandbits(32)),
                 out / "vllm-serve.log", args=args)
    result["serve_args"] = args
    rng = random.Random(0)
    prompt = [rng.randrange(1000, 120000) for _ in range(a.input_len)]
    # A `timeout` around this script sends TERM: stop the server (its own session) before exiting.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        srv.start()
        result["time_to_healthy_s"] = round(srv.wait_healthy(a.health_timeout), 1)
        for _ in range(a.warmups):
            _stream(srv, prompt, a.output_len)
        result["unprofiled"] = [_stream(srv, prompt, a.output_len) for _ in range(3)]
        t = time.monotonic()
        _post(f"{srv.base}/start_profile", srv.key, 120)
        result["start_profile_s"] = round(time.monotonic() - t, 2)
        result["profiled"] = _stream(srv, prompt, a.output_len)
        t = time.monotonic()
        _post(f"{srv.base}/stop_profile", srv.key, 600)
        result["stop_profile_s"] = round(time.monotonic() - t, 2)
    finally:
        srv.stop()
        (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")  # what there is, if cut off
    traces = sorted(tdir.rglob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    result["traces"] = [{"file": str(p), "bytes": p.stat().st_size} for p in traces]
    for p in tdir.rglob("profiler_out_*.txt"):
        (out / p.name).write_text(p.read_text()[:400_000])
    if not traces:
        result["error"] = f"no trace file under {tdir}"
    else:
        t = time.monotonic()
        mcfg = json.loads((Path(model["path"]) / "config.json").read_text())
        result["analysis"] = analyze(load_trace(traces[-1]), mcfg, fp8=model.get("quantization") == "fp8",
                                     hbm_gb_s=result["hbm_copy_gb_s"])
        result["analysis_s"] = round(time.monotonic() - t, 1)
        log = (out / "vllm-serve.log").read_text(errors="replace")
        if m := re.search(r"Model loading took ([0-9.]+) GiB", log):
            w = float(m.group(1))
            result["weights_gib_loaded"] = w
            result["roofline_tok_s_loaded_weights"] = round(bw["bandwidth_bytes_s"] / (w * GIB), 1)
        med = statistics.median(r["tpot_ms"] for r in result["unprofiled"])
        result["unprofiled_tpot_ms_median"] = med
        result["unprofiled_tok_s"] = round(1000 / med, 1)
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    an = result.get("analysis", {})
    brief = {k: result.get(k) for k in ("hbm_copy_gb_s", "time_to_healthy_s", "weights_gib_loaded",
                                         "roofline_tok_s_loaded_weights", "unprofiled_tpot_ms_median",
                                         "unprofiled_tok_s", "profiled", "stop_profile_s", "traces", "error")}
    brief |= {k: an.get(k) for k in ("decode_steps", "step_period_ms_median", "between_steps_ms_per_step",
                                     "per_step", "kernel_ms_per_step", "gaps_ms_per_step", "bytes")}
    print(json.dumps(brief))
    return 0 if traces else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="serve, profile one request, summarise (GPU machine)")
    r.add_argument("overlay", help="config/gpu overlay whose model section is served")
    r.add_argument("--out", required=True)
    r.add_argument("--trace-dir", default="/tmp/profile-trace")
    r.add_argument("--port", type=int, default=18123)
    r.add_argument("--input-len", type=int, default=512)
    r.add_argument("--output-len", type=int, default=128)
    r.add_argument("--warmups", type=int, default=3)
    r.add_argument("--health-timeout", type=float, default=300)
    z = sub.add_parser("analyze", help="summarise a trace file (JSON on stdout)")
    z.add_argument("trace", type=Path)
    z.add_argument("--config-json", type=Path, help="the model's config.json (adds GEMM bytes per step)")
    z.add_argument("--fp8", action="store_true")
    z.add_argument("--hbm-gb-s", type=float)
    f = sub.add_parser("per-forward", help="a whole-window summary.json per forward pass (JSON on stdout)")
    f.add_argument("summary", type=Path)
    f.add_argument("--config-json", type=Path, required=True, help="the model's config.json")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        return run(a)
    if a.cmd == "per-forward":
        out = {"command": f"python3 gpu/profile_decode.py per-forward {a.summary} --config-json {a.config_json}"}
        out |= per_forward(json.loads(a.summary.read_text()), json.loads(a.config_json.read_text()))
        print(json.dumps(out, indent=1))
        return 0
    cfg = json.loads(a.config_json.read_text()) if a.config_json else None
    print(json.dumps(analyze(load_trace(a.trace), cfg, a.fp8, a.hbm_gb_s), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
