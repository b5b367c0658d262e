rule single:
    """One node: vllm serve (TP inside the node), smoke requests, greedy outputs, bench baseline."""
    input:
        gate=rules.ray.output.verdict,
    output:
        verdict="results/single/verdict.json",
    params:
        **COMMON,
        **stage_config("single", "cluster", "model", "serve", "bench", "references"),
        cache=CACHE,
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/single",
        results=lambda w, output: Path(output.verdict).parent.parent,
    log:
        "results/logs/single/single.log",
    benchmark:
        "results/benchmarks/single.tsv"
    conda:
        CONDA_ENV
    retries: FAULTS["retries"]
    resources:
        **stage_resources(nodes=1),
    shell:
        "{params.py} -m ladder.singlestage --gate {input.gate} --results {params.results}"
        " --config {params.config} --cache {params.cache} --out-dir {params.out_dir}"
        " --log-dir {params.log_dir} --config-hash {params.hash} > {log} 2>&1"
