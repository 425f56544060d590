#!/usr/bin/env bash
# Gen-HypRL on MetaWorld, the paper's split (Reddy, Kalwar et al., Generative Policy Parameters with Hypernetworks):
# HypLatent and HypFormer train on 8 seen tasks and reach 8 unseen ones only through each task's demonstration.
#
#   bash suite/genhyprl.sh experts seen     TD3 experts of the 8 seen tasks, one batched run (K=8), checkpointed:
#   bash suite/genhyprl.sh experts unseen   run it again to resume (--resume, bit-exact); a larger STEPS extends it
#   bash suite/genhyprl.sh generators       rollouts, HypLatent + HypFormer x SEEDS, evaluate.py on all 16 tasks
#   bash suite/genhyprl.sh --list           prints seen|<tasks> and unseen|<tasks>
#
#   OUT=runs/genhyprl   everything goes here: OUT/{experts_seen,experts_unseen,rollouts,<model>_s<seed>,eval}
#   STEPS=100000        expert steps per task;  SEEDS="1 2 3" generator seeds;  SAMPLES=20 generated policies per task
#   THREADS=1           torch threads per stage: the two expert runs side by side take one core each
# The expert recipe (README, "MetaWorld experts"): hidden 64, SAC's entropy-regularised actor (--sac), snapshots every 2000
# steps from 40k, the best deterministic evaluation kept (--keep-best). One deterministic episode per evaluation and
# per generated policy: MetaWorld fixes the goal by the seed, so a deterministic policy's episodes are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/genhyprl}
PY=${PYTHON:-python}
THREADS=${THREADS:-1}
STEPS=${STEPS:-100000}
SEEDS=${SEEDS:-1 2 3}
SAMPLES=${SAMPLES:-20}
SEEN="window-open-v3 door-open-v3 drawer-open-v3 dial-turn-v3 plate-slide-v3 button-press-v3 handle-press-v3 faucet-close-v3"
UNSEEN="drawer-close-v3 handle-press-side-v3 door-lock-v3 window-close-v3 reach-wall-v3 coffee-button-v3 button-press-wall-v3 faucet-open-v3"
RECIPE="--hidden 64 64 --sac --keep-best --eval-interval 10000 --eval-episodes 1 --snapshot-interval 2000 --snapshot-start 40000"
stage() { $PY "$@" --torch-threads "$THREADS"; }

case "${1:-} ${2:-}" in
  "--list ") echo "seen|$SEEN"; echo "unseen|$UNSEEN" ;;
  "experts seen" | "experts unseen")
    d=$OUT/experts_$2; tasks=$([ "$2" = seen ] && echo "$SEEN" || echo "$UNSEEN")
    again=--overwrite; [ -f "$d/checkpoint.pt" ] && again=--resume
    stage td3.py --task metaworld --contexts $tasks --total-timesteps "$STEPS" --learning-starts 5000 --seed 1 $RECIPE \
      --checkpoint-interval 20000 --log-interval 5000 --out-dir "$d" $again ;;
  "generators ")
    t0=$(date +%s)
    stage collect.py --experts "$OUT/experts_seen" "$OUT/experts_unseen" --episodes 1 --seed 1 --out-dir "$OUT/rollouts" --overwrite
    pol=""
    for s in $SEEDS; do  # behaviour condition = each task's demonstration; the unseen tasks are held out of training
      stage hyplatent.py --data "$OUT/rollouts" --test-contexts $UNSEEN --seed $s --out-dir "$OUT/hyplatent_s$s" --overwrite
      stage hypformer.py --hyplatent "$OUT/hyplatent_s$s" --seed $s --out-dir "$OUT/hypformer_s$s" --overwrite
      pol="$pol $OUT/hyplatent_s$s $OUT/hypformer_s$s"
    done
    stage evaluate.py --experts "$OUT/experts_seen" "$OUT/experts_unseen" --policies $pol --episodes 1 --samples "$SAMPLES" \
      --adapt-transitions 0 --seed 1 --out-dir "$OUT/eval" --overwrite
    echo "generators done in $(( $(date +%s) - t0 )) s: $OUT/eval" ;;
  *) echo "usage: bash suite/genhyprl.sh experts seen|unseen, or bash suite/genhyprl.sh generators (got '$*')" >&2; exit 2 ;;
esac
