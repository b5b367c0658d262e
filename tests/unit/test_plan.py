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


# ----------------------------------------------------------------------------- families, quantization, fit
from ladder.plan import dims, family_problems, fit_one_node, quantization_problems  # noqa: E402
from ladder.tinymodel import SHAPES  # noqa: E402


@pytest.mark.parametrize(("shape", "family", "heads", "kv", "layers"), [
    ("llama3-70b", "llama", 64, 8, 80),
    ("mistral-7b", "mistral", 32, 8, 32),
    ("falcon-7b", "falcon", 71, 1, 32),  # multi-query: one KV head
    ("qwen2-7b", "qwen2", 28, 4, 28),
])
def test_dims_of_real_shapes(shape, family, heads, kv, layers):
    d = dims(SHAPES[shape])
    assert (d["family"], d["num_attention_heads"], d["num_key_value_heads"], d["num_hidden_layers"]) == (
        family, heads, kv, layers)


def test_falcon_new_decoder_architecture_kv_heads_and_old_names():
    assert dims({"model_type": "falcon", "new_decoder_architecture": True, "num_attention_heads": 4,
                 "num_kv_heads": 2, "num_hidden_layers": 4})["num_key_value_heads"] == 2
    old = dims({"model_type": "falcon", "n_head": 71, "n_layer": 32})  # RefinedWeb-era key names
    assert (old["num_attention_heads"], old["num_hidden_layers"], old["num_key_value_heads"]) == (71, 32, 1)


def test_falcon7b_heads_force_tp1():
    plan = make_plan(AUTO, 2, 8, model_shape_of("falcon-7b"))
    assert plan.tensor_parallel_size == 1  # 71 heads: no TP > 1 divides them
    with pytest.raises(PlanError, match="does not divide the model's 71 attention heads"):
        make_plan(par(tp=2), 2, 8, model_shape_of("falcon-7b"))


def model_shape_of(shape: str) -> dict[str, int]:
    d = dims(SHAPES[shape])
    return {k: d[k] for k in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers")}


def test_tp_must_split_or_replicate_kv_heads_evenly():
    with pytest.raises(PlanError, match="neither divides nor is a multiple of the model's 6 KV heads"):
        make_plan(par(tp=4), 1, 4, {"num_attention_heads": 24, "num_key_value_heads": 6, "num_hidden_layers": 4})
    assert make_plan(par(tp=4), 1, 4, {"num_attention_heads": 32, "num_key_value_heads": 2}).tensor_parallel_size == 4


@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral", "falcon"])
def test_tiny_families_are_supported(family):
    model = {"name": "tiny", "path": None, "tiny_layers": 4, "architecture": family}
    assert family_problems(model) == []
    assert model_shape(model) == {**TINY_SHAPE, "num_hidden_layers": 4}


def test_unsupported_family_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_head": 12, "n_layer": 12}))
    [msg] = family_problems({"name": "m", "path": str(tmp_path)})
    assert msg.startswith(f"model.path: {tmp_path / 'config.json'}: model_type 'gpt2' is not a family")
    assert "falcon, llama, mistral, qwen2" in msg


def probe_node(name: str, fp8_isa: list[str] | None = None, caps: tuple[str, ...] = ()) -> dict:
    return {"slurm_node": name, "cpu": {"fp8_isa": fp8_isa or []},
            "gpus": {"devices": [{"compute_capability": c} for c in caps]}}


@pytest.mark.parametrize(("model", "flavor", "nodes", "message"), [
    ({"quantization": "fp8"}, "cpu", None, "model.quantization=fp8: not supported with env.flavor=cpu"),
    ({"kv_cache_dtype": "fp8"}, "cpu", [probe_node("n1", ["avx512f"]), probe_node("n2")],
     "model.kv_cache_dtype=fp8: vLLM's FP8 KV cache on CPU needs AVX-512 or AMX, which n2 lack(s)"),
    ({"quantization": "fp8"}, "cuda", [probe_node("n1", caps=("8.0", "8.0"))],
     "model.quantization=fp8: needs GPUs with compute capability >= 8.9 (FP8); the probe found 8.0"),
    ({"kv_cache_dtype": "fp8_e5m2"}, "cuda", [probe_node("n1", caps=("7.5",))],
     "model.kv_cache_dtype=fp8_e5m2: needs GPUs with compute capability >= 8.9"),
])
def test_quantization_refused_naming_the_key(model, flavor, nodes, message):
    [msg] = quantization_problems(model, flavor, nodes)
    assert msg.startswith(message), msg


@pytest.mark.parametrize(("model", "flavor", "nodes"), [
    ({}, "cpu", None),
    ({"quantization": None, "kv_cache_dtype": "auto"}, "cuda", [probe_node("n1", caps=("7.0",))]),
    ({"kv_cache_dtype": "fp8"}, "cpu", [probe_node("n1", ["amx_tile"])]),
    ({"quantization": "fp8", "kv_cache_dtype": "fp8"}, "cuda", [probe_node("n1", caps=("9.0", "8.9"))]),
    ({"quantization": "fp8"}, "cuda", None),  # before the probe: checked again by single
])
def test_quantization_accepted(model, flavor, nodes):
    assert quantization_problems(model, flavor, nodes) == []


H200 = 143771 * 2**20  # memory_mib NVML reports for one H200


def test_llama3_8b_weights_match_vllm():
    fit = fit_one_node(SHAPES["llama3-8b"], 2, 1, H200, 0)
    weights = fit.need_bytes() - fit.reserve_bytes
    assert weights / 2**30 == pytest.approx(14.96, abs=0.01)  # vLLM: "Model loading took 14.96 GiB"
    assert fit.proxy_layers is None and fit.serve_args() == [] and "fits one node" in fit.describe()


def test_llama3_70b_needs_a_proxy_on_one_h200_not_on_two_or_in_fp8():
    fit = fit_one_node(SHAPES["llama3-70b"], 2, 1, H200, 8192)
    assert fit.layers == 80 and fit.proxy_layers is not None and fit.proxy_layers < 80
    assert fit.need_bytes(fit.proxy_layers) <= fit.node_bytes < fit.need_bytes(fit.proxy_layers + 1)
    assert fit.serve_args() == ["--hf-overrides", json.dumps({"num_hidden_layers": fit.proxy_layers})]
    assert f"proxy with {fit.proxy_layers} of 80 layers" in fit.describe()
    assert fit_one_node(SHAPES["llama3-70b"], 2, 2, H200, 8192).proxy_layers is None  # TP=2 over a node's 2 GPUs
    assert fit_one_node(SHAPES["llama3-70b"], 2, 1, H200, 8192, fp8_weights=True).proxy_layers is None


def test_70b_proxy_leaves_vllm_its_kv_cache_on_one_h200():
    """Seen on one H200 (vLLM 0.26): 76 layers loaded 125.04 GiB and left 1.14 GiB of KV cache, less
    than one 4096-token sequence needs (1.19 GiB), and vLLM refused to start: the plan must pick fewer."""
    fit = fit_one_node(SHAPES["llama3-70b"], 2, 1, H200, 4096)
    assert fit.proxy_layers is not None and fit.proxy_layers < 76
    weights_76 = fit.outside_bytes + 76 * (fit.layer_bytes - 2 * 8 * 128 * 2 * 4096)
    assert weights_76 / 2**30 == pytest.approx(125.04, abs=0.1)  # the plan's weights are vLLM's


def test_kv_cache_counts_and_fp8_kv_halves_it():
    long = fit_one_node(SHAPES["llama3-8b"], 2, 1, H200, 100_000)
    short = fit_one_node(SHAPES["llama3-8b"], 2, 1, H200, 0)
    fp8 = fit_one_node(SHAPES["llama3-8b"], 2, 1, H200, 100_000, kv_bytes=1)
    kv = long.need_bytes() - short.need_bytes()
    assert kv == 100_000 * 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads x 128, bf16
    assert fp8.need_bytes() - short.need_bytes() == kv // 2


def test_not_even_one_layer_fits():
    with pytest.raises(PlanError, match="not even one layer fits"):
        fit_one_node(SHAPES["llama3-70b"], 2, 1, 2**30, 8192)
