#!/usr/bin/env bash
# Runs ON THE GPU MACHINE in the first (transfer) call, before the bundle is complete:
# what the sandbox cluster needs from the machine, checked in ~20 s, so a blocker shows
# before the long calls. Prints one line per check; exits 1 if a needed one failed.
#   bash gpu/devcheck.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=gpu/lib.sh
. gpu/lib.sh
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo), kernel $(uname -r)"
nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total --format=csv,noheader 2>&1 | sed 's/^/  /'
echo "  /dev: $(ls /dev | grep -E '^nvidia' | tr '\n' ' ')"
nvidia-smi topo -m 2>&1 | head -8 | sed "s/^/  /"
grep -H -E 'Device Minor|Bus Location' /proc/driver/nvidia/gpus/*/information 2>/dev/null | sed 's/^/  /'
for b in nsenter unshare hostname mount dpkg xz; do command -v $b >/dev/null && ok "$b" || bad "$b missing"; done
if ladder_ensure_ip >/tmp/ip-install.log 2>&1; then ok "ip: $(command -v ip) ($(ip -V 2>&1))"
else bad "ip: $(tail -3 /tmp/ip-install.log)"; fi

# Namespaces, bridge, veth, private /dev/shm and /tmp: exactly what ladder.sandbox does.
ns=ladderchk-n1
if ip netns add $ns && ip link add ladderchk type bridge && ip addr add 10.79.0.1/24 dev ladderchk \
   && ip link set ladderchk up && ip link add lchk-n1 type veth peer name eth0 netns $ns \
   && ip link set lchk-n1 master ladderchk up && ip -n $ns addr add 10.79.0.11/24 dev eth0 \
   && ip -n $ns link set eth0 up && ip -n $ns link set lo up; then
  out=$(nsenter --net=/run/netns/$ns unshare --uts --mount --propagation private sh -c \
        'hostname n1 && mount -t tmpfs -o size=64m ladder-shm /dev/shm && mount -t tmpfs -o size=64m,mode=1777 ladder-tmp /tmp && echo "$(hostname) shm=$(df -h /dev/shm | tail -1 | awk "{print \$2}") tmp=$(df -h /tmp | tail -1 | awk "{print \$2}")"' 2>&1) \
    && ok "netns+bridge+veth+uts+mount ns: $out" || bad "nsenter/unshare: $out"
  ping -c1 -W2 10.79.0.11 >/dev/null 2>&1 && ok "bridge -> veth ping" || echo "info ping unavailable or failed (not needed)"
else
  bad "netns/bridge/veth: $(ip netns add x 2>&1; ip link add y type bridge 2>&1; ip link add z type veth peer name w 2>&1)"
fi
ip link del lchk-n1 2>/dev/null; ip link del ladderchk 2>/dev/null; ip netns del $ns 2>/dev/null

# The interpreter the env stage will use: a venv over the image's python.
t=/tmp/venv-check
rm -rf $t
if env -u PYTHONPATH python3 -m venv --without-pip $t; then
  ok "venv: base $(env -u PYTHONPATH python3 -c 'import sys; print(sys.executable, sys.prefix, sys.base_prefix)')"
  echo "  image site-packages: $(env -u PYTHONPATH python3 -c 'import site; print(site.getsitepackages())')"
else bad "python3 -m venv --without-pip"; fi
rm -rf $t
env -u PYTHONPATH python3 - <<'EOF'
import importlib.metadata as md
for n in ("torch", "numpy", "transformers", "tokenizers", "triton", "nvidia-nccl-cu13", "setuptools", "pip",
          "psutil", "nvidia-ml-py", "matplotlib", "safetensors", "huggingface-hub"):
    try:
        print(f"  image {n}=={md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  image {n}: not installed")
EOF
# Every distribution of the image with its version (issue 14, item 6: the CUDA lock pins what the image
# provides, so a pip-resolved closure of envs/cuda.lock.txt needs these versions; KINDS.md lists some).
if [ -n "${OUT:-}" ]; then
  env -u PYTHONPATH python3 -m pip list --format=freeze >"$OUT/image-freeze.txt" 2>/dev/null \
    && ok "image freeze: $(wc -l <"$OUT/image-freeze.txt") distributions in \$OUT/image-freeze.txt" \
    || echo "info pip list failed (image freeze not recorded)"
fi
echo "devcheck: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
