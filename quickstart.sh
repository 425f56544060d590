#!/usr/bin/env bash
# CleanHyper quickstart: Cheetah-Vel end to end on a 2-core CPU.
#   1. TD3 experts for 7 target velocities 0, 0.5, ..., 3, trained together (td3.py)
#   2. their rollouts and their training snapshots' behaviour data (collect.py)
#   3. with goals 1 and 2 held out: HyperZero and the context-conditioned MLP (hyperzero.py),
#      HypLatent and HypFormer (hyplatent.py, hypformer.py); with --meta also MAML and PEARL (meta.py)
#   4. every method rolled out on all 7 goals: the table below, returns.png and normalized.png (evaluate.py)
# Usage: bash quickstart.sh [--meta] [OUT_DIR]    (default OUT_DIR runs/quickstart; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")"
META=0
if [ "${1:-}" = "--meta" ]; then META=1; shift; fi
OUT=${1:-runs/quickstart}
PY=${PYTHON:-python}
# Every stage on one torch thread: two processes share the 2 cores below (the README's numbers were made so).
stage() { $PY "$@" --torch-threads 1; }
GOALS="0 0.5 1 1.5 2 2.5 3"
HELDOUT="1 2"
T0=$(date +%s)

stage td3.py --task cheetah-vel --contexts $GOALS --total-timesteps 50000 --learning-starts 2000 --hidden 64 64 \
  --eval-interval 10000 --eval-episodes 3 --snapshot-interval 1000 --snapshot-start 25000 --log-interval 5000 \
  --seed 1 --out-dir "$OUT/experts"
stage collect.py --experts "$OUT/experts" --episodes 5 --seed 1 --out-dir "$OUT/rollouts"

# The two families train side by side, one per core.
stage hyperzero.py --rollouts "$OUT/rollouts" --model hyperzero --test-contexts $HELDOUT --steps 2000 --seed 1 \
  --out-dir "$OUT/hyperzero" &
(
  stage hyperzero.py --rollouts "$OUT/rollouts" --model mlp --test-contexts $HELDOUT --steps 2000 --seed 1 --out-dir "$OUT/mlp"
  stage hyplatent.py --data "$OUT/rollouts" --test-contexts $HELDOUT --seed 1 --out-dir "$OUT/hyplatent"
  stage hypformer.py --hyplatent "$OUT/hyplatent" --seed 1 --out-dir "$OUT/hypformer"
)
wait
POLICIES="$OUT/hyperzero $OUT/mlp $OUT/hyplatent $OUT/hypformer"
if [ $META = 1 ]; then
  stage meta.py --rollouts "$OUT/rollouts" --model maml --test-contexts $HELDOUT --steps 2000 --seed 1 --out-dir "$OUT/maml" &
  stage meta.py --rollouts "$OUT/rollouts" --model pearl --test-contexts $HELDOUT --steps 2000 --seed 1 --out-dir "$OUT/pearl"
  wait
  POLICIES="$POLICIES $OUT/maml $OUT/pearl"
fi
stage evaluate.py --experts "$OUT/experts" --policies $POLICIES --episodes 3 --samples 4 --seed 1 --out-dir "$OUT/eval"
echo "quickstart done in $(( $(date +%s) - T0 )) s: table above, plots in $OUT/eval (returns.png, normalized.png)"
