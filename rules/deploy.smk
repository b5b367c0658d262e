# After `all`: what the ladder validated, as a long-running service (ladder.deploy). Local rules:
# the router and the controller live on the submit host; the replicas are Slurm jobs they submit.
DEPLOY = f"{PY} -m ladder.deploy --results results"


rule deploy:
    """Replicas of the validated layout behind vllm-router, a watchdog and a scaler; returns once all serve."""
    input:
        gate=rules.multinode.output.verdict,
        config=stage_config("deploy"),
        tuned=TUNED_GATE,
    output:
        endpoint="results/deploy/endpoint.json",
    params:
        deploy=DEPLOY,
        cache=CACHE,
        hash=config_hash("deploy"),
    log:
        "results/logs/deploy/deploy.log",
    localrule: True
    shell:
        "{params.deploy} start --config {input.config} --cache {params.cache} --out {output.endpoint}"
        " --config-hash {params.hash} > {log} 2>&1"


rule deploy_status:
    """Per-replica health, load and queue of the running deployment (JSON on stdout)."""
    params:
        deploy=DEPLOY,
    log:
        "results/logs/deploy/status.log",
    localrule: True
    shell:
        "{params.deploy} status 2>&1 | tee {log}"


rule deploy_scale:
    """Scale the running deployment to deploy.replicas (--configfile with deploy: {{replicas: N}}:
    --config passes nested values as strings)."""
    params:
        deploy=DEPLOY,
        replicas=config["deploy"]["replicas"],
    log:
        "results/logs/deploy/scale.log",
    localrule: True
    shell:
        "{params.deploy} scale {params.replicas} 2>&1 | tee {log}"


rule deploy_stop:
    """Drain and cancel every replica, stop the router and the controller; the report gains the deployment."""
    params:
        deploy=DEPLOY,
        report=f"{PY} -m ladder.report --results results --config {stage_config('report')} --out results/report",
    log:
        "results/logs/deploy/stop.log",
    localrule: True
    shell:
        "{params.deploy} stop 2>&1 | tee {log} && {params.report} >> {log} 2>&1"


rule deploy_bench:
    """vllm bench serve through the router with 1 replica, then 2 on separate nodes, then the 2 behind a
    router of each of deploy.bench_policies (one run): the ratio and the goodput per policy."""
    input:
        endpoint=rules.deploy.output.endpoint,
    output:
        bench="results/deploy/bench.json",
    params:
        deploy=DEPLOY,
        cache=CACHE,
        policies=" ".join(f"--policy {p}" for p in config["deploy"]["bench_policies"]),
    log:
        "results/logs/deploy/deploy_bench.log",
    localrule: True
    shell:
        "{params.deploy} bench --cache {params.cache} {params.policies} > {log} 2>&1"
