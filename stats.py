"""stats.py — the normalised score and its intervals over runs and contexts (evaluate.py's table, the suites' tables
and benchmarks/loss_budget.py).

normalize writes (R - random) / (reference - random) into evaluate.py's rows; summarize aggregates each method over
its runs and the contexts of a split with the mean and the interquartile mean (IQM), each with a 95 % stratified
bootstrap interval (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"): bootstrap_ci.

rliable (Agarwal et al.'s library) is not a dependency: its 1.2.0 release fails to import with the pandas 3 that pip
resolves today (arch 7.2's deprecate_kwarg raises a TypeError) and it pulls in pandas, scipy, statsmodels, arch and
seaborn for these few lines. They match its get_interval_estimates to 3 decimals with task_bootstrap False and True
(tests/test_evaluate.py cross-checks where rliable imports).
"""

from __future__ import annotations

import numpy as np


def iqm(scores: np.ndarray, axis=None) -> np.ndarray:
    """Interquartile mean (Agarwal et al. 2021): mean of the sorted scores with int(n/4) cut from each end, as
    scipy.stats.trim_mean(x, 0.25) and rliable's aggregate_iqm compute it. axis=None pools everything; axis=-1
    reduces the last axis (one IQM per bootstrap replicate)."""
    x = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1) if axis is None else np.asarray(scores, np.float64), axis=-1)
    n = x.shape[-1]
    cut = int(0.25 * n)
    return x[..., cut : n - cut].mean(-1)


def bootstrap_ci(scores, reps: int = 2000, size: float = 0.95, seed: int = 0, resample_tasks: bool = True) -> dict:
    """scores [R runs, T tasks] -> mean and IQM with percentile bootstrap intervals.

    Stratified bootstrap (Agarwal et al. 2021, rliable's StratifiedBootstrap): each replicate draws R runs with
    replacement independently within every task; with resample_tasks the T tasks (here: held-out contexts) are
    drawn with replacement too (rliable's task_bootstrap=True), so the interval also covers which contexts were
    held out. A single run and a single task give a zero-width interval: nothing was resampled."""
    s = np.asarray(scores, dtype=np.float64)
    R, T = s.shape
    g = np.random.default_rng(seed)
    cols = g.integers(0, T, (reps, 1, T)) if resample_tasks else np.broadcast_to(np.arange(T), (reps, 1, T))
    boot = s[g.integers(0, R, (reps, R, T)), cols].reshape(reps, R * T)  # [reps, R*T]
    q = [50 * (1 - size), 50 * (1 + size)]
    return {
        "mean": float(s.mean()),
        "mean_ci": [float(v) for v in np.percentile(boot.mean(1), q)],
        "iqm": float(iqm(s)),
        "iqm_ci": [float(v) for v in np.percentile(iqm(boot, axis=-1), q)],
        "runs": R,
        "tasks": T,
    }


def score_matrix(rows: list[dict], key: str) -> tuple[np.ndarray, bool] | None:
    """The rows of one method and split -> (scores [R runs, T contexts], False), the strata of bootstrap_ci. Where the
    runs hold out different contexts (seeded --test-fraction splits) there is no such matrix: then each run's mean
    over its own contexts, [R, 1], and True. None where no row has the score."""
    cell = {(r.get("run"), r.get("label")): r[key] for r in rows if r.get(key) is not None}
    if not cell:
        return None
    runs, labels = list(dict.fromkeys(u for u, _ in cell)), list(dict.fromkeys(c for _, c in cell))
    if len(cell) == len(runs) * len(labels):
        return np.array([[cell[u, c] for c in labels] for u in runs]), False
    return np.array([[np.mean([v for (u, _), v in cell.items() if u == run])] for run in runs]), True


def normalize(rows: list[dict], reference: dict | None = None) -> None:
    """Expert-normalised score, in place: (R - random) / (reference - random) in the same context, the reference being
    reference[label] (--reference best: the best expert's return there) or else the context's own expert's return, and
    written into each row; None where a context has neither, or reference and random tie."""
    ret = {(r["method"], r["label"]): r["return_mean"] for r in rows}
    for r in rows:
        hi = (reference or {}).get(r["label"], ret.get(("expert", r["label"])))
        if hi is None or ("random", r["label"]) not in ret:
            continue
        lo = ret[("random", r["label"])]
        r["reference_return"] = hi
        score = float((r["return_mean"] - lo) / (hi - lo)) if abs(hi - lo) > 1e-8 else None
        r["normalized"] = 0.0 if r["method"] == "random" else score


def top_k_success(per_policy: list[float], ks=(5, 10)) -> dict:
    """Make-An-Agent's top-k: the mean success rate of the k best generated policies, each policy's rate taken over
    all its episodes first. (The released code sorts the policy x episode successes and averages the top k, which
    rewards one lucky episode of a poor policy.)"""
    sr = sorted(per_policy, reverse=True)
    return {f"top{k}_success": float(np.mean(sr[:k])) for k in ks}


SPLITS = (("train", False), ("heldout", True), ("all", None))  # summary key prefix, the rows' heldout flag (None: any)


def summarize(rows: list[dict], reps: int = 2000, seed: int = 0, resample_contexts: bool = True) -> list[dict]:
    """Per method and split (train, heldout, all): how many runs and contexts, the mean return, and the mean and IQM
    of the normalised score and of the success rate (where the task has one) over runs and contexts, each with its
    95 % bootstrap interval (`{split}_normalized`, `_ci`, `_iqm`, `_iqm_ci`); `{split}_by_run` where the runs hold
    out different contexts and the interval is over the runs' means (score_matrix)."""
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        s = {"method": m}
        for name, flag in SPLITS:
            rs = [r for r in rows if r["method"] == m and (flag is None or r["heldout"] is flag)]
            s[f"{name}_runs"] = len({r.get("run") for r in rs})
            s[f"{name}_contexts"] = len({r.get("label") for r in rs})
            s[f"{name}_return"] = float(np.mean([r["return_mean"] for r in rs])) if rs else None
            s[f"{name}_by_run"] = False
            for key, metric in (("normalized", "normalized"), ("success_rate", "success")):
                got = score_matrix(rs, key)
                ci = bootstrap_ci(got[0], reps, seed=seed, resample_tasks=resample_contexts) if got else None
                s[f"{name}_{metric}"] = ci["mean"] if ci else None
                s[f"{name}_{metric}_ci"] = ci["mean_ci"] if ci else None
                s[f"{name}_{metric}_iqm"] = ci["iqm"] if ci else None
                s[f"{name}_{metric}_iqm_ci"] = ci["iqm_ci"] if ci else None
                s[f"{name}_by_run"] |= bool(got and got[1])
            for k in ("top5_success", "top10_success"):  # generated MetaWorld policies only
                top = [r[k] for r in rs if k in r]
                s[f"{name}_{k}"] = float(np.mean(top)) if top else None
        out.append(s)
    return out


def format_table(summary: list[dict]) -> str:
    """The summary as markdown: one row per method and split (training and held-out contexts; all contexts where
    nothing was held out) with the mean and IQM and their 95 % intervals; MetaWorld adds a table of success."""
    f = lambda x, p=".2f": "-" if x is None else format(x, p)  # noqa: E731
    ci = lambda s, key: "-" if s[key] is None else f"{s[key]:.2f} [{s[key + '_ci'][0]:.2f}, {s[key + '_ci'][1]:.2f}]"  # noqa: E731
    splits = [(n, t) for n, t in (("train", "train"), ("heldout", "held out")) if any(s[f"{n}_contexts"] for s in summary)]
    splits = splits or [("all", "all")]
    tables = [("normalized", "normalised score", "return")]
    if any(s["all_success"] is not None for s in summary):
        tables.append(("success", "success", "top-5 success (all) | top-10 success (all)"))
    lines = []
    for metric, title, last in tables:
        lines += ["", f"| method | split | runs | contexts | {title}: mean [95% CI] | IQM [95% CI] | {last} |"]
        lines.append("|---" * (7 + last.count("|")) + "|")
        for s in summary:
            for n, t in ((n, t) for n, t in splits if s[f"{n}_contexts"]):
                extra = (
                    f(s[f"{n}_return"], ".1f")
                    if metric == "normalized"
                    else f"{f(s['all_top5_success'])} | {f(s['all_top10_success'])}"
                )
                t += " *" if s[f"{n}_by_run"] else ""
                lines.append(
                    f"| {s['method']} | {t} | {s[f'{n}_runs']} | {s[f'{n}_contexts']} | {ci(s, f'{n}_{metric}')} | "
                    f"{ci(s, f'{n}_{metric}_iqm')} | {extra} |"
                )
    if any(s[f"{n}_by_run"] for s in summary for n, _ in splits):
        lines.append("* the runs hold out different contexts: the interval is over each run's mean")
    return "\n".join(lines[1:])
