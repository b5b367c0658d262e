rule single:
    """One node: vllm serve (TP inside the node), smoke requests, greedy outputs, bench baseline."""
    input:
        gate=rules.ray.output.verdict,
        config=stage_config("single"),
    output:
        verdict="results/single/verdict.json",
        bench="results/single/bench.json",
        outputs="results/single/outputs.json",
        monitor=directory("results/single/monitor"),
    params:
        **COMMON,
        hash=config_hash("single"),
        cache=CACHE,
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/single",
        results=lambda w, output: Path(output.verdict).parent.parent,
    log:
        "results/logs/single/single.log",
    benchmark:
        "results/benchmarks/single.tsv"
    retries: FAULTS["retries"]
    group: GROUP
    resources:
        **stage_resources("single", nodes=1),
    shell:
        "{params.py} -m ladder.singlestage --gate {input.gate} --results {params.results}"
        " --config {input.config} --cache {params.cache} --out-dir {params.out_dir}"
        " --log-dir {params.log_dir} --config-hash {params.hash} > {log} 2>&1"
