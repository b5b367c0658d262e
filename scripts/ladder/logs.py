"""Log helpers: the last lines of the log that explains a failure, the latest run of an appended log."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, n: int = 15, indent: str = "    ") -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"{indent}(no log at {path})"
    return "\n".join(indent + line for line in lines[-n:])


def shorten(text: str, head: int = 500, end: int = 1500) -> str:
    """Keep what a diagnosis says first (what failed) and last (the log tail)."""
    return text if len(text) <= head + end else f"{text[:head]} … {text[-end:]}"


def last_run(log: Path) -> list[str]:
    """Lines of the latest start in an appended log (each start writes a `$ cmd` line)."""
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    return lines[starts[-1]:] if starts else lines
