#!/usr/bin/env bash
# CleanHyper quickstart: Cheetah-Vel end to end on a 2-core CPU, zero-shot to goals between the training goals.
#   1. TD3 experts for 7 training velocities 0, 0.5, ..., 3 and, beside them, for 4 held-out velocities
#      0.75, 1.25, 1.75, 2.25, all fine-tuned from one expert of goal 1.5 (td3.py --init-from; the held-out experts
#      only score the methods: random = 0, 1 = the best expert on the goal)
#   2. the training experts' rollouts and their snapshots' behaviour data (collect.py): no held-out goal is in them
#   3. seeds 1-3 of HyperZero and the context-conditioned MLP (hyperzero.py), HypLatent and HypFormer
#      (hyplatent.py, hypformer.py); with --meta also MAML and PEARL (meta.py)
#   4. every method on the 4 held-out goals: mean and IQM of the expert-normalised score with 95 % bootstrap
#      intervals over seeds and goals, returns.png and normalized.png (evaluate.py)
# Usage: bash quickstart.sh [--meta] [OUT_DIR]    (default OUT_DIR runs/quickstart; PYTHON=... picks the interpreter)
# Running it again replaces the earlier outputs in OUT_DIR (--overwrite).
set -euo pipefail
cd "$(dirname "$0")"
META=0
if [ "${1:-}" = "--meta" ]; then META=1; shift; fi
OUT=${1:-runs/quickstart}
PY=${PYTHON:-python}
# Every stage on one torch thread: two processes share the 2 cores below.
stage() { $PY "$@" --torch-threads 1 --overwrite; }
GOALS="0 0.5 1 1.5 2 2.5 3"
HELDOUT="0.75 1.25 1.75 2.25"
SEEDS="1 2 3"
T0=$(date +%s)

# Every expert fine-tunes one start (an expert of the middle goal, 50k steps) for 40k steps: their snapshots are then
# neighbours in parameter space, which Gen-HypRL's generators interpolate (docs/results_genhyprl.md#fixing-the-data).
TD3="--task cheetah-vel --learning-starts 2000 --hidden 64 64 --eval-interval 10000 --eval-episodes 3 --seed 1"
stage td3.py $TD3 --contexts 1.5 --total-timesteps 50000 --log-interval 50000 --out-dir "$OUT/start" > /dev/null
TD3="$TD3 --total-timesteps 40000 --init-from $OUT/start/expert_goal_1.5.pt"
stage td3.py $TD3 --contexts $GOALS --snapshot-interval 400 --snapshot-start 30000 --log-interval 5000 --out-dir "$OUT/experts" &
PID=$!  # `wait PID` returns the job's exit status, so set -e stops on a failed background stage too
stage td3.py $TD3 --contexts $HELDOUT --log-interval 40000 --out-dir "$OUT/experts_heldout" > /dev/null
wait $PID
stage collect.py --experts "$OUT/experts" --episodes 5 --seed 1 --out-dir "$OUT/rollouts"

# Two lanes side by side, one per core; every approximator trains on all 7 goals (--test-fraction 0).
for s in $SEEDS; do
  stage hyperzero.py --rollouts "$OUT/rollouts" --model hyperzero --test-fraction 0 --steps 2000 --seed $s --out-dir "$OUT/hyperzero_s$s"
  stage hyperzero.py --rollouts "$OUT/rollouts" --model mlp --test-fraction 0 --steps 2000 --seed $s --out-dir "$OUT/mlp_s$s"
done &
PID=$!
for s in $SEEDS; do
  stage hyplatent.py --data "$OUT/rollouts" --seed $s --out-dir "$OUT/hyplatent_s$s"
  stage hypformer.py --hyplatent "$OUT/hyplatent_s$s" --seed $s --out-dir "$OUT/hypformer_s$s"
done
wait $PID
POLICIES=$(for m in hyperzero mlp hyplatent hypformer; do for s in $SEEDS; do echo -n " $OUT/${m}_s$s"; done; done)
if [ $META = 1 ]; then
  for s in $SEEDS; do
    stage meta.py --rollouts "$OUT/rollouts" --model maml --test-fraction 0 --steps 2000 --seed $s --out-dir "$OUT/maml_s$s" &
    PID=$!
    stage meta.py --rollouts "$OUT/rollouts" --model pearl --test-fraction 0 --steps 2000 --seed $s --out-dir "$OUT/pearl_s$s"
    wait $PID
    POLICIES="$POLICIES $OUT/maml_s$s $OUT/pearl_s$s"
  done
fi
# Several directories of one method are its runs: rows per run in results.json, intervals over runs and goals.
stage evaluate.py --experts "$OUT/experts" "$OUT/experts_heldout" --policies $POLICIES --contexts $HELDOUT $GOALS \
  --episodes 3 --samples 4 --seed 1 --out-dir "$OUT/eval"
echo "quickstart done in $(( $(date +%s) - T0 )) s: table above, plots in $OUT/eval (returns.png, normalized.png)"
