#!/usr/bin/env bash
# Installs a CUDA 13.0 *compiler* toolchain from NVIDIA's PyPI wheels into a prefix, so that
# candle's `cuda` feature builds (and links) on a CPU-only machine: no GPU, no driver, no
# NVIDIA apt repo. Nothing here can *run* a kernel; it is for compile checks.
#
# Usage:
#   scripts/install-cuda-toolkit.sh               # install (idempotent), verify, print exports
#   eval "$(scripts/install-cuda-toolkit.sh --print-env)"   # same, but stdout is only the exports
# Prefix: $CUDA_PREFIX, default ./target/cuda-toolkit (~270 MB; downloads ~105 MB).
# Needs: python3 -m pip, a C/C++ compiler (gcc/g++ <= 15), and cudarc's sources in the
# cargo registry (`cargo fetch` first) to generate the link-time stub libraries (see below).
set -euo pipefail

PREFIX="${CUDA_PREFIX:-$PWD/target/cuda-toolkit}"
PRINT_ENV_ONLY=0
[[ "${1:-}" == "--print-env" ]] && PRINT_ENV_ONLY=1
log() { echo "install-cuda-toolkit: $*" >&2; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

# CUDA 13.0 (update 1) component versions. 13.0 because: the cu12 `nvidia-cuda-nvcc-cu12` wheels
# ship only ptxas/libnvvm (no nvcc, no cicc); the 13.x wheels ship the real driver program; cudarc
# 0.19.10 (candle 0.11.1) knows CUDA <= 13.4 (it panics on a newer `nvcc --version`); and the
# oldest 13.x needs the oldest driver (R580) to JIT its PTX on a real GPU.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88     # bin/nvcc, ptxas, fatbinary, nvlink, cudafe++, nvcc.profile
  nvidia-nvvm==13.0.88          # nvvm/bin/cicc (device front end) + nvvm/libdevice
  nvidia-cuda-crt==13.0.88      # include/crt/*.h (host_config.h, math/device function headers)
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda.h, cuda_fp16/bf16/fp8.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85     # include/cccl: cub, thrust, cuda/std (candle's moe/mmq kernels)
)

install() {
  log "downloading ${WHEELS[*]}"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp/whl" "${WHEELS[@]}" >&2
  # Every CUDA 13 wheel unpacks into nvidia/cu13/{bin,include,lib,nvvm}: a toolkit-shaped tree
  # whose bin/nvcc.profile already points at ../nvvm/bin/cicc, ../include and ../include/cccl.
  # (Python's zipfile rather than unzip, which a fresh machine may lack; it keeps the modes.)
  python3 - "$tmp/x" "$tmp"/whl/*.whl <<'PY'
import os, sys, zipfile
dest = sys.argv[1]
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith("nvidia/cu13/") and not info.is_dir():
                path = z.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(path, mode)
PY
  local S="$tmp/x/nvidia/cu13"   # staged here; copied to $PREFIX only once complete
  ln -sf libcudart.so.13 "$S/lib/libcudart.so"   # candle-kernels links -lcudart

  # candle 0.11.1 turns on cudarc's `dynamic-linking`, so the final link needs -lcuda -lnvrtc
  # -lcurand -lcublas -lcublasLt. libcuda only comes with a driver, and the cuBLAS wheel alone is
  # hundreds of MB, so build tiny stubs with the real SONAMEs from the symbols cudarc declares. Like
  # NVIDIA's own lib/stubs, every call returns 34 (CUDA_ERROR_STUB_LIBRARY): a binary that finds
  # them at run time fails cleanly; on a GPU host the real libraries are loaded instead.
  local reg="${CARGO_HOME:-$HOME/.cargo}/registry/src"
  local sys; sys="$(ls -d "$reg"/*/cudarc-*/src 2>/dev/null | sort -V | tail -n1 || true)"
  [[ -n "$sys" ]] || { log "cudarc sources not in $reg: run 'cargo fetch' first"; exit 1; }
  mkdir -p "$S/lib/stubs"
  local spec lib soname mods
  for spec in "libcuda.so libcuda.so.1 driver" "libnvrtc.so libnvrtc.so.13 nvrtc" \
              "libcurand.so libcurand.so.10 curand" "libcublas.so libcublas.so.13 cublas" \
              "libcublasLt.so libcublasLt.so.13 cublaslt"; do
    read -r lib soname mods <<<"$spec"
    # Declarations look like `            fn cuInit(Flags: c_uint) -> CUresult;` (one line each).
    sed -nE 's/^ +fn ([A-Za-z0-9_]+)\(.*\)( -> (.*))?;$/\1 \3/p' "$sys/$mods/sys/mod.rs" \
      | sort -u -k1,1 | grep -v '^cuGetError' | awk '{ if ($2 ~ /^\*/) print "void *" $1 "(void) { return 0; }";
          else if ($2 == "") print "void " $1 "(void) {}";
          else print "int " $1 "(void) { return 34; }" }' > "$tmp/$lib.c"
    [[ $lib != libcuda.so ]] || cat >> "$tmp/$lib.c" <<'EOF'
int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }
int cuGetErrorString(int e, const char **s) { *s = "stub libcuda (no NVIDIA driver here)"; return 0; }
EOF
    cc -shared -fPIC -w -Wl,-soname,"$soname" -o "$S/lib/stubs/$lib" "$tmp/$lib.c"
    # For running (not linking): LD_LIBRARY_PATH=$PREFIX/lib/stubs:$PREFIX/lib lets a cuda-enabled
    # binary start on a machine without a driver (else: "libcuda.so.1: cannot open shared object").
    ln -s "$lib" "$S/lib/stubs/$soname"
  done
  rm -rf "$PREFIX"; mkdir -p "$PREFIX"; cp -a "$S/." "$PREFIX/"; echo "${WHEELS[*]}" > "$STAMP"
}

verify() {  # a kernel with the headers candle's kernels use, to sm_90 PTX
  cat > "$tmp/k.cu" <<'EOF'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cub/cub.cuh>
extern "C" __global__ void k(__half *a, __nv_bfloat16 *b) {
  int i = threadIdx.x; a[i] = __hadd(a[i], a[i]); b[i] = __float2bfloat16(__bfloat162float(b[i]) * 2.f);
}
EOF
  "$PREFIX/bin/nvcc" -arch=sm_90 --ptx -std=c++17 "$tmp/k.cu" -o "$tmp/k.ptx" >&2
  grep -q '.target sm_90' "$tmp/k.ptx"
}

STAMP="$PREFIX/.installed"   # holds the pins, so bumping one reinstalls
if [[ "$(cat "$STAMP" 2>/dev/null)" == "${WHEELS[*]}" ]]; then
  log "already installed in $PREFIX"
elif [[ -n "$(ls -A "$PREFIX" 2>/dev/null)" && ! -f "$PREFIX/bin/nvcc.profile" ]]; then
  log "$PREFIX exists and is not a toolkit this script installed; refusing to replace it"; exit 1
else
  install
fi
verify && log "ok: $("$PREFIX/bin/nvcc" --version | tail -n2 | head -n1)"

# What candle's build needs. cudaforge (candle-kernels' build.rs) finds nvcc on PATH and cannot
# ask nvidia-smi for the GPU, so CUDA_COMPUTE_CAP is required; cudarc reads the CUDA version from
# `nvcc --version` and adds CUDA_HOME/lib and CUDA_HOME/lib/stubs to the link search path.
# (cudaforge runs nvcc on half the cores by default; CUDAFORGE_THREADS=N overrides that.)
ENV="export CUDA_HOME='$PREFIX'
export PATH='$PREFIX/bin':\"\$PATH\"
export CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
if (( PRINT_ENV_ONLY )); then echo "$ENV"; else log "environment for cargo build --features cuda:"; echo "$ENV"; fi
