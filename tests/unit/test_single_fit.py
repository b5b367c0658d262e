"""single on GPU nodes: the full model or a documented proxy (singlestage.model_fit)."""

from __future__ import annotations

import json

import pytest

from ladder.singlestage import model_fit
from ladder.tinymodel import SHAPES
from ladder.verdict import Verdict

pytestmark = pytest.mark.unit


def run(tmp_path, shape: str, gpus: int, mib: int, **model) -> tuple[Verdict, object]:
    (tmp_path / "config.json").write_text(json.dumps(SHAPES[shape]))
    cfg = {"cluster": {"gpus_per_node": gpus},
           "model": {"dtype": "auto", "max_model_len": 8192, "quantization": None, "kv_cache_dtype": "auto",
                     "load_format": "dummy"} | model}
    node = {"gpus": {"devices": [{"memory_mib": mib}] * gpus}}
    v = Verdict("single")
    return v, model_fit(v, cfg, node, str(tmp_path), max(gpus, 1))


def test_cpu_nodes_are_not_checked(tmp_path):
    v, fit = run(tmp_path, "llama3-8b", 0, 0)
    assert fit is None and v.checks == []


def test_fits(tmp_path):
    v, fit = run(tmp_path, "llama3-8b", 1, 143771)
    assert fit.proxy_layers is None and fit.serve_args() == []
    assert v.checks[0].name == "model_fits_one_node" and v.checks[0].ok is True


def test_too_large_serves_a_proxy_and_says_so(tmp_path):
    v, fit = run(tmp_path, "llama3-70b", 1, 143771)
    assert fit.proxy_layers and fit.proxy_layers < 80
    check = v.checks[0]
    assert check.ok is None and check.value == fit.proxy_layers and "proxy" in check.detail
    assert v.metrics["proxy_layers"] == fit.proxy_layers and not v.failed


def test_fp8_makes_it_fit(tmp_path):
    v, fit = run(tmp_path, "llama3-70b", 1, 143771, quantization="fp8")
    assert fit.proxy_layers is None and v.checks[0].ok is True


def test_proxy_refused_with_real_weights(tmp_path):
    v, _ = run(tmp_path, "llama3-70b", 1, 143771, load_format="auto")
    assert v.failed and "model.load_format: dummy" in v.failed[0].detail
