#!/usr/bin/env bash
# The aarch64 (NEON) paths of the hand-written kernels: built for aarch64-unknown-linux-gnu and
# their tests run under qemu-user, which emulates NEON exactly. This checks bits (every path
# against the portable one), not speed: emulated timings mean nothing.
# Installs what it needs: rustup's aarch64 standard library, Debian's cross linker and qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if (( ${#need[@]} )); then
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo=sudo
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# The crates with SIMD kernels: clippy sees the NEON code only when compiling for aarch64.
cargo clippy --target "$target" -p rlzero-model -p rlzero-rollout --all-targets -- -D warnings
cargo test --target "$target" -p rlzero-model -p rlzero-rollout --lib
