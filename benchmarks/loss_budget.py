"""benchmarks/loss_budget.py — where Gen-HypRL loses return: every stage of the chain scored as a policy source.

On the goals of one Cheetah-Vel run (hyplatent.py runs of several seeds, their hypformer.py runs, the experts and the
rollouts they were trained on), each row is a source of policies, rolled out with evaluate.py's seeds and scored by
its normalised score (0 random, 1 the best expert on that goal):

  (a) data            the behaviour policies themselves (the snapshots collect.py stored), every one of them
  (a) best snapshot   the best of a goal's snapshots on that goal (an upper bound the data contain)
  (b) reconstruction  each snapshot through the parameter autoencoder of the run (encode, clamp, decode)
  (c) hyplatent       --samples generated policies per goal, conditioned on the goal
  (d) hypformer       the same through HypFormer
  nearest expert      on a held-out goal: the expert of the closest training goal, zero-shot

(a) and the nearest expert are measured once; (b)-(d) per run, so their intervals are over runs and goals (95 %
stratified bootstrap, evaluate.bootstrap_ci). The quickstart's files, 3 seeds:

    python benchmarks/loss_budget.py --experts runs/quickstart/experts runs/quickstart/experts_heldout \
        --hyplatent runs/quickstart/hyplatent_s{1,2,3} --hypformer runs/quickstart/hypformer_s{1,2,3} \
        --heldout 0.75 1.25 1.75 2.25 --out runs/quickstart/loss_budget.json
"""

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402
import hypformer  # noqa: E402
import hyplatent  # noqa: E402
import policy  # noqa: E402
import runio  # noqa: E402
import tasks  # noqa: E402


@dataclass
class Args:
    experts: tuple[str, ...] = ("runs/quickstart/experts",)
    """td3.py expert directories: the normaliser (best expert per goal) and the nearest-expert row"""
    hyplatent: tuple[str, ...] = ()
    """hyplatent.py run directories (one per seed); the first one's data directory is the data"""
    hypformer: tuple[str, ...] = ()
    """hypformer.py run directories (one per seed)"""
    heldout: tuple[str, ...] = ()
    """held-out goals to score (c), (d) and the nearest expert on"""
    episodes: int = 3
    """episodes per policy and goal (evaluate.py's seeds: seed + e)"""
    samples: int = 4
    """generated policies per goal and run"""
    seed: int = 1
    out: str = ""
    """write the rows and the table as JSON here (optional)"""


def returns(task, ctx, layers, args) -> list[float]:
    """The mean return of each policy of a batch (layers with K policies) on ctx."""
    return [r["return_mean"] for r in policy.evaluate_each(task, ctx, layers, args.episodes, args.seed)]


def main(args: Args) -> dict:
    runio.check_flags(args, positive=("episodes", "samples"), nonnegative=("seed",))
    if not args.hyplatent:
        raise runio.UserError("give --hyplatent runs (one per seed)")
    t0 = time.time()
    experts = policy.load_experts(list(args.experts))
    runs = [hyplatent.load_checkpoint(d) for d in args.hyplatent]
    formers = [hypformer.load_checkpoint(d) for d in args.hypformer]
    task = runs[0]["task"]
    if runs[0]["condition"] != "context":
        raise runio.UserError("only runs conditioned on a numeric context (Cheetah-Vel) are budgeted here; MetaWorld is not yet")
    data = hyplatent.load_data(runs[0]["data_dir"])
    train = runs[0]["split"]["train"]  # the goals the generators trained on (the data may hold its --test-contexts too)
    held = tasks.parse_contexts(task, args.heldout, args.seed)
    goals = train + held
    labels = [tasks.context_label(c) for c in goals]
    if twice := sorted(set(labels[: len(train)]) & set(labels[len(train) :])):
        raise runio.UserError(f"--heldout {', '.join(twice)}: a goal the generators trained on; give held-out goals only")
    in_data = [tasks.context_label(c) for c in data["contexts"]]
    sizes = data["policy_sizes"]

    # the reference: the best expert on every goal, and random (score 0), on the same seeds
    on = {}
    for e in experts:
        layers = policy.expert_layers(e)
        for ctx, lab in zip(goals, labels):
            on[e["label"], lab] = policy.evaluate_policy(task, ctx, layers, args.episodes, args.seed)["return_mean"]
    best = {lab: max(on[e["label"], lab] for e in experts) for lab in labels}
    rand = {
        lab: policy.evaluate_policy(task, ctx, None, args.episodes, args.seed)["return_mean"] for ctx, lab in zip(goals, labels)
    }
    score = lambda lab, r: (r - rand[lab]) / (best[lab] - rand[lab])  # noqa: E731

    rows = []  # {source, split, run, label, score}
    add = lambda src, split, run, lab, rs: rows.append(  # noqa: E731
        {
            "source": src,
            "split": split,
            "run": run,
            "label": lab,
            "score": float(np.mean([score(lab, r) for r in rs])),
            "best": float(max(score(lab, r) for r in rs)),
        }
    )
    for ctx, lab in zip(train, labels):
        snaps = data["params"][data["context_id"] == in_data.index(lab)]  # [N, P] this goal's behaviour policies
        got = returns(task, ctx, policy.unflatten_layers(snaps, sizes), args)
        add("(a) data", "train", None, lab, got)
        rows.append(rows[-1] | {"source": "(a) best snapshot", "score": rows[-1]["best"]})
        for j, ck in enumerate(runs):
            models = hyplatent.build_models(ck)
            with torch.no_grad():
                z = models["ae"].encode(hyplatent.normalize(snaps, ck["param_norm"])).clamp(-1, 1)
                rec = hyplatent.unnormalize(models["ae"].decode(z), ck["param_norm"])
            add("(b) reconstruction", "train", j, lab, returns(task, ctx, policy.unflatten_layers(rec, sizes), args))
        print(f"{lab}: data and reconstructions scored ({time.time() - t0:.0f} s)", flush=True)
    for split, ctxs in (("train", train), ("held out", held)):
        for name, module, cks in (("(c) hyplatent", hyplatent, runs), ("(d) hypformer", hypformer, formers)):
            for j, ck in enumerate(cks):
                layers = module.generate_policies(ck, ctxs, n=args.samples, seed=args.seed)
                for i, ctx in enumerate(ctxs):
                    own = [
                        (W[i * args.samples : (i + 1) * args.samples], b[i * args.samples : (i + 1) * args.samples])
                        for W, b in layers
                    ]
                    add(name, split, j, tasks.context_label(ctx), returns(task, ctx, own, args))
    trained = {tasks.context_label(c) for c in train}
    pool = [e for e in experts if e["label"] in trained]
    for ctx in held:  # the expert of the nearest training goal, zero-shot (ties: their mean)
        near, lab = policy.nearest_experts(task, ctx, pool), tasks.context_label(ctx)
        add("nearest expert", "held out", None, lab, [float(np.mean([on[n, lab] for n in near]))])

    # the table: mean over runs and goals, 95 % stratified bootstrap over runs within goals and goals
    table = []
    for src in dict.fromkeys(r["source"] for r in rows):
        for split in ("train", "held out"):
            rs = [r for r in rows if r["source"] == src and r["split"] == split]
            if rs:
                m = evaluate.score_matrix(
                    [{"method": src, "run": r["run"], "label": r["label"], "normalized": r["score"]} for r in rs], "normalized"
                )
                ci = evaluate.bootstrap_ci(m[0], seed=args.seed)
                table.append(
                    {"source": src, "split": split, "runs": len({r["run"] for r in rs}), "goals": len({r["label"] for r in rs})}
                    | ci
                )
    print("\n| source | split | runs | goals | normalised score: mean [95% CI] |\n|---|---|---|---|---|")
    for t in table:
        print(
            f"| {t['source']} | {t['split']} | {t['runs']} | {t['goals']} | {t['mean']:.2f} [{t['mean_ci'][0]:.2f}, {t['mean_ci'][1]:.2f}] |"
        )
    print(f"({time.time() - t0:.0f} s; score 1: the best expert on the goal, {args.episodes} episodes per policy)")
    if args.out:
        runio.atomic_save(json.dumps({"args": vars(args), "rows": rows, "table": table}, indent=1), args.out)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    runio.cli(main, Args)
