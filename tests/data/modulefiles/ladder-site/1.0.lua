-- A module for tests/integration/test_probe_stage.py: env.modules loads it in every stage job.
whatis("ladder test site module")
setenv("LADDER_SITE_MODULE", "1.0")
