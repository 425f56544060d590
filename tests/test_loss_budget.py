"""Tests of benchmarks/loss_budget.py on MetaWorld (the Cheetah-Vel budget runs in test_pipeline.py): success as the
score, the generators conditioned on each task's demonstration, and the nearest seen expert in the run's embedding."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import hypformer
import hyplatent
import policy
from runio import UserError
from test_hyplatent import tiny_args, write_behaviour_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import loss_budget  # noqa: E402

SEEN, UNSEEN = ("button-press-v3", "coffee-button-v3"), "button-press-wall-v3"  # committed experts, all succeeding


def test_metaworld_budget_scores_success_and_the_nearest_seen_expert_in_the_runs_embedding(tmp_path):
    files = [str(ROOT / "experts" / "metaworld" / f"expert_{t}.pt") for t in (*SEEN, UNSEEN)]
    experts = sorted(
        policy.load_experts(files), key=lambda e: files.index(str(ROOT / "experts" / "metaworld" / f"expert_{e['label']}.pt"))
    )
    sizes = policy.layer_sizes(experts[0]["obs_dim"], experts[0]["hidden"], experts[0]["act_dim"])
    # the data: 3 copies of each expert's actor, so every behaviour policy of a task is its (succeeding) expert
    flat = torch.stack([policy.flatten_layers(policy.expert_layers(e))[0] for e in experts])  # [3, P]
    cid, ctxs = np.repeat(np.arange(3), 3), [e["context"] for e in experts]
    demo = loss_budget.evaluate.demo_conditions("metaworld", ctxs, {e["label"]: e for e in experts}, 1, "cpu")  # [3, F]
    traj = (demo[cid] + 0.5 * torch.randn(len(cid), demo.shape[1], generator=torch.Generator().manual_seed(0))).numpy()
    data = write_behaviour_data(tmp_path / "mw", "metaworld", ctxs, sizes, flat[cid].numpy(), cid, traj=traj)
    hyplatent.main(tiny_args(tmp_path, data, test_contexts=(UNSEEN,)))
    hypformer.main(hypformer.Args(hyplatent=str(tmp_path / "hl"), out_dir=str(tmp_path / "hf"), steps=10, token_dim=32,
                                  heads=4, ffn_dim=64, log_interval=0))  # fmt: skip
    args = loss_budget.Args(experts=tuple(files), hyplatent=(str(tmp_path / "hl"),), hypformer=(str(tmp_path / "hf"),),
                            heldout=(UNSEEN,), episodes=1, samples=2, snapshots=2, seed=1)  # fmt: skip
    rows = loss_budget.main(args)["rows"]
    by = lambda src: {r["label"]: r for r in rows if r["source"] == src}  # noqa: E731
    assert set(by("(a) data")) == set(by("(b) reconstruction")) == set(SEEN)  # the data's held-out task is not scored
    assert set(by("(c) hyplatent")) == set(by("(d) hypformer")) == {*SEEN, UNSEEN}
    # known answer: the data are the experts, which succeed, and a score is a success rate
    assert all(by("(a) data")[t]["score"] == by("(a) best snapshot")[t]["score"] == 1.0 for t in SEEN)
    assert all(r["score"] in (0.0, 0.5, 1.0) for r in rows)  # 2 samples x 1 episode: successes, not returns
    # the spread (diversity) of a goal's policies: 3 copies of one actor have none; 2 generated samples differ
    assert all(by("(a) data")[t]["spread"] == 0.0 and by("(c) hyplatent")[t]["spread"] > 1e-4 for t in SEEN)
    assert "spread" not in by("(a) best snapshot")[SEEN[0]]  # one policy: no spread
    # the nearest expert: the seen task whose demonstration the run's embedding puts closest, rolled out on the unseen
    (near,) = [r for r in rows if r["source"] == "nearest expert"]
    ck = hyplatent.load_checkpoint(tmp_path / "hl")
    c = hyplatent.conditions_of(ck, hyplatent.build_models(ck), ck["split"]["train"] + ctxs[2:], demo)  # [3, c]
    d = torch.cdist(c[2:], c[:2])[0]
    assert abs(d[0] - d[1]) > 1e-3 * d.max() and near["expert"] == SEEN[int(d.argmin())]
    want = policy.evaluate_policy(
        "metaworld", experts[2]["context"], policy.expert_layers(experts[SEEN.index(near["expert"])]), 1, 1
    )
    assert near["score"] == want["success_rate"] and near["run"] == 0
    # evaluate.py's nearest-expert row is the same yardstick: one per HypLatent run (none from HypFormer), unseen only
    ev = evaluate.main(evaluate.Args(experts=tuple(files), policies=args.hyplatent + args.hypformer, episodes=1, samples=2,
                                     seed=1, out_dir=str(tmp_path / "ev")))  # fmt: skip
    (row,) = [r for r in ev["rows"] if r["method"] == "nearest-expert"]
    assert (row["label"], row["run"], row["neighbours"], row["heldout"]) == (UNSEEN, args.hyplatent[0], [near["expert"]], True)
    assert row["success_rate"] == want["success_rate"] and row["return_mean"] == pytest.approx(want["return_mean"])
    # an unseen task without its expert (whose demonstration conditions the generators) is refused before any rollout
    with pytest.raises(UserError, match="no expert of button-press-wall-v3 in --experts"):
        loss_budget.main(loss_budget.Args(experts=tuple(files[:2]), hyplatent=args.hyplatent, heldout=(UNSEEN,)))
