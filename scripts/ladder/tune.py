"""Stage tune: the `vllm serve` settings with the most goodput under the lab's SLO, against vLLM's defaults.

One node, the single stage's layout. For each candidate (vLLM's defaults always first, then the grid
of `tune.space`): start `vllm serve`, then run vLLM's own benchmark (`vllm bench serve`'s code,
`--goodput` with the SLO, `--num-warmups` before measuring) at rising open-loop rates
(`tune.rates`, Poisson or gamma arrivals) `tune.runs` times each, stopping at the first rate that
breaks the SLO; a later candidate starts at the highest rate the best so far sustained (it wins only
above it) and, if it leads, runs the bench's closed-loop concurrency levels (the tuned baseline). ladder.goodput
picks the highest rate meeting the SLO per candidate and the winner; the gain over the defaults is
measured in the same run on the same node.

`vllm bench sweep serve` runs the same loop, but starts a new `vllm bench serve` process per run, and
importing vLLM's benchmark module costs ~19 s of CPU (measured on the 2-core sandbox); on CPU that
would be most of the stage's time, so the benchmark function runs in this process instead (same
code, same result JSON, kept under results/tune/runs/).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ladder import bench, slurm
from ladder.bench import median_run, run_bench
from ladder.goodput import DEFAULTS, Candidate, candidates, pick, rate_point, slo_args
from ladder.logs import vllm_memory
from ladder.verdict import open_stage, stage_parser, write_json
from ladder.vllmserver import Server, ServerError, api_key, cpu_env, resolve_model, serve_args


def bench_args(srv: Server, tokenizer: str, cfg: dict[str, Any], rate: float | None, concurrency: int | None,
               out: Path, repetition: int) -> list[str]:
    """One run of tune's workload (open loop at `rate`, or the bench's closed loop at `concurrency`),
    with the SLO as vLLM's `--goodput`."""
    t, b = cfg["tune"], cfg["bench"]
    workload = {"input_len": t["input_len"] or b["input_len"], "output_len": t["output_len"] or b["output_len"],
                "num_prompts": t["num_prompts"] if rate is not None else b["num_prompts"], "seed": b["seed"],
                "warmup_prompts": t["warmup_prompts"], "burstiness": t["burstiness"]}
    return bench.bench_args(srv.base, srv.served_name, tokenizer, workload, out, repetition, rate=rate,
                            concurrency=concurrency, goodput=slo_args(t["slo"]))


def bench_import_s() -> float:
    """Seconds to import vLLM's benchmark module: what each run of `vllm bench sweep serve` pays again."""
    t0 = time.monotonic()
    import vllm.benchmarks.serve  # noqa: F401

    return round(time.monotonic() - t0, 2)


class Search:
    """Candidates measured one server at a time, within the stage's time budget."""

    def __init__(self, cfg: dict[str, Any], model_path: str, served: str, key: str, port: int, out: Path,
                 logs: Path, env: dict[str, str], budget_s: float) -> None:
        self.cfg, self.model_path, self.served, self.key, self.port = cfg, model_path, served, key, port
        self.out, self.logs, self.env = out, logs, env
        self.deadline = time.monotonic() + budget_s
        self.closed: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.budget_hit = False
        self.leader: Candidate | None = None  # the best candidate measured so far

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def runs(self, srv: Server, name: str, label: str, rate: float | None, conc: int | None) -> list[dict[str, Any]]:
        done = []
        for i in range(self.cfg["tune"]["runs"]):
            if self.left() <= 0:
                self.budget_hit = True
                break
            path = self.out / "runs" / name / f"{label}-run{i}.json"
            done.append(run_bench(bench_args(srv, self.model_path, self.cfg, rate, conc, path, i)))
            path.chmod(0o644)
        return done

    def measure(self, spec: dict[str, Any], tp: int) -> Candidate:
        t = self.cfg["tune"]
        name = spec["_benchmark_name"]
        cand = Candidate(name, {k: v for k, v in spec.items() if k != "_benchmark_name"})
        if self.left() <= 0:
            self.budget_hit = True
            cand.error = "not tried: tune.budget_s ran out"
            return cand
        extra = [a for k, v in cand.args.items() for a in option(k, v)]
        srv = Server(self.model_path, self.served, self.port, self.key, self.logs / f"vllm-serve-{name}.log",
                     args=serve_args(self.cfg, tp, 1, ray=False) + extra, env=self.env)
        try:
            srv.start()
            srv.wait_healthy(min(self.cfg["serve"]["health_timeout_s"], max(self.left(), 1)))
            cand.memory = vllm_memory(srv.log)
            floor = self.leader.best.rate if self.leader and self.leader.best else 0
            for rate in search_rates(t["rates"], t["extend_rates"], floor):
                runs = self.runs(srv, name, f"rate{rate:g}", rate, None)
                if len(runs) < t["runs"]:
                    break
                cand.points.append(rate_point(rate, runs, t["slo"]["percentile"]))
                if not cand.points[-1].meets_slo:
                    break  # higher rates only queue more
            if self.leader is None or cand.score > self.leader.score:
                # Only a candidate that can still win gets the closed-loop levels (the tuned baseline).
                self.leader = cand
                self.closed[name] = {f"c{c}": r for c in self.cfg["bench"]["concurrency"]
                                     if (r := self.runs(srv, name, f"c{c}", None, c))}
        except (ServerError, RuntimeError, OSError, ValueError) as err:
            msg = str(err)
            if self.left() <= 0:
                self.budget_hit = True
                msg = f"tune.budget_s ran out while it was measured: {msg}"
            # The reason leads the message and the server log's tail ends it: keep both.
            cand.error = msg if len(msg) <= 1500 else f"{msg[:600]} [...] {msg[-900:]}"
        finally:
            srv.stop()
        return cand


def search_rates(rates: list[float], extend: int, floor: float) -> list[float]:
    """The open-loop rates to try, rising: `tune.rates`, then the top one doubled `extend` times (a bounded
    search for the limit when it still meets the SLO), from `floor` up: a later candidate wins only by
    sustaining more than the best so far, so the rates below the best's highest would only cost time."""
    up = sorted(rates)
    up += [up[-1] * 2 ** (i + 1) for i in range(extend)]
    return [r for r in up if r >= floor] or up[-1:]


def option(key: str, value: Any) -> list[str]:
    """A `tune.space` setting as `vllm serve` arguments (booleans as --x / --no-x, as vLLM's CLI takes them)."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def main(argv: list[str] | None = None) -> int:
    a, cfg, v = open_stage("tune", stage_parser(__doc__, serving=True), argv)
    t = cfg["tune"]
    node = socket.gethostname()
    v.nodes = [node]
    versions = json.loads((a.results / "env" / "versions.json").read_text())
    v.versions = {k: versions["versions"].get(k, "") for k in ("vllm", "torch", "ray")}
    ports = slurm.job_ports(int(slurm.job_id()), cfg["ray"]["port_base"], cfg["ray"]["port_range"])
    tp = max(cfg["cluster"]["gpus_per_node"], 1)
    cache = a.cache.resolve()
    try:
        model_path, served = resolve_model(cfg["model"], cache)
        key = api_key(cfg["serve"]["api_key_env"], cfg["serve"]["api_key_file"])
    except ServerError as err:
        v.check("model", False, detail=str(err))
        return v.finish(a.out_dir / "verdict.json")
    os.environ["OPENAI_API_KEY"] = key  # how vLLM's benchmark sends the key; never on a command line
    env = cpu_env(cache) if cfg["env"]["flavor"] == "cpu" else {}
    search = Search(cfg, model_path, served, key, ports["serve"], a.out_dir, a.log_dir / node, env, t["budget_s"])
    v.metrics["bench_import_s"] = bench_import_s()
    t0 = time.monotonic()
    found = [search.measure(spec, tp) for spec in candidates(t["space"], t["max_candidates"])]
    v.metrics["search_s"] = elapsed = round(time.monotonic() - t0, 1)
    over = search.budget_hit or elapsed > t["budget_s"]
    v.check("within_budget", None if over else True, elapsed, f"<= {t['budget_s']}", "s",
            detail="budget ran out: the candidates measured so far are compared" if over else "")
    for c in found:
        if c.name != DEFAULTS:
            v.check(f"candidate:{c.name}", None, c.score, detail=c.error or f"args {c.args}; "
                    f"max rate meeting the SLO {c.best.rate if c.best else None}")
    best, defaults, gain = pick(found)
    v.check("defaults_measured", bool(defaults and defaults.points), len(defaults.points) if defaults else 0,
            ">= 1 rate", detail=defaults.error if defaults else "")
    v.check("slo_met", best is not None, best.name if best else None, "a setting meeting the SLO at a tried rate",
            detail=f"SLO {t['slo']}; rates {t['rates']}")
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "node": node, "model": served, "config_hash": a.config_hash,
            "versions": v.versions, "slo": t["slo"], "workload": {k: t[k] for k in (
                "num_prompts", "burstiness", "rates", "runs", "warmup_prompts", "input_len", "output_len")},
            "plan": {"tensor_parallel_size": tp, "pipeline_parallel_size": 1}}
    write_json(a.out_dir / "sweep.json", {"metadata": meta, "candidates": [c.as_dict() for c in found]})
    rows = [{"candidate": c.name, **c.args, **{k: getattr(p, k) for k in p.__dataclass_fields__}}
            for c in found for p in sorted(c.points, key=lambda p: p.rate)]
    cols = list(dict.fromkeys(["candidate", *(k for r in rows for k in r)]))
    (a.out_dir / "sweep.csv").write_text("\n".join([",".join(cols)] + [
        ",".join("" if r.get(k) is None else str(r.get(k)) for k in cols) for r in rows]) + "\n")
    v.metrics |= {"defaults_goodput": defaults.score if defaults else 0.0, "best_goodput": best.score if best else 0.0}
    if gain is not None:
        v.metrics["goodput_gain_over_defaults"] = gain
    if best and best.best:
        write_json(a.out_dir / "best.json", {"metadata": meta, "name": best.name, "args": best.args,
                                             "serve_args": [x for k, val in best.args.items() for x in option(k, val)],
                                             "goodput_req_s": best.score, "max_rate_meeting_slo": best.best.rate,
                                             "defaults_goodput_req_s": defaults.score if defaults else None,
                                             "gain_over_defaults": gain})
        base = search.closed.get(best.name, {})
        tuned_meta = meta | {"tuned_args": best.args, "bench_settings": cfg["bench"]}
        write_json(a.out_dir / "bench.json", {"metadata": tuned_meta,
                                              "results": {lvl: median_run(runs) for lvl, runs in base.items()}})
        v.check("tuned_baseline", len(base) == len(cfg["bench"]["concurrency"]), sorted(base),
                [f"c{c}" for c in cfg["bench"]["concurrency"]], detail="closed-loop bench of the winner")
    return v.finish(a.out_dir / "verdict.json")


if __name__ == "__main__":
    sys.exit(main())
