#!/usr/bin/env bash
# CleanHyper quickstart: Cheetah-Vel end to end on a laptop CPU (about 10-15 minutes on 2 cores).
#   TD3 experts for 7 target velocities (trained together) -> rollouts and snapshot behaviour data
#   -> HyperZero and the context-conditioned MLP, HypLatent and HypFormer, trained with goals 1.0 and 2.0 held out
#   -> every method rolled out on all 7 goals: results table, returns.png, normalized.png.
# Usage: bash quickstart.sh [OUT_DIR]   (default runs/quickstart; PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:-runs/quickstart}
PY=${PYTHON:-python}
GOALS="0 0.5 1 1.5 2 2.5 3"
HELDOUT="1 2"

$PY td3.py --task cheetah-vel --contexts $GOALS --total-timesteps 30000 --learning-starts 2000 --learning-rate 1e-3 \
  --hidden 64 64 --eval-interval 10000 --eval-episodes 3 --snapshot-interval 500 --snapshot-start 15000 \
  --log-interval 5000 --seed 1 --out-dir "$OUT/experts"
$PY collect.py --experts "$OUT/experts" --episodes 5 --seed 1 --out-dir "$OUT/rollouts"
for model in hyperzero mlp; do
  $PY hyperzero.py --rollouts "$OUT/rollouts" --model $model --test-contexts $HELDOUT --steps 2000 --seed 1 \
    --out-dir "$OUT/$model"
done
$PY hyplatent.py --data "$OUT/rollouts" --test-contexts $HELDOUT --seed 1 --out-dir "$OUT/hyplatent"
$PY hypformer.py --hyplatent "$OUT/hyplatent" --seed 1 --out-dir "$OUT/hypformer"
$PY evaluate.py --experts "$OUT/experts" --policies "$OUT/hyperzero" "$OUT/mlp" "$OUT/hyplatent" "$OUT/hypformer" \
  --episodes 3 --samples 4 --seed 1 --out-dir "$OUT/eval"
echo "quickstart done: table above, plots in $OUT/eval (returns.png, normalized.png)"
