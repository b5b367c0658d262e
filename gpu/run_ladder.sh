#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (device tool) after gpu/stage.sh: the real ladder on the
# embedded sandbox Slurm cluster with the machine's real GPUs split over its nodes.
#
#   bash gpu/run_ladder.sh config/gpu/h200x4-tp2pp2.yaml [STAGE ...]
#
# STAGE: env probe ray single tune multinode report (default: all but tune, in order). Resumable: the
# work directory ($LADDER_SHARED/work/<layout>), $LADDER_SHARED/venv, the model and the sandbox survive
# between calls on the same warm machine, so a second call runs what is left (Snakemake
# skips stages whose verdicts exist). A stage starts only if its estimated duration fits
# before DEADLINE_S (seconds after this script starts; default 540, for a 600 s call);
# what did not fit is named at the end. Every call ends by packing the results into
# $OUT/<layout>.tgz and printing every figure (gpu/collect.py).
#
# Env knobs: DEADLINE_S, EXTRA_CONFIG (a second --configfile merged over OVERLAY), SB_NODES (sandbox nodes; default cluster.nodes of the overlay),
# SB_CPUS (12), SB_MEM (120000 MB), LAYOUT (overlay file name), WORK, EST_<stage> (s).
# LADDER_SHARED (/scratch/ladder; gpu/stage.sh exports it): where everything the sandbox nodes read
# lives (venv, bundle, models, work dir, sandbox state), never /tmp: each node has a private /tmp.
# The overlays' env.prefix and model.path name /scratch/ladder/...: change them with it.
set -uo pipefail
T0=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
OVERLAY=$(realpath "${1:?usage: run_ladder.sh OVERLAY [STAGE...]}"); shift
STAGES=("$@"); ((${#STAGES[@]})) || STAGES=(env probe ray single multinode report)
LAYOUT=${LAYOUT:-$(basename "$OVERLAY" .yaml)}
DEADLINE_S=${DEADLINE_S:-540}
OUTDIR=${OUT:-/tmp/ladder/out}
# Seen on nvidia-h200-x4 (TP=2/PP=2 overlay): env 44 s, probe 22 s, ray 75 s, single 298 s cold
# (healthy after 171 s; 123 s with a warm compile cache), multinode 273 s.
declare -A EST=([env]=${EST_env:-50} [probe]=${EST_probe:-30} [ray]=${EST_ray:-90} [single]=${EST_single:-300}
                [tune]=${EST_tune:-420} [multinode]=${EST_multinode:-300} [report]=${EST_report:-45})
say() { echo "[run_ladder +$(($(date +%s) - T0))s] $*"; }
left() { echo $((DEADLINE_S - ($(date +%s) - T0))); }

# shellcheck source=gpu/lib.sh
. "$REPO/gpu/lib.sh"
# shellcheck disable=SC1091
. /tmp/gpu-env.sh || { echo "no /tmp/gpu-env.sh: run gpu/stage.sh first" >&2; exit 2; }
ladder_gpu_env
SHARED=${LADDER_SHARED:-/scratch/ladder}
WORK=${WORK:-$SHARED/work/$LAYOUT}
VENV=$SHARED/venv
for d in "$SHARED" "$WORK" "$REPO"; do
  if [[ $(realpath -m "$d")/ == /tmp/* ]]; then
    echo "$d is under /tmp, which every sandbox node has a private one of: use shared storage" >&2; exit 2
  fi
done
mkdir -p "$WORK" "$OUTDIR"
# Job steps re-read every --configfile on their node: the extra config goes where the nodes see it.
if [[ -n ${EXTRA_CONFIG:-} ]]; then
  cp "$EXTRA_CONFIG" "$WORK/extra-config.yaml" && EXTRA_CONFIG=$WORK/extra-config.yaml
fi

# ---------------------------------------------------------------- machine setup (idempotent)
ladder_ensure_ip || exit 3
ladder_setup_venv "$VENV" "$REPO" || { echo "venv setup failed" >&2; exit 3; }
# The overlay's model.name is one of ladder.tinymodel's real shapes (config + tokenizer; dummy weights).
read -r MODEL SHAPE NODES < <(python3 - "$OVERLAY" <<'EOF'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
print(c["model"]["path"], c["model"]["name"], c["cluster"]["nodes"])
EOF
)
PYTHONPATH=$REPO/scripts "$VENV/bin/python" -m ladder.tinymodel --out "$MODEL" --shape "$SHAPE" || exit 3
ladder_munge_dirs
SB_STATE=$SHARED/sandbox
PYTHONPATH=$REPO/scripts "$VENV/bin/python" -m ladder.sandbox --state "$SB_STATE" up --nodes "${SB_NODES:-$NODES}" \
  --real-gpus --no-accounting --cpus "${SB_CPUS:-12}" --mem-mb "${SB_MEM:-120000}" --timeout 90 || exit 4
export SLURM_CONF=$SB_STATE/etc/slurm.conf
echo "  gres.conf: $(grep -v AutoDetect "$SB_STATE/etc/gres.conf" | sed 's/.*NodeName=//' | tr '\n' ';')"
say "machine ready: venv, model $MODEL, sandbox $(sinfo -h -N -o '%N:%t:%G' | tr '\n' ' ')"

# ---------------------------------------------------------------- stages
export PATH=$VENV/bin:$PATH
# profiles/sandbox's executor (slurm-sandbox) is a module in scripts/, found on the path.
export PYTHONPATH=$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}
# --rerun-triggers without params: the working tree is re-sent with every call, and a code
# change in between (another engineer's edit of a rule's params) would otherwise re-run
# stages that already passed in an earlier call of this run. RERUN_TRIGGERS="mtime params input"
# restores the profile's behaviour.
read -r -a triggers <<<"${RERUN_TRIGGERS:-mtime input}"
# --rerun-triggers and --configfile take several values: a single-valued option ends them.
smk=("$VENV/bin/snakemake" --rerun-triggers "${triggers[@]}" --configfile "$OVERLAY"
     ${EXTRA_CONFIG:+"$(realpath "$EXTRA_CONFIG")"} --profile "$REPO/profiles/sandbox" -s "$REPO/Snakefile" --directory "$WORK")
# Slurm jobs of this work directory that a killed snakemake left running (it scancels its
# jobs on TERM, not on KILL): they would hold the nodes' GPUs in the next call.
cancel_ours() {
  local ids
  ids=$(squeue -h -o '%i %Z' 2>/dev/null | awk -v w="$WORK" '$2 == w {print $1}')
  [[ -n $ids ]] && { say "cancelling leftover jobs of $WORK: $(echo $ids)"; scancel $ids; sleep 5; }
  return 0
}
cancel_ours
if compgen -G "$WORK/.snakemake/locks/*" >/dev/null; then "${smk[@]}" --unlock >/dev/null 2>&1; fi
target() { [[ $1 == report ]] && echo results/report/index.html || echo "results/$1/verdict.json"; }
skipped=() rc=0
for st in "${STAGES[@]}"; do
  if [[ -f $WORK/$(target "$st") ]]; then say "$st: done earlier"; continue; fi
  if ((${#skipped[@]})) || (($(left) < ${EST[$st]})); then skipped+=("$st"); continue; fi  # later stages need it
  say "$st: starting ($(left) s left, estimate ${EST[$st]} s)"
  s0=$(date +%s) off=$(stat -c %s "$WORK/snakemake.log" 2>/dev/null || echo 0)
  timeout --signal=TERM --kill-after=30 "$(($(left) + 20))" "${smk[@]}" "$(target "$st")" \
    >>"$WORK/snakemake.log" 2>&1
  rc=$?
  say "$st: snakemake exit $rc after $(($(date +%s) - s0)) s"
  ((rc == 124 || rc == 137)) && cancel_ours
  if ((rc)); then
    tail -c +$((off + 1)) "$WORK/snakemake.log" | grep -E "Error|error:|failed|Exiting" | tail -8 | sed 's/^/  /'
    log=$WORK/results/logs/$st/$st.log
    [[ -f $log ]] && { echo "  --- last lines of $log"; tail -40 "$log" | cut -c1-400 | sed 's/^/  /'; }
    break
  fi
done
((${#skipped[@]})) && say "not started (would not fit before ${DEADLINE_S}s; run again): ${skipped[*]}"

# ---------------------------------------------------------------- results
python3 "$REPO/gpu/collect.py" pack "$WORK/results" "$OUTDIR/$LAYOUT.tgz" --max-mib 15
tail -c 3000000 "$WORK/snakemake.log" > "$OUTDIR/$LAYOUT-snakemake.log" 2>/dev/null
python3 "$REPO/gpu/collect.py" summary "$WORK/results" | tee "$OUTDIR/$LAYOUT-summary.txt"
say "done (exit $rc)"
exit $rc
