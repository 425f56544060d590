"""benchmarks/loss_budget.py — where Gen-HypRL loses return: every stage of the chain scored as a policy source.

On the goals of one Gen-HypRL run (hyplatent.py runs of several seeds, their hypformer.py runs, the experts and the
rollouts they were trained on), each row is a source of policies, rolled out with evaluate.py's seeds and scored:
Cheetah-Vel by the normalised return (0 random, 1 the best expert on that goal), MetaWorld by success (as the paper):

  (a) data            the behaviour policies themselves (the snapshots collect.py stored), every one of them
  (a) best snapshot   the best of a goal's snapshots on that goal (an upper bound the data contain)
  (b) reconstruction  each snapshot through the parameter autoencoder of the run (encode, clamp, decode)
  (c) hyplatent       --samples generated policies per goal, conditioned on the goal
  (d) hypformer       the same through HypFormer
  spread              the policies' diversity: per-parameter std over a goal's policies, averaged (a generator that
                      collapses to one mode has a spread far below its data's)
  nearest expert      on a held-out goal: the expert of the closest training goal, zero-shot; on an unseen MetaWorld
                      task the seen expert whose demonstration the run's behaviour embedding puts closest to the task's

(a) is measured once; (b)-(d) per run (and MetaWorld's nearest expert, whose embedding is the run's), so their
intervals are over runs and goals (95 % stratified bootstrap, stats.bootstrap_ci). MetaWorld's generators are
conditioned on each task's expert demonstration, as in evaluate.py, so every task needs its expert in --experts. The
quickstart's files, 3 seeds:

    python benchmarks/loss_budget.py --experts runs/quickstart/experts runs/quickstart/experts_heldout \
        --hyplatent runs/quickstart/hyplatent_s{1,2,3} --hypformer runs/quickstart/hypformer_s{1,2,3} \
        --heldout 0.75 1.25 1.75 2.25 --out runs/quickstart/loss_budget.json

MetaWorld (suite/genhyprl.sh's files; one episode: a deterministic policy's MetaWorld episodes are identical):

    python benchmarks/loss_budget.py --experts $(bash suite/genhyprl.sh --experts) --episodes 1 --snapshots 20 \
        --hyplatent runs/genhyprl/hyplatent_s{1,2,3} --hypformer runs/genhyprl/hypformer_s{1,2,3} \
        --heldout $(bash suite/genhyprl.sh --list | sed -n 's/^unseen|//p') --out runs/genhyprl/loss_budget.json
"""

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import collect  # noqa: E402
import evaluate  # noqa: E402
import hypformer  # noqa: E402
import hyplatent  # noqa: E402
import policy  # noqa: E402
import runio  # noqa: E402
import stats  # noqa: E402
import tasks  # noqa: E402


@dataclass
class Args:
    experts: tuple[str, ...] = ("runs/quickstart/experts",)
    """td3.py expert directories or files: the normaliser (best expert per goal), the nearest-expert row, the demos"""
    hyplatent: tuple[str, ...] = ()
    """hyplatent.py run directories (one per seed); the first one's data directory is the data"""
    hypformer: tuple[str, ...] = ()
    """hypformer.py run directories (one per seed)"""
    heldout: tuple[str, ...] = ()
    """held-out goals (MetaWorld: unseen tasks) to score (c), (d) and the nearest expert on"""
    episodes: int = 3
    """episodes per policy and goal (evaluate.py's seeds: seed + e)"""
    samples: int = 4
    """generated policies per goal and run"""
    snapshots: int = 0
    """score this many of each goal's snapshots for (a) and (b), evenly spaced over training (0: all)"""
    seed: int = 1
    out: str = ""
    """write the rows and the table as JSON here (optional)"""


def results(task, ctx, layers, args) -> list[dict]:
    """evaluate_policy of each policy of a batch (layers with K policies) on ctx."""
    return policy.evaluate_each(task, ctx, layers, args.episodes, args.seed)


def main(args: Args) -> dict:
    runio.check_flags(args, positive=("episodes", "samples"), nonnegative=("seed", "snapshots"))
    if not args.hyplatent:
        raise runio.UserError("give --hyplatent runs (one per seed)")
    t0 = time.time()
    experts = policy.load_experts(list(args.experts))
    by_label = {e["label"]: e for e in experts}
    runs = [hyplatent.load_checkpoint(d) for d in args.hyplatent]
    formers = [hypformer.load_checkpoint(d) for d in args.hypformer]
    task, behaviour = runs[0]["task"], runs[0]["condition"] == "behaviour"
    data = collect.load_behaviour(runs[0]["data_dir"])
    train = runs[0]["split"]["train"]  # the goals the generators trained on (the data may hold its --test-contexts too)
    if behaviour:  # a MetaWorld task's context (its goal seed) is its expert's, whose demonstration conditions it
        names = [tasks.context_label(c) for c in tasks.parse_contexts(task, args.heldout, args.seed)]
        if lack := [n for n in [tasks.context_label(c) for c in train] + names if n not in by_label]:
            raise runio.UserError(
                f"no expert of {', '.join(lack)} in --experts: each task's demonstration conditions the generators"
            )
        held = [by_label[n]["context"] for n in names]
    else:
        held = tasks.parse_contexts(task, args.heldout, args.seed)
    goals = train + held
    labels = [tasks.context_label(c) for c in goals]
    if twice := sorted(set(labels[: len(train)]) & set(labels[len(train) :])):
        raise runio.UserError(f"--heldout {', '.join(twice)}: a goal the generators trained on; give held-out goals only")
    in_data = [tasks.context_label(c) for c in data["contexts"]]
    sizes = data["policy_sizes"]
    demo = evaluate.demo_conditions(task, goals, by_label, args.seed, "cpu") if behaviour else None  # [G, traj_dim]

    # the score of a result: MetaWorld's success; else (R - random) / (best expert - random), all on the same seeds
    if behaviour:
        score = lambda lab, r: r["success_rate"]  # noqa: E731
    else:
        on = {
            (e["label"], lab): policy.evaluate_policy(task, c, policy.expert_layers(e), args.episodes, args.seed)
            for e in experts
            for c, lab in zip(goals, labels)
        }
        best = {lab: max(on[e["label"], lab]["return_mean"] for e in experts) for lab in labels}
        rand = {
            lab: policy.evaluate_policy(task, c, None, args.episodes, args.seed)["return_mean"] for c, lab in zip(goals, labels)
        }
        score = lambda lab, r: (r["return_mean"] - rand[lab]) / (best[lab] - rand[lab])  # noqa: E731

    models = [hyplatent.build_models(ck) for ck in runs]  # per run: its autoencoder, generator and embedding
    rows = []  # {source, split, run, label, score (mean over the source's policies), best (the best of them)}

    def add(src, split, run, lab, rs, layers=None, **extra):
        got = [score(lab, r) for r in rs]
        rows.append({"source": src, "split": split, "run": run, "label": lab, "score": float(np.mean(got))} | extra)
        rows[-1]["best"] = float(max(got))
        if layers is not None and len(rs) > 1:  # diversity: per-parameter std over the goal's policies, averaged
            rows[-1]["spread"] = float(policy.flatten_layers(layers).std(0).mean())  # (mode collapse: far below data's)

    for ctx, lab in zip(train, labels):
        snaps = data["params"][data["context_id"] == in_data.index(lab)]  # [N, P] this goal's behaviour policies
        snaps = snaps[collect.evenly_spaced(len(snaps), args.snapshots)]  # evenly spaced over training
        data_layers = policy.unflatten_layers(snaps, sizes)
        add("(a) data", "train", None, lab, results(task, ctx, data_layers, args), data_layers)
        rows.append(
            {k: v for k, v in rows[-1].items() if k != "spread"} | {"source": "(a) best snapshot", "score": rows[-1]["best"]}
        )
        for j, (ck, m) in enumerate(zip(runs, models)):
            with torch.no_grad():
                z = m["ae"].encode(hyplatent.normalize(snaps, ck["param_norm"])).clamp(-1, 1)
                rec = hyplatent.unnormalize(m["ae"].decode(z), ck["param_norm"])
            rec_layers = policy.unflatten_layers(rec, sizes)
            add("(b) reconstruction", "train", j, lab, results(task, ctx, rec_layers, args), rec_layers)
        print(f"{lab}: data and reconstructions scored ({time.time() - t0:.0f} s)", flush=True)
    for split, at in (("train", range(len(train))), ("held out", range(len(train), len(goals)))):
        ctxs, cond = [goals[i] for i in at], demo[list(at)] if behaviour else None
        for name, module, cks in (("(c) hyplatent", hyplatent, runs), ("(d) hypformer", hypformer, formers)):
            for j, ck in enumerate(cks):
                layers = module.generate_policies(ck, ctxs, n=args.samples, seed=args.seed, conditions=cond)
                for i, ctx in enumerate(ctxs):
                    mine = policy.pick(layers, i, args.samples)
                    add(name, split, j, tasks.context_label(ctx), results(task, ctx, mine, args), mine)
    if behaviour:  # the seen expert nearest in the run's behaviour embedding (its normalised condition space)
        for j, (ck, m) in enumerate(zip(runs, models)):
            for i, k in enumerate(evaluate.nearest_seen(ck, m, demo[: len(train)], demo[len(train) :])):
                r = results(task, held[i], policy.expert_layers(by_label[labels[k]]), args)
                add("nearest expert", "held out", j, labels[len(train) + i], r, expert=labels[k])
    else:  # the expert of the nearest training goal, zero-shot (ties: their mean)
        pool = [e for e in experts if e["label"] in set(labels[: len(train)])]
        for ctx in held:
            near, lab = policy.nearest_experts(task, ctx, pool), tasks.context_label(ctx)
            mean = float(np.mean([on[n, lab]["return_mean"] for n in near]))
            add("nearest expert", "held out", None, lab, [{"return_mean": mean}], expert=" ".join(near))

    # the table: mean over runs and goals, 95 % stratified bootstrap over runs within goals and goals
    table = []
    for src in dict.fromkeys(r["source"] for r in rows):
        for split in ("train", "held out"):
            rs = [r for r in rows if r["source"] == src and r["split"] == split]
            if rs:
                cells = [{"method": src, "run": r["run"], "label": r["label"], "normalized": r["score"]} for r in rs]
                ci = stats.bootstrap_ci(stats.score_matrix(cells, "normalized")[0], seed=args.seed)
                n_runs, n_goals = len({r["run"] for r in rs}), len({r["label"] for r in rs})
                spread = [r["spread"] for r in rs if "spread" in r]
                table.append({"source": src, "split": split, "runs": n_runs, "goals": n_goals} | ci)
                table[-1]["spread"] = float(np.mean(spread)) if spread else None
    what = "success" if behaviour else "normalised score"
    print(f"\n| source | split | runs | goals | {what}: mean [95% CI] | spread |\n|---|---|---|---|---|---|")
    for t in table:
        (lo, hi), sp = t["mean_ci"], "-" if t["spread"] is None else f"{t['spread']:.3f}"
        print(f"| {t['source']} | {t['split']} | {t['runs']} | {t['goals']} | {t['mean']:.2f} [{lo:.2f}, {hi:.2f}] | {sp} |")
    ref = "success over" if behaviour else "score 1: the best expert on the goal,"
    print(f"({time.time() - t0:.0f} s; {ref} {args.episodes} episodes per policy)")
    if args.out:
        runio.atomic_save(json.dumps({"args": vars(args), "rows": rows, "table": table}, indent=1), args.out)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    runio.cli(main, Args)
