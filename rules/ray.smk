rule ray:
    """Start Ray across the allocation, verify nodes, resources, tasks, transfers (and NCCL), stop it."""
    input:
        gate=rules.probe.output.verdict,
        probe=rules.probe.output.nodes,
    output:
        verdict="results/ray/verdict.json",
        cluster="results/ray/cluster.json",
    params:
        **COMMON,
        hash=config_hash("cluster", "ray"),
        config=config_json(),
        log_dir="results/logs/ray",
    log:
        "results/logs/ray/ray.log",
    benchmark:
        "results/benchmarks/ray.tsv"
    conda:
        CONDA_ENV
    resources:
        **stage_resources(nodes=NODES, mpi=True),
    shell:
        "{params.py} -m ladder.raystage --gate {input.gate} --probe {input.probe} --config {params.config}"
        " --log-dir {params.log_dir} --verdict {output.verdict} --cluster-out {output.cluster}"
        " --config-hash {params.hash} > {log} 2>&1"
