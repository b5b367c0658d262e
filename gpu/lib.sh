# Sourced by gpu/devcheck.sh and gpu/run_ladder.sh ON THE GPU MACHINE (device tool).
# Functions only; nothing runs on source. Needs bash.

# The environment every ladder process inherits (Slurm jobs get it through sbatch's
# default --export=ALL; Ray and vLLM copy os.environ).
ladder_gpu_env() {
  # Never use NVLink multicast on these shared hosts (device KINDS.md): keep these set.
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  # No network: never try a model hub; no usage reports.
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  export RAY_USAGE_STATS_ENABLED=0 VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
  # CUDA ordinals in PCI bus order, as the sandbox's TaskProlog numbers each node's GPUs.
  export CUDA_DEVICE_ORDER=PCI_BUS_ID
  unset CUDA_VISIBLE_DEVICES
}

# `ip` (iproute2) for the sandbox's namespaces and veths. The image may lack it: add it
# from Debian 12 debs carried in call 1 (/tmp/stage/net), without overwriting any file.
ladder_ensure_ip() {
  command -v ip >/dev/null && return 0
  local src=${NETDEBS:-/tmp/stage/net} root=/tmp/sysroot-net deb
  ls "$src"/*.deb >/dev/null 2>&1 || { echo "ip: not installed and no debs in $src" >&2; return 1; }
  rm -rf "$root" && mkdir -p "$root"
  for deb in "$src"/*.deb; do dpkg -x "$deb" "$root"; done
  tar -C "$root" -cf - . | tar -C / -xf - --skip-old-files --keep-directory-symlink
  ldconfig
  command -v ip >/dev/null && ip -V
}

# $LADDER_SHARED/venv: an interpreter whose site-packages are the bundle ($LADDER_SHARED/site) first, then the
# image's (torch, numpy, transformers): the env stage's prefix (env.prefix) and every
# stage's python. Console scripts of the bundle get wrappers bound to it (ray start,
# snakemake jobs and vLLM then all run on this interpreter, whatever PYTHONPATH says).
# Both on shared storage: every sandbox node runs them, and each node's /tmp is its own.
ladder_setup_venv() {
  local shared=${LADDER_SHARED:-/scratch/ladder}
  local venv=${1:-$shared/venv} repo=${2:?repo} site=${SITE:-$shared/site} sp img d f
  [[ -f $venv/.ladder-ready ]] && return 0
  rm -rf "$venv"
  env -u PYTHONPATH python3 -m venv --without-pip "$venv" || return 1
  sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  img=$(env -u PYTHONPATH python3 -c 'import site; print(" ".join(site.getsitepackages()))')
  {
    printf 'import site; site.addsitedir(%s)' "'$site'"
    for d in $img; do [[ -d $d ]] && printf '; site.addsitedir(%s)' "'$d'"; done
    echo
  } > "$sp/_ladder_gpu.pth"
  for f in "$site"/bin/*; do
    [[ -f $f && ! -e $venv/bin/$(basename "$f") ]] || continue
    if head -1 "$f" | grep -q python; then
      { echo "#!$venv/bin/python"; tail -n +2 "$f"; } > "$venv/bin/$(basename "$f")"
      chmod +x "$venv/bin/$(basename "$f")"
    fi
  done
  # ladder itself (entry points); PYTHONPATH=<repo>/scripts in every stage covers the rest.
  if ! (cd "$repo" && env -u PYTHONPATH "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
        --no-index -e . >/tmp/ladder-pip.log 2>&1); then
    echo "pip install -e failed (tail below); using a .pth to $repo/scripts" >&2
    tail -5 /tmp/ladder-pip.log >&2
    echo "$repo/scripts" > "$sp/_ladder_scripts.pth"
  fi
  env -u PYTHONPATH "$venv/bin/python" - <<'EOF' || return 1
import importlib.metadata as md, sys
import torch, ray, pynvml, ladder  # noqa: F401
print(f"venv {sys.prefix}: python {sys.version.split()[0]}, torch {torch.__version__}, vllm {md.version('vllm')},"
      f" ray {ray.__version__}, snakemake {md.version('snakemake')}, ladder at {ladder.__path__[0]}")
EOF
  touch "$venv/.ladder-ready"
}

# Munge's directories (dpkg -x does not run the package's postinst).
ladder_munge_dirs() {
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  chmod 0755 /etc/munge /run/munge
  chmod 0700 /var/lib/munge /var/log/munge
}
