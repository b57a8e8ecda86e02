#!/usr/bin/env bash
# Make a separate Python environment for DeepSC's own fine-tuner (commits 2416d85 and abcf2be),
# the way its users run it: deepsc-tune lives in one environment and starts DeepSC's Python from
# another (finetune.command: [VENV/bin/python, -m, src.deepsc.finetune.finetune]).
#
# Usage: scripts/deepsc-env.sh VENV_DIR [TORCH REQUIREMENT AND PIP OPTIONS...]
#   scripts/deepsc-env.sh ~/deepsc-venv                  # pip's default torch (on Linux: a CUDA build)
#   scripts/deepsc-env.sh ~/deepsc-venv torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121
#   scripts/deepsc-env.sh ~/deepsc-venv torch --index-url https://download.pytorch.org/whl/cpu
# Pick the torch build for your GPU's driver (https://pytorch.org/get-started/locally/); DeepSC
# hard-codes accelerator="cuda", so its fine-tuner needs a CUDA build and a GPU.
#
# Idempotent: an environment that already imports DeepSC's packages is left as it is. The
# packages are the ones DeepSC's fine-tuner imports (docs/deepsc.md); DeepSC's own pyproject
# pins conflict with current releases, so DeepSC itself is not installed: it runs from its
# checkout with PYTHONPATH, which deepsc-tune sets (finetune.cwd).
set -euo pipefail
venv=${1:?usage: scripts/deepsc-env.sh VENV_DIR [TORCH REQUIREMENT AND PIP OPTIONS...]}
shift
torch_args=("$@")
[ ${#torch_args[@]} -gt 0 ] || torch_args=(torch)
check='import torch, lightning, hydra, omegaconf, scanpy, anndata, seaborn, tqdm, wandb, sklearn'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "deepsc-env: $venv already has DeepSC's packages (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
  exit 0
fi
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# torch first, the build asked for: the packages below then keep it instead of pulling another.
"$venv/bin/pip" install -q "${torch_args[@]}"
"$venv/bin/pip" install -q lightning hydra-core scanpy anndata pandas scipy scikit-learn \
  matplotlib seaborn tqdm wandb
"$venv/bin/python" -c "$check"
echo "deepsc-env: made $venv (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')); use $venv/bin/python in finetune.command"
