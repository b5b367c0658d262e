rule multinode:
    """vLLM over Ray across nodes (TP in a node, PP across), e2e suite, bench, scaling vs single."""
    input:
        gate=rules.single.output.verdict,
        probe=rules.probe.output.nodes,
        versions=rules.env.output.versions,
        single_bench=rules.single.output.bench,
        single_outputs=rules.single.output.outputs,
    output:
        verdict="results/multinode/verdict.json",
        e2e="results/multinode/e2e.json",
        bench="results/multinode/bench.json",
        scaling="results/multinode/scaling.json",
    params:
        **COMMON,
        hash=config_hash("cluster", "ray", "model", "parallel", "serve", "bench", "references"),
        config=config_json(),
        cache=CACHE,
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/multinode",
    log:
        "results/logs/multinode/multinode.log",
    benchmark:
        "results/benchmarks/multinode.tsv"
    conda:
        CONDA_ENV
    resources:
        **stage_resources(nodes=NODES, mpi=True),
    shell:
        "{params.py} -m ladder.multistage --gate {input.gate} --probe {input.probe} --versions {input.versions}"
        " --single-bench {input.single_bench} --single-outputs {input.single_outputs}"
        " --config {params.config} --cache {params.cache} --out-dir {params.out_dir}"
        " --log-dir {params.log_dir} --config-hash {params.hash} > {log} 2>&1"
