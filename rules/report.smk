rule report:
    """One HTML report: verdicts, checks vs references, scaling, resource timelines, time breakdown."""
    input:
        verdicts=expand("results/{stage}/verdict.json", stage=["env", "probe", "ray", "single", "multinode"]),
    output:
        index="results/report/index.html",
        throughput=report("results/report/throughput.png", caption="../report/throughput.rst", category="Performance"),
        latency=report("results/report/latency.png", caption="../report/latency.rst", category="Performance"),
        breakdown=report("results/report/breakdown.png", caption="../report/breakdown.rst", category="Timing"),
    params:
        **COMMON,
        **stage_config("report"),
        out_dir=lambda w, output: Path(output.index).parent,
        results=lambda w, output: Path(output.index).parent.parent,
    log:
        "results/logs/report/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        CONDA_ENV
    retries: FAULTS["retries"]
    resources:
        **stage_resources(nodes=1, gpus=False, mem_mb=2000),
    shell:
        "{params.py} -m ladder.report --results {params.results} --config {params.config}"
        " --out {params.out_dir} --config-hash {params.hash} > {log} 2>&1"
