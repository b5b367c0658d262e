"""Build a tiny, reproducible model that vLLM can serve on CPU (DESIGN.md §7).

There is no model hub on the sandbox or in CI, so the model is built locally: a byte-level
BPE tokenizer trained on text every Linux box has, plus seeded random float32 weights. The
output is meaningless but deterministic, which is all the ladder needs to compare a
multi-node run against a single-node one. Families (``--architecture``): qwen2 (default),
llama, mistral (sliding window shorter than the context, so the windowed attention path
runs) and falcon (new decoder architecture: grouped KV heads, parallel attention + MLP).

    python -m ladder.tinymodel --out .cache/models/tiny [--seed 0] [--layers 4] [--architecture llama]
    python -m ladder.tinymodel --out /scratch/ladder/models/llama3-8b --shape llama3-8b

``--shape`` writes a real architecture's config.json and the locally trained tokenizer,
and no weights: vLLM serves it with ``--load-format dummy`` (random weights in that
shape), for realistic GPU performance without a model hub (DESIGN.md section 7).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MARKER = "ladder-tinymodel.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# ChatML, as Qwen2 uses; vLLM's chat endpoint needs a template in tokenizer_config.json.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LICENSE_DIR = Path("/usr/share/common-licenses")
STDLIB_FILES = ("argparse.py", "textwrap.py", "string.py", "functools.py", "json/__init__.py")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines the built files; hashed into the cache marker."""

    seed: int = 0
    layers: int = 4
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    heads: int = 4
    kv_heads: int = 2
    max_position: int = 512
    architecture: str = "qwen2"
    # Bump when the build code changes its output, so stale caches are rebuilt.
    code_version: int = 2


ARCHITECTURES = ("qwen2", "llama", "mistral", "falcon")
# Mistral's window: shorter than the greedy prompts plus their 16 tokens, so it is exercised.
TINY_SLIDING_WINDOW = 16


def tiny_config(recipe: Recipe, bos: int, eos: int):  # -> PretrainedConfig
    """The transformers config of the tiny model of `recipe.architecture` (same size for every family)."""
    import transformers

    common = {"vocab_size": recipe.vocab_size, "hidden_size": recipe.hidden_size,
              "num_hidden_layers": recipe.layers, "num_attention_heads": recipe.heads,
              "max_position_embeddings": recipe.max_position, "tie_word_embeddings": False,
              # The library defaults point at the real models' vocabularies; use our specials.
              "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": bos, "dtype": "float32"}
    if recipe.architecture == "falcon":
        return transformers.FalconConfig(**common, num_kv_heads=recipe.kv_heads, new_decoder_architecture=True,
                                         parallel_attn=True, bias=False, alibi=False)
    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
           "mistral": transformers.MistralConfig}[recipe.architecture]
    extra = {"sliding_window": TINY_SLIDING_WINDOW} if recipe.architecture == "mistral" else {}
    return cls(**common, intermediate_size=recipe.intermediate_size, num_key_value_heads=recipe.kv_heads, **extra)


def corpus_files() -> list[Path]:
    """Local training text: licenses (Debian/Ubuntu) and a few stdlib sources (everywhere)."""
    files: list[Path] = []
    if LICENSE_DIR.is_dir():
        # Symlinks (GPL -> GPL-3) would only duplicate text.
        files += sorted(p for p in LICENSE_DIR.iterdir() if p.is_file() and not p.is_symlink())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files += [stdlib / name for name in STDLIB_FILES if (stdlib / name).is_file()]
    if not files:
        raise SystemExit("tinymodel: no corpus text found (neither common-licenses nor stdlib sources)")
    return files


def recipe_hash(recipe: Recipe, corpus: Sequence[Path]) -> str:
    """Hash of the recipe and the corpus contents (another Python's stdlib gives another model)."""
    fields = dataclasses.asdict(recipe)
    if fields["architecture"] == "qwen2":  # hashed as before families existed: existing caches stay valid
        del fields["architecture"]
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for path in corpus:
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _read_json(path: Path) -> tuple[object | None, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: unreadable ({exc})"
    except json.JSONDecodeError as exc:
        return None, f"{path}: invalid JSON ({exc})"


def check_model_dir(path: str | Path, *, require_weights: bool = True) -> list[str]:
    """Problems that would make vLLM fail on this model directory, each naming the file.

    Run before submitting any Slurm job so a typo costs seconds, not a queue wait. Pass
    require_weights=False for configs served with `--load-format dummy`.
    """
    root = Path(path)
    if not root.exists():
        return [f"{root}: model directory does not exist"]
    if not root.is_dir():
        return [f"{root}: not a directory"]
    problems: list[str] = []

    config_path = root / "config.json"
    if not config_path.is_file():
        problems.append(f"{config_path}: missing (the model config vLLM reads first)")
    else:
        config, err = _read_json(config_path)
        if err:
            problems.append(err)
        elif not isinstance(config, dict) or "model_type" not in config:
            problems.append(f"{config_path}: not a model config (no 'model_type')")

    for name in ("tokenizer_config.json", "generation_config.json", "tokenizer.json"):
        if (root / name).is_file() and (err := _read_json(root / name)[1]):
            problems.append(err)
    if not (root / "tokenizer_config.json").is_file():
        problems.append(f"{root / 'tokenizer_config.json'}: missing tokenizer file")
    has_vocab = (root / "tokenizer.json").is_file() or (root / "tokenizer.model").is_file() or (
        (root / "vocab.json").is_file() and (root / "merges.txt").is_file()
    )
    if not has_vocab:
        alternatives = "tokenizer.model or vocab.json+merges.txt"
        problems.append(f"{root / 'tokenizer.json'}: missing tokenizer file (and no {alternatives})")

    if require_weights:
        problems += _weight_problems(root)
    return problems


def _weight_problems(root: Path) -> list[str]:
    for index_path in sorted(root.glob("*.index.json")):
        index, err = _read_json(index_path)
        if err:
            return [err]
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            return [f"{index_path}: no 'weight_map'"]
        missing = sorted({str(s) for s in weight_map.values()} - {p.name for p in root.iterdir()})
        return [f"{root / shard}: weight shard listed in {index_path.name} is missing" for shard in missing]
    if any(p.stat().st_size > 0 for g in WEIGHT_GLOBS for p in root.glob(g)):
        return []
    return [f"{root}: no weights (*.safetensors or pytorch_model*.bin)"]


def _train_tokenizer(recipe: Recipe, corpus: Sequence[Path],
                     pad_to: int | None = None):  # -> PreTrainedTokenizerFast
    """Byte-level BPE of `recipe.vocab_size` learnt from `corpus`, padded to `pad_to` ids (pad_vocab)."""
    # Imported lazily: check_model_dir must stay cheap for the pre-submit check.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator((p.read_text(encoding="utf-8", errors="replace") for p in corpus), trainer)
    if pad_to:
        tok = Tokenizer.from_str(pad_vocab(tok.to_str(), pad_to))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=recipe.max_position,
    )


def _already_built(out: Path, digest: str, *, require_weights: bool) -> bool:
    """True when `out` holds this recipe's build; refuses to go on over a directory we did not create."""
    marker = out / MARKER
    if marker.is_file() and not check_model_dir(out, require_weights=require_weights):
        old, err = _read_json(marker)
        if not err and isinstance(old, dict) and old.get("recipe_hash") == digest:
            return True
    # Never delete a directory we did not create: only an empty dir or an earlier build.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not marker.is_file())):
        raise SystemExit(f"tinymodel: {out} exists and is not a tinymodel build; refusing to replace it")
    return False


def _publish(out: Path, write: Callable[[Path], None], info: dict[str, object], *, require_weights: bool) -> None:
    """Build next to the target and swap in, so an interrupted build never looks complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(tmp)
        # transformers 5 writes tokenizer_class "TokenizersBackend", unknown to 4.x (GPU
        # clusters); the generic class plus an inline template load with either.
        tok_config_path = tmp / "tokenizer_config.json"
        tok_config = json.loads(tok_config_path.read_text())
        tok_config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
        tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n")
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if problems := check_model_dir(tmp, require_weights=require_weights):
            raise RuntimeError("tinymodel: built model fails its own check: " + "; ".join(problems))
        # mkdtemp makes the directory 0700; Ray workers of other users on a cluster may read it.
        for p in (tmp, *tmp.iterdir()):
            p.chmod(0o755 if p.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(out: Path, recipe: Recipe) -> str:
    """Build into `out` unless it already holds this recipe's build; returns a one-line status."""
    corpus = corpus_files()
    digest = recipe_hash(recipe, corpus)
    if _already_built(out, digest, require_weights=True):
        return f"tinymodel: {out} already built (recipe {digest}), nothing to do"

    import torch
    from transformers import AutoModelForCausalLM

    start = time.monotonic()
    tokenizer = _train_tokenizer(recipe, corpus)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    config = tiny_config(recipe, bos=ids[0], eos=ids[2])
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    info = {"recipe_hash": digest, "recipe": dataclasses.asdict(recipe), "params": n_params,
            "corpus": [str(p) for p in corpus]}
    _publish(out, write, info, require_weights=True)
    return f"tinymodel: built {out} (recipe {digest}, {n_params} params, {time.monotonic() - start:.1f} s)"


# Public architecture values (the config.json of Meta-Llama-3-8B, Meta-Llama-3-70B, Mistral-7B-v0.1,
# Falcon-7B, Qwen2-7B); bos/eos are set to the local tokenizer's specials at build time.
_LLAMA3 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": None,
           "vocab_size": 128256, "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0,
           "mlp_bias": False, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16"}
SHAPES: dict[str, dict[str, object]] = {
    "llama3-70b": {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                   "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128},
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 32768, "sliding_window": 4096,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "vocab_size": 32000, "tie_word_embeddings": False,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16",
    },
    "falcon-7b": {  # multi-query attention (one KV head), 71 query heads, parallel attention + MLP
        "architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544,
        "num_hidden_layers": 32, "num_attention_heads": 71, "multi_query": True, "new_decoder_architecture": False,
        "parallel_attn": True, "bias": False, "alibi": False, "layer_norm_epsilon": 1e-05,
        "max_position_embeddings": 2048, "rope_theta": 10000.0, "vocab_size": 65024, "hidden_dropout": 0.0,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16",
    },
    "qwen2-7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "max_position_embeddings": 131072, "max_window_layers": 28, "sliding_window": 131072,
        "use_sliding_window": False, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 152064,
        "tie_word_embeddings": False, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "bfloat16",
    },
    "llama3-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
}
SHAPE_TOKENIZER_VOCAB = 8192  # merges learnt from the local corpus; the rest is filler


def pad_vocab(tokenizer_json: str, vocab_size: int) -> str:
    """Give every model token id a token string, so random-weight outputs decode to text.

    A dummy-weight model samples ids over its whole vocabulary; ids the tokenizer lacks
    decode to nothing (empty completions). Filler tokens ``Ġw<id>`` (" w<id>" after the
    byte-level decoder) have no merges, so encoding never produces them.
    """
    data = json.loads(tokenizer_json)
    vocab: dict[str, int] = data["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    for i in range(vocab_size):
        if i not in taken:
            vocab[f"\u0120w{i}"] = i
    return json.dumps(data, ensure_ascii=False)


def build_shape(out: Path, shape: str, recipe: Recipe) -> str:
    """Config of a real architecture + the local tokenizer padded to its vocabulary; no weights."""
    arch = SHAPES[shape]
    vocab_size = int(arch["vocab_size"])  # type: ignore[call-overload]
    corpus = corpus_files()
    recipe = dataclasses.replace(recipe, vocab_size=SHAPE_TOKENIZER_VOCAB, layers=int(arch["num_hidden_layers"]),
                                 max_position=int(arch["max_position_embeddings"]))  # type: ignore[call-overload]
    digest = hashlib.sha256((recipe_hash(recipe, corpus) + json.dumps(arch, sort_keys=True)).encode()).hexdigest()[:16]
    if _already_built(out, digest, require_weights=False):
        return f"tinymodel: {out} already built ({shape}, recipe {digest}), nothing to do"
    start = time.monotonic()
    tokenizer = _train_tokenizer(recipe, corpus, pad_to=vocab_size)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    config = {**arch, "bos_token_id": ids[0], "eos_token_id": ids[2], "pad_token_id": ids[0]}
    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": ids[0], "eos_token_id": ids[2], "pad_token_id": ids[0]}, indent=2) + "\n")

    info = {"recipe_hash": digest, "shape": shape, "recipe": dataclasses.asdict(recipe),
            "tokenizer_vocab": len(tokenizer), "weights": "none (serve with --load-format dummy)",
            "corpus": [str(p) for p in corpus]}
    _publish(out, write, info, require_weights=False)
    return (f"tinymodel: built {out} ({shape} config, tokenizer {len(tokenizer)} ids, no weights, "
            f"{time.monotonic() - start:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ladder.tinymodel", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to create")
    parser.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    parser.add_argument("--layers", type=int, default=4,
                        help="decoder layers (default 4); vLLM splits them unevenly across PP ranks")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="qwen2",
                        help="family of the tiny model (default qwen2)")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="a real architecture's config + the local tokenizer, no weights (--load-format dummy)")
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error("--layers must be >= 1")
    if args.shape:
        print(build_shape(args.out, args.shape, Recipe(seed=args.seed)))
    else:
        print(build(args.out, Recipe(seed=args.seed, layers=args.layers, architecture=args.architecture)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
