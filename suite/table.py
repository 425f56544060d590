"""suite/table.py — the HyperZero benchmark table from suite/hyperzero.sh's evaluations.

    python suite/table.py --out runs/suite

Reads OUT/<family>/eval/summary.json and results.json of every family that has them and prints (and writes to
OUT/table.md) two markdown tables:
  1. the experts: mean, min and max return on the training and the held-out contexts against the random policy's,
     so that a reader judges the normaliser before trusting a normalised score;
  2. per method (rows) and family (columns): the held-out expert-normalised score, mean over approximator seeds and
     held-out contexts with its 95 % stratified-bootstrap interval (evaluate.py); then HyperZero's and the MLP's held-out
     return as a share of the expert's return (no random baseline subtracted), the metric of the published figures
     beside them: HyPoGen's re-run of HyperZero and of the context-concatenating policy (HyPoGen, ICLR 2025,
     openreview.net/forum?id=CJWMXqAnAy, Table 1: DMC, 1 M-step TD3 experts, 20 % of the contexts trained on).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: tasks.py is one level up

import runio  # noqa: E402
from runio import UserError  # noqa: E402

FAMILIES = ("cheetah-speed", "cheetah-length", "cheetah-both", "walker-speed", "walker-length")
METHODS = (
    "expert",
    "nearest-expert",
    "random",
    "hyperzero",
    "hyperzero-no-td",
    "hyperzero-no-q",
    "mlp",
    "mlp-q-td",
    "maml",
    "pearl",
)
# held-out return / expert return as HyPoGen re-ran HyperZero and the concatenating policy on DMC (its Table 1)
PUBLISHED = {
    "hyperzero": {
        "cheetah-speed": 0.80,
        "cheetah-length": 0.93,
        "cheetah-both": 0.65,
        "walker-speed": 0.45,
        "walker-length": 0.72,
    },
    "mlp": {"cheetah-speed": 0.50, "cheetah-length": 0.60, "cheetah-both": 0.38, "walker-speed": 0.21, "walker-length": 0.38},
}


@dataclass
class Args:
    out: str = "runs/suite"
    """the OUT directory of suite/hyperzero.sh (one sub-directory per family)"""
    split: str = "paper"
    """'paper' (OUT/FAMILY/eval) or 'hard' (SPLIT=hard: OUT/FAMILY/hard/eval)"""


def load_family(d: Path) -> tuple[list[dict], list[dict]] | None:
    """(summary, rows) of one family's evaluation in d/eval, None where it has not been run; a damaged file is a
    UserError."""
    files = [d / "eval" / "summary.json", d / "eval" / "results.json"]
    if not all(f.is_file() for f in files):
        return None
    try:
        summary, rows = json.loads(files[0].read_text())["summary"], json.loads(files[1].read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {d / 'eval'}: {e}") from None
    need = {"method", "label", "heldout", "return_mean"}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and need <= set(r) for r in rows):
        raise UserError(f"{files[1]} is not evaluate.py's results.json: every row needs {', '.join(sorted(need))}")
    return summary, rows


def ci(s: dict | None, key: str) -> str:
    if s is None or s.get(key) is None:
        return "-"
    lo, hi = s[key + "_ci"]
    return f"{s[key]:.2f} [{lo:.2f}, {hi:.2f}]"


def returns(rows: list[dict], method: str) -> dict:
    """label -> return of a one-run row (expert, random) of evaluate.py's results."""
    return {r["label"]: r["return_mean"] for r in rows if r["method"] == method}


def gap(rows: list[dict]) -> str:
    """Contexts whose reference (the best expert there) is > 10 % above their own expert, in R - random; the worst."""
    own, rnd = returns(rows, "expert"), returns(rows, "random")
    ref = {r["label"]: r["reference_return"] for r in rows if r.get("reference_return") is not None}
    ratio = [(ref[c] - rnd[c]) / (own[c] - rnd[c]) for c in own if c in ref and c in rnd and own[c] > rnd[c]]
    return f"{sum(x > 1.1 for x in ratio)} of {len(ratio)} (max {max(ratio):.2f})" if ratio else "-"


def expert_table(found: dict) -> list[str]:
    lines = ["| family | contexts (held out) | expert return, training: mean (min-max) | expert return, held out | random "]
    lines[0] += "| reference > 1.1 x own expert (R - random) |"
    lines.append("|---|---|---|---|---|---|")
    for fam, (_, rows) in found.items():
        cells = []
        for held in (False, True):
            r = [x["return_mean"] for x in rows if x["method"] == "expert" and x["heldout"] is held]
            cells.append(f"{sum(r) / len(r):.0f} ({min(r):.0f}-{max(r):.0f})" if r else "-")
        rnd = [x["return_mean"] for x in rows if x["method"] == "random"]
        n = len({x["label"] for x in rows if x["method"] == "expert"})
        k = len({x["label"] for x in rows if x["method"] == "expert" and x["heldout"]})
        lines.append(f"| {fam} | {n} ({k}) | {cells[0]} | {cells[1]} | {sum(rnd) / len(rnd):.0f} | {gap(rows)} |")
    return lines


def share(rows: list[dict], method: str) -> str:
    """Held-out return / the expert's return in the same context, mean over runs and contexts (no random baseline)."""
    expert = returns(rows, "expert")
    got = [r["return_mean"] / expert[r["label"]] for r in rows if r["method"] == method and r["heldout"] and r["label"] in expert]
    return f"{sum(got) / len(got):.2f}" if got else "-"


def score_table(found: dict) -> list[str]:
    fams = list(found)
    lines = ["| method | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
    by = {fam: {s["method"]: s for s in summary} for fam, (summary, _) in found.items()}
    for m in METHODS:
        if any(m in by[f] for f in fams):
            lines.append(f"| {m} | " + " | ".join(ci(by[f].get(m), "heldout_normalized") for f in fams) + " |")
    for m, name in (("hyperzero", "HyperZero"), ("mlp", "MLP")):  # the published metric: return / expert return
        lines.append(f"| {m}: return / expert return | " + " | ".join(share(found[f][1], m) for f in fams) + " |")
        lines.append(
            f"| {name}, published (HyPoGen's re-run, DMC) | " + " | ".join(f"{PUBLISHED[m][f]:.2f}" for f in fams) + " |"
        )
    runs = {by[f][m]["heldout_runs"] for f in fams for m in by[f] if m not in ("expert", "nearest-expert", "random")}
    lines.append("\nHeld-out normalised score (R - random) / (reference - random), the reference being the best return of any")
    lines.append(
        f"expert of the family on the context; mean over {'/'.join(map(str, sorted(runs)))} seeds and the held-out contexts,"
    )
    lines.append("[95 % stratified-bootstrap interval] (runs resampled within contexts, contexts resampled). nearest-expert: the")
    lines.append("expert of the closest training context, zero-shot; a method transfers where its interval lies above it.")
    return lines


def main(args: Args) -> str:
    out = Path(args.out)
    if args.split not in ("paper", "hard"):
        raise UserError(f"unknown --split '{args.split}'; valid: paper, hard")
    if not out.is_dir():
        raise UserError(f"--out {out}: no such directory (suite/hyperzero.sh writes it)")
    sub = "hard" if args.split == "hard" else ""
    found = {f: got for f in FAMILIES if (got := load_family(out / f / sub)) is not None}
    if not found:
        raise UserError(f"--out {out}: no family evaluated yet (expected {'/'.join(FAMILIES)}/{sub + '/' if sub else ''}eval)")
    text = "\n".join(["### Experts", "", *expert_table(found), "", "### Held-out normalised score", "", *score_table(found)])
    name = "table.md" if args.split == "paper" else "table_hard.md"
    (out / name).write_text(text + "\n")
    print(text + f"\n\nwrote {out / name}")
    return text


if __name__ == "__main__":
    runio.cli(main, Args)
