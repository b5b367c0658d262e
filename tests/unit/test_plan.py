"""The parallel planner: 'auto' resolution and every violation, named by key."""

from __future__ import annotations

import json

import pytest

from ladder.plan import TINY_SHAPE, Plan, PlanError, make_plan, model_shape

pytestmark = pytest.mark.unit

AUTO = {"tensor_parallel_size": "auto", "pipeline_parallel_size": "auto"}
LLAMA8B = {"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32}
TINY6 = {**TINY_SHAPE, "num_hidden_layers": 6}


def par(tp="auto", pp="auto"):
    return {"tensor_parallel_size": tp, "pipeline_parallel_size": pp}


@pytest.mark.parametrize(("nodes", "gpus", "shape", "tp", "pp"), [
    (2, 0, TINY6, 1, 2),        # CPU sandbox: one pipeline stage per node
    (3, 0, TINY6, 1, 3),
    (1, 0, TINY6, 1, 1),
    (2, 8, LLAMA8B, 8, 2),      # a node's GPUs, every node
    (4, 4, LLAMA8B, 4, 4),
    (2, 1, LLAMA8B, 1, 2),
    (2, 8, {"num_attention_heads": 12, "num_hidden_layers": 24}, 4, 2),  # divides heads and GPUs
    (2, 6, {"num_attention_heads": 8, "num_hidden_layers": 24}, 2, 2),
])
def test_auto(nodes, gpus, shape, tp, pp):
    plan = make_plan(AUTO, nodes, gpus, shape)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (tp, pp)
    assert plan.world_size == tp * pp
    assert plan.nodes == nodes and plan.gpus_per_node == gpus


def test_explicit_sizes_kept():
    assert make_plan(par(2, 1), 2, 4, LLAMA8B) == Plan(2, 1, 2, 4)
    assert make_plan(par(2, 2), 2, 0, TINY6) == Plan(2, 2, 2, 0)  # TP on CPU is allowed


@pytest.mark.parametrize(("parallel", "nodes", "gpus", "shape", "message"), [
    (par(tp=3), 2, 4, LLAMA8B, "parallel.tensor_parallel_size=3 does not divide cluster.gpus_per_node=4"),
    (par(tp=8), 2, 4, LLAMA8B, "parallel.tensor_parallel_size=8 exceeds cluster.gpus_per_node=4"),
    (par(tp=3), 2, 0, TINY6, "parallel.tensor_parallel_size=3 does not divide the model's 4 attention heads"),
    (par(pp=3), 2, 0, TINY6, "parallel.pipeline_parallel_size=3 exceeds cluster.nodes=2"),
    (par(pp=8), 8, 0, TINY6, "parallel.pipeline_parallel_size=8 exceeds the model's 6 layers"),
])
def test_violation_named(parallel, nodes, gpus, shape, message):
    with pytest.raises(PlanError) as err:
        make_plan(parallel, nodes, gpus, shape)
    assert message in str(err.value)


def test_all_violations_reported_together():
    with pytest.raises(PlanError) as err:
        make_plan(par(tp=3, pp=9), 2, 0, TINY6)
    msg = str(err.value)
    assert msg.count(";") == 2
    for key in ("attention heads", "exceeds cluster.nodes=2", "exceeds the model's 6 layers"):
        assert key in msg


def test_describe_names_the_split():
    text = make_plan(AUTO, 2, 0, TINY6).describe()
    assert "TP=1" in text and "PP=2" in text and "CPU" in text and "world size 2" in text
    assert "8 GPU(s)" in make_plan(AUTO, 2, 8, LLAMA8B).describe()


def test_model_shape_tiny_uses_configured_layers():
    shape = model_shape({"name": "tiny", "path": None, "tiny_layers": 5})
    assert shape == {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 5}


def test_model_shape_from_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_attention_heads": 32, "num_hidden_layers": 40, "hidden_size": 4096}))
    assert model_shape({"name": "m", "path": str(tmp_path)}) == {
        "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 32}


def test_model_shape_multimodal_text_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {
        "num_attention_heads": 16, "num_hidden_layers": 12, "num_key_value_heads": 4}}))
    assert model_shape({"name": "m", "path": str(tmp_path)})["num_key_value_heads"] == 4
