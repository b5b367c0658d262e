#!/usr/bin/env python3
"""Check that a folder of wheels plus the GPU machine's image covers every
runtime requirement (Requires-Dist, no extras) for Python 3.12 on Linux x86_64.

usage: check_closure.py WHEEL_DIR
Exit 1 and list what is missing: a requirement that is neither a wheel in
WHEEL_DIR, nor in DEVICE_HAS (the device image 'cuda', per
/work/.library/device/KINDS.md, read 2026-11-17), nor in DROP (deliberately not
carried: not used by a dense bf16 text model on Hopper; see DESIGN.md section 7).
"""
from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement

ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}

DEVICE_HAS = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama
contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x
cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath
msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja
numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
wheel wrapt xarray xxhash yarl zipp
""".split()  # noqa: SIM905 - a word list reads better than a list literal

# Requirements OF VLLM ITSELF that a dense bf16 text model on Hopper never imports
# (DESIGN.md section 7: "Not needed"), plus GPU kernel libraries it only uses for
# other architectures / MoE / MLA / multimodal. Only vllm's own requirements are
# dropped: the same name required by another carried wheel is still checked.
DROP_OWNER = "vllm"
DROP = """
torchcodec pynvvideocodec flashinfer-python tilelang
nvidia-cudnn-frontend nvtx fastsafetensors nvidia-cutlass-dsl quack-kernels
tokenspeed-mla humming-kernels mistral-common anthropic mcp
opentelemetry-sdk opentelemetry-api opentelemetry-exporter-otlp
opentelemetry-semantic-conventions-ai
""".split()  # noqa: SIM905 - a word list reads better than a list literal


# (owner, requirement) version mismatches accepted on purpose.
ALLOW_CONFLICT = {
    # vllm pins 0.1.10 for flashinfer (not carried); xgrammar 0.2.8 needs >=0.1.11.
    ("vllm", "apache-tvm-ffi"),
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def metadata(whl: Path) -> tuple[str, str, list[str]]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace").replace("\r\n", "\n")
    head = text.split("\n\n", 1)[0]
    name = re.search(r"^Name: (.+)$", head, re.M).group(1).strip()
    version = re.search(r"^Version: (.+)$", head, re.M).group(1).strip()
    reqs = [r.strip() for r in re.findall(r"^Requires-Dist: (.+)$", head, re.M)]
    return name, version, reqs


def main(folder: str) -> int:
    have: dict[str, str] = {}
    reqs: list[tuple[str, str]] = []
    for whl in sorted(Path(folder).glob("*.whl")):
        name, version, rs = metadata(whl)
        if norm(name) in have:
            print(f"two versions of {name}: {have[norm(name)]} and {version}")
            return 1
        have[norm(name)] = version
        reqs += [(name, r) for r in rs]
    device = {norm(n) for n in DEVICE_HAS}
    drop = {norm(n) for n in DROP}
    missing, conflicts = {}, []
    for owner, text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue
        n = norm(req.name)
        if n in have:
            if (req.specifier and not req.specifier.contains(have[n], prereleases=True)
                    and (norm(owner), n) not in ALLOW_CONFLICT):
                conflicts.append(f"{owner} wants {req}, bundle has {have[n]}")
        elif n not in device and not (n in drop and norm(owner) == DROP_OWNER):
            missing.setdefault(n, []).append(f"{owner}: {req}")
    for c in conflicts:
        print("version conflict:", c)
    for n, who in sorted(missing.items()):
        print("missing:", n, "<-", "; ".join(who))
    print(f"{len(have)} wheels; {len(missing)} missing; {len(conflicts)} conflicts")
    return 1 if missing or conflicts else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
