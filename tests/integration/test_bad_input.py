"""Bad input is refused with a message naming the key or file, before any Slurm job."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.sandbox


@pytest.mark.parametrize(("overrides", "named"), [
    ({"cluster": {"gpus_per_node": 4}, "env": {"flavor": "cuda"}, "parallel": {"tensor_parallel_size": 3}},
     "parallel.tensor_parallel_size=3 does not divide cluster.gpus_per_node=4"),
    ({"cluster": {"nodes": 2}, "parallel": {"pipeline_parallel_size": 3}},
     "parallel.pipeline_parallel_size=3 exceeds cluster.nodes=2"),
    ({"model": {"name": "llama", "path": "/nonexistent/llama"}}, "model.path: /nonexistent/llama"),
    ({"ray": {"port_range": 150}}, "['ray']['port_range']"),
    ({"cluster": {"partition": "no_such_partition"}}, "cluster.partition='no_such_partition'"),
    ({"model": {"name": "tiny; rm -rf /"}}, "['model']['name']"),
    ({"serve": {"extra_args": ["--x=$(reboot)"]}}, "['serve']['extra_args']"),
    ({"cluster": {"nodes": 2}, "bench": {"concurrency": []}}, "['bench']['concurrency']"),
    ({"serve": {"api_key_file": "/nonexistent/key"}}, "serve.api_key_file: /nonexistent/key"),
], ids=["tp-not-dividing-gpus", "pp-over-nodes", "missing-model-path", "port-range-too-small",
        "no-such-partition", "shell-metacharacters-model", "shell-metacharacters-args", "empty-sweep",
        "missing-key-file"])
def test_rejected_before_submission(run_dag, sandbox, overrides, named):
    before = sandbox.job_ids()
    run = run_dag("all", overrides=overrides, timeout=60)
    assert run.returncode != 0
    assert named in run.stdout, run.stdout[-3000:]
    assert run.elapsed < 10, f"rejection took {run.elapsed:.1f}s"
    assert sandbox.job_ids() == before and run.submitted() == {}


def test_malformed_yaml_names_the_file(sandbox, tmp_path):
    """The lab's config/config.yaml broken: the error names the file and the line, nothing is submitted."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for part in ("Snakefile", "rules", "config", "scripts", "envs", "report", "profiles"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / part)
    (repo / "config" / "config.yaml").write_text("cluster:\n  nodes: 2\n   partition: [oops\n")
    before = sandbox.job_ids()
    res = subprocess.run([str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "--directory", str(tmp_path),
                          "--profile", str(repo / "profiles" / "sandbox"), "all"],
                         env=sandbox.env(), capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"{repo / 'config' / 'config.yaml'} is not valid YAML (line 3" in out, out[-2000:]
    assert sandbox.job_ids() == before
