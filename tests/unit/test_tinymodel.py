"""ladder.tinymodel: recipe hash, model-dir check, cached build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ladder import tinymodel
from ladder.tinymodel import Recipe, check_model_dir, recipe_hash

pytestmark = pytest.mark.unit


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for i, f in enumerate(files):
        f.write_text(f"text {i}\n")
    return files


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A minimal directory that passes the check (files are stubs, not a loadable model)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (d / "tokenizer_config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0" * 8)
    return d


def test_recipe_hash_is_stable_and_tracks_every_input(corpus: list[Path]) -> None:
    base = recipe_hash(Recipe(), corpus)
    assert base == recipe_hash(Recipe(), corpus)
    assert recipe_hash(Recipe(seed=1), corpus) != base
    assert recipe_hash(Recipe(layers=3), corpus) != base
    assert recipe_hash(Recipe(architecture="llama"), corpus) != base
    corpus[1].write_text("other text\n")
    assert recipe_hash(Recipe(), corpus) != base


def test_qwen2_hash_unchanged_by_the_architecture_field(corpus: list[Path]) -> None:
    """Builds cached before families existed stay valid: qwen2 hashes without the new field."""
    import dataclasses
    import hashlib

    fields = {k: v for k, v in dataclasses.asdict(Recipe()).items() if k != "architecture"}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for path in corpus:
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    assert recipe_hash(Recipe(), corpus) == h.hexdigest()[:16]


@pytest.mark.parametrize(("family", "cls", "specific"), [
    ("qwen2", "Qwen2Config", {"num_key_value_heads": 2}),
    ("llama", "LlamaConfig", {"num_key_value_heads": 2}),
    ("mistral", "MistralConfig", {"sliding_window": tinymodel.TINY_SLIDING_WINDOW, "num_key_value_heads": 2}),
    ("falcon", "FalconConfig", {"new_decoder_architecture": True, "num_kv_heads": 2, "parallel_attn": True}),
])
def test_tiny_config_per_family(family: str, cls: str, specific: dict) -> None:
    config = tinymodel.tiny_config(Recipe(architecture=family, layers=3), bos=0, eos=2)
    assert type(config).__name__ == cls
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size, config.vocab_size) == (
        3, 4, 128, 2048)
    assert (config.bos_token_id, config.eos_token_id) == (0, 2)
    assert {k: getattr(config, k) for k in specific} == specific


def test_mistral_window_shorter_than_what_the_greedy_check_generates() -> None:
    from ladder.vllmserver import GREEDY_TOKENS

    assert tinymodel.TINY_SLIDING_WINDOW < GREEDY_TOKENS + 2 < Recipe().max_position


def test_valid_model_dir_has_no_problems(model_dir: Path) -> None:
    assert check_model_dir(model_dir) == []


def test_missing_dir(tmp_path: Path) -> None:
    (problem,) = check_model_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in problem and "does not exist" in problem


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "tokenizer.json"])
def test_missing_file_is_named(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    (problem,) = check_model_dir(model_dir)
    assert str(model_dir / name) in problem and "missing" in problem


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "generation_config.json"])
def test_invalid_json_is_named(model_dir: Path, name: str) -> None:
    (model_dir / name).write_text("{not json")
    (problem,) = check_model_dir(model_dir)
    assert str(model_dir / name) in problem and "invalid JSON" in problem


def test_config_without_model_type(model_dir: Path) -> None:
    (model_dir / "config.json").write_text("[]")
    assert "model_type" in check_model_dir(model_dir)[0]


def test_no_weights_unless_dummy_load(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    (problem,) = check_model_dir(model_dir)
    assert "no weights" in problem
    assert check_model_dir(model_dir, require_weights=False) == []


def test_sharded_weights_missing_shard(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    (model_dir / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    (problem,) = check_model_dir(model_dir)
    assert str(model_dir / "model-00002-of-00002.safetensors") in problem


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit, match="not a tinymodel build"):
        tinymodel.build(tmp_path, Recipe())
    assert (tmp_path / "keep.txt").exists()


def test_build_is_cached_by_recipe(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    assert "built" in tinymodel.build(out, Recipe(layers=2))
    assert check_model_dir(out) == []
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["vocab_size"]) == (2, 2048)
    assert "already built" in tinymodel.build(out, Recipe(layers=2))
    weights = (out / "model.safetensors").read_bytes()
    assert "built" in tinymodel.build(out, Recipe(layers=2, seed=1))  # new recipe replaces the build
    assert (out / "model.safetensors").read_bytes() != weights
