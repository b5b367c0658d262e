# ladder: staged, verified rollout of distributed vLLM on Ray across Slurm nodes.
# Stages gate each other through results/<stage>/verdict.json (DESIGN.md §1).
from snakemake.utils import min_version, validate

min_version("9.0")


# The repo's config, whatever --directory says; --configfile merges over it.
configfile: workflow.source_path("config/config.yaml")


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/env.smk"
include: "rules/probe.smk"
include: "rules/ray.smk"
include: "rules/single.smk"
include: "rules/multinode.smk"


rule all:
    input:
        "results/multinode/verdict.json",
    default_target: True
