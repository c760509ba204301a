#!/usr/bin/env bash
# Regenerates the GRPO reference fixtures from the reference implementations themselves:
#   tests/fixtures/grpo/trl_loss.json, trl_advantages.json  (TRL 1.16's own GRPOTrainer code)
#   tests/fixtures/grpo/adamw.json                          (torch AdamW, clip_grad_norm_, schedules)
# Installs the pinned reference stack (scripts/requirements-reference.txt, ~6 GB: PyPI's torch
# wheel pulls the CUDA runtime wheels) into a virtual environment outside the repository.
# Usage: scripts/make-reference-fixtures.sh [VENV_DIR]   (default /tmp/rlzero-refvenv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-/tmp/rlzero-refvenv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r scripts/requirements-reference.txt
"$venv/bin/python" scripts/make_trl_grpo_fixtures.py
"$venv/bin/python" scripts/make_optim_fixture.py
git status --short tests/fixtures/grpo
