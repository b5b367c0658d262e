rule probe:
    """Inventory every allocated node (CPU, memory, NICs, disk, GPUs via NVML, Slurm's view): nodes.json."""
    input:
        gate=rules.env.output.verdict,
    output:
        verdict="results/probe/verdict.json",
        nodes="results/probe/nodes.json",
    params:
        **COMMON,
        hash=config_hash("probe"),
        out_dir=lambda w, output: Path(output.verdict).parent,
        log_dir="results/logs/probe",
        # The nodes this job got: fewer than configured on a degraded retry.
        nodes=lambda wildcards, resources: resources.nodes,
        gpus=GPUS,
        network=config["cluster"]["network"],
    log:
        "results/logs/probe/probe.log",
    benchmark:
        "results/benchmarks/probe.tsv"
    retries: FAULTS["retries"]
    group: GROUP
    resources:
        **stage_resources("probe", nodes=NODES, mpi=True, mem_mb=1000),
    shell:
        "(rm -rf {params.out_dir}/nodes && mkdir -p {params.out_dir}/nodes {params.log_dir}"
        " && srun --nodes={params.nodes} --ntasks-per-node=1 --output={params.log_dir}/%N.log"
        "   {params.py} -m ladder.probe node --out-dir {params.out_dir}/nodes --shared . --network {params.network}"
        " ; {params.py} -m ladder.probe summarize --node-dir {params.out_dir}/nodes"
        "   --gpus-per-node {params.gpus} --network {params.network}"
        "   --config-hash {params.hash} --out {output.nodes} --verdict {output.verdict}) > {log} 2>&1"
