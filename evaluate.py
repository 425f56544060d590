"""evaluate.py — roll out experts, a random policy and every generated policy on any contexts.

    python evaluate.py --experts runs/vel/experts --policies runs/vel/hyperzero runs/vel/hypformer \
        --contexts 0.5 1.0 1.5 --episodes 5 --seed 1 --out-dir runs/vel/eval

Every policy source (hyperzero.py, meta.py, hyplatent.py, hypformer.py) offers the same functions:
load_checkpoint(path) and generate_policies(ckpt, contexts, n, seed, device, conditions), which returns td3.py's
policy form (layers batched over contexts, context-major: n per context for the generative sources, one for the
deterministic ones), and adapt_policies where the method adapts few-shot (meta.py). Every policy is rolled out
through policy.evaluate_policy with the same seeds, so all methods start from the same initial states in a context.

Runs: --policies directories whose checkpoints name the same method are RUNS (seeds) of that method, e.g.
`--policies runs/vel/hyperzero_s{1,2,3}`. Each row carries `method` and `run` (the --policies entry; null for the
expert and random rows, measured once), so results.json keeps every run's numbers. summary.json and the printed
table aggregate each method over its runs and the contexts of a split (training / held out): the mean and the
interquartile mean (IQM) of the expert-normalised score (MetaWorld: also of the success rate) with 95 % stratified
bootstrap intervals (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"): stats.py.

Rows beside the methods: random (score 0), expert (the context's own), and nearest-expert: the expert of the closest
training context used zero-shot (ties: their mean), the yardstick a method must beat to show transfer (MetaWorld: per
HypLatent run, the seen expert whose demonstration the run's behaviour embedding puts closest to the unseen task's);
with --best-snapshot, best-snapshot: the best of an expert's snapshots on its context, the best policy the data hold.
Score 1 is the best return any expert achieves on the context (--reference best). Writes results.json / .csv (one row
per method, run and context), summary.json, returns.png, normalized.png, heatmap.png (two context variables varied),
success.png (MetaWorld), videos/ with --capture-video. Walk-through: docs/evaluate.md.
"""

from __future__ import annotations

import csv
import ctypes.util
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

if "--capture-video" in sys.argv:  # MuJoCo picks its GL backend when first imported (osmesa on CPU, egl on GPU)
    os.environ.setdefault("MUJOCO_GL", "egl" if os.path.exists("/dev/nvidia0") else "osmesa")
    if os.environ["MUJOCO_GL"] == "osmesa" and not ctypes.util.find_library("OSMesa"):  # else an AttributeError at import
        print(
            "error: --capture-video renders with OSMesa and libOSMesa is not installed (Debian: apt-get install libosmesa6)",
            file=sys.stderr,
        )
        sys.exit(2)

import numpy as np
import torch

import collect
import hyperzero
import hypformer
import hyplatent
import meta
import policy
import runio
import stats
import tasks
from runio import UserError

SOURCES = {m.FORMAT: m for m in (hyperzero, meta, hyplatent, hypformer)}  # checkpoint format -> the module reading it
CHECKPOINTS = ("hyperzero.pt", "meta.pt", "hyplatent.pt", "hypformer.pt")
OUTPUTS = ("results.json", "results.csv", "summary.json", "returns.png", "normalized.png", "heatmap.png", "success.png")
OUTPUTS += ("videos",)
# flags in which runs of one method may differ without a note (where and how they ran, not what they learned)
RUN_FLAGS = {"seed", "out_dir", "device", "torch_threads", "log_interval", "overwrite", "track", "wandb_project_name"}
RUN_FLAGS |= {"wandb_entity", "rollouts", "data", "hyplatent"}


@dataclass
class Args:
    experts: tuple[str, ...] = ()
    """directories (or files) of td3.py experts, several shards merged (the 'expert' rows, the normaliser, and the
    contexts by default)"""
    policies: tuple[str, ...] = ()
    """directories (or .pt files) written by hyperzero.py, meta.py, hyplatent.py or hypformer.py; several of one
    method are runs (seeds) of it, aggregated with intervals"""
    contexts: tuple[str, ...] = ()
    """contexts to evaluate (as td3.py's --contexts); default: the experts' and every approximator split's"""
    episodes: int = 5
    """episodes per policy and context"""
    reference: Literal["best", "own"] = "best"
    """what 'expert = 1' means in the normalised score: 'best', the best return that any expert of --experts achieves
    on the context (every expert rolled out on every context, on the same seeds), which a weak expert cannot game;
    'own', the context's own expert"""
    samples: int = 4
    """generated policies per context for the generative methods (hyplatent, hypformer)"""
    best_snapshot: int = 0
    """add a 'best-snapshot' row: this many evenly spaced snapshots of each expert (td3.py --snapshot-interval, the
    generators' data) on its own context, the best kept: the best policy those data hold (0: no such row)"""
    adapt_transitions: int = 200
    """maml, pearl: also evaluate them adapted on this many expert transitions of each context (rows '<method>-adapted';
    NOT zero-shot); 0: zero-shot rows only"""
    adapt_steps: int = -1
    """maml: inner SGD steps of that adaptation (-1: the checkpoint's --inner-steps); pearl infers z and takes none"""
    seed: int = 1
    """episode e of every method in a context resets with seed + e; also seeds the generators and the bootstrap"""
    bootstrap_reps: int = 2000
    """bootstrap replicates of the 95 % intervals"""
    resample_contexts: bool = True
    """the bootstrap resamples the contexts of a split too (they are a sample of the family: rliable's
    task_bootstrap); off: only the runs within each context are resampled"""
    out_dir: str = "runs/eval"
    """results.json, results.csv, the plots and videos go here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir (they are removed before this run starts)"""
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
    ckpt = runio.safe_load(files[0])
    fmt = ckpt.get("format", "") if isinstance(ckpt, dict) else None
    if fmt not in SOURCES:
        what = f"unknown format '{fmt}'" if isinstance(ckpt, dict) else f"holds a {type(ckpt).__name__}, not a checkpoint"
        raise UserError(f"{files[0]}: {what}; expected a file written by hyperzero.py, meta.py, hyplatent.py or hypformer.py")
    return SOURCES[fmt].load_checkpoint(files[0]), SOURCES[fmt]


def method_of(ckpt: dict, module) -> str:
    return ckpt.get("model", module.__name__)


def load_sources(paths) -> list[tuple[str, dict, object]]:
    """--policies -> (run, checkpoint, module) per entry; the run is the entry as given. Runs of one method that
    differ in more than where they ran and their seed get a printed note: they are still aggregated as runs."""
    seen: dict[Path, str] = {}
    for p in paths:
        if Path(p).resolve() in seen:
            raise UserError(f"--policies lists {p} twice (also as {seen[Path(p).resolve()]}): each entry is one run")
        seen[Path(p).resolve()] = p
    sources = [(p, *load_source(p)) for p in paths]
    first: dict[str, tuple[str, dict]] = {}
    for run, ck, mod in sources:
        method, flags = method_of(ck, mod), ck.get("args", {})
        run0, flags0 = first.setdefault(method, (run, flags))
        differ = sorted(k for k in set(flags) | set(flags0) if k not in RUN_FLAGS and flags.get(k) != flags0.get(k))
        if differ:
            print(f"note: runs {run0} and {run} of {method} differ in --{', --'.join(k.replace('_', '-') for k in differ)}")
    return sources


def save_video(task, ctx, layers, seed, path):
    import imageio.v2 as imageio

    ep = policy.rollout(tasks.make_env(task, ctx, seed, render_mode="rgb_array"), layers, seed, render=True)
    frames = [f[::-1] for f in ep["frames"]] if task == "metaworld" else ep["frames"]  # MetaWorld's camera is upside down
    buf = io.BytesIO()
    imageio.mimsave(buf, frames[::2], format="GIF", duration=0.04)
    runio.atomic_save(buf.getvalue(), path)


def plot(rows: list[dict], task: str, out: Path, summary: list[dict] | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary if summary is not None else stats.summarize(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    var = varying(rows)  # cheetah-run contexts carry speed and length; plot against the one that varies
    numeric = task != "metaworld" and len(var) == 1
    xs = {lab: (r["context"][var[0]] if numeric else i) for i, lab in enumerate(labels) for r in rows if r["label"] == lab}
    held = sorted({xs[r["label"]] for r in rows if r["heldout"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.02 * (max(xs.values()) - min(xs.values())) if numeric and len(xs) > 1 else 0.3  # half-width of a band
    for x in held:
        ax.axvspan(x - w, x + w, color="0.85", zorder=0)
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        at = sorted({xs[r["label"]] for r in rs})
        style = {"expert": {"color": "k", "lw": 2.5, "zorder": 3}, "random": {"ls": ":", "color": "0.5"}}.get(method, {})
        style = {"color": "k", "ls": "--", "lw": 1.2} if method == "nearest-expert" else style
        runs = len({r.get("run") for r in rs})
        if runs == 1:  # one run: its mean return and the spread over episodes
            by = {xs[r["label"]]: r for r in rs}
            y, err, label = [by[x]["return_mean"] for x in at], [by[x]["return_std"] for x in at], method
        else:  # several runs: the mean over runs and their min-max
            per = [[r["return_mean"] for r in rs if xs[r["label"]] == x] for x in at]
            y = [float(np.mean(v)) for v in per]
            err = [[m - min(v) for m, v in zip(y, per)], [max(v) - m for m, v in zip(y, per)]]
            label = f"{method} ({runs} runs: mean, min-max)"
        ax.errorbar(at, y, err, marker="o", ms=4, capsize=2, label=label, **style)
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_xlabel(var[0] if numeric else "context")
    ax.set_ylabel("episode return")
    ax.set_title(f"{task}: return per context (grey bands: held-out contexts)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    runio.save_figure(fig, out / "returns.png", dpi=120)

    # the mean normalised score over runs and contexts with its 95 % bootstrap interval
    shown = [s for s in summary if s["method"] not in ("expert", "random")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, (split, name) in enumerate((("training contexts", "train"), ("held-out contexts", "heldout"))):
        mean = np.array([np.nan if s[f"{name}_normalized"] is None else s[f"{name}_normalized"] for s in shown])
        ci = np.array([s[f"{name}_normalized_ci"] or [np.nan, np.nan] for s in shown]).reshape(-1, 2)
        err = np.abs(ci.T - mean)  # [2, methods]: below, above
        ax.bar(np.arange(len(shown)) + 0.4 * j - 0.2, mean, 0.4, yerr=err, capsize=3, label=split)
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xticks(range(len(shown)), [s["method"] for s in shown], rotation=20, ha="right")
    ax.set_ylabel("normalised score (0 random, 1 reference)")
    ax.set_title("mean over runs and contexts, 95 % bootstrap interval", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    runio.save_figure(fig, out / "normalized.png", dpi=120)
    if task != "metaworld":
        return ["returns.png", "normalized.png"] + (["heatmap.png"] if heatmap(rows, var, out) else [])

    # MetaWorld: success per task and method (the normalised return means little where random beats the expert)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(labels)), 3.8))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        rs = [r for r in rows if r["method"] == m and r["success_rate"] is not None]
        per = {lab: [r["success_rate"] for r in rs if r["label"] == lab] for lab in labels}
        mean = [np.mean(per[lab]) if per[lab] else np.nan for lab in labels]  # over runs
        ax.bar(np.arange(len(labels)) + width * (j - (len(methods) - 1) / 2), mean, width, label=m)
    names = [lab + (" (held out)" if xs[lab] in held else "") for lab in labels]
    ax.set_xticks(range(len(labels)), names, rotation=30, ha="right")
    ax.set_ylabel("success rate (mean over runs)")
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.legend(fontsize=8, ncol=len(methods))
    fig.tight_layout()
    runio.save_figure(fig, out / "success.png", dpi=120)
    return ["returns.png", "normalized.png", "success.png"]


def varying(rows: list[dict]) -> list[str]:
    """The context variables whose value differs between the rows, in the context's order (MetaWorld: none)."""
    names = list(rows[0]["context"])
    return [n for n in names if len({r["context"].get(n) for r in rows}) > 1]


def score_grid(rows: list[dict], var: list[str]):
    """The rows of one method -> (x values, y values, grid [len(y), len(x)] of the normalised score averaged over
    runs, NaN where no row; {(i, j)} of the held-out cells)."""
    gx, gy = (sorted({r["context"][v] for r in rows}) for v in var)
    grid, held = np.full((len(gy), len(gx)), np.nan), set()
    for j, y in enumerate(gy):
        for i, x in enumerate(gx):
            cell = [r for r in rows if r["context"][var[0]] == x and r["context"][var[1]] == y]
            grid[j, i] = np.mean([r["normalized"] for r in cell]) if cell else np.nan
            if any(r["heldout"] for r in cell):
                held.add((i, j))
    return gx, gy, grid, held


def heatmap(rows: list[dict], var: list[str], out: Path) -> bool:
    """Two varying context variables (cheetah-run speed + length): one panel per approximator, its normalised score
    (mean over runs) over the grid, held-out cells boxed. False (nothing written) for other families."""
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("expert", "random")]
    scored = [r for r in rows if r["method"] in methods and r["normalized"] is not None]
    if len(var) != 2 or not scored:
        return False
    import matplotlib.pyplot as plt

    cols = min(4, len(methods))
    rows_ = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(2.7 * cols + 1, 2.6 * rows_), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, methods):
        gx, gy, grid, held = score_grid([r for r in scored if r["method"] == m], var)
        im = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, j in held:  # the held-out contexts: a red box
            ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(gx)), [f"{x:g}" for x in gx])
        ax.set_yticks(range(len(gy)), [f"{y:g}" for y in gy])
        ax.set_xlabel(var[0])
        ax.set_ylabel(var[1])
        ax.set_title(m, fontsize=9)
    fig.colorbar(im, ax=axes.flat[: len(methods)], label="normalised score (red boxes: held out)", shrink=0.8)
    runio.save_figure(fig, out / "heatmap.png", dpi=120)
    return True


def demo_conditions(task, contexts, by_label, seed, device, cache: dict | None = None) -> torch.Tensor:
    """Behaviour-conditioned generators (MetaWorld) are conditioned on one demonstration of the task: the
    Make-An-Agent trajectory feature of its expert's deterministic episode. So a task needs its expert. cache
    (label -> feature) keeps each task's episode for the next call: the same expert and seed give the same one."""
    cache = {} if cache is None else cache
    for ctx in contexts:
        lab = tasks.context_label(ctx)
        if lab not in by_label:
            raise UserError(f"context {lab}: a behaviour-conditioned generator needs that task's expert (its demo) in --experts")
        if lab not in cache:
            layers = policy.expert_layers(by_label[lab], device=device)
            ep = collect.rollout(tasks.make_env(task, ctx, seed), layers, seed, device)
            cache[lab] = collect.behaviour_features(ep["states"], ep["actions"], ep["success_step"])[0]
    return torch.as_tensor(np.stack([cache[tasks.context_label(c)] for c in contexts]))


def nearest_seen(ckpt: dict, models: dict, seen_demo, demo) -> list[int]:
    """Per row of demo [K, traj_dim], the index of the seen task (rows of seen_demo [S, traj_dim]) whose demonstration
    this run's behaviour embedding puts closest (its normalised condition space): the seen expert that is the
    zero-shot yardstick of an unseen MetaWorld task."""
    c = hyplatent.conditions_of(ckpt, models, [None] * (len(seen_demo) + len(demo)), torch.cat([seen_demo, demo]))  # [S + K, c]
    return torch.cdist(c[len(seen_demo) :], c[: len(seen_demo)]).argmin(1).tolist()


def expert_transitions(task, expert, n, seed, device) -> dict:
    """The first n transitions of the context's expert, rolled out deterministically with reset seeds seed + 50_000 + e,
    apart from the evaluation episodes' seed + e: the few-shot data of maml-adapted / pearl-adapted."""
    env, layers, eps = tasks.make_env(task, expert["context"], seed), policy.expert_layers(expert, device=device), []
    while sum(len(ep["actions"]) for ep in eps) < n:
        eps.append(policy.rollout(env, layers, seed + 50_000 + len(eps)))
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
    per = policy.evaluate_each(task, ctx, layers, episodes, seed)
    rets = [x for r in per for x in r["returns"]]
    res = {"return_mean": float(np.mean(rets)), "return_std": float(np.std(rets)), "success_rate": None}
    if task != "metaworld":
        return res, {}
    per_policy = [r["success_rate"] for r in per]
    res["success_rate"] = float(np.mean(per_policy))
    return res, stats.top_k_success(per_policy)


def write_results(rows: list[dict], task: str, args: Args, out: Path) -> tuple[list[dict], list[str]]:
    """results.json, results.csv, summary.json and the plots (the summary table printed): (summary, plot files)."""
    runio.atomic_save(json.dumps(rows, indent=1), out / "results.json")
    buf = io.StringIO()
    flat = [{**r, "context": json.dumps(r["context"])} for r in rows]
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
    w.writeheader()
    w.writerows(flat)
    runio.atomic_save(buf.getvalue(), out / "results.csv")
    summary = stats.summarize(rows, args.bootstrap_reps, args.seed, args.resample_contexts)
    plots = plot(rows, task, out, summary)
    ref = "the best return of any expert on that context" if args.reference == "best" else "the context's own expert"
    print("\n" + stats.format_table(summary) + f"\n\nnormalised score: (R - random) / (reference - random); reference = {ref}")
    runio.atomic_save(json.dumps({"args": asdict(args), "summary": summary}, indent=1), out / "summary.json")
    return summary, plots


def main(args: Args) -> dict:
    # every flag and input file checked, and --out-dir prepared, before any rollout
    positive = ("episodes", "samples", "bootstrap_reps")
    runio.check_flags(args, positive, nonnegative=("seed", "torch_threads", "adapt_transitions", "best_snapshot"))
    if args.adapt_steps < -1:
        raise UserError(f"--adapt-steps must be >= 0, or -1 for the checkpoint's --inner-steps; got {args.adapt_steps}")
    torch.manual_seed(args.seed)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    device = runio.resolve_device(args.device)
    experts = policy.load_experts(list(args.experts)) if args.experts else []
    sources = load_sources(args.policies)  # (run, checkpoint, module)
    if not experts and not sources:
        raise UserError("nothing to evaluate: give --experts and/or --policies")
    for key in ("task", "obs_dim", "act_dim"):
        if len(found := {e[key] for e in experts} | {ck[key] for _, ck, _ in sources}) != 1:
            raise UserError(f"experts and policies differ in {key}: {sorted(found)}")
    task = experts[0]["task"] if experts else sources[0][1]["task"]
    by_label = {e["label"]: e for e in experts}
    if args.contexts:
        contexts = tasks.parse_contexts(task, args.contexts, args.seed)
    else:  # every context anybody knows of, in a stable order
        pool = [e["context"] for e in experts] + [
            c for _, ck, _ in sources for part in ("train", "test") for c in ck["split"][part]
        ]
        contexts = list({tasks.context_label(c): c for c in pool}.values())
    labels = [tasks.context_label(c) for c in contexts]
    snaps = collect.load_snapshots(experts, collect.expert_dirs(args.experts, experts)) if args.best_snapshot else None
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, overwrite=args.overwrite)

    rows, t0 = [], time.time()
    # a context is held out for the expert and random rows when no approximator trained on it
    trained = {tasks.context_label(c) for _, ck, _ in sources for c in ck["split"]["train"]}
    heldout_of = lambda lab: (lab not in trained) if sources else None  # noqa: E731

    def add(method, run, ctx, res, heldout, n_policies=1, extra=None):
        row = {"method": method, "run": run, "task": task, "context": ctx, "label": tasks.context_label(ctx), "heldout": heldout}
        row |= {"episodes": args.episodes, "n_policies": n_policies, "return_mean": res["return_mean"]}
        rows.append(
            row | {"return_std": res["return_std"], "success_rate": res["success_rate"], "normalized": None} | (extra or {})
        )
        sr = f"  success {res['success_rate']:.2f}" if res["success_rate"] is not None else ""
        ret = f"return {res['return_mean']:9.2f} +- {res['return_std']:.2f}{sr}"
        print(f"{method:>18} {row['label']:>22}{' (held out)' if heldout else '':11}: {ret}", flush=True)

    # every expert on every context, on the same seeds (on its own context: the expert row): the best-expert reference,
    # and the nearest-expert row, the yardstick of zero-shot transfer (the expert of the closest training context)
    cross = {}
    for e in experts:
        layers = policy.expert_layers(e, device=device)
        for ctx, lab in zip(contexts, labels):
            on = e["context"] if lab == e["label"] else ctx
            cross[e["label"], lab] = policy.evaluate_policy(task, on, layers, args.episodes, args.seed)
    best = {lab: max((v["return_mean"] for (_, c), v in cross.items() if c == lab), default=None) for lab in labels}
    for ctx, lab in zip(contexts, labels):
        add("random", None, ctx, policy.evaluate_policy(task, ctx, None, args.episodes, args.seed), heldout_of(lab))  # score 0
        if lab in by_label:
            add("expert", None, by_label[lab]["context"], cross[lab, lab], heldout_of(lab))
    pool = [e for e in experts if e["label"] in trained]
    for ctx, lab in zip(contexts, labels):
        if near := policy.nearest_experts(task, ctx, pool) if task != "metaworld" else []:
            res = {k: float(np.mean([cross[n, lab][k] for n in near])) for k in ("return_mean", "return_std")}
            add("nearest-expert", None, ctx, res | {"success_rate": None}, heldout_of(lab), extra={"neighbours": near})

    for e, (flat, steps) in zip(experts, snaps or []):
        if e["label"] in labels and len(flat):  # the best snapshot: success first (MetaWorld), then return
            at = collect.evenly_spaced(len(flat), args.best_snapshot)
            sizes = policy.layer_sizes(e["obs_dim"], e["hidden"], e["act_dim"])
            got = policy.evaluate_each(
                task, e["context"], policy.unflatten_layers(torch.from_numpy(flat[at]), sizes), args.episodes, args.seed
            )
            j = max(range(len(at)), key=lambda j: (got[j]["success_rate"] or 0, got[j]["return_mean"]))
            add("best-snapshot", None, e["context"], got[j], heldout_of(e["label"]), extra={"snapshot_step": steps[at[j]]})

    methods = [method_of(ck, mod) for _, ck, mod in sources]
    demos = {}  # label -> its expert demonstration's feature, rolled out once for every behaviour-conditioned run
    for j, (run, ck, mod) in enumerate(sources):
        method = methods[j]
        if args.capture_video:  # one GIF per method and context; runs numbered where a method has several
            prefix = method if methods.count(method) == 1 else f"{method}-run{methods[: j + 1].count(method)}"
        if len(sources) > 1:
            print(f"{method}: run {run}")
        train = {tasks.context_label(c) for c in ck["split"]["train"]}
        # zero-shot: --samples policies per context from a generative source, one from a deterministic source;
        # a behaviour-conditioned generator (MetaWorld) is conditioned on the task's expert demonstration
        behaviour = ck.get("condition") == "behaviour"
        conditions = demo_conditions(task, contexts, by_label, args.seed, device, demos) if behaviour else None
        layers = mod.generate_policies(ck, contexts, n=args.samples, seed=args.seed, device=device, conditions=conditions)
        if behaviour and mod is hyplatent and (seen := [c for c in ck["split"]["train"] if tasks.context_label(c) in by_label]):
            # MetaWorld's yardstick, one row per HypLatent run: the seen expert whose demonstration this run's
            # behaviour embedding puts closest to the unseen task's, zero-shot (its rollouts are in cross already)
            seen_demo = demo_conditions(task, seen, by_label, args.seed, device, demos)
            near = nearest_seen(ck, hyplatent.build_models(ck, device), seen_demo, conditions)
            for ctx, lab, k in zip(contexts, labels, near):
                if lab not in train:
                    got = tasks.context_label(seen[k])
                    add("nearest-expert", run, ctx, cross[got, lab], True, extra={"neighbours": [got]})
        n = len(layers[0][0]) // len(contexts)  # context-major: context i owns policies i*n : (i+1)*n
        for i, (ctx, lab) in enumerate(zip(contexts, labels)):
            own = policy.pick(layers, i, n)
            res, extra = evaluate_policies(task, ctx, own, args.episodes, args.seed)
            add(method, run, ctx, res, lab not in train, n, extra)
            if args.capture_video:
                save_video(task, ctx, [(W[:1], b[:1]) for W, b in own], args.seed, out / "videos" / f"{prefix}_{lab}.gif")
        # few-shot rows (NOT zero-shot): adapted on the context's expert transitions
        if hasattr(mod, "adapt_policies") and args.adapt_transitions:
            for lab in (lab for lab in labels if lab not in by_label):
                print(f"{method + '-adapted':>18} {lab:>22}: skipped, no expert in --experts to draw adaptation transitions from")
            todo = [(ctx, lab) for ctx, lab in zip(contexts, labels) if lab in by_label]
            steps = mod.adapt_steps(ck, args.adapt_steps)
            trans = [expert_transitions(task, by_label[lab], args.adapt_transitions, args.seed, device) for _, lab in todo]
            adapted = mod.adapt_policies(ck, [ctx for ctx, _ in todo], trans, steps, device=device) if todo else []
            for i, (ctx, lab) in enumerate(todo):
                own = policy.pick(adapted, i)
                res = policy.evaluate_policy(task, ctx, own, args.episodes, args.seed)
                extra = {"adapt_transitions": args.adapt_transitions, "adapt_steps": steps}
                add(f"{method}-adapted", run, ctx, res, lab not in train, extra=extra)

    stats.normalize(rows, best if args.reference == "best" else None)
    if args.capture_video:
        for e in experts:
            if e["label"] in labels:
                layers = policy.expert_layers(e, device=device)
                save_video(task, e["context"], layers, args.seed, out / "videos" / f"expert_{e['label']}.gif")
    summary, plots = write_results(rows, task, args, out)
    runio.finish_out_dir(out)
    print(f"\nwrote results.json, results.csv, summary.json, {', '.join(plots)} to {out}  ({time.time() - t0:.0f} s)")
    return {"rows": rows, "summary": summary, "out_dir": str(out)}


if __name__ == "__main__":
    runio.cli(main, Args)
