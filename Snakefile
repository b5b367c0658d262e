# ladder: staged, verified rollout of distributed vLLM on Ray across Slurm nodes.
# Stages gate each other through results/<stage>/verdict.json (DESIGN.md §1).
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")
sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from ladder.preflight import yaml_or_exit  # noqa: E402

yaml_or_exit(Path(workflow.basedir) / "config" / "config.yaml")


# The repo's config, whatever --directory says; --configfile merges over it.
configfile: workflow.source_path("config/config.yaml")


validate(config, "config/schema.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/config.smk"
include: "rules/env.smk"
include: "rules/probe.smk"
include: "rules/ray.smk"
include: "rules/single.smk"
include: "rules/tune.smk"
include: "rules/multinode.smk"
include: "rules/report.smk"
include: "rules/deploy.smk"


rule all:
    input:
        "results/report/index.html",
    default_target: True
