"""The parallel plan: tensor parallel inside a node, pipeline parallel across nodes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Shape of the locally built tiny model (ladder.tinymodel); layers come from the config.
TINY_SHAPE = {"num_attention_heads": 4, "num_key_value_heads": 2}


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


def model_shape(model: dict[str, Any]) -> dict[str, int]:
    if model["name"] == "tiny" and not model.get("path"):
        return {**TINY_SHAPE, "num_hidden_layers": model["tiny_layers"]}
    cfg = json.loads((Path(model["path"]) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    return {k: int(cfg[k]) for k in ("num_attention_heads", "num_hidden_layers") if k in cfg} | {
        "num_key_value_heads": int(cfg.get("num_key_value_heads", cfg.get("num_attention_heads", 1)))}


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
    if pp > nodes:
        errors.append(f"parallel.pipeline_parallel_size={pp} exceeds cluster.nodes={nodes}")
    layers = shape.get("num_hidden_layers")
    if layers and pp > layers:
        errors.append(f"parallel.pipeline_parallel_size={pp} exceeds the model's {layers} layers")
    if errors:
        raise PlanError("; ".join(errors))
    return Plan(tp, pp, nodes, gpus_per_node)
