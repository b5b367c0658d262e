"""envs/cpu.lock.txt and envs/cuda.lock.txt are the whole closure of what they install (issue 14, item 6):
uv resolves each for its Python and platform against the registry pip is configured with; nothing may
be added that the lock neither pins nor declares omitted (the env is installed with --no-deps). The
CUDA lock's image part comes from the GPU image's own `pip list` (gpu/devcheck.sh, image-freeze.txt)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.registry


LOCKS = {"cpu": (f"{sys.version_info.major}.{sys.version_info.minor}", f"{platform.machine()}-manylinux_2_28"),
         "cuda": ("3.12", "x86_64-manylinux_2_39")}  # the GPU image: Python 3.12.3, Ubuntu 24.04 (glibc 2.39)


@pytest.mark.parametrize("flavor", sorted(LOCKS))
def test_lock_is_its_own_closure(flavor: str) -> None:
    py, plat = LOCKS[flavor]
    run = subprocess.run([sys.executable, "-m", "ladder.lockcheck", str(ROOT / "envs" / f"{flavor}.lock.txt"),
                          "--python", py, "--platform", plat], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert json.loads(run.stdout) == {"added": [], "changed": [], "dropped": []}
