"""envs/cpu.lock.txt is the whole closure of what it installs (issue 14, item 6): uv resolves it against
the registry pip is configured with; nothing may be added that the lock neither pins nor declares
omitted (the env is installed with --no-deps). The CUDA lock's check needs the image's versions: see
gpu/devcheck.sh (image-freeze.txt)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.registry


def test_cpu_lock_is_its_own_closure() -> None:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    run = subprocess.run([sys.executable, "-m", "ladder.lockcheck", str(ROOT / "envs" / "cpu.lock.txt"),
                          "--python", py, "--platform", f"{platform.machine()}-manylinux_2_28"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert json.loads(run.stdout) == {"added": [], "changed": [], "dropped": []}
