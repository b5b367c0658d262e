# ladder: staged, verified rollout of distributed vLLM on Ray across Slurm nodes.
# Stages gate each other through results/<stage>/verdict.json (DESIGN.md §1).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/env.smk"
include: "rules/probe.smk"


rule all:
    input:
        "results/probe/verdict.json",
    default_target: True
