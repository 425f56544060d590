#!/usr/bin/env bash
# The HyperZero benchmark at CPU scale (Rezaei-Shoshtari et al., AAAI 2023): five context families, their TD3 experts,
# rollouts, 7 approximators x 3 seeds on a fixed split, and evaluate.py's table with 95 % bootstrap intervals.
#
#   bash suite/hyperzero.sh [FAMILY ...]      default: all five, one after another
#   OUT=runs/suite  where everything goes: OUT/FAMILY/{experts,rollouts,<model>_s<seed>,eval}
#   THREADS=1       torch threads per stage (0: torch's default); run two families side by side on 2 cores, e.g.
#                   bash suite/hyperzero.sh cheetah-speed cheetah-length walker-length &
#                   bash suite/hyperzero.sh cheetah-both walker-speed; wait; python suite/table.py
#   SEEDS="1 2 3"   approximator seeds;  FIT=3000  approximator gradient steps (MAML: a third of them)
#   INIT_FROM=FILE  every expert of the family starts as this expert file (td3.py --init-from: one shared start, the
#                   quickstart's fix for uneven experts); its own steps come on top of the family's
#   SPLIT=hard      HyPoGen's harder split instead (about 80 % held out: trained on the ends of each range, and the
#                   middle of cheetah-speed / the centre of cheetah-both), into OUT/FAMILY/hard/; experts and rollouts shared
#   bash suite/hyperzero.sh --list   prints each family as name|task|expert steps|contexts|held-out contexts
# Re-running is safe: an expert run that stopped is resumed (--resume, bit-exact), finished experts are kept, every
# later stage is redone (--overwrite). Families (docs/hyperzero_benchmark.md has the split and what differs from the
# paper):
#   cheetah-speed   cheetah-run, target speed 0.5 ... 9.5 (13), length 0.5;    held out: speed 2, 5, 8
#   cheetah-length  cheetah-run, torso half-length 0.30 ... 0.70 (9), speed 10; held out: length 0.40, 0.60
#   cheetah-both    cheetah-run, speed 1 ... 5 x length 0.3 ... 0.7 (25);      held out: an X of 5 inner cells
#   walker-speed    walker-walk, target speed 0.5 ... 5 (10), length 0.2;      held out: speed 1.5, 3, 4.5
#   walker-length   walker-walk, torso half-length 0.10 ... 0.40 (7), speed 1; held out: length 0.2, 0.3
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/suite}
PY=${PYTHON:-python}
THREADS=${THREADS:-1}
SEEDS=${SEEDS:-1 2 3}
FIT=${FIT:-3000}
SPLIT=${SPLIT:-paper}
die() { echo "error: $*" >&2; exit 2; }  # every setting is checked here, before any stage starts (exit 2, as the stages)
case $SPLIT in paper | hard) ;; *) die "SPLIT=$SPLIT; valid: paper, hard" ;; esac
[[ $FIT =~ ^[1-9][0-9]*$ ]] || die "FIT=$FIT must be a positive integer (approximator gradient steps)"
[[ $THREADS =~ ^[0-9]+$ ]] || die "THREADS=$THREADS must be an integer >= 0 (torch threads per stage)"
[ -z "${INIT_FROM:-}" ] || [ -f "$INIT_FROM" ] || die "INIT_FROM=$INIT_FROM: no such file; give one expert file (expert_<label>.pt)"
[ -n "$SEEDS" ] || die "SEEDS is empty; give approximator seeds, e.g. SEEDS=\"1 2 3\""
for s in $SEEDS; do [[ $s =~ ^[0-9]+$ ]] || die "SEEDS=\"$SEEDS\": '$s' is not a seed (an integer >= 0)"; done
stage() { $PY "$@" --torch-threads "$THREADS"; }
seq_ctx() { $PY -c "import sys; a, b, d = map(float, sys.argv[1:4]); print(*[f'{sys.argv[4]}{a + i * d:g}{sys.argv[5]}' for i in range(round((b - a) / d) + 1)])" "$@"; }

family() {  # name -> TASK STEPS CONTEXTS HELD (the paper's split) TRAIN_HARD (the contexts the hard split trains on)
  case $1 in
    cheetah-speed) TASK=cheetah-run STEPS=160000 CONTEXTS=$(seq_ctx 0.5 9.5 0.75 "" "") HELD="2 5 8" TRAIN_HARD="0.5 5 9.5" ;;
    cheetah-length) TASK=cheetah-run STEPS=160000 CONTEXTS=$(seq_ctx 0.3 0.7 0.05 speed=10,length= "")
      HELD="speed=10,length=0.4 speed=10,length=0.6" TRAIN_HARD="speed=10,length=0.3 speed=10,length=0.7" ;;
    cheetah-both) TASK=cheetah-run STEPS=100000
      CONTEXTS=$(for s in 1 2 3 4 5; do seq_ctx 0.3 0.7 0.1 speed=$s,length= ""; done | tr '\n' ' ')
      HELD="speed=2,length=0.4 speed=2,length=0.6 speed=3,length=0.5 speed=4,length=0.4 speed=4,length=0.6"
      TRAIN_HARD="speed=1,length=0.3 speed=1,length=0.7 speed=3,length=0.5 speed=5,length=0.3 speed=5,length=0.7" ;;
    walker-speed) TASK=walker-walk STEPS=100000 CONTEXTS=$(seq_ctx 0.5 5 0.5 "" "") HELD="1.5 3 4.5" TRAIN_HARD="0.5 5" ;;
    walker-length) TASK=walker-walk STEPS=150000 CONTEXTS=$(seq_ctx 0.1 0.4 0.05 length= "") HELD="length=0.2 length=0.3"
      TRAIN_HARD="length=0.1 length=0.4" ;;
    *) echo "unknown family '$1'; valid: cheetah-speed cheetah-length cheetah-both walker-speed walker-length" >&2; exit 2 ;;
  esac
  if [ "$SPLIT" = hard ]; then  # every context but TRAIN_HARD held out
    HELD=$(for c in $CONTEXTS; do [[ " $TRAIN_HARD " == *" $c "* ]] || echo -n "$c "; done)
  fi
}

run_family() {
  family "$1"
  local d=$OUT/$1 t0; t0=$(date +%s)
  local a=$d  # where the approximators and the evaluation go: OUT/FAMILY, or OUT/FAMILY/hard for the hard split
  [ "$SPLIT" = hard ] && a=$d/hard
  echo "== $1: $TASK, $(wc -w <<<"$CONTEXTS") contexts, held out: $HELD"
  # 1. experts: one batched td3.py run of every context (hidden 64), checkpointed; resumed where it stopped
  local steps_done
  steps_done=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['total_timesteps'])" "$d/experts/args.json" 2>/dev/null || echo 0)
  if [ "$steps_done" != "$STEPS" ]; then
    local again=""; [ -f "$d/experts/checkpoint.pt" ] && again=--resume
    stage td3.py --task $TASK --contexts $CONTEXTS --total-timesteps $STEPS --learning-starts 5000 --hidden 64 64 \
      ${INIT_FROM:+--init-from "$INIT_FROM"} \
      --eval-interval 20000 --eval-episodes 2 --checkpoint-interval 10000 --log-interval 5000 --seed 1 \
      --out-dir "$d/experts" $again
  fi
  # 2. 5 deterministic episodes of every expert: the regression data
  [ "$a" != "$d" ] && [ -f "$d/rollouts/manifest.json" ] ||  # the hard split reuses the paper split's rollouts
    stage collect.py --experts "$d/experts" --episodes 5 --no-snapshots --seed 1 --out-dir "$d/rollouts" --overwrite
  # 3. the approximators, all on the same split (fixed held-out contexts, so every seed is scored on the same ones);
  #    embedding and generated hidden layer 64 (the paper: 256), FIT steps of 512 rows (MAML: FIT/3 outer steps)
  local net="--embed-dim 64 --policy-hidden 64" pol=""
  for s in $SEEDS; do
    for m in hyperzero hyperzero-no-td hyperzero-no-q mlp mlp-q-td; do
      stage hyperzero.py --rollouts "$d/rollouts" --model $m --test-contexts $HELD --steps $FIT $net --seed $s \
        --log-interval 1000 --out-dir "$a/${m}_s$s" --overwrite
      pol="$pol $a/${m}_s$s"
    done
    for m in maml pearl; do
      stage meta.py --rollouts "$d/rollouts" --model $m --test-contexts $HELD --steps $([ $m = maml ] && echo $((FIT / 3)) || echo $FIT) \
        $net --seed $s --log-interval 1000 --out-dir "$a/${m}_s$s" --overwrite
      pol="$pol $a/${m}_s$s"
    done
  done
  # 4. every method on every context (zero-shot: --adapt-transitions 0), 5 episodes; the table: held-out rows
  stage evaluate.py --experts "$d/experts" --policies $pol --episodes 5 --adapt-transitions 0 --seed 1 \
    --out-dir "$a/eval" --overwrite
  echo "== $1 done in $(( $(date +%s) - t0 )) s: $a/eval"
}

ALL="cheetah-speed cheetah-length cheetah-both walker-speed walker-length"
if [ "${1:-}" = --list ]; then
  for name in $ALL; do family $name; echo "$name|$TASK|$STEPS|$CONTEXTS|$HELD"; done
  exit 0
fi
for name in "$@"; do family "$name"; done  # an unknown family stops here, before any work
for name in ${@:-$ALL}; do run_family "$name"; done
