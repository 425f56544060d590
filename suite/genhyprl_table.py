"""suite/genhyprl_table.py — Gen-HypRL's MetaWorld table from suite/genhyprl.sh's evaluation, beside the paper's.

    python suite/genhyprl_table.py --eval runs/genhyprl/eval

Reads EVAL/results.json (evaluate.py) and prints (and writes to EVAL/genhyprl_table.md):
  1. per task: seen or unseen, the expert's success, each generator's success (mean over generator seeds of the
     mean over its generated policies);
  2. per generator and split (seen = the tasks it trained on, unseen = held out, reached through the demonstration):
     the mean success over generator seeds and tasks with its 95 % stratified-bootstrap interval (evaluate.py), and the
     top-5 / top-10 success (mean of the k best generated policies per task), on the tasks whose expert succeeds and,
     reported separately, on those whose expert fails (there the data hold no successful policy to learn from);
     the paper's figures beside them (Gen-HypRL, Tables 2: 100 SAC experts' policies per task, 1M steps);
  3. the yardstick no Gen-HypRL paper reports, on the unseen tasks: the nearest-expert row (evaluate.py: per HypLatent
     run, the seen expert whose demonstration its behaviour embedding puts closest, used zero-shot). A generator is
     said to transfer only where its interval lies above that row's.
Only the generators an evaluation holds are printed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: the stages are one level up

import runio  # noqa: E402
import stats  # noqa: E402
from runio import UserError  # noqa: E402

GENERATORS = ("hyplatent", "hypformer")
NEAREST = "nearest-expert"  # evaluate.py's zero-shot yardstick, on unseen tasks only
# The paper's Table 2 (% success, 100 generated policies per task): without HypFormer (HypLatent alone) and with it
PAPER = {
    "hyplatent": {"seen": (51.0, 100.0, 100.0), "unseen": (12.13, 75.1, 54.38)},  # mean, top-5, top-10
    "hypformer": {"seen": (70.3, 100.0, 100.0), "unseen": (19.8, 87.5, 80.63)},
}


@dataclass
class Args:
    eval: str = "runs/genhyprl/eval"
    """the evaluate.py output directory of suite/genhyprl.sh (its results.json)"""
    expert_success: float = 0.8
    """an expert 'succeeds' on a task when its success rate is at least this (the issue's bar)"""


def load_rows(d: Path) -> list[dict]:
    f = d / "results.json"
    if not f.is_file():
        raise UserError(f"no evaluation at {d}: {f} is missing (run bash suite/genhyprl.sh generators first)")
    try:
        rows = json.loads(f.read_text())
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r and "label" in r for r in rows):
        raise UserError(f"cannot read {f}: not a results.json written by evaluate.py")
    if not any(r["method"] in GENERATORS for r in rows) or not any(r["method"] == "expert" for r in rows):
        raise UserError(f"{f} has no expert or no hyplatent / hypformer rows: not a suite/genhyprl.sh evaluation")
    need = ("success_rate", "top5_success", "top10_success", "heldout")
    if any(r.get(k) is None for r in rows if r["method"] in GENERATORS for k in need):
        raise UserError(f"{f} has no success rates: not a MetaWorld evaluation (this table reads suite/genhyprl.sh's)")
    return rows


def cell(rows: list[dict], method: str, labels: set[str]) -> str:
    """mean success [95 % CI] | top-5 | top-10 of one generator over the given tasks, in %; '-' where none."""
    rs = [r for r in rows if r["method"] == method and r["label"] in labels]
    got = stats.score_matrix(rs, "success_rate")
    if not got:
        return "- | - | -"
    ci = stats.bootstrap_ci(got[0])
    top = [f"{100 * np.mean([r.get(k, r['success_rate']) for r in rs]):.1f}" for k in ("top5_success", "top10_success")]
    return f"{100 * ci['mean']:.1f} [{100 * ci['mean_ci'][0]:.1f}, {100 * ci['mean_ci'][1]:.1f}] | {top[0]} | {top[1]}"


def main(args: Args) -> str:
    runio.check_flags(args, fraction=("expert_success",))
    d = Path(args.eval)
    rows = load_rows(d)
    expert = {r["label"]: r["success_rate"] or 0.0 for r in rows if r["method"] == "expert"}
    unseen = {r["label"] for r in rows if r["method"] in GENERATORS and r["heldout"]}
    ok = {lab for lab, s in expert.items() if s >= args.expert_success}
    gens = [m for m in GENERATORS if any(r["method"] == m for r in rows)]  # those this evaluation holds
    cols = gens + ([NEAREST] if any(r["method"] == NEAREST for r in rows) else [])
    got = lambda m, lab: [r["success_rate"] for r in rows if r["method"] == m and r["label"] == lab]  # noqa: E731
    lines = ["| task | split | expert | " + " | ".join(cols) + " |", "|---" * (3 + len(cols)) + "|"]
    for lab in sorted(expert, key=lambda x: (x in unseen, x)):
        gen = " | ".join(f"{np.mean(got(m, lab)):.2f}" if got(m, lab) else "-" for m in cols)
        lines.append(f"| `{lab}` | {'unseen' if lab in unseen else 'seen'} | {expert[lab]:.2f} | {gen} |")
    lines += [
        "",
        "| generator | split | tasks (expert succeeds) | success % [95% CI] | top-5 | top-10 | paper: success | top-5 | top-10 |",
    ]
    lines.append("|---" * 9 + "|")
    for m in cols:
        for split, labels in (("seen", set(expert) - unseen), ("unseen", unseen)):
            if m == NEAREST and split == "seen":
                continue
            paper = " | ".join(f"{x:g}" for x in PAPER[m][split]) if m in PAPER else "- | - | -"
            lines.append(f"| {m} | {split} | {len(labels & ok)} of {len(labels)} | {cell(rows, m, labels & ok)} | {paper} |")
    lines += ["", f"Tasks whose expert fails (success < {args.expert_success:g}), reported apart:", ""]
    lines += ["| generator | split | tasks | success % [95% CI] | top-5 | top-10 |", "|---" * 6 + "|"]
    for m in gens:
        for split, labels in (("seen", set(expert) - unseen - ok), ("unseen", unseen - ok)):
            lines.append(f"| {m} | {split} | {len(labels)} | {cell(rows, m, labels)} |")
    text = "\n".join(lines)
    print(text)
    runio.atomic_save(text + "\n", d / "genhyprl_table.md")
    return text


if __name__ == "__main__":
    runio.cli(main, Args)
