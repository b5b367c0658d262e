rule stage_config:
    """The config sections a stage reads (ladder.stageconfig), validated with defaults filled: the
    stage's JSON input, rewritten only when those sections change (their hash is the param)."""
    output:
        "results/.config/{stage}.json",
    params:
        hash=lambda w: config_hash(w.stage),
    log:
        "results/logs/config/{stage}.log",
    wildcard_constraints:
        stage="|".join([*stageconfig.SECTIONS, "report"]),
    localrule: True
    run:
        stageconfig.write(wildcards.stage, config, output[0], log[0])
