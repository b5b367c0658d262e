#!/usr/bin/env bash
# Runs ON THE GPU MACHINE after gpu/stage.sh (same or later call): GPU, imports,
# a Ray head on non-default ports with one GPU task, stopped by its own PID,
# and the Slurm/munge binaries' versions. Prints one line per check; exits 1 if
# any check failed. Budget: about 60-90 s.
#   RAY_SMOKE_PORT=46379 RAY_SMOKE_DEADLINE=60 bash gpu/smoke.sh
set -uo pipefail
# shellcheck disable=SC1091
. /tmp/gpu-env.sh
fail=0
t0=$(date +%s)
check() {  # check NAME CMD...: run, print ok/FAIL with the last lines of output
  local name=$1; shift
  local out rc
  out=$("$@" 2>&1); rc=$?
  if ((rc == 0)); then echo "ok   $name (+$(($(date +%s) - t0))s)"; else echo "FAIL $name rc=$rc"; fail=1; fi
  printf '%s\n' "$out" | tail -n "${TAIL:-6}" | sed 's/^/     /'
}

check "machine" sh -c 'grep PRETTY_NAME /etc/os-release; ldd --version | head -1;
  command -v dpkg xz || true; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader'
check "import vllm ray snakemake pynvml" python3 -c '
import time; t = time.time()
import vllm, ray, snakemake, pynvml, importlib.metadata as md
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
print("vllm", vllm.__version__, "ray", ray.__version__, "snakemake", md.version("snakemake"),
      "pynvml gpus", pynvml.nvmlDeviceGetCount(), pynvml.nvmlDeviceGetName(h), f"{time.time()-t:.1f}s")'
check "import vllm api_server + slurm plugin" python3 -c '
import time; t = time.time()
import vllm.entrypoints.openai.api_server, vllm.v1.executor.ray_executor, xgrammar, tvm_ffi
import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep
from vllm.platforms import current_platform
print(type(current_platform).__name__, current_platform.get_device_capability(),
      "tvm_ffi", tvm_ffi.__version__, f"{time.time()-t:.1f}s")'

# ---- Ray head smoke: non-default ports, readiness polled with a deadline.
PORT=${RAY_SMOKE_PORT:-46379}
DEADLINE=${RAY_SMOKE_DEADLINE:-60}
IP=$(hostname -I 2>/dev/null | awk '{print $1}'); IP=${IP:-127.0.0.1}
LOG=/tmp/ray-smoke.log
setsid ray start --head --block --node-ip-address="$IP" --port="$PORT" \
  --include-dashboard=false --disable-usage-stats --num-cpus=4 \
  --node-manager-port=$((PORT + 1)) --object-manager-port=$((PORT + 2)) \
  --dashboard-agent-listen-port=$((PORT + 3)) --dashboard-agent-grpc-port=$((PORT + 4)) \
  --metrics-export-port=$((PORT + 5)) --runtime-env-agent-port=$((PORT + 6)) \
  --ray-client-server-port=$((PORT + 7)) --min-worker-port=$((PORT + 100)) \
  --max-worker-port=$((PORT + 300)) --temp-dir=/tmp/ray-smoke >"$LOG" 2>&1 &
RAY_PID=$!
ready=0
for ((i = 0; i < DEADLINE; i++)); do
  if ! kill -0 "$RAY_PID" 2>/dev/null; then break; fi
  if ray status --address="$IP:$PORT" >/tmp/ray-status.txt 2>&1; then ready=1; break; fi
  sleep 1
done
if ((ready)); then
  echo "ok   ray head up at $IP:$PORT after ${i}s (pid $RAY_PID)"
  grep -E 'CPU|GPU|node_' /tmp/ray-status.txt | head -6 | sed 's/^/     /'
  check "ray GPU task" timeout 40 python3 -c "
import ray
ray.init(address='$IP:$PORT', log_to_driver=False)
@ray.remote(num_gpus=1)
def f():
    import os, torch
    return os.environ.get('CUDA_VISIBLE_DEVICES'), torch.cuda.get_device_name(0)
print(ray.cluster_resources().get('GPU'), ray.get(f.remote()))"
else
  echo "FAIL ray head not ready within ${DEADLINE}s"; fail=1
  tail -20 "$LOG" | sed 's/^/     /'; tail -5 /tmp/ray-status.txt 2>/dev/null | sed 's/^/     /'
fi
kill -TERM "$RAY_PID" 2>/dev/null
for ((i = 0; i < 15; i++)); do kill -0 "$RAY_PID" 2>/dev/null || break; sleep 1; done
left=$(ps -eo pid=,pgid=,comm= | awk -v g="$RAY_PID" '$2 == g' | wc -l)
echo "     ray stopped by pid $RAY_PID: $left process(es) of its group left after ${i}s"
if ((left)); then kill -KILL -- "-$RAY_PID" 2>/dev/null; fi

# ---- Slurm / munge binaries from the Debian 12 debs
if command -v slurmctld >/dev/null; then
  # (client commands such as sinfo -V need a slurm.conf: they are only ldd-checked)
  check "slurm binaries" sh -c 'slurmctld -V; slurmd -V; munged -V | head -1;
    for b in slurmctld slurmd slurmstepd sbatch srun squeue sinfo scontrol munged; do
      p=$(command -v $b) && ldd $p | grep "not found" | sed "s|^|$b: |"; done; true'
else
  echo "FAIL slurmctld not on PATH"; fail=1
fi
echo "smoke: $([ $fail = 0 ] && echo PASS || echo FAIL) in $(($(date +%s) - t0))s"
exit $fail
