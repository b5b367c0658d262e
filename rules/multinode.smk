rule multinode:
    """vLLM over Ray across nodes (TP in a node, PP across), e2e suite, bench, scaling vs single."""
    input:
        gate=rules.single.output.verdict,
    output:
        verdict="results/multinode/verdict.json",
    params:
        **COMMON,
        **stage_config("multinode", "cluster", "ray", "model", "parallel", "serve", "bench", "references", "faults"),
        cache=CACHE,
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/multinode",
        results=lambda w, output: Path(output.verdict).parent.parent,
    log:
        "results/logs/multinode/multinode.log",
    benchmark:
        "results/benchmarks/multinode.tsv"
    conda:
        CONDA_ENV
    retries: FAULTS["retries"]
    resources:
        **stage_resources(nodes=NODES, mpi=True),
    shell:
        "{params.py} -m ladder.multistage --gate {input.gate} --results {params.results}"
        " --config {params.config} --cache {params.cache} --out-dir {params.out_dir}"
        " --log-dir {params.log_dir} --config-hash {params.hash} > {log} 2>&1"
