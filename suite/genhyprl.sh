#!/usr/bin/env bash
# Gen-HypRL on MetaWorld, the paper's split (Reddy, Kalwar et al., Generative Policy Parameters with Hypernetworks):
# HypLatent and HypFormer train on 8 seen tasks and reach 8 unseen ones only through each task's demonstration.
#
#   bash suite/genhyprl.sh experts seen     td3.py experts of the 8 seen tasks, one batched run (K=8), checkpointed:
#   bash suite/genhyprl.sh experts unseen   run it again to resume (--resume, bit-exact); a larger STEPS extends it
#   bash suite/genhyprl.sh experts retry I/N   the tasks whose expert failed (RETRY), again: another seed, LayerNorm
#                                           critics, RETRY_STEPS; shard I of N (one core each); its experts replace those
#   bash suite/genhyprl.sh generators       rollouts, HypLatent + HypFormer x SEEDS, evaluate.py on all 16 tasks
#   bash suite/genhyprl.sh --list           prints seen|<tasks> and unseen|<tasks>
#   bash suite/genhyprl.sh --experts        prints the expert file of each task that the generators stage uses
#                                           (unseen tasks not trained here: the committed experts/metaworld ones)
#
#   OUT=runs/genhyprl   everything goes here: OUT/{experts_seen,experts_unseen,experts_retry_I,rollouts,<model>_s<seed>,eval}
#   STEPS=100000        expert steps per task;  SEEDS="1 2 3" generator seeds;  SAMPLES=20 generated policies per task
#   THREADS=1           torch threads per stage: the two expert runs side by side take one core each
#   RETRY=<tasks>       default: the tasks whose expert in experts_seen/unseen has deterministic success < 0.8
#   RETRY_STEPS=400000  RETRY_SEED=2
# The expert recipe (docs/results_experts.md, "MetaWorld experts"): hidden 64, SAC's entropy-regularised actor (--sac), snapshots every 2000
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
failed() { $PY -c "import sys, policy; print(*[e['label'] for e in policy.load_experts(sys.argv[1:]) if e['eval_success'] < 0.8])" "$@"; }
# One expert run into $1, its contexts and seed in the other arguments; resumed (bit-exact) where it has a checkpoint.
train() { d=$1; shift; again=--overwrite; [ -f "$d/checkpoint.pt" ] && again=--resume
  stage td3.py --task metaworld "$@" --learning-starts 5000 $RECIPE --checkpoint-interval 20000 --log-interval 5000 \
    --out-dir "$d" $again; }
# The expert file of each of the 16 tasks: a retry's where one was trained, else the first run's; an unseen task, which
# gives the generators no data, only its demonstration, falls back to the committed expert (experts/metaworld).
experts() { for t in $SEEN $UNSEEN; do
  c=""; [[ " $UNSEEN " == *" $t "* ]] && c=experts/metaworld/expert_$t.pt
  for f in "$OUT"/experts_retry_*/expert_$t.pt "$OUT"/experts_{seen,unseen}/expert_$t.pt $c ""; do [ -f "$f" ] && break; done
  [ -n "$f" ] || { echo "no expert of $t in $OUT/experts_{seen,unseen,retry_*}: run the experts stages first" >&2; exit 2; }
  echo "$f"; done; }

case "${1:-} ${2:-}" in
  "--list ") echo "seen|$SEEN"; echo "unseen|$UNSEEN" ;;
  "experts seen" | "experts unseen")
    tasks=$([ "$2" = seen ] && echo "$SEEN" || echo "$UNSEEN")
    train "$OUT/experts_$2" --contexts $tasks --total-timesteps "$STEPS" --seed 1 ;;
  "experts retry")  # bash suite/genhyprl.sh experts retry 0/2 (and 1/2 beside it)
    shard=${3:-0/1}
    if [ -z "${RETRY:-}" ] && ! ls "$OUT"/experts_seen/expert_*.pt "$OUT"/experts_unseen/expert_*.pt > /dev/null 2>&1; then
      echo "experts retry: no expert files in $OUT/experts_seen and $OUT/experts_unseen; run 'experts seen' and 'experts unseen' first (or name the tasks in RETRY)" >&2
      exit 2
    fi
    retry=${RETRY:-$(failed "$OUT/experts_seen" "$OUT/experts_unseen")}
    [ -n "$retry" ] || { echo "experts retry: every expert succeeds; nothing to retry"; exit 0; }
    train "$OUT/experts_retry_${shard%/*}" --contexts $retry --shard "$shard" --total-timesteps "${RETRY_STEPS:-400000}" \
      --seed "${RETRY_SEED:-2}" --layer-norm ;;
  "generators ")
    t0=$(date +%s)
    ex=$(experts)
    stage collect.py --experts $ex --episodes 1 --seed 1 --out-dir "$OUT/rollouts" --overwrite
    pol=""
    for s in $SEEDS; do  # behaviour condition = each task's demonstration; the unseen tasks are held out of training
      stage hyplatent.py --data "$OUT/rollouts" --test-contexts $UNSEEN --seed $s --out-dir "$OUT/hyplatent_s$s" --overwrite
      stage hypformer.py --hyplatent "$OUT/hyplatent_s$s" --seed $s --out-dir "$OUT/hypformer_s$s" --overwrite
      pol="$pol $OUT/hyplatent_s$s $OUT/hypformer_s$s"
    done
    stage evaluate.py --experts $ex --policies $pol --episodes 1 --samples "$SAMPLES" \
      --adapt-transitions 0 --seed 1 --out-dir "$OUT/eval" --overwrite
    echo "generators done in $(( $(date +%s) - t0 )) s: $OUT/eval" ;;
  "--experts ") experts ;;
  *) echo "usage: bash suite/genhyprl.sh experts seen|unseen|retry [I/N], or bash suite/genhyprl.sh generators (got '$*')" >&2; exit 2 ;;
esac
