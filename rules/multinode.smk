rule multinode:
    """vLLM over Ray across nodes (TP in a node, PP across), e2e suite, bench, scaling vs single."""
    input:
        gate=rules.single.output.verdict,
        probe=rules.probe.output.nodes,
        reference=rules.single.output.outputs,
        single_bench=rules.single.output.bench,
        config=stage_config("multinode"),
        tuned=TUNED_GATE,
    output:
        verdict="results/multinode/verdict.json",
        bench="results/multinode/bench.json",
        scaling="results/multinode/scaling.json",
        monitor=directory("results/multinode/monitor"),
    params:
        **COMMON,
        hash=config_hash("multinode"),
        cache=CACHE,
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/multinode",
        results=lambda w, output: Path(output.verdict).parent.parent,
    log:
        "results/logs/multinode/multinode.log",
    benchmark:
        "results/benchmarks/multinode.tsv"
    retries: FAULTS["retries"]
    group: GROUP
    resources:
        **stage_resources("multinode", nodes=NODES, mpi=True),
    shell:
        "{params.py} -m ladder.multistage --gate {input.gate} --results {params.results}"
        " --config {input.config} --cache {params.cache} --out-dir {params.out_dir}"
        " --log-dir {params.log_dir} --config-hash {params.hash} > {log} 2>&1"
