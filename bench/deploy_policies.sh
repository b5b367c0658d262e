#!/usr/bin/env bash
# Router policies on unequal nodes: a 2-node sandbox whose n2 has 1 core (n1: 2), the ladder up to
# single there, the deployment started (ladder.deploy start), then `ladder.deploy bench` (1 replica, 2 replicas, and the 2 behind a
# router of each policy, goodput under the SLO below), in one run; the result, with its metadata and
# the sandbox's shape, goes to bench/results/deploy-policies/bench.json.
#
#   bash bench/deploy_policies.sh [instance]      (default 3; needs the tiny model in .cache, i.e. a run before)
set -euo pipefail
cd "$(dirname "$0")/.."
inst="${1:-3}"
# The work directory on storage the nodes share (each sandbox node has a /tmp of its own).
mkdir -p .cache/bench
work="$(mktemp -d "$PWD/.cache/bench/ladder-policies.XXXX")"
state="$PWD/.sandbox$inst"
py="$PWD/.venv/bin/python"
export PATH="$PWD/.venv/bin:$PATH" SLURM_CONF="$state/etc/slurm.conf"
"$py" -m ladder.sandbox --instance "$inst" --state "$state" up --nodes 2 --node-cpus n2=1
trap '"$py" -m ladder.deploy --results "$work/results" stop >/dev/null 2>&1 || true;
      "$py" -m ladder.sandbox --instance "$inst" --state "$state" down' EXIT
cat >"$work/config.yaml" <<EOF
cluster: {nodes: 2, cpus_per_node: 1}
env: {prefix: "$PWD/.venv"}
tune: {enabled: false, slo: {ttft_ms: 300, tpot_ms: 15, percentile: 90}}
bench: {num_prompts: 32, concurrency: [2, 8], rates: [], repetitions: 3, input_len: 64, output_len: 32}
deploy: {replicas: 1, min_replicas: 1, max_replicas: 2, scale_up_waiting: 1000, scale_down_idle_s: 100000}
EOF
# The ladder up to single (the layout a replica serves, validated on these nodes) and deploy's config
# as the rule passes it; multinode is not needed for single-node replicas.
snakemake -s "$PWD/Snakefile" --directory "$work" --configfile "$work/config.yaml" --profile profiles/sandbox \
    results/single/verdict.json results/.config/deploy.json >"$work/ladder.log" 2>&1 || { tail -30 "$work/ladder.log"; exit 1; }
cd "$work"
"$py" -m ladder.deploy start --config results/.config/deploy.json --cache "$OLDPWD/.cache" \
    --out results/deploy/endpoint.json
"$py" -m ladder.deploy bench --cache "$OLDPWD/.cache" --policy round_robin --policy power_of_two --policy cache_aware
mkdir -p "$OLDPWD/bench/results/deploy-policies"
cp results/deploy/bench.json "$OLDPWD/bench/results/deploy-policies/bench.json"
echo "written: bench/results/deploy-policies/bench.json (work dir $work)"
