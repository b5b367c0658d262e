rule tune:
    """One node, single's layout: the vllm serve settings with the most goodput under tune.slo, vs vLLM's defaults."""
    input:
        gate=rules.single.output.verdict,
        config=stage_config("tune"),
    output:
        verdict="results/tune/verdict.json",
        best="results/tune/best.json",
        bench="results/tune/bench.json",
        sweep="results/tune/sweep.json",
    params:
        **COMMON,
        hash=config_hash("tune"),
        cache=CACHE,
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/tune",
        results=lambda w, output: Path(output.verdict).parent.parent,
    log:
        "results/logs/tune/tune.log",
    benchmark:
        "results/benchmarks/tune.tsv"
    retries: FAULTS["retries"]
    group: GROUP
    resources:
        **stage_resources("tune", nodes=1),
    shell:
        "{params.py} -m ladder.tune --gate {input.gate} --results {params.results}"
        " --config {input.config} --cache {params.cache} --out-dir {params.out_dir}"
        " --log-dir {params.log_dir} --config-hash {params.hash} > {log} 2>&1"
