rule ray:
    """Start Ray across the allocation, verify nodes, resources, tasks, transfers (and NCCL), stop it."""
    input:
        gate=rules.probe.output.verdict,
        probe=rules.probe.output.nodes,
        config=stage_config("ray"),
    output:
        verdict="results/ray/verdict.json",
        monitor=directory("results/ray/monitor"),
    params:
        **COMMON,
        hash=config_hash("ray"),
        log_dir="results/logs/ray",
        results=lambda w, output: Path(output.verdict).parent.parent,
    log:
        "results/logs/ray/ray.log",
    benchmark:
        "results/benchmarks/ray.tsv"
    retries: FAULTS["retries"]
    group: GROUP
    resources:
        **stage_resources("ray", nodes=NODES, mpi=True),
    shell:
        "{params.py} -m ladder.raystage --gate {input.gate} --results {params.results} --config {input.config}"
        " --log-dir {params.log_dir} --verdict {output.verdict}"
        " --config-hash {params.hash} > {log} 2>&1"
