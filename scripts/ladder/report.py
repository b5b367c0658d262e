"""Stage report: one HTML page a lab lead reads once, from the real results of every stage.

Verdict table, every check against its reference, single vs multinode throughput and
latency, per-node resource timelines, a time breakdown per stage, versions, config,
the parallel plan, and the comparison with the previous run (results/history.jsonl).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ladder.timeline import stage_breakdown  # noqa: E402
from ladder.verdict import write_json  # noqa: E402

STAGES = ["env", "probe", "ray", "single", "multinode"]
COLORS = {"pass": "#2e7d32", "degraded": "#ef6c00", "fail": "#c62828", "missing": "#757575"}


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def stage_wall_s(results: Path, stage: str) -> float | None:
    """Wall time of the stage's job script, from Snakemake's benchmark file."""
    tsv = results / "benchmarks" / f"{stage}.tsv"
    if not tsv.exists():
        return None
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    return float(rows[-1]["s"]) if rows else None


# ------------------------------------------------------------------ plots
def save(fig: Any, out: Path, name: str, **kw: Any) -> str:
    """Write the figure to out/name and free it; returns the name (the page lists every plot)."""
    fig.tight_layout()
    fig.savefig(out / name, **{"dpi": 110, **kw})
    plt.close(fig)
    return name


def plot_bench(single: dict[str, Any], multi: dict[str, Any] | None, out: Path) -> list[str]:
    levels = list(single["results"])
    series = [("single", single)] + ([("multinode", multi)] if multi else [])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(series)
    for i, (name, data) in enumerate(series):
        runs = [data["results"].get(lv, {}) for lv in levels]
        vals = [r.get("output_throughput", 0) for r in runs]
        # whiskers: the spread (min..max) of the level's repetitions; the bar is the median run
        reps = [r.get("repetitions", {}) for r in runs]
        err = [[v - rp.get("output_throughput_min", v) for v, rp in zip(vals, reps, strict=True)],
               [rp.get("output_throughput_max", v) - v for v, rp in zip(vals, reps, strict=True)]]
        ax.bar([x + i * width for x in range(len(levels))], vals, width, yerr=err, capsize=3,
               label=f"{name} {plan_str(data)}")
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(levels))], levels)
    ax.set_xlabel("level (cN: N concurrent clients; rR: R requests/s open loop)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput: single vs multinode")
    ax.legend(fontsize=8)
    files = [save(fig, out, "throughput.png")]

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, metric in zip(axes, ("ttft_ms", "tpot_ms", "e2el_ms"), strict=True):
        for i, (name, data) in enumerate(series):
            vals = [data["results"].get(lv, {}).get(metric, {}).get("median") or 0 for lv in levels]
            ax.bar([x + i * width for x in range(len(levels))], vals, width, label=name)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(levels))], levels)
        ax.set_title(f"median {metric.replace('_ms', '').upper()} (ms)")
    axes[0].legend(fontsize=8)
    return [*files, save(fig, out, "latency.png")]


def plot_monitor(results: Path, out: Path) -> list[str]:
    files = []
    for stage in ("ray", "single", "multinode"):
        csvs = sorted((results / stage / "monitor").glob("*.csv"))
        if not csvs:
            continue
        gpu = any(r.get("gpu") not in (None, "") for r in csv.DictReader(csvs[0].open()))
        panels = [("cpu_pct", "CPU %"), ("mem_used_mib", "memory used (MiB)"), ("net_rx_mb", "net rx (MB)")]
        if gpu:
            panels += [("gpu_util_pct", "GPU util %"), ("gpu_mem_used_mib", "GPU memory (MiB)"),
                       ("gpu_power_w", "GPU power (W)")]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.8))
        for f in csvs:
            rows = list(csv.DictReader(f.open()))
            for ax, (col, title) in zip(axes, panels, strict=True):
                pts = [(float(r["t"]), float(r[col])) for r in rows if r.get(col) not in (None, "")]
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=f.stem, lw=1)
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("s", fontsize=8)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{stage}: per-node resources", fontsize=10)
        files.append(save(fig, out, f"monitor-{stage}.png", dpi=100))
    return files


def plot_breakdown(breakdown: dict[str, dict[str, float]], out: Path) -> str:
    phases: list[str] = []
    for parts in breakdown.values():
        phases += [p for p in parts if p not in phases]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.55 * len(breakdown)))
    cmap = plt.get_cmap("tab10")
    stages = list(breakdown)
    left = [0.0] * len(stages)
    for j, phase in enumerate(phases):
        vals = [breakdown[s].get(phase, 0.0) for s in stages]
        ax.barh(stages, vals, left=left, color=cmap(j % 10), label=phase)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Where each stage's time went")
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, -0.55 - 0.1 * len(phases) / 4))
    return save(fig, out, "breakdown.png", bbox_inches="tight")


def plan_str(bench: dict[str, Any]) -> str:
    p = bench["metadata"]["plan"]
    return f"(TP={p['tensor_parallel_size']}, PP={p['pipeline_parallel_size']})"


# ------------------------------------------------------------------ history
def history(results: Path, verdicts: dict[str, Any], config_hash: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Append this run's metrics; return (previous entry, this entry)."""
    path = results / "history.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    entry = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config_hash": config_hash,
             "jobs": {s: v.get("slurm_job") for s, v in verdicts.items() if v},
             "metrics": {s: v.get("metrics", {}) for s, v in verdicts.items() if v}}
    prev = next((e for e in reversed(entries) if e["jobs"] != entry["jobs"]), None)
    if not entries or entries[-1]["jobs"] != entry["jobs"]:  # one entry per distinct run
        with path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        path.chmod(0o644)
    return prev, entry


# ------------------------------------------------------------------ html
def esc(x: Any) -> str:
    return html.escape(str(x))


def table(headers: list[str], rows: list[list[Any]], raw_cols: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def ratio_table(ratios: dict[str, dict[str, float]]) -> str:
    """One row per bench level, one column per ratio (ladder.bench.ratios)."""
    return table(["level", *next(iter(ratios.values()), {})], [[lv, *r.values()] for lv, r in ratios.items()])


def badge(status: str) -> str:
    return f'<span class="badge" style="background:{COLORS.get(status, "#555")}">{esc(status.upper())}</span>'


def fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def tune_plots(cands: list[dict[str, Any]], out: Path, slo_pct: Any) -> list[str]:
    """Goodput vs offered rate (with the repetitions' spread) and throughput vs p99 latency, per candidate."""
    cands = [c for c in cands if c["points"]]
    if not cands:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in cands:
        pts = sorted(c["points"], key=lambda p: p["rate"])
        spread = [[p["goodput"] - p["goodput_min"] for p in pts], [p["goodput_max"] - p["goodput"] for p in pts]]
        ax.errorbar([p["rate"] for p in pts], [p["goodput"] for p in pts], yerr=spread, fmt="o-", capsize=3,
                    label=c["name"])
    ax.set_xlabel("offered request rate (req/s)")
    ax.set_ylabel(f"goodput (req/s meeting the SLO; {slo_pct} % needed)")
    ax.legend(fontsize=7)
    plots = [save(fig, out, "tune-goodput.png", bbox_inches="tight")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in cands:
        pts = [p for p in c["points"] if p.get("e2el_p99_ms")]
        ax.scatter([p["e2el_p99_ms"] for p in pts], [p["output_tok_s"] for p in pts], label=c["name"])
    ax.set_xlabel("E2E latency p99 (ms)")
    ax.set_ylabel("output tok/s")
    ax.set_title("throughput vs latency (every candidate and rate)")
    ax.legend(fontsize=7)
    return [*plots, save(fig, out, "tune-pareto.png", bbox_inches="tight")]


def memory_cell(mem: dict[str, float]) -> str:
    """Weights / KV cache per GPU (GiB) a candidate's server allocated; '-' where its log said nothing."""
    return " / ".join(fmt(mem[k]) if k in mem else "-" for k in ("weights_gib_per_gpu", "kv_cache_gib_per_gpu"))


def tune_part(results: Path, out: Path, scaling: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """HTML and plots of tune: every candidate against vLLM's defaults, and multinode vs the tuned baseline."""
    sweep, best = load(results / "tune" / "sweep.json"), load(results / "tune" / "best.json")
    if not sweep:
        return [], []
    slo = sweep["metadata"]["slo"]
    plots = tune_plots(sweep["candidates"], out, slo.get("percentile"))
    rows = [[c["name"], esc(json.dumps(c["args"])), fmt(c["max_rate_meeting_slo"]), fmt(c["score_goodput"]),
             memory_cell(c.get("memory") or {}), esc(c["error"][:200])] for c in sweep["candidates"]]
    gain = best.get("gain_over_defaults") if best else None
    winner = f"{best['name']} {json.dumps(best['args'])}" if best else "none"
    part = [f"<h2>Tune: goodput under the SLO (TTFT {esc(slo.get('ttft_ms'))} ms, TPOT {esc(slo.get('tpot_ms'))} ms, "
            f"E2E {esc(slo.get('e2el_ms'))} ms; {esc(slo.get('percentile'))} % of requests)</h2>",
            f"<p>Winner: <b>{esc(winner)}</b>; goodput over vLLM's defaults, same run, same node: "
            f"<b>{esc(fmt(gain))}×</b>.</p>",
            table(["candidate", "args", "max rate meeting the SLO (req/s)", "goodput (req/s)",
                   "weights / KV cache per GPU (GiB)", "error"], rows)]
    if scaling and "ratios_multinode_over_tuned_single" in scaling:
        part += ["<h2>Scaling: multinode / tuned single (tune's closed-loop levels of the winner)</h2>",
                 ratio_table(scaling["ratios_multinode_over_tuned_single"])]
    return part, plots


def deploy_part(results: Path, out: Path) -> tuple[list[str], list[str]]:
    """Target deploy (after `all`; its stop re-renders this page): replicas, the serving timeline,
    every watchdog and scaler decision, the router benchmark."""
    state, d = load(results / "deploy" / "state.json"), results / "deploy"
    if not state:
        return ["<h2>Deploy</h2><p>Not deployed (<code>snakemake deploy</code>, after all).</p>"], []
    events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()] if (d / "events.jsonl").exists() \
        else []
    r = state["router"]
    parts = ["<h2>Deploy: replicas behind vllm-router</h2>",
             f"<p>Router {esc(r['url'])} (policy {esc(r['policy'])}), target {state['target']} replica(s), "
             f"started {esc(state['started'])}{', stopped ' + esc(state['stopped']) if state.get('stopped') else ''};"
             f" nodes excluded after a loss: {esc(', '.join(state['excluded']) or 'none')}.</p>",
             table(["job", "node", "state", "url", "submitted because"],
                   [[j, x["node"], x["state"], x["url"], x.get("reason", "")] for j, x in state["replicas"].items()]),
             "<h3>Watchdog and scaler decisions (events.jsonl)</h3>",
             table(["time", "event", "job", "node", "reason / seconds from submit"],
                   [[e["t"], e["event"], e.get("job", ""), e.get("node", ""),
                     e.get("reason", e.get("seconds_from_submit", ""))] for e in events])]
    plots = []
    step = {"replica_serving": 1, "replica_lost": -1, "replica_draining": -1}
    if any(e["event"] in step for e in events):
        at = [time.mktime(time.strptime(e["t"][:19], "%Y-%m-%dT%H:%M:%S")) for e in events]
        xs, ys, n = [0.0], [0], 0
        for e, t in zip(events, at, strict=True):
            if e["event"] in step or e["event"] == "deployment_stopped":
                n = n + step[e["event"]] if e["event"] in step else 0
                xs.append(t - at[0])
                ys.append(n)
        fig, ax = plt.subplots(figsize=(8, 2.6))
        ax.step(xs, ys, where="post")
        for e, x in zip(events, (t - at[0] for t in at), strict=True):
            if e["event"] in ("replica_lost", "scale_up", "scale_down", "scale_requested", "deployment_stopped"):
                ax.axvline(x, color="#c62828" if e["event"] == "replica_lost" else "#1565c0", ls=":", lw=1)
                ax.annotate(e["event"], (x, max(ys) + 0.1), fontsize=7, rotation=90, va="bottom")
        ax.set(xlabel="s since deploy started", ylabel="replicas serving", ylim=(0, max(ys) + 1.5))
        plots.append(save(fig, out, "deploy-timeline.png"))
        parts.append('<img src="deploy-timeline.png" alt="replicas serving over time">')
    if bench := load(d / "bench.json"):
        parts += ["<h3>Router benchmark (vllm bench serve through the router, one run)</h3>",
                  table(["replicas", "level", "output tok/s", "requests/s", "TTFT median ms"],
                        [[n, lv, fmt(x["output_throughput"]), fmt(x["request_throughput"]), fmt(x["ttft_ms"]["median"])]
                         for n, levels in bench["results"].items() for lv, x in levels.items()]),
                  f"<p>Throughput ratio, 2 replicas over 1: {esc(bench.get('ratio_2_over_1'))}. "
                  f"{esc(bench.get('note', ''))}</p>"]
    return parts, plots


def build(results: Path, out: Path, config: dict[str, Any], config_hash: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stages = [*STAGES[:4], "tune", *STAGES[4:]] if config["tune"]["enabled"] else STAGES
    verdicts = {s: load(results / s / "verdict.json") or load(results / s / "verdict.failed.json") for s in stages}
    single, multi = load(results / "single" / "bench.json"), load(results / "multinode" / "bench.json")
    scaling = load(results / "multinode" / "scaling.json")
    versions = (load(results / "env" / "versions.json") or {}).get("versions", {})
    breakdown = {s: stage_breakdown(s, v, stage_wall_s(results, s), results) for s, v in verdicts.items() if v}
    plots = (plot_bench(single, multi, out) if single else []) + plot_monitor(results, out)
    plots.append(plot_breakdown(breakdown, out))
    prev, cur = history(results, verdicts, config_hash)
    tune_html, tune_plots = tune_part(results, out, scaling)
    plots += tune_plots

    rows = []
    for s in stages:
        v = verdicts[s]
        if not v:
            rows.append([s, badge("missing"), "stage has not run", "", ""])
            continue
        reasons = "; ".join(f"{c['name']}: {c['detail'] or c['value']}" for c in v["checks"] if c["ok"] is False)
        if v["status"] == "degraded":
            reasons = f"DEGRADED: {v.get('degraded_reason', '')} " + reasons
        rows.append([s, badge(v["status"]), esc(reasons or "all checks passed"), esc(v.get("slurm_job", "")),
                     esc(", ".join(v.get("nodes", [])))])
    parts = [f"<h1>ladder report — cluster {esc(config['cluster']['name'])}</h1>",
             f"<p>Generated {esc(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>",
             "<h2>Stage verdicts</h2>",
             table(["stage", "status", "reasons", "Slurm job", "nodes"], rows, raw_cols=(1, 2))]
    if any(v and v["status"] == "degraded" for v in verdicts.values()):
        parts.insert(1, '<p class="warn">At least one stage passed DEGRADED: fewer resources than configured.</p>')

    if multi:
        p = multi["metadata"]["plan"]
        parts.append(f"<h2>Parallel plan</h2><p>multinode: tensor parallel {p['tensor_parallel_size']} inside "
                     f"each node × pipeline parallel {p['pipeline_parallel_size']} across nodes "
                     f"{esc(', '.join(multi['metadata']['nodes']))}; single: {esc(plan_str(single))} on "
                     f"{esc(', '.join(single['metadata']['nodes']))}.</p>")
    if scaling:
        parts += ["<h2>Scaling: multinode / single (same bench settings, same run)</h2>",
                  f"<p>{esc(scaling.get('note', ''))}</p>", ratio_table(scaling["ratios_multinode_over_single"])]
    parts += tune_html
    if single:
        brow = []
        for name, data in (("single", single), ("multinode", multi)):
            for lv, r in (data or {}).get("results", {}).items():
                rp = r.get("repetitions", {})
                spread = f"{fmt(rp['output_throughput_min'])}..{fmt(rp['output_throughput_max'])}" if rp else ""
                brow.append([name, lv, fmt(r["output_throughput"]), spread, rp.get("n", 1),
                             fmt(r["request_throughput"]), fmt(r["ttft_ms"]["median"]), fmt(r["ttft_ms"]["p99"]),
                             fmt(r["tpot_ms"]["median"]),
                             fmt(r["itl_ms"]["median"]), fmt(r["e2el_ms"]["median"]), r["completed"], r["failed"]])
        parts += ["<h2>Benchmarks (vllm bench serve)</h2>",
                  table(["stage", "level", "out tok/s (median run)", "spread", "runs", "req/s", "TTFT p50 ms",
                         "TTFT p99 ms", "TPOT p50 ms", "ITL p50 ms", "E2E p50 ms", "completed", "failed"], brow)]
    parts.append("<h2>Plots</h2>" + "".join(f'<img src="{esc(p)}" alt="{esc(p)}">' for p in plots))
    parts.append("<h2>Time breakdown per stage (s)</h2>" + table(
        ["stage", "phases"], [[s, ", ".join(f"{k} {v:.1f}" for k, v in b.items())] for s, b in breakdown.items()]))

    mark = {True: "ok", False: "FAIL", None: "n/a"}
    crow = [[s, c["name"], mark[c["ok"]], fmt(c["value"]), fmt(c["expected"]), c["unit"], c["detail"]]
            for s in stages for c in (verdicts[s] or {}).get("checks", [])]
    parts += ["<h2>Every check (performance checks against config references)</h2>",
              table(["stage", "check", "result", "value", "reference / expected", "unit", "detail"], crow)]

    hrow = []
    if prev:
        for s, metrics in cur["metrics"].items():
            for k, val in metrics.items():
                old = prev["metrics"].get(s, {}).get(k)
                if isinstance(val, int | float) and isinstance(old, int | float) and old:
                    hrow.append([s, k, fmt(old), fmt(val), f"{(val - old) / old * 100:+.1f} %"])
    parts.append("<h2>Compared with the previous run</h2>" + (
        table(["stage", "metric", "previous", "this run", "change"], hrow) if hrow else
        "<p>No previous run in results/history.jsonl.</p>"))
    deploy_html, deploy_plots = deploy_part(results, out)
    parts += deploy_html
    plots += deploy_plots
    parts += ["<h2>Versions</h2>", table(["package", "version"], [[k, v] for k, v in versions.items()]),
              "<h2>Configuration (validated, defaults filled)</h2>",
              f"<pre>{esc(json.dumps(config, indent=1))}</pre>"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ladder report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left;vertical-align:top}}
th{{background:#eee}} .badge{{color:#fff;padding:2px 8px;border-radius:4px;font-weight:bold}}
.warn{{background:#fff3e0;border:2px solid #ef6c00;padding:.6em;font-weight:bold}}
img{{max-width:100%;border:1px solid #ddd;margin:4px}} pre{{background:#f6f6f6;padding:1em;font-size:12px}}
</style></head><body>{''.join(parts)}</body></html>"""
    index = out / "index.html"
    index.write_text(page)
    for f in out.iterdir():
        f.chmod(0o644)
    write_json(out / "summary.json", {"verdicts": {s: (v or {}).get("status", "missing") for s, v in verdicts.items()},
                                      "breakdown": breakdown, "plots": plots})
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="report directory (index.html, PNGs)")
    ap.add_argument("--config-hash", default="")
    a = ap.parse_args(argv)
    index = build(a.results, a.out, json.loads(a.config.read_text()), a.config_hash)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
