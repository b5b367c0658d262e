rule report:
    """One HTML report: verdicts, checks vs references, scaling, resource timelines, time breakdown."""
    input:
        verdicts=expand("results/{stage}/verdict.json", stage=["env", "probe", "ray", "single", "multinode"]),
        versions=rules.env.output.versions,
        bench=[rules.single.output.bench, rules.multinode.output.bench],
        scaling=rules.multinode.output.scaling,
        monitor=[rules.ray.output.monitor, rules.single.output.monitor, rules.multinode.output.monitor],
        benchmarks=expand("results/benchmarks/{stage}.tsv", stage=["env", "probe", "ray", "single", "multinode"]),
        config=stage_config("report"),
        tune=TUNE_OUTPUTS,
    output:
        index="results/report/index.html",
        throughput=report("results/report/throughput.png", caption="../report/throughput.rst", category="Performance"),
        latency=report("results/report/latency.png", caption="../report/latency.rst", category="Performance"),
        breakdown=report("results/report/breakdown.png", caption="../report/breakdown.rst", category="Timing"),
    params:
        **COMMON,
        hash=config_hash("report"),
        out_dir=lambda w, output: Path(output.index).parent,
        results=lambda w, output: Path(output.index).parent.parent,
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    # Reads the stages' results and draws plots: no reason to queue for a compute node.
    localrule: True
    shell:
        "{params.py} -m ladder.report --results {params.results} --config {input.config}"
        " --out {params.out_dir} --config-hash {params.hash} > {log} 2>&1"
