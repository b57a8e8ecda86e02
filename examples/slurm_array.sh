#!/usr/bin/env bash
# One deepsc-tune study on a SLURM cluster: every array task is one worker (one GPU), and all
# of them join the same study in PostgreSQL. Submit with
#
#     export DEEPSC_TUNE_STORAGE='postgresql://deepsc_tune:PASSWORD@dbhost:5432/deepsc_tune'
#     sbatch --export=ALL examples/slurm_array.sh hpancreas study.n_trials=80
#
# (search-space name, then any overrides). Submit again, or with a larger --array, to add
# workers; tasks that start after the target is reached exit at once. See docs/distributed.md.
#
# Adapt the #SBATCH lines to your cluster. Keep the storage URL out of the script and of the
# command line of long-lived jobs where other users can read them: it holds a password.

#SBATCH --job-name=deepsc-tune
#SBATCH --array=0-7%8              # 8 workers, all at once
#SBATCH --gres=gpu:1               # one GPU each (SLURM sets CUDA_VISIBLE_DEVICES)
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@120        # SIGTERM 2 min before the time limit: the trial is re-queued
#SBATCH --output=deepsc-tune-%A_%a.log

set -euo pipefail

name="${1:?usage: sbatch examples/slurm_array.sh NAME [OVERRIDES...]}"
shift
: "${DEEPSC_TUNE_STORAGE:?export DEEPSC_TUNE_STORAGE=postgresql://USER:PASSWORD@HOST:5432/DB first}"

# Your environment: a virtualenv or conda env with deepsc-tune[postgres] and the right torch build.
# source ~/venvs/deepsc-tune/bin/activate

# Node-local results (data cache, subprocess logs); the study itself is in PostgreSQL.
results="${SLURM_TMPDIR:-${TMPDIR:-/tmp}}/deepsc-tune-${SLURM_ARRAY_JOB_ID:-0}-${SLURM_ARRAY_TASK_ID:-0}"

# `exec` so that SLURM's SIGTERM (scancel, preemption, --signal) reaches deepsc-tune directly:
# it records the running trial as interrupted and re-queues it for the other workers. A task
# killed without warning is caught by the heartbeats after the grace period (30 s).
exec deepsc-tune run "$name" "$@" \
    --storage "$DEEPSC_TUNE_STORAGE" \
    --results-dir "$results" \
    --worker-id "a${SLURM_ARRAY_TASK_ID:-0}" \
    --threads "${SLURM_CPUS_PER_TASK:-1}"
