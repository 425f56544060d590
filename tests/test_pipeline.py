"""The whole pipeline at toy size: td3 -> collect -> hyperzero (two seeds) / mlp / maml / hyplatent / hypformer ->
evaluate, which reads every source through the same functions (one path in its main) and aggregates the runs of a
method with intervals."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import collect
import evaluate
import hyperzero
import hypformer
import hyplatent
import meta
import td3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loss_budget  # noqa: E402


def test_tiny_pipeline_end_to_end(tmp_path):
    exp = tmp_path / "experts"
    td3.main(
        td3.Args(
            task="cheetah-vel",
            contexts=("0.5", "1.5", "2.5"),
            total_timesteps=400,
            learning_starts=200,
            batch_size=32,
            hidden=(16, 16),
            eval_interval=0,
            eval_episodes=1,
            snapshot_interval=50,
            snapshot_start=100,
            checkpoint_interval=0,
            out_dir=str(exp),
        )
    )
    roll = tmp_path / "rollouts"
    collect.main(collect.Args(experts=(str(exp),), episodes=2, seed=1, out_dir=str(roll)))
    for model, seed, name in (("hyperzero", 1, "hyperzero"), ("hyperzero", 2, "hyperzero_s2"), ("mlp", 1, "mlp")):
        hyperzero.main(
            hyperzero.Args(
                rollouts=str(roll), model=model, test_contexts=("1.5",), steps=30, seed=seed, out_dir=str(tmp_path / name)
            )
        )
    meta.main(
        meta.Args(
            rollouts=str(roll),
            model="maml",
            test_contexts=("1.5",),
            steps=5,
            embed_dim=32,
            policy_hidden=(32,),
            meta_batch=2,
            support_size=8,
            query_size=8,
            inner_steps=1,
            seed=1,
            out_dir=str(tmp_path / "maml"),
        )
    )
    hyplatent.main(
        hyplatent.Args(
            data=str(roll), test_contexts=("1.5",), ae_steps=40, gan_steps=40, latent_dim=16, seed=1, out_dir=str(tmp_path / "hl")
        )
    )
    hypformer.main(
        hypformer.Args(
            hyplatent=str(tmp_path / "hl"), steps=20, token_dim=32, heads=4, ffn_dim=64, seed=1, out_dir=str(tmp_path / "hf")
        )
    )
    out = tmp_path / "eval"
    res = evaluate.main(
        evaluate.Args(
            experts=(str(exp),),
            policies=tuple(str(tmp_path / d) for d in ("hyperzero", "hyperzero_s2", "mlp", "maml", "hl", "hf")),
            episodes=1,
            samples=2,
            seed=1,
            out_dir=str(out),
        )
    )
    rows = json.loads((out / "results.json").read_text())
    # random, expert, hyperzero (2 runs), mlp, maml, maml-adapted (each goal has an expert to adapt on), hyplatent,
    # hypformer
    assert len(rows) == len(res["rows"]) == 3 * 10  # and nearest-expert: every goal has another training goal's expert
    methods = {r["method"] for r in rows}
    assert methods == {"random", "expert", "nearest-expert", "hyperzero", "mlp", "maml", "maml-adapted", "hyplatent", "hypformer"}
    for r in rows:
        assert {
            "method",
            "task",
            "context",
            "heldout",
            "episodes",
            "return_mean",
            "return_std",
            "success_rate",
            "normalized",
        } <= set(r)
        assert r["heldout"] == (r["context"]["goal"] == 1.5)  # every approximator held out 1.5
        assert np.isfinite(r["return_mean"]) and r["normalized"] is not None
        assert r["n_policies"] == (2 if r["method"] in ("hyplatent", "hypformer") else 1)
    assert {s["method"] for s in res["summary"]} == methods
    # the two seeds of hyperzero are runs of one method: per-run rows, one aggregated summary row with intervals
    runs = {(r["method"], r["run"]) for r in rows}
    assert {run for m, run in runs if m == "hyperzero"} == {str(tmp_path / "hyperzero"), str(tmp_path / "hyperzero_s2")}
    assert {run for m, run in runs if m in ("random", "expert")} == {None} and (("mlp", str(tmp_path / "mlp")) in runs)
    hz_rows = [r for r in rows if r["method"] == "hyperzero" and r["heldout"]]
    hz = next(s for s in res["summary"] if s["method"] == "hyperzero")
    assert (hz["heldout_runs"], hz["heldout_contexts"], hz["train_runs"], hz["train_contexts"]) == (2, 1, 2, 2)
    assert hz["heldout_normalized"] == pytest.approx(np.mean([r["normalized"] for r in hz_rows]))
    lo, hi = hz["heldout_normalized_ci"]
    assert lo <= hz["heldout_normalized"] <= hi and lo <= hz["heldout_normalized_iqm"] <= hi
    assert lo == pytest.approx(min(r["normalized"] for r in hz_rows)) and hi == pytest.approx(
        max(r["normalized"] for r in hz_rows)
    )
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert next(s for s in summary if s["method"] == "hyperzero")["heldout_normalized_ci"] == pytest.approx([lo, hi])
    adapted = [r for r in rows if r["method"] == "maml-adapted"]
    assert all(r["adapt_steps"] == 1 and r["adapt_transitions"] == 200 for r in adapted)
    assert not any("adapt_steps" in r for r in rows if r["method"] != "maml-adapted")
    for f in ("results.csv", "returns.png", "normalized.png", "summary.json"):
        assert (out / f).is_file()
    # hyperzero's held-out policy is its own generated policy, not a copy of the expert
    hz = next(r for r in rows if r["method"] == "hyperzero" and r["heldout"])
    ex = next(r for r in rows if r["method"] == "expert" and r["heldout"])
    assert hz["return_mean"] != pytest.approx(ex["return_mean"], abs=1e-9)

    # the loss budget on the same files: the generators' training goals only (1.5 was held out of them), each source
    # scored against the same best-expert reference as evaluate.py, so its nearest-expert score is evaluate.py's
    budget = loss_budget.main(
        loss_budget.Args(experts=(str(exp),), hyplatent=(str(tmp_path / "hl"),), hypformer=(str(tmp_path / "hf"),),
                         heldout=("1.5",), episodes=1, samples=2, seed=1)
    )["rows"]  # fmt: skip
    by = lambda src: {r["label"]: r for r in budget if r["source"] == src}  # noqa: E731
    assert (
        set(by("(a) data"))
        == set(by("(b) reconstruction"))
        == set(by("(c) hyplatent")) - {"goal_1.5"}
        == {"goal_0.5", "goal_2.5"}
    )
    assert all(by("(a) best snapshot")[g]["score"] >= by("(a) data")[g]["score"] for g in ("goal_0.5", "goal_2.5"))
    near = next(r for r in rows if r["method"] == "nearest-expert" and r["heldout"])
    assert by("nearest expert")["goal_1.5"]["score"] == pytest.approx(near["normalized"])
    with pytest.raises(evaluate.UserError, match="--heldout goal_0.5: a goal the generators trained on"):
        loss_budget.main(loss_budget.Args(experts=(str(exp),), hyplatent=(str(tmp_path / "hl"),), heldout=("0.5",)))
