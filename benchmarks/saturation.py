"""benchmarks/saturation.py — how saturated each expert's actor is: on its own deterministic episode, the share of
action components with |a| > --threshold (tanh at its bounds, where the actor's gradient vanishes), with the
episode's return and success. Used to measure td3.py's remedies for saturating actors (--action-penalty,
--layer-norm, --sac) on MetaWorld tasks where TD3 fails.

    python benchmarks/saturation.py --experts runs/sat/base runs/sat/penalty1
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: the stages are one level up
import policy  # noqa: E402
import runio  # noqa: E402
import tasks  # noqa: E402


@dataclass
class Args:
    experts: tuple[str, ...] = ("runs/td3",)
    """td3.py output directories (or expert files); each row names its directory"""
    threshold: float = 0.99
    """an action component counts as saturated beyond this magnitude"""
    seed: int = 1
    """reset seed of the episode"""


def saturation(actions: np.ndarray, threshold: float) -> float:
    """The share of action components [T, A] whose magnitude exceeds threshold."""
    return float((np.abs(actions) > threshold).mean())


def main(args: Args) -> list[dict]:
    runio.check_flags(args, positive=("threshold",), nonnegative=("seed",))
    rows = []
    print(f"{'experts':>28} {'context':>28} {'saturated':>9} {'return':>9} {'success':>7}")
    for d in args.experts:
        for e in policy.load_experts(d):
            ep = policy.rollout(tasks.make_env(e["task"], e["context"], args.seed), policy.expert_layers(e), args.seed)
            row = {"experts": d, "label": e["label"], "saturated": saturation(ep["actions"], args.threshold)}
            rows.append(row | {"return": ep["return"], "success": ep["success_step"] >= 0 if e["task"] == "metaworld" else None})
            ok = "-" if rows[-1]["success"] is None else str(rows[-1]["success"])
            print(f"{Path(d).name:>28} {e['label']:>28} {row['saturated']:9.2f} {ep['return']:9.1f} {ok:>7}")
    return rows


if __name__ == "__main__":
    runio.cli(main, Args)
