rule env:
    """Build or verify the pinned environment on a compute node; record versions (versions.json)."""
    output:
        verdict="results/env/verdict.json",
        versions="results/env/versions.json",
    params:
        fingerprint=env_fingerprint(),
        nodes=PARTITION_NODES,
        build="--build" if config["env"]["build"] else "",
        boot_py=BOOT_PY,
        prefix=PREFIX,
        lock=LOCK,
        flavor=config["env"]["flavor"],
        hash=config_hash("env"),
    log:
        "results/logs/env/env.log",
    benchmark:
        "results/benchmarks/env.tsv"
    retries: FAULTS["retries"]
    group: GROUP
    resources:
        **stage_resources("env", nodes=1, gpus=False, mem_mb=2000),
    shell:
        "{params.boot_py} -m ladder.envcheck --prefix {params.prefix} --lock {params.lock}"
        " --flavor {params.flavor} {params.build} --nodes '{params.nodes}' --config-hash {params.hash}"
        " --versions-out {output.versions} --verdict {output.verdict} > {log} 2>&1"
