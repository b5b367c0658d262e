#!/usr/bin/env bash
# Build the bundle that stages vLLM + Ray + Snakemake (+ Slurm/munge debs) onto
# the GPU machine of the device tool (Python 3.12, torch 2.11.0+cu130, no network,
# at most 64 MiB of working tree per call). Runs HERE (Debian 12, network to PyPI
# and Debian), writes only under .gpu/ (git-ignored).
#
#   bash gpu/build_bundle.sh            # everything
#   KEEP_DL=1 bash gpu/build_bundle.sh  # reuse .gpu/wheels and .gpu/debs
#
# Output:
#   .gpu/bundle.tar.xz                one `tar | xz -9` stream: site/ (pip --target
#                                     tree, trimmed) and debs/ (*.deb for dpkg -x)
#   .gpu/xfer/cK/bundle.partK         K = 1..N, equal-size parts, each < PART_MAX
#   .gpu/xfer/cK/SHA256SUMS           sha256 of the whole bundle and of each part
# Device call K carries `.gpu/xfer/cK` (see gpu/README.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
G=$ROOT/.gpu
PART_MAX=${PART_MAX:-$((58 * 1024 * 1024 - 1))}  # bytes; < 58 MiB
XZ_THREADS=${XZ_THREADS:-0}                       # 0 = all cores
PY=${PY:-python3}
mkdir -p "$G"
cd "$G"

# pip options for a CPython 3.12 x86_64 manylinux target, binaries only.
PIPT=(--only-binary=:all: --python-version 3.12 --implementation cp
      --abi cp312 --abi abi3 --abi none)
for n in 5 12 17 24 26 27 28 31 34 35; do PIPT+=(--platform "manylinux_2_${n}_x86_64"); done
PIPT+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
       --platform manylinux1_x86_64 --platform linux_x86_64 --platform any)

# Packages shipped only as sdists; all pure Python, built into wheels here.
SDIST_ONLY="connection_pool"

# ---------------------------------------------------------------- 1. wheels
if [[ -z ${KEEP_DL:-} || ! -d wheels ]]; then
  rm -rf wheels && mkdir wheels
  grep -Ev '^\s*(#|$)' "$ROOT/gpu/pins.txt" > pins.flat
  grep -Eiv "^(${SDIST_ONLY// /|})==" pins.flat > pins.bin || true
  "$PY" -m pip download -q --no-deps "${PIPT[@]}" -d wheels -r pins.bin
  for p in $SDIST_ONLY; do
    spec=$(grep -Ei "^$p==" pins.flat)
    "$PY" -m pip wheel -q --no-deps -w wheels "$spec"
  done
fi
"$PY" "$ROOT/gpu/check_closure.py" wheels

# ---------------------------------------------------------------- 2. site/
rm -rf build && mkdir build
"$PY" -m pip install -q --no-index --no-deps --no-compile --target build/site \
  "${PIPT[@]}" wheels/*.whl
S=build/site
before=$(du -sm "$S" | cut -f1)

# Trim what a dense bf16 text model on Hopper (sm90) never loads (DESIGN.md s7).
rm -f  $S/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so      # FA2 (Ampere); FA3 stays
rm -f  $S/vllm/_moe_C_stable_libtorch.abi3.so            # MoE kernels
rm -f  $S/vllm/vllm-rs                                   # optional Rust frontend
rm -rf $S/vllm/third_party/fmha_sm100/cutlass            # SM100-only JIT headers (MiniMax M3)
rm -rf $S/vllm/third_party/deep_gemm/include           # JIT headers: FP8 deep_gemm kernels only
find $S/vllm/third_party/deep_gemm -maxdepth 1 -name '_C.cpython-3*.so' \
  ! -name '_C.cpython-312-*' -delete                     # other Pythons
# Ray: Java worker jar (used only when `java` is on PATH) and the dashboard's
# source map (the dashboard build itself stays: its absence is fatal on Linux).
rm -rf $S/ray/jars
rm -rf $S/ray/rllib $S/ray/llm     # RLlib; Ray's own vLLM wrappers (ray.serve.llm, ray.data.llm)
find $S/ray/dashboard/client/build -name '*.map' -delete
# PuLP (Snakemake's ILP scheduler): keep only the linux x86_64 CBC solver.
find $S/pulp/solverdir/cbc -mindepth 2 -maxdepth 2 -type d ! -path '*/linux/i64' \
  -exec rm -rf {} +
# tvm_ffi (xgrammar's FFI): libbacktrace sources are for building tvm_ffi itself.
rm -rf $S/tvm_ffi/3rdparty/libbacktrace
find $S -name __pycache__ -type d -prune -exec rm -rf {} +
# Console scripts: pip wrote this machine's interpreter; use the device's python3.
for f in $S/bin/*; do
  if head -c 2 "$f" | grep -q '#!'; then
    sed -i '1s|^#!.*python.*$|#!/usr/bin/env python3|' "$f"
  fi
done
after=$(du -sm "$S" | cut -f1)
echo "site/: ${before} MiB installed, ${after} MiB after trimming"

# ---------------------------------------------------------------- 3. debs/
# Debian 12 (bookworm) Slurm 22.05 + munge, and the libraries they link that a
# bare Ubuntu/Debian image may lack. stage.sh unpacks them with dpkg -x into a
# prefix and exposes only the sonames the machine does not already have.
DEBS="slurm-wlm slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge libmunge2
      libhwloc15 libnuma1 libjson-c5 liblua5.1-0 libyaml-0-2 libdbus-1-3 libreadline8
      readline-common liblz4-1 libpam0g libgcrypt20 libgpg-error0 libbz2-1.0 libtinfo6
      libudev1 libsystemd0 libaudit1 libcap-ng0"
if [[ -z ${KEEP_DL:-} || ! -d debs ]]; then
  . /etc/os-release
  [[ ${VERSION_CODENAME:-} == bookworm ]] || echo "warning: building on $PRETTY_NAME, not Debian 12" >&2
  rm -rf debs && mkdir debs
  (cd debs && apt-get download $DEBS)
fi
cp -r debs build/debs

# ---------------------------------------------------------------- 4. pack + split
rm -rf xfer/c* bundle.tar.xz && mkdir -p xfer
tar --sort=name --owner=0 --group=0 --numeric-owner -C build -cf - site debs \
  | xz -9 -T"$XZ_THREADS" > bundle.tar.xz
size=$(stat -c %s bundle.tar.xz)
n=$(( (size + PART_MAX - 1) / PART_MAX ))
split -n "$n" -d -a 1 --numeric-suffixes=1 bundle.tar.xz xfer/bundle.part
sums=$(cd xfer && sha256sum bundle.part*; cd .. && sha256sum bundle.tar.xz)
for ((k = 1; k <= n; k++)); do
  mkdir xfer/c$k
  mv xfer/bundle.part$k xfer/c$k/
  printf '%s\n' "$sums" > xfer/c$k/SHA256SUMS
  echo "$n" > xfer/c$k/NPARTS
done

# Carried beside part 1: iproute2 (the image has no `ip`) and pytest (tests/gpu on the device).
if [[ -z ${KEEP_DL:-} || ! -d xfer/net ]]; then
  rm -rf xfer/net && mkdir -p xfer/net
  (cd xfer/net && apt-get download iproute2 libbpf1 libelf1 libmnl0 libbsd0 libmd0 libcap2 \
     && for f in *_*.deb; do mv "$f" "${f%%_*}.deb"; done)
  "$PY" -m pip download -q --no-deps "${PIPT[@]}" -d xfer/net pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
fi

# ---------------------------------------------------------------- 5. report
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
echo "unpacked: site $(du -sm build/site | cut -f1) MiB, debs $(du -sm build/debs | cut -f1) MiB"
echo "bundle.tar.xz: $(mib "$size") ($size bytes) -> $n parts"
for d in xfer/c*; do
  f=$(ls $d/bundle.part*)
  echo "  $d: $(basename "$f") $(mib "$(stat -c %s "$f")")"
done
echo "sha256:"; printf '%s\n' "$sums"
