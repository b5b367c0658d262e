#!/usr/bin/env python3
"""Check that a folder of wheels plus the GPU machine's image covers every
runtime requirement (Requires-Dist, no extras) for Python 3.12 on Linux x86_64.

usage: check_closure.py WHEEL_DIR
Exit 1 and list what is missing: a requirement that is neither a wheel in
WHEEL_DIR, nor on the GPU image (gpu/image-freeze.txt, its `pip list` taken by
gpu/devcheck.sh), nor dropped in envs/cuda.overrides.txt
(deliberately not carried: not used by a dense bf16 text model on Hopper; DESIGN.md section 7).
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

# What the image provides: its own `pip list`, taken on the machine by gpu/devcheck.sh.
IMAGE = Path(__file__).resolve().parent / "image-freeze.txt"


# envs/cuda.overrides.txt says, for the CUDA lock's resolver too, what the GPU env keeps against a
# declaration: `name ; sys_platform == "never"` drops one of vLLM's own requirements (a dense text model
# on Hopper never imports it: DESIGN.md section 7; the same name required by another carried wheel is
# still checked), `name==version` accepts that version against any declaration.
OVERRIDES = Path(__file__).resolve().parents[1] / "envs" / "cuda.overrides.txt"
DROP_OWNER = "vllm"


def overrides() -> tuple[set[str], set[str]]:
    """(names vLLM's requirements may drop, names pinned against a declaration)."""
    drop, pinned = set(), set()
    for line in OVERRIDES.read_text().splitlines():
        req = line.split("#")[0].strip()
        if req:
            (drop if 'sys_platform == "never"' in req else pinned).add(norm(re.split(r"[\s;=<>!~]", req)[0]))
    return drop, pinned


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
    device = {norm(line.split("==")[0]) for line in IMAGE.read_text().splitlines() if "==" in line.split("#")[0]}
    drop, pinned = overrides()
    missing, conflicts = {}, []
    for owner, text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue
        n = norm(req.name)
        if n in have:
            if (req.specifier and not req.specifier.contains(have[n], prereleases=True)
                    and n not in pinned):
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
