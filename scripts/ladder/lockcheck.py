"""Is a lock the whole closure? uv resolves it for the lock's Python and platform, with the lock's
overrides applied (versions kept against a dependency's own declaration, which pip cannot express);
a distribution the resolver adds that the lock neither pins nor declares omitted is a gap: the env
is installed with --no-deps, so it would be missing there.

    python -m ladder.lockcheck envs/cpu.lock.txt --python 3.11 --platform x86_64-manylinux_2_28

Beside the lock: envs/<flavor>.overrides.txt (requirements, uv --override) and
envs/<flavor>.omitted.txt (names left out on purpose, each with its reason as a comment).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from ladder.envcheck import parse_lock


def names(path: Path) -> set[str]:
    """The distribution names of a list file (one per line; '#' starts a comment)."""
    if not path.exists():
        return set()
    return {canonicalize_name(line.split("#")[0].split()[0]) for line in path.read_text().splitlines()
            if line.split("#")[0].strip()}


def pip_sources(config_lines: list[str], env: dict[str, str]) -> list[str]:
    """uv arguments for the indexes and wheel folders pip is configured with (uv reads no pip.conf):
    `pip config list` lines (`global.extra-index-url='a b'`, `:env:.find-links='/w'`) and PIP_* variables."""
    found: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": []}
    for line in config_lines:
        m = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line.strip())
        if m and m[1] in found:
            found[m[1]] += m[2].split()
    for key in found:
        found[key] += env.get("PIP_" + key.upper().replace("-", "_"), "").split()
    args: list[str] = []
    for key, values in found.items():
        for v in dict.fromkeys(values):  # pip's config and its environment often say the same
            args += [f"--{key}", v]
    return args


def gaps(pins: dict[str, str], resolved: dict[str, str], omitted: set[str]) -> dict[str, list[str]]:
    """What the resolver adds (not pinned, not declared omitted), what it changed, what it dropped."""
    return {"added": sorted(f"{n}=={v}" for n, v in resolved.items() if n not in pins and n not in omitted),
            "changed": sorted(f"{n}: lock {pins[n]}, resolved {v}" for n, v in resolved.items()
                              if n in pins and pins[n] != v),
            "dropped": sorted(n for n in pins if n not in resolved)}


def resolve(lock: Path, overrides: Path, python: str, platform: str) -> dict[str, str]:
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60).stdout.splitlines()
    uv = Path(sys.executable).parent / "uv"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "resolved.txt"
        cmd = [str(uv), "pip", "compile", str(lock), "--python-version", python, "--python-platform", platform,
               "--index-strategy", "unsafe-best-match", "--no-header", "--no-annotate", "-q", "-o", str(out),
               "--system-certs",  # the platform's CA store, as pip's: a site's TLS proxy is trusted there
               *(["--override", str(overrides)] if overrides.exists() else []), *pip_sources(config, dict(os.environ))]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise SystemExit(f"uv could not resolve {lock}: {run.stderr.strip()[-2000:]}\n  {shlex.join(cmd)}")
        return parse_lock(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lock", type=Path)
    ap.add_argument("--python", required=True, help="the Python the lock is for, e.g. 3.11")
    ap.add_argument("--platform", required=True, help="uv's --python-platform, e.g. x86_64-manylinux_2_28")
    a = ap.parse_args(argv)
    stem = a.lock.name.removesuffix(".lock.txt")
    pins = parse_lock(a.lock.read_text())
    found = gaps(pins, resolve(a.lock, a.lock.with_name(f"{stem}.overrides.txt"), a.python, a.platform),
                 names(a.lock.with_name(f"{stem}.omitted.txt")))
    print(json.dumps(found, indent=1))
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
