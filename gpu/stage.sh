#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (device tool), in the last staging call, after every
# call K has copied its carried `.gpu/xfer/cK/*` into $STAGE (see gpu/README.md).
#
#   bash gpu/stage.sh            # join + verify + unpack + debs + versions
#   . /tmp/gpu-env.sh            # afterwards, in this or a later call
#
# Env knobs:
#   STAGE=/tmp/stage       where the parts, SHA256SUMS and NPARTS were copied
#   LADDER_SHARED=/scratch/ladder
#                          what the sandbox nodes must see (the bundle, run_ladder.sh's
#                          venv, models, work dirs, sandbox state): not /tmp, which each
#                          node has a private one of; exported in /tmp/gpu-env.sh
#   DEST=$LADDER_SHARED    bundle root: creates $DEST/site and $DEST/debs
#   DEBS=root|prefix|skip  root (default): packages whose files are absent are
#                          added to / without overwriting anything (tar
#                          --skip-old-files), a library package only if one of its
#                          sonames is missing; prefix: only $SYSROOT, reached via
#                          LD_LIBRARY_PATH/PATH in /tmp/gpu-env.sh (slurmd then
#                          cannot find /usr/sbin/slurmstepd: use root for jobs)
#   SYSROOT=$DEST/sysroot  where each .deb is unpacked first (pkgs/<name>/)
set -euo pipefail

STAGE=${STAGE:-/tmp/stage}
SHARED=${LADDER_SHARED:-/scratch/ladder}
DEST=${DEST:-$SHARED}
DEBS=${DEBS:-root}
SYSROOT=${SYSROOT:-$DEST/sysroot}
ENVF=/tmp/gpu-env.sh  # sourced on the host only (run_ladder.sh): may stay in the host's /tmp
t0=$(date +%s)
say() { echo "[stage +$(($(date +%s) - t0))s] $*"; }

# ---------------------------------------------------------------- 1. join + verify
[[ -f $STAGE/NPARTS && -f $STAGE/SHA256SUMS ]] || { echo "no NPARTS/SHA256SUMS in $STAGE" >&2; exit 2; }
n=$(cat "$STAGE/NPARTS")
missing=()
for ((k = 1; k <= n; k++)); do [[ -f $STAGE/bundle.part$k ]] || missing+=("bundle.part$k"); done
if ((${#missing[@]})); then
  echo "missing in $STAGE: ${missing[*]} (a transfer call was skipped, or the machine" \
       "was given back between calls: start again from call 1)" >&2
  exit 3
fi
(cd "$STAGE" && grep ' bundle.part' SHA256SUMS | sha256sum -c --quiet -) \
  || { echo "part checksum mismatch" >&2; exit 4; }
parts=()
for ((k = 1; k <= n; k++)); do parts+=("$STAGE/bundle.part$k"); done
cat "${parts[@]}" > "$STAGE/bundle.tar.xz"
(cd "$STAGE" && grep ' bundle.tar.xz' SHA256SUMS | sha256sum -c --quiet -) \
  || { echo "bundle checksum mismatch" >&2; exit 4; }
say "verified $n parts + bundle sha256"

# ---------------------------------------------------------------- 2. unpack
rm -rf "$DEST/site" "$DEST/debs"
mkdir -p "$DEST"
if command -v xz >/dev/null; then
  xz -dc -T0 "$STAGE/bundle.tar.xz" | tar -x -C "$DEST"
else
  python3 - "$STAGE/bundle.tar.xz" "$DEST" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as t:
    t.extractall(sys.argv[2])
EOF
fi
rm -f "$STAGE/bundle.tar.xz"
say "unpacked: $(du -sm "$DEST/site" | cut -f1) MiB in $DEST/site, $(ls "$DEST"/debs/*.deb | wc -l) debs"

# ---------------------------------------------------------------- 3. debs
deb_x() {  # deb_x FILE DIR: dpkg -x, or a Python reader of the ar + data.tar.* layout
  if command -v dpkg >/dev/null; then dpkg -x "$1" "$2"; return; fi
  python3 - "$1" "$2" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a deb"
pos = 8
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58])
    body = data[pos + 60:pos + 60 + size]
    pos += 60 + size + (size & 1)
    if name.startswith("data.tar"):
        if name.endswith(".zst"):
            import zstandard
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        with tarfile.open(fileobj=io.BytesIO(body)) as t:
            t.extractall(sys.argv[2])
EOF
}
SLURM_PKGS=" slurm-wlm slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge libmunge2 "
have_soname() {
  ldconfig -p 2>/dev/null | grep -qF " $1 (" && return 0
  local d
  for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64 /usr/lib; do
    [[ -e $d/$1 ]] && return 0
  done
  return 1
}
extra_libs=()
if [[ $DEBS != skip ]]; then
  rm -rf "$SYSROOT" && mkdir -p "$SYSROOT/pkgs" "$SYSROOT/all"
  added=() skipped=()
  for deb in "$DEST"/debs/*.deb; do
    pkg=$(basename "$deb" | cut -d_ -f1)
    d=$SYSROOT/pkgs/$pkg
    mkdir -p "$d" && deb_x "$deb" "$d"
    tar -C "$d" -cf - . | tar -C "$SYSROOT/all" -xf - --keep-directory-symlink
    want=0
    if [[ $SLURM_PKGS == *" $pkg "* ]]; then
      want=1
    else
      while read -r lib; do
        so=$(basename "$lib")
        if ! have_soname "$so"; then want=1; extra_libs+=("$lib"); fi
      done < <(find "$d" \( -type f -o -type l \) -regextype posix-extended \
                 -regex '.*/lib[^/]*\.so\.[0-9]+' | sort)
    fi
    if ((want)); then added+=("$pkg"); else skipped+=("$pkg"); fi
    if ((want)) && [[ $DEBS == root ]]; then
      tar -C "$d" -cf - . | tar -C / -xf - --skip-old-files --keep-directory-symlink
    fi
  done
  # Debian's postinst makes these through update-alternatives; dpkg -x does not.
  for b in slurmctld slurmd slurmstepd; do
    for r in / "$SYSROOT/all/"; do
      [[ $DEBS == prefix && $r == / ]] && continue
      [[ -e ${r}usr/sbin/$b-wlm && ! -e ${r}usr/sbin/$b ]] && ln -s "$b-wlm" "${r}usr/sbin/$b"
    done
  done
  [[ $DEBS == root ]] && ldconfig
  say "debs ($DEBS): added ${added[*]:-none}"
  say "debs: libraries the machine already has (not added): ${skipped[*]:-none}"
fi

# ---------------------------------------------------------------- 4. env file
{
  echo "export LADDER_SHARED=$SHARED"
  echo "export PYTHONPATH=$DEST/site\${PYTHONPATH:+:\$PYTHONPATH}"
  echo "export PATH=$DEST/site/bin\${PATH:+:\$PATH}"
  echo "export VLLM_USE_FLASHINFER_SAMPLER=0"
  echo "export RAY_USAGE_STATS_ENABLED=0"
  if [[ $DEBS == prefix ]]; then
    ld=$SYSROOT/all/usr/lib/x86_64-linux-gnu/slurm-wlm
    mkdir -p "$SYSROOT/extra-libs"
    for lib in "${extra_libs[@]}"; do ln -sf "$lib" "$SYSROOT/extra-libs/"; done
    echo "export PATH=$SYSROOT/all/usr/sbin:$SYSROOT/all/usr/bin:\$PATH"
    echo "export LD_LIBRARY_PATH=$ld:$SYSROOT/extra-libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  fi
} > "$ENVF"
# shellcheck disable=SC1090
. "$ENVF"
say "wrote $ENVF"

# ---------------------------------------------------------------- 5. versions
python3 - <<'EOF'
import importlib.metadata as md, sys, time
t = time.time()
import torch, vllm, ray, snakemake, pynvml
print(f"python {sys.version.split()[0]}  torch {torch.__version__} (cuda {torch.version.cuda})")
print(f"vllm {vllm.__version__}  ray {ray.__version__}  snakemake {md.version('snakemake')}"
      f"  slurm-plugin {md.version('snakemake-executor-plugin-slurm')}"
      f"  nvidia-ml-py {md.version('nvidia-ml-py')}  (imports {time.time() - t:.1f}s)")
for m in ("vllm", "ray", "snakemake", "pynvml"):
    print(f"  {m}: {sys.modules[m].__file__}")
EOF
if [[ $DEBS != skip ]]; then
  for b in slurmctld slurmd sinfo munged; do
    p=$(command -v "$b" || true)
    if [[ -z $p ]]; then echo "  $b: not on PATH"; continue; fi
    nf=$(ldd "$p" 2>/dev/null | grep 'not found' || true)
    [[ -n $nf ]] && echo "  $b: unresolved libraries: $nf"
  done
  echo "  $(slurmctld -V 2>&1 || true) | munged $(munged -V 2>&1 | head -1 || true)"
fi
say "done"
