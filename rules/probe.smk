rule probe:
    """Inventory every allocated node (CPU, memory, NICs, disk, GPUs via NVML, Slurm's view)."""
    input:
        gate=rules.env.output.verdict,
    output:
        nodes="results/probe/nodes.json",
        verdict="results/probe/verdict.json",
    params:
        **COMMON,
        hash=config_hash("cluster"),
        node_dir=lambda w, output: Path(output.nodes).with_suffix(""),
        log_dir="results/logs/probe",
        nodes=NODES,
        gpus=GPUS,
    log:
        "results/logs/probe/probe.log",
    benchmark:
        "results/benchmarks/probe.tsv"
    conda:
        CONDA_ENV
    resources:
        **stage_resources(nodes=NODES, mpi=True, mem_mb=1000),
    shell:
        "(rm -rf {params.node_dir} && mkdir -p {params.node_dir} {params.log_dir}"
        " && srun --nodes={params.nodes} --ntasks-per-node=1 --output={params.log_dir}/%N.log"
        "   {params.py} -m ladder.probe node --out-dir {params.node_dir} --shared ."
        " ; {params.py} -m ladder.probe summarize --node-dir {params.node_dir}"
        "   --expected-nodes $({params.py} -m ladder.slurm nodes) --gpus-per-node {params.gpus}"
        "   --config-hash {params.hash} --out {output.nodes} --verdict {output.verdict}) > {log} 2>&1"
