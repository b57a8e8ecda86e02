#!/usr/bin/env bash
# Make a separate Python environment for DeepSC's own fine-tuner (commit 2416d85), the way its
# users run it: deepsc-tune lives in one environment and starts DeepSC's Python from another.
# Usage: .ci/deepsc-env.sh VENV_DIR    (idempotent: an environment that imports DeepSC's
# packages is left as it is). The packages are the ones DeepSC's fine-tuner imports
# (../shared/deepsc/README.md); its own pyproject pins conflict with current releases, so DeepSC
# itself is not installed: it runs from its checkout with PYTHONPATH (docs/deepsc.md).
set -euo pipefail
venv=${1:?usage: .ci/deepsc-env.sh VENV_DIR}
check='import torch, lightning, hydra, omegaconf, scanpy, anndata, seaborn, tqdm, wandb, sklearn'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# torch first: the CPU build on the CI machines' disk (a GPU machine picks its own build).
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q lightning hydra-core scanpy anndata pandas scipy scikit-learn \
  matplotlib seaborn tqdm wandb
"$venv/bin/python" -c "$check"
