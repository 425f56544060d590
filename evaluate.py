"""evaluate.py — roll out experts, a random policy and every generated policy on any contexts.

    python evaluate.py --experts runs/vel/experts --policies runs/vel/hyperzero runs/vel/hypformer \
        --contexts 0.5 1.0 1.5 --episodes 5 --seed 1 --out-dir runs/vel/eval

Every policy source (hyperzero.py, meta.py, hyplatent.py, hypformer.py) offers the same functions:
load_checkpoint(path) and generate_policies(ckpt, contexts, n, seed, device, conditions), which returns td3.py's
policy form (layers batched over contexts, context-major: n per context for the generative sources, one for the
deterministic ones), and adapt_policies where the method adapts few-shot (meta.py). Every policy is rolled out
through td3.evaluate_policy with the same seeds, so all methods start from the same initial states in a context.
Writes results.json / results.csv (one row per method and context), returns.png (return against
context, expert drawn, held-out contexts marked), normalized.png (mean expert-normalised score on
training and held-out contexts per method), success.png (MetaWorld: success per task and method); with
--capture-video one GIF per (method, context).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if "--capture-video" in sys.argv:  # MuJoCo picks its GL backend when first imported (osmesa on CPU, egl on GPU)
    os.environ.setdefault("MUJOCO_GL", "egl" if os.path.exists("/dev/nvidia0") else "osmesa")

import numpy as np
import torch

import collect
import hyperzero
import hypformer
import hyplatent
import meta
import tasks
import td3
from tasks import UserError

SOURCES = {m.FORMAT: m for m in (hyperzero, meta, hyplatent, hypformer)}  # checkpoint format -> the module reading it
CHECKPOINTS = ("hyperzero.pt", "meta.pt", "hyplatent.pt", "hypformer.pt")


@dataclass
class Args:
    experts: str | None = None
    """directory of td3.py experts (the 'expert' rows, the normaliser, and the contexts by default)"""
    policies: tuple[str, ...] = ()
    """directories (or .pt files) written by hyperzero.py, meta.py, hyplatent.py or hypformer.py"""
    contexts: tuple[str, ...] = ()
    """contexts to evaluate (as td3.py's --contexts); default: the experts' and every approximator split's"""
    episodes: int = 5
    """episodes per policy and context"""
    samples: int = 4
    """generated policies per context for the generative methods (hyplatent, hypformer)"""
    adapt_transitions: int = 200
    """maml, pearl: also evaluate them adapted on this many expert transitions of each context (rows '<method>-adapted'; NOT zero-shot)"""
    adapt_steps: int = -1
    """maml: inner SGD steps of that adaptation (-1: the checkpoint's --inner-steps); pearl infers z and takes none"""
    seed: int = 1
    """episode e of every method in a context resets with seed + e; also seeds the generators"""
    out_dir: str = "runs/eval"
    """results.json, results.csv, the plots and videos go here"""
    capture_video: bool = False
    """write one GIF per (method, context) to out_dir/videos (needs libosmesa6 on CPU)"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default, one per core: fastest for one run alone; give 1 to each of several
    runs sharing the cores)"""


def load_source(path: str) -> tuple[dict, object]:
    """A policy directory or file -> (checkpoint, the module that generates its policies), by the file's format."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.pt")) if p.is_dir() else []
    files = [f for f in files if f.name in CHECKPOINTS] or files
    if len(files) != 1:
        raise UserError(f"{path}: expected one of {', '.join(CHECKPOINTS)} (found {[f.name for f in files]})")
    fmt = td3.safe_load(files[0]).get("format", "")
    if fmt not in SOURCES:
        raise UserError(
            f"{files[0]}: unknown format '{fmt}'; expected a file written by hyperzero.py, meta.py, hyplatent.py or hypformer.py"
        )
    return SOURCES[fmt].load_checkpoint(files[0]), SOURCES[fmt]


def save_video(task, ctx, layers, seed, path):
    import imageio.v2 as imageio

    ep = td3.rollout(tasks.make_env(task, ctx, seed, render_mode="rgb_array"), layers, seed, render=True)
    frames = [f[::-1] for f in ep["frames"]] if task == "metaworld" else ep["frames"]  # MetaWorld's camera is upside down
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames[::2], duration=0.04)


def plot(rows: list[dict], task: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in rows))
    numeric = task != "metaworld" and len(rows[0]["context"]) == 1
    xs = {
        lab: (next(iter(r["context"].values())) if numeric else i)
        for i, lab in enumerate(labels)
        for r in rows
        if r["label"] == lab
    }
    held = sorted({xs[r["label"]] for r in rows if r["heldout"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    for x in held:
        ax.axvspan(x - 0.04, x + 0.04, color="0.85", zorder=0)
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: xs[r["label"]])
        style = (
            {"color": "k", "lw": 2.5, "zorder": 3}
            if method == "expert"
            else {"ls": ":", "color": "0.5"}
            if method == "random"
            else {}
        )
        ax.errorbar(
            [xs[r["label"]] for r in rs],
            [r["return_mean"] for r in rs],
            [r["return_std"] for r in rs],
            marker="o",
            ms=4,
            capsize=2,
            label=method,
            **style,
        )
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_xlabel(next(iter(rows[0]["context"])) if numeric else "context")
    ax.set_ylabel("episode return")
    ax.set_title(f"{task}: return per context (grey bands: held-out contexts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "returns.png", dpi=120)
    plt.close(fig)

    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("expert", "random")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, (split, flag) in enumerate((("training contexts", False), ("held-out contexts", True))):
        vals = [
            np.mean(
                [r["normalized"] for r in rows if r["method"] == m and r["heldout"] is flag and r["normalized"] is not None]
                or [np.nan]
            )
            for m in methods
        ]
        ax.bar(np.arange(len(methods)) + 0.4 * j - 0.2, vals, 0.4, label=split)
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("normalised score (0 random, 1 expert)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "normalized.png", dpi=120)
    plt.close(fig)
    if task != "metaworld":
        return ["returns.png", "normalized.png"]

    # MetaWorld: success per task and method (the normalised return means little where random beats the expert)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(labels)), 3.8))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        by = {r["label"]: r["success_rate"] for r in rows if r["method"] == m}
        ax.bar(
            np.arange(len(labels)) + width * (j - (len(methods) - 1) / 2), [by.get(lab, np.nan) for lab in labels], width, label=m
        )
    ax.set_xticks(
        range(len(labels)), [lab + (" (held out)" if xs[lab] in held else "") for lab in labels], rotation=30, ha="right"
    )
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=len(methods))
    fig.tight_layout()
    fig.savefig(out / "success.png", dpi=120)
    plt.close(fig)
    return ["returns.png", "normalized.png", "success.png"]


def demo_conditions(task, contexts, by_label, seed, device) -> torch.Tensor:
    """Behaviour-conditioned generators (MetaWorld) are conditioned on one demonstration of the task: the
    Make-An-Agent trajectory feature of its expert's deterministic episode. So a task needs its expert."""
    feats = []
    for ctx in contexts:
        lab = tasks.context_label(ctx)
        if lab not in by_label:
            raise UserError(f"context {lab}: a behaviour-conditioned generator needs that task's expert (its demo) in --experts")
        ep = collect.rollout(tasks.make_env(task, ctx, seed), td3.expert_layers(by_label[lab], device=device), seed, device)
        feats.append(collect.behaviour_features(ep["states"], ep["actions"], ep["success_step"])[0])
    return torch.as_tensor(np.stack(feats))


def expert_transitions(task, expert, n, seed, device) -> dict:
    """The first n transitions of the context's expert, rolled out deterministically with reset seeds seed + 50_000 + e,
    apart from the evaluation episodes' seed + e: the few-shot data of maml-adapted / pearl-adapted."""
    env, layers, eps = tasks.make_env(task, expert["context"], seed), td3.expert_layers(expert, device=device), []
    while sum(len(ep["actions"]) for ep in eps) < n:
        eps.append(td3.rollout(env, layers, seed + 50_000 + len(eps)))
    cat = lambda key, sl=slice(None): np.concatenate([ep[key][sl] for ep in eps])[:n]  # noqa: E731
    return {
        "obs": cat("states", slice(None, -1)),
        "action": cat("actions"),
        "reward": cat("rewards"),
        "next_obs": cat("states", slice(1, None)),
    }


def evaluate_policies(task, ctx, layers, episodes: int, seed: int) -> tuple[dict, dict]:
    """Every policy in layers (td3 form, K = the policies of one context) rolled out with the same seeds: the returns
    pooled; on MetaWorld the success rate per policy first, then its mean and top-k over the policies."""
    per = [
        td3.evaluate_policy(task, ctx, [(W[j : j + 1], b[j : j + 1]) for W, b in layers], episodes, seed)
        for j in range(len(layers[0][0]))
    ]
    rets = [x for r in per for x in r["returns"]]
    res = {"return_mean": float(np.mean(rets)), "return_std": float(np.std(rets)), "success_rate": None}
    if task != "metaworld":
        return res, {}
    per_policy = [r["success_rate"] for r in per]
    res["success_rate"] = float(np.mean(per_policy))
    return res, top_k_success(per_policy)


def write_results(rows: list[dict], task: str, args: Args, out: Path) -> tuple[list[dict], list[str]]:
    """results.json, results.csv, the plots and summary.json (the summary table printed): (summary, plot files)."""
    out.mkdir(parents=True, exist_ok=True)
    td3.atomic_save(json.dumps(rows, indent=1), out / "results.json")
    buf = io.StringIO()
    flat = [{**r, "context": json.dumps(r["context"])} for r in rows]
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
    w.writeheader()
    w.writerows(flat)
    td3.atomic_save(buf.getvalue(), out / "results.csv")
    plots = plot(rows, task, out)
    summary = summarize(rows)
    print("\n" + format_table(summary))
    td3.atomic_save(json.dumps({"args": asdict(args), "summary": summary}, indent=1), out / "summary.json")
    return summary, plots


def main(args: Args) -> dict:
    torch.manual_seed(args.seed)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    device = td3.resolve_device(args.device)
    if args.adapt_transitions < 1:
        raise UserError(f"--adapt-transitions must be >= 1, got {args.adapt_transitions}")
    experts = td3.load_experts(args.experts) if args.experts else []
    sources = [load_source(p) for p in args.policies]  # (checkpoint, module)
    if not experts and not sources:
        raise UserError("nothing to evaluate: give --experts and/or --policies")
    task_names = {e["task"] for e in experts} | {ck["task"] for ck, _ in sources}
    if len(task_names) != 1:
        raise UserError(f"experts and policies come from different tasks: {sorted(task_names)}")
    task = task_names.pop()
    dims = {(e["obs_dim"], e["act_dim"]) for e in experts} | {(ck["obs_dim"], ck["act_dim"]) for ck, _ in sources}
    if len(dims) != 1:
        raise UserError(f"observation/action sizes differ between experts and policies: {sorted(dims)}")
    by_label = {e["label"]: e for e in experts}
    if args.contexts:
        contexts = tasks.parse_contexts(task, args.contexts, args.seed)
    else:  # every context anybody knows of, in a stable order
        pool = [e["context"] for e in experts] + [c for ck, _ in sources for part in ("train", "test") for c in ck["split"][part]]
        contexts = list({tasks.context_label(c): c for c in pool}.values())
    labels = [tasks.context_label(c) for c in contexts]
    out = Path(args.out_dir)

    rows, t0 = [], time.time()
    # a context is held out for the expert and random rows when no approximator trained on it
    trained = {tasks.context_label(c) for ck, _ in sources for c in ck["split"]["train"]}
    heldout_of = lambda lab: (lab not in trained) if sources else None  # noqa: E731

    def add(method, ctx, res, heldout, n_policies=1, extra=None):
        rows.append(
            {
                "method": method,
                "task": task,
                "context": ctx,
                "label": tasks.context_label(ctx),
                "heldout": heldout,
                "episodes": args.episodes,
                "n_policies": n_policies,
                "return_mean": res["return_mean"],
                "return_std": res["return_std"],
                "success_rate": res["success_rate"],
                "normalized": None,
                **(extra or {}),
            }
        )
        sr = f"  success {res['success_rate']:.2f}" if res["success_rate"] is not None else ""
        print(
            f"{method:>18} {rows[-1]['label']:>22}{' (held out)' if heldout else '':11}: return {res['return_mean']:9.2f} +- {res['return_std']:.2f}{sr}",
            flush=True,
        )

    for ctx, lab in zip(contexts, labels):
        add("random", ctx, td3.evaluate_policy(task, ctx, None, args.episodes, args.seed), heldout_of(lab))  # the 0 of the score
        if lab in by_label:
            e = by_label[lab]
            layers = td3.expert_layers(e, device=device)
            add(
                "expert", e["context"], td3.evaluate_policy(task, e["context"], layers, args.episodes, args.seed), heldout_of(lab)
            )

    names: dict[str, int] = {}
    for ck, mod in sources:
        method = ck.get("model", mod.__name__)
        names[method] = names.get(method, 0) + 1
        method = method if names[method] == 1 else f"{method}-{names[method]}"
        train = {tasks.context_label(c) for c in ck["split"]["train"]}
        # zero-shot: --samples policies per context from a generative source, one from a deterministic source;
        # a behaviour-conditioned generator (MetaWorld) is conditioned on the task's expert demonstration
        conditions = demo_conditions(task, contexts, by_label, args.seed, device) if ck.get("condition") == "behaviour" else None
        layers = mod.generate_policies(ck, contexts, n=args.samples, seed=args.seed, device=device, conditions=conditions)
        n = len(layers[0][0]) // len(contexts)  # context-major: context i owns policies i*n : (i+1)*n
        for i, (ctx, lab) in enumerate(zip(contexts, labels)):
            own = [(W[i * n : (i + 1) * n], b[i * n : (i + 1) * n]) for W, b in layers]
            res, extra = evaluate_policies(task, ctx, own, args.episodes, args.seed)
            add(method, ctx, res, lab not in train, n, extra)
            if args.capture_video:
                save_video(task, ctx, [(W[:1], b[:1]) for W, b in own], args.seed, out / "videos" / f"{method}_{lab}.gif")
        if hasattr(mod, "adapt_policies"):  # few-shot rows (NOT zero-shot): adapted on the context's expert transitions
            for lab in (lab for lab in labels if lab not in by_label):
                print(f"{method + '-adapted':>18} {lab:>22}: skipped, no expert in --experts to draw adaptation transitions from")
            todo = [(ctx, lab) for ctx, lab in zip(contexts, labels) if lab in by_label]
            steps = mod.adapt_steps(ck, args.adapt_steps)
            trans = [expert_transitions(task, by_label[lab], args.adapt_transitions, args.seed, device) for _, lab in todo]
            adapted = mod.adapt_policies(ck, [ctx for ctx, _ in todo], trans, steps, device=device) if todo else []
            for i, (ctx, lab) in enumerate(todo):
                res = td3.evaluate_policy(task, ctx, [(W[i : i + 1], b[i : i + 1]) for W, b in adapted], args.episodes, args.seed)
                extra = {"adapt_transitions": args.adapt_transitions, "adapt_steps": steps}
                add(f"{method}-adapted", ctx, res, lab not in train, extra=extra)

    normalize(rows)
    if args.capture_video:
        for e in experts:
            if e["label"] in labels:
                layers = td3.expert_layers(e, device=device)
                save_video(task, e["context"], layers, args.seed, out / "videos" / f"expert_{e['label']}.gif")
    summary, plots = write_results(rows, task, args, out)
    print(f"\nwrote results.json, results.csv, summary.json, {', '.join(plots)} to {out}  ({time.time() - t0:.0f} s)")
    return {"rows": rows, "summary": summary, "out_dir": str(out)}


def normalize(rows: list[dict]) -> None:
    """Expert-normalised score, in place: (R - random) / (expert - random) in the same context; None
    where the context has no expert or expert and random tie."""
    ref = {(r["method"], r["label"]): r["return_mean"] for r in rows}
    for r in rows:
        if ("expert", r["label"]) in ref and r["method"] != "random":
            lo, hi = ref[("random", r["label"])], ref[("expert", r["label"])]
            r["normalized"] = float((r["return_mean"] - lo) / (hi - lo)) if abs(hi - lo) > 1e-8 else None
        elif r["method"] == "random" and ("expert", r["label"]) in ref:
            r["normalized"] = 0.0


def top_k_success(per_policy: list[float], ks=(5, 10)) -> dict:
    """Make-An-Agent's top-k: the mean success rate of the k best generated policies, each policy's rate taken over
    all its episodes first. (The released code sorts the policy x episode successes and averages the top k, which
    rewards one lucky episode of a poor policy.)"""
    sr = sorted(per_policy, reverse=True)
    return {f"top{k}_success": float(np.mean(sr[:k])) for k in ks}


def summarize(rows: list[dict]) -> list[dict]:
    """Per method: mean return and normalised score on training and held-out contexts."""
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        s = {"method": m}
        for name, flag in (("train", False), ("heldout", True), ("all", None)):
            rs = [r for r in rows if r["method"] == m and (flag is None or r["heldout"] is flag)]
            norm = [r["normalized"] for r in rs if r["normalized"] is not None]
            succ = [r["success_rate"] for r in rs if r["success_rate"] is not None]
            s[f"{name}_return"] = float(np.mean([r["return_mean"] for r in rs])) if rs else None
            s[f"{name}_normalized"] = float(np.mean(norm)) if norm else None
            s[f"{name}_success"] = float(np.mean(succ)) if succ else None
            for k in ("top5_success", "top10_success"):  # generated MetaWorld policies only
                top = [r[k] for r in rs if k in r]
                s[f"{name}_{k}"] = float(np.mean(top)) if top else None
        out.append(s)
    return out


def format_table(summary: list[dict]) -> str:
    f = lambda x, p=".1f": "-" if x is None else format(x, p)  # noqa: E731
    lines = [
        "| method | return (train) | return (held out) | normalised (train) | normalised (held out) |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {f(s['train_return'])} | {f(s['heldout_return'])} | {f(s['train_normalized'], '.2f')} | {f(s['heldout_normalized'], '.2f')} |"
        )
    if any(s["all_success"] is not None for s in summary):
        lines += ["", "| method | success (train) | success (held out) | top-5 success (all) | top-10 success (all) |"]
        lines += ["|---|---|---|---|---|"] + [
            f"| {s['method']} | {f(s['train_success'], '.2f')} | {f(s['heldout_success'], '.2f')} | "
            f"{f(s['all_top5_success'], '.2f')} | {f(s['all_top10_success'], '.2f')} |"
            for s in summary
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    tasks.cli(main, Args)
