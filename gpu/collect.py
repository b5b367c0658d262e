#!/usr/bin/env python3
"""Summarize a ladder results/ tree and pack a compact copy of it (stdlib only).

    python3 gpu/collect.py summary RESULTS               # every figure, a few lines per stage
    python3 gpu/collect.py pack RESULTS OUT.tgz [--max-mib 15]
    python3 gpu/collect.py phases RUN                     # RUN/phases.json from its vLLM logs (ladder.logs)
    python3 gpu/collect.py withdraw VERDICT CHECK WHY     # a figure found wrong after the run, marked in place
    python3 gpu/collect.py compare RUN BASE               # RUN/vs-<BASE>.json: single's RUN / BASE ratios

`pack` keeps verdicts, measurements (bench/e2e/scaling/roofline/nodes/versions JSON, raw
`vllm bench` JSON, monitor CSV), the report (HTML, PNG) and the last 200 KB of every log;
when the archive is still too large, logs shrink first. Runs on the GPU machine (into $OUT)
and here (on what came back).
"""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

STAGES = ("env", "probe", "ray", "single", "multinode", "report")
KEEP_SUFFIXES = {".json", ".csv", ".html", ".png", ".tsv", ".jsonl", ".txt"}
LOG_SUFFIXES = {".log", ".out", ".err"}


def _load(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def bench_lines(name: str, bench: dict[str, Any] | None) -> list[str]:
    if not bench:
        return []
    plan = bench.get("metadata", {}).get("plan", {})
    out = [f"  {name} bench (TP={plan.get('tensor_parallel_size')} PP={plan.get('pipeline_parallel_size')}, "
           f"nodes {bench.get('metadata', {}).get('nodes')}):"]
    for level, r in bench.get("results", {}).items():
        out.append(f"    {level}: out {r['output_throughput']:.1f} tok/s,"
                   f" total {r['total_token_throughput']:.1f} tok/s,"
                   f" req {r['request_throughput']:.2f}/s, TTFT p50 {r['ttft_ms']['median']:.1f} ms"
                   f" p99 {r['ttft_ms'].get('p99') or 0:.1f}, TPOT p50 {r['tpot_ms']['median']:.2f} ms"
                   f" p99 {r['tpot_ms'].get('p99') or 0:.2f}, ITL p50 {r['itl_ms']['median']:.2f} ms,"
                   f" E2E p50 {r['e2el_ms']['median']:.0f} ms, {r['completed']} ok/{r['failed']} failed,"
                   f" {r['duration_s']:.1f} s")
    return out


def summary(results: Path) -> str:
    lines = [f"results: {results}"]
    for stage in STAGES:
        d = results / stage
        v = _load(d / "verdict.json") or _load(d / "verdict.failed.json")
        if stage == "report" and (rep := _load(d / "summary.json")):
            lines.append(f"report: {d / 'index.html'} - verdicts {rep.get('verdicts')}, plots {rep.get('plots')}")
            continue
        if not v:
            lines.append(f"{stage}: not run")
            continue
        failed = [c for c in v["checks"] if c["ok"] is False]
        lines.append(f"{stage}: {v['status'].upper()} (job {v.get('slurm_job')}, nodes {v.get('nodes')}, "
                     f"{sum(c['ok'] is True for c in v['checks'])} ok / {len(failed)} failed / "
                     f"{sum(c['ok'] is None for c in v['checks'])} n/a)")
        for c in failed:
            lines.append(f"  FAILED {c['name']}: {_fmt(c['value'])} (expected {_fmt(c['expected'])} {c['unit']})"
                         f" {c['detail'][:400]}")
        if v.get("metrics"):
            lines.append("  metrics: " + ", ".join(f"{k}={_fmt(x)}" for k, x in v["metrics"].items()))
        if stage == "env" and v.get("versions"):
            lines.append("  versions: " + ", ".join(f"{k}={x}" for k, x in v["versions"].items()))
        if stage == "probe":
            for n in (_load(d / "nodes.json") or {}).get("nodes", []):
                g = n["gpus"]
                lines.append(f"  {n['slurm_node']}: {g.get('count')} of {g.get('host_count')} GPUs visible "
                             f"{g.get('visible')} CUDA_VISIBLE_DEVICES={n['slurm'].get('cuda_visible_devices')} "
                             f"({', '.join(sorted({x['name'] for x in g.get('devices', [])}))})")
        if stage == "ray":
            for c in v["checks"]:
                if c["name"].startswith("nccl") or "object_transfer" in c["name"]:
                    lines.append(f"  {c['name']}: {_fmt(c['value'])} {c['unit']} {c['detail'][:200]}")
        if stage in ("single", "multinode"):
            lines += bench_lines(stage, _load(d / "bench.json"))
        if stage == "single" and (roof := _load(d / "roofline.json")):
            lines.append("  roofline: " + ", ".join(f"{k}={_fmt(x)}" for k, x in roof.items()))
        if stage == "multinode":
            for c in v["checks"]:
                if c["name"] in ("pipeline_rank_per_node", "outputs_match_single", "plan"):
                    lines.append(f"  {c['name']}: {_fmt(c['value'])} {c['detail'][:200]}")
            if scaling := _load(d / "scaling.json"):
                for level, r in scaling.get("ratios_multinode_over_single", {}).items():
                    ratios = ", ".join(f"{k}={x}" for k, x in r.items())
                    lines.append(f"  scaling {level} (multinode/single): {ratios}")
    return "\n".join(lines)


def _tail(p: Path, limit: int) -> bytes:
    with open(p, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - limit))
        data = fh.read()
    return data if size <= limit else b"[... first %d bytes cut ...]\n" % (size - limit) + data


def pack(results: Path, out: Path, max_mib: float = 15) -> int:
    files = sorted(p for p in results.rglob("*") if p.is_file())
    log_limit = 200_000
    while True:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for p in files:
                rel = Path(results.name) / p.relative_to(results)
                if p.suffix in LOG_SUFFIXES or "logs" in p.relative_to(results).parts:
                    data = _tail(p, log_limit)
                elif p.suffix in KEEP_SUFFIXES and p.stat().st_size < 5_000_000:
                    data = p.read_bytes()
                else:
                    continue
                info = tarfile.TarInfo(str(rel))
                info.size, info.mtime, info.mode = len(data), int(p.stat().st_mtime), 0o644
                tar.addfile(info, io.BytesIO(data))
        if buf.tell() <= max_mib * 2**20 or log_limit <= 5_000:
            break
        log_limit //= 4
    out.write_bytes(buf.getvalue())
    print(f"packed {out} ({buf.tell() / 2**20:.2f} MiB, logs cut to their last {log_limit} bytes)")
    return 0


def phases(run: Path) -> int:
    """Start-up phases of each serving stage, re-read from the committed vLLM logs by today's parser.

    For a results copy whose report predates a parser fix: the figures a summary quotes then come
    from this file (and the command that wrote it), not from a hand re-count."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from ladder.logs import vllm_phases

    out: dict[str, Any] = {"command": f"python3 gpu/collect.py phases {run}", "parser": "ladder.logs.vllm_phases"}
    for stage in ("single", "multinode"):
        log, verdict = run / "logs" / f"{stage}-vllm-serve.log", _load(run / stage / "verdict.json")
        if not log.exists() or not verdict:
            continue
        found = vllm_phases(log)
        healthy = float(verdict["metrics"].get("time_to_healthy_s", 0))
        out[stage] = found | {"time_to_healthy": healthy,
                              "api_ready_rest": round(max(healthy - sum(found.values()), 0.0), 2)}
        text = log.read_text(errors="replace")
        for key, pattern in (("weights_gib", r"Model loading took ([0-9.]+) GiB"),
                             ("kv_cache_gib", r"Available KV cache memory: ([0-9.]+) GiB"),
                             ("kv_cache_tokens", r"KV cache size: ([0-9,]+) tokens")):
            if m := re.search(pattern, text):
                out[stage][key] = float(m.group(1).replace(",", ""))
    (run / "phases.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def withdraw(path: Path, check: str, why: str) -> int:
    """Mark a check of a committed verdict as withdrawn (a parser bug found after the run):
    its value moves into `amendments` with the reason, so no summary can quote it as measured."""
    v = json.loads(path.read_text())
    hits = [c for c in v["checks"] if c["name"] == check]
    if not hits:
        print(f"{path}: no check {check!r}", file=sys.stderr)
        return 1
    for c in hits:
        v.setdefault("amendments", []).append({"check": check, "was": c["value"], "why": why,
                                               "command": f"python3 gpu/collect.py withdraw {path} {check} ..."})
        c["ok"], c["value"], c["detail"] = None, None, f"withdrawn: {why}"
    v["metrics"].pop(check, None)
    path.write_text(json.dumps(v, indent=2) + "\n")
    return 0


def compare(run: Path, base: Path) -> int:
    """Single stage of two runs with the same bench settings (e.g. FP8 and bf16 in one lease): RUN / BASE
    per closed-loop level, and the memory each loaded, into RUN/vs-<BASE>.json."""
    a, b = (_load(r / "single" / "bench.json") for r in (run, base))
    va, vb = (_load(r / "single" / "verdict.json") or _load(r / "single" / "verdict.failed.json") for r in (run, base))
    if not (a and b and va and vb):
        print(f"no single/bench.json and verdict in {run} and {base}", file=sys.stderr)
        return 1
    if a["metadata"]["bench_settings"] != b["metadata"]["bench_settings"]:
        print("the two runs used different bench settings: no ratio", file=sys.stderr)
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from ladder.bench import ratios  # multinode's scaling.json: the same ratios per level

    out: dict[str, Any] = {"command": f"python3 gpu/collect.py compare {run} {base}", "run": str(run),
                           "base": str(base), "levels": ratios(a["results"], b["results"])}
    ma, mb = va["metrics"], vb["metrics"]
    out["memory"] = {k: {"run": ma[k], "base": mb[k], "ratio": round(ma[k] / mb[k], 4)}
                     for k in ("weights_gib_per_gpu", "kv_cache_gib_per_gpu", "kv_cache_tokens")
                     if ma.get(k) and mb.get(k)}
    if "weights_gib_per_gpu" in out["memory"]:
        out["memory"]["weights_saved_gib"] = round(mb["weights_gib_per_gpu"] - ma["weights_gib_per_gpu"], 2)
    if ma.get("roofline_ratio") and mb.get("roofline_ratio"):
        out["single_stream_tok_s"] = {"run": ma.get("single_stream_tok_s"), "base": mb.get("single_stream_tok_s"),
                                      "ratio": round(ma["single_stream_tok_s"] / mb["single_stream_tok_s"], 4)}
        out["roofline_ratio"] = {"run": ma["roofline_ratio"], "base": mb["roofline_ratio"]}
    (run / f"vs-{base.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    if len(argv) == 4 and argv[0] == "withdraw":
        return withdraw(Path(argv[1]), argv[2], argv[3])
    if len(argv) >= 2 and argv[0] == "phases":
        return phases(Path(argv[1]))
    if len(argv) >= 2 and argv[0] == "summary":
        print(summary(Path(argv[1])))
        return 0
    if len(argv) >= 3 and argv[0] == "pack":
        max_mib = float(argv[argv.index("--max-mib") + 1]) if "--max-mib" in argv else 15
        return pack(Path(argv[1]), Path(argv[2]), max_mib)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
