#!/usr/bin/env bash
# Submit an expert sweep as a Slurm job array (slurm/experts.sbatch: SHARDS tasks, each td3.py --shard I/SHARDS into
# $RUN/experts/shard_I) and, after it, the rest of the pipeline (slurm/pipeline.sbatch: collect -> approximators ->
# evaluate on the merged shards) with --dependency=afterok, so the second starts only if every shard succeeded.
# Prints both job ids. Run from anywhere; the jobs run in the repository root. Every variable below can be set from
# the environment, e.g. a tiny trial on slurm/local_cluster.sh:
#   TASK=cheetah-vel CONTEXTS="0.5 1.5 2.5" TEST_CONTEXTS=1.5 STEPS=300 SHARDS=2 TD3_ARGS="--hidden 16 16 ..." \
#     APPROXIMATORS=hyperzero PIPELINE_GPUS=0 RUN=runs/trial slurm/submit.sh
#
# The defaults are the paper-scale Gen-HypRL MetaWorld run (8 seen + 8 unseen tasks, 1M steps, snapshots, docs/results_genhyprl.md's
# generator sizes). MetaWorld experts are simulation-bound (one process steps every task's simulator in turn), so 8
# CPU shards of 2 tasks each run side by side instead of the estimated 1-2 days (docs/results_genhyprl.md) in one process.
# Cheetah-Vel's 40 goals instead (GOALS and TEST as in docs/results_genhyprl.md's Cheetah-Vel run):
#   TASK=cheetah-vel CONTEXTS="$GOALS" TEST_CONTEXTS="$TEST" STEPS=500000 SHARDS=4 \
#     TD3_ARGS="--hidden 128 128 --snapshot-interval 500 --snapshot-start 150000" \
#     APPROXIMATORS="hyperzero hyplatent hypformer" HYPERZERO_ARGS="--epochs 500 --learning-rate 1e-4" \
#     HYPLATENT_ARGS= HYPFORMER_ARGS= EVAL_ARGS= RUN=runs/vel40 slurm/submit.sh
# A shard that stopped (time limit, preemption) continues from its checkpoint when the same command is submitted again.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEN="window-open-v3 door-open-v3 drawer-open-v3 dial-turn-v3 plate-slide-v3 button-press-v3 handle-press-v3 faucet-close-v3"
UNSEEN="drawer-close-v3 handle-press-side-v3 door-lock-v3 window-close-v3 reach-wall-v3 coffee-button-v3 button-press-wall-v3 faucet-open-v3"

# what to run
export RUN=${RUN:-runs/mw16}                       # everything goes under here (experts/shard_I, rollouts, ..., eval, logs)
export TASK=${TASK:-metaworld}                      # td3.py --task
export CONTEXTS=${CONTEXTS:-$SEEN $UNSEEN}          # the full context list; every shard gets all of it and takes its share
export TEST_CONTEXTS=${TEST_CONTEXTS-$UNSEEN}       # held out by every approximator (empty: each stage's default split)
export STEPS=${STEPS:-1000000}                      # td3.py --total-timesteps (per context)
export SHARDS=${SHARDS:-8}                          # array tasks; shard I trains contexts I, I+SHARDS, I+2*SHARDS, ...
export SEED=${SEED:-1}
export TD3_ARGS=${TD3_ARGS-"--hidden 128 128 --sac --snapshot-interval 1000 --snapshot-start 200000 --eval-interval 50000 --keep-best"}
export COLLECT_ARGS=${COLLECT_ARGS-"--episodes 10"}
export APPROXIMATORS=${APPROXIMATORS-"hyplatent hypformer"} # hyperzero.py models, hyplatent, hypformer (in this order)
export HYPERZERO_ARGS=${HYPERZERO_ARGS-}
export HYPLATENT_ARGS=${HYPLATENT_ARGS-"--latent-dim 1024 --ae-steps 100000 --embed-steps 50000 --gan-steps 200000"}
export HYPFORMER_ARGS=${HYPFORMER_ARGS-"--token-dim 256 --heads 128 --ffn-dim 2048 --steps 100000 --batch-size 128"}
export EVAL_ARGS=${EVAL_ARGS-"--samples 100 --episodes 1"}
export PYTHON=${PYTHON:-python}                     # the jobs' python (an absolute path to a virtual environment's works)
# where and how long
PARTITION=${PARTITION:-}                            # empty: the cluster's default partition
TIME=${TIME:-24:00:00}                              # per expert shard
CPUS=${CPUS:-2}                                     # per expert shard (td3.py uses one torch thread; the simulator the other)
GPUS=${GPUS:-0}                                     # per expert shard
MAX_PARALLEL=${MAX_PARALLEL:-}                      # at most this many shards at once (empty: no limit)
PIPELINE_TIME=${PIPELINE_TIME:-12:00:00}
PIPELINE_CPUS=${PIPELINE_CPUS:-4}
PIPELINE_GPUS=${PIPELINE_GPUS:-1}                   # the generators train on a GPU at this scale
SBATCH_EXTRA=${SBATCH_EXTRA:-}                      # more sbatch options for both jobs, e.g. "--account=abc --qos=normal"

# every setting is checked before anything is submitted: one line naming it, exit code 2 (as the Python stages)
die() { echo "submit.sh: $*" >&2; exit 2; }
for v in STEPS SHARDS SEED CPUS GPUS PIPELINE_CPUS PIPELINE_GPUS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} must be a non-negative integer"
done
[[ -z $MAX_PARALLEL || $MAX_PARALLEL =~ ^[1-9][0-9]*$ ]] || die "MAX_PARALLEL=$MAX_PARALLEL must be a positive integer (or empty)"
read -r -a contexts <<<"$CONTEXTS"
((SHARDS >= 1 && SHARDS <= ${#contexts[@]})) || die "SHARDS=$SHARDS must be between 1 and the number of contexts (${#contexts[@]})"
CHECK_ONLY=1 bash slurm/pipeline.sbatch || exit 2 # APPROXIMATORS and the rest of the pipeline's settings
command -v sbatch >/dev/null || die "sbatch not found (no Slurm here; slurm/local_cluster.sh starts one)"

read -r -a extra <<<"$SBATCH_EXTRA"
common=(--parsable --export=ALL --chdir="$PWD" "${extra[@]}")
if [[ -n $PARTITION ]]; then common+=(--partition="$PARTITION"); fi
mkdir -p "$RUN/logs" # sbatch does not create the directory of --output

array=0-$((SHARDS - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}
experts=(--array="$array" --time="$TIME" --cpus-per-task="$CPUS" --output="$RUN/logs/%x_%A_%a.out")
if ((GPUS > 0)); then experts+=(--gres="gpu:$GPUS"); fi
experts_job=$(sbatch "${common[@]}" "${experts[@]}" slurm/experts.sbatch)
experts_job=${experts_job%%;*} # --parsable prints "jobid[;cluster]"
echo "submit.sh: experts: job array $experts_job, tasks $array -> $RUN/experts/shard_*"

pipeline=(--dependency="afterok:$experts_job" --time="$PIPELINE_TIME" --cpus-per-task="$PIPELINE_CPUS" --output="$RUN/logs/%x_%j.out")
if ((PIPELINE_GPUS > 0)); then pipeline+=(--gres="gpu:$PIPELINE_GPUS"); fi
if ! pipeline_job=$(sbatch "${common[@]}" "${pipeline[@]}" slurm/pipeline.sbatch); then
  echo "submit.sh: the pipeline job was refused (see sbatch's message above); cancelling the experts array $experts_job" >&2
  scancel "$experts_job" || true
  exit 1
fi
pipeline_job=${pipeline_job%%;*}
echo "submit.sh: pipeline: job $pipeline_job after afterok:$experts_job -> $RUN/eval/results.json"
echo "submit.sh: logs in $RUN/logs; follow with: squeue -j $experts_job,$pipeline_job"
echo "EXPERTS_JOB=$experts_job PIPELINE_JOB=$pipeline_job"
