"""The CUDA flavour: its lock (envs/cuda.lock.txt = gpu/pins.txt + what the GPU image provides),
PEP 440 local-version matching, the GPU config overlays and the dummy-weight model shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ladder.envcheck import lock_mismatches, parse_lock
from ladder.plan import make_plan, model_shape
from ladder.tinymodel import SHAPES, pad_vocab

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("have", "want", "ok"), [
    ("2.11.0+cu130", "2.11.0", True),     # a pin without a local label accepts any build
    ("2.11.0", "2.11.0", True),
    ("2.13.0+cpu", "2.13.0+cpu", True),
    ("2.13.0", "2.13.0+cpu", False),      # a pinned local label must match
    ("2.12.0+cu130", "2.11.0", False),
])
def test_version_matches(have, want, ok):
    assert (lock_mismatches({"torch": want}, {"torch": have}) == []) is ok


def test_cuda_lock_is_the_bundle_plus_what_the_image_has():
    lock = parse_lock((ROOT / "envs" / "cuda.lock.txt").read_text())
    bundle = parse_lock((ROOT / "gpu" / "pins.txt").read_text())
    image = parse_lock((ROOT / "gpu" / "image-freeze.txt").read_text())
    assert {n: v for n, v in lock.items() if n in bundle} == bundle  # every carried wheel at its pin
    rest = {n: v for n, v in lock.items() if n not in bundle}
    assert rest and all(image.get(n) == v for n, v in rest.items()), \
        {n: (v, image.get(n)) for n, v in rest.items() if image.get(n) != v}  # the rest at the image's versions
    assert lock["vllm"] == "0.26.0" and lock["ray"] == "2.60.0" and lock["torch"] == "2.11.0"
    assert lock_mismatches({"torch": lock["torch"]}, {"torch": "2.11.0+cu130"}) == []


@pytest.mark.parametrize(("overlay", "tp", "pp"), [("h200x4-tp2pp2.yaml", 2, 2), ("h200x2-pp2.yaml", 1, 2)])
def test_gpu_overlays_plan(overlay, tp, pp):
    cfg = yaml.safe_load((ROOT / "config" / "gpu" / overlay).read_text())
    # On the storage every sandbox node sees (gpu/run_ladder.sh builds it there), not the nodes' private /tmp.
    assert cfg["env"] == {"flavor": "cuda", "prefix": "/scratch/ladder/venv", "build": False}
    assert cfg["model"]["load_format"] == "dummy" and cfg["model"]["dtype"] == "bfloat16"
    shape = {k: SHAPES["llama3-8b"][k] for k in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers")}
    plan = make_plan(cfg.get("parallel", {"tensor_parallel_size": "auto", "pipeline_parallel_size": "auto"}),
                     cfg["cluster"]["nodes"], cfg["cluster"]["gpus_per_node"], shape)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (tp, pp)


def test_model_shape_reads_the_written_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SHAPES["llama3-8b"]))
    assert model_shape({"name": "llama3-8b", "path": str(tmp_path)}) == {
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8}


def test_pad_vocab_names_every_id_once():
    tok = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<|x|>": 3}}, "added_tokens": [{"id": 2}]}
    vocab = json.loads(pad_vocab(json.dumps(tok), 8))["model"]["vocab"]
    assert sorted(vocab.values()) == [0, 1, 3, 4, 5, 6, 7]  # 2 stays the added token's
    assert vocab["\u0120w7"] == 7
