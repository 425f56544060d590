"""evaluate.py: rows and keys, the normalised score, paired seeds, plots, and bad input."""

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import collect
import evaluate
import hyperzero
import policy
import runio
import stats
import tasks
from synthetic import write_linear_rollouts

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"method", "task", "context", "heldout", "episodes", "return_mean", "return_std", "success_rate", "normalized"}


def test_experts_only_rows_and_normalisation(tiny_experts, tmp_path):
    args = evaluate.Args(experts=(str(tiny_experts),), episodes=2, seed=3, reference="own", out_dir=str(tmp_path / "ev"))
    res = evaluate.main(args)
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert rows == json.loads(json.dumps(res["rows"]))
    assert {(r["method"], r["context"]["goal"]) for r in rows} == {(m, g) for m in ("random", "expert") for g in (0.5, 2.0)}
    for r in rows:
        assert KEYS <= set(r) and r["task"] == "cheetah-vel" and r["episodes"] == 2
        assert r["success_rate"] is None and r["heldout"] is None  # no approximator: nobody held anything out
        assert r["normalized"] == pytest.approx(1.0 if r["method"] == "expert" else 0.0)
    # the expert row is the deterministic rollout of the expert with the same seeds
    e = policy.load_experts(tiny_experts)[0]
    direct = policy.evaluate_policy("cheetah-vel", e["context"], policy.expert_layers(e), 2, 3)
    row = next(r for r in rows if r["method"] == "expert" and r["label"] == e["label"])
    assert row["return_mean"] == pytest.approx(direct["return_mean"])
    for f in ("results.csv", "summary.json", "returns.png", "normalized.png"):
        assert (tmp_path / "ev" / f).stat().st_size > 0


def test_best_expert_reference_and_the_nearest_expert_row(tiny_experts, tmp_path):
    """Score 1 is the best return any expert achieves on the context (each on the evaluation's seeds), and on a held-out
    context the nearest-expert row is the expert of the closest training context, used zero-shot."""
    collect.main(collect.Args(experts=(str(tiny_experts),), episodes=1, snapshots=False, out_dir=str(tmp_path / "r")))
    hz = hyperzero.Args(rollouts=str(tmp_path / "r"), test_contexts=("2",), out_dir=str(tmp_path / "h"), steps=1, embed_dim=8)
    hyperzero.main(hz)
    args = evaluate.Args(
        experts=(str(tiny_experts),), policies=(str(tmp_path / "h"),), episodes=2, seed=3, out_dir=str(tmp_path / "ev")
    )
    rows = evaluate.main(args)["rows"]
    experts = {e["label"]: e for e in policy.load_experts(tiny_experts)}
    on = lambda e, lab: policy.evaluate_policy("cheetah-vel", experts[lab]["context"], policy.expert_layers(experts[e]), 2, 3)  # noqa: E731
    (near,) = [r for r in rows if r["method"] == "nearest-expert"]  # goal 0.5 is the only training context: no row there
    assert near["label"] == "goal_2" and near["heldout"] and near["neighbours"] == ["goal_0.5"]
    assert near["return_mean"] == pytest.approx(on("goal_0.5", "goal_2")["return_mean"])
    for lab in experts:
        best = max(on(e, lab)["return_mean"] for e in experts)
        rs = {r["method"]: r for r in rows if r["label"] == lab}
        assert rs["expert"]["reference_return"] == pytest.approx(best) and rs["random"]["normalized"] == 0.0
        lo = rs["random"]["return_mean"]
        assert rs["expert"]["normalized"] == pytest.approx((rs["expert"]["return_mean"] - lo) / (best - lo))
        assert rs["expert"]["normalized"] <= 1.0 + 1e-9
    assert (tmp_path / "ev" / "normalized.png").exists()
    # without --experts nothing defines score 1: the rows carry no normalised score, and the run still completes
    alone = evaluate.Args(policies=(str(tmp_path / "h"),), contexts=("2",), episodes=1, out_dir=str(tmp_path / "ev2"))
    rows = evaluate.main(alone)["rows"]
    assert [r["method"] for r in rows] == ["random", "hyperzero"] and all(r["normalized"] is None for r in rows)


def test_best_snapshot_row_is_the_best_of_the_evenly_spaced_snapshots(tiny_experts, tmp_path):
    """--best-snapshot N: N evenly spaced snapshots of each expert on its own context, the best one kept as a row."""
    rows = evaluate.main(evaluate.Args(experts=(str(tiny_experts),), best_snapshot=2, episodes=1, out_dir=str(tmp_path / "ev")))[
        "rows"
    ]
    sizes = lambda e: policy.layer_sizes(e["obs_dim"], e["hidden"], e["act_dim"])  # noqa: E731
    steps = np.load(tiny_experts / "snapshot_steps.npy").tolist()
    for e in policy.load_experts(tiny_experts):
        flat = torch.from_numpy(np.load(tiny_experts / f"snapshots_{e['label']}.npy")[[0, -1]])  # 2 of 3: first and last
        got = [
            r["return_mean"]
            for r in policy.evaluate_each("cheetah-vel", e["context"], policy.unflatten_layers(flat, sizes(e)), 1, 1)
        ]
        (row,) = [r for r in rows if r["method"] == "best-snapshot" and r["label"] == e["label"]]
        assert (
            row["return_mean"] == pytest.approx(max(got)) and row["snapshot_step"] == [steps[0], steps[-1]][int(np.argmax(got))]
        )
    # a damaged snapshot file is refused before --out-dir is touched
    bad = tmp_path / "bad"
    shutil.copytree(tiny_experts, bad)
    np.save(bad / "snapshots_goal_0.5.npy", np.zeros((3, 7), np.float32))
    with pytest.raises(runio.UserError, match="snapshots_goal_0.5.npy has shape"):
        evaluate.main(evaluate.Args(experts=(str(bad),), best_snapshot=2, episodes=1, out_dir=str(tmp_path / "ev2")))
    assert not (tmp_path / "ev2").exists()


def test_nearest_context_known_answers():
    pool = tasks.parse_contexts("cheetah-vel", ["0.5", "1", "1.5"])
    assert tasks.nearest("cheetah-vel", *tasks.parse_contexts("cheetah-vel", ["0.75"]), pool) == [0, 1]  # a tie: both
    assert tasks.nearest("cheetah-vel", *tasks.parse_contexts("cheetah-vel", ["1.4"]), pool) == [2]
    grid = tasks.parse_contexts("cheetah-run", ["speed=1,length=0.3", "speed=5,length=0.5"])  # ranges: 11.9 and 0.8
    (ctx,) = tasks.parse_contexts("cheetah-run", ["speed=4,length=0.3"])
    # each variable scaled by its range: |(3/11.9, 0)| = 0.252 is nearer than |(1/11.9, 0.2/0.8)| = 0.264
    assert tasks.nearest("cheetah-run", ctx, grid) == [0]


def test_random_baseline_is_seeded_and_near_zero_velocity():
    (ctx,) = tasks.parse_contexts("cheetah-vel", ["2.0"])
    a = policy.evaluate_policy("cheetah-vel", ctx, None, 2, 5)  # layers None: uniform-random actions
    b = policy.evaluate_policy("cheetah-vel", ctx, None, 2, 5)
    assert a == b and a["returns"][0] != a["returns"][1]
    # a random cheetah barely moves: about -|goal| per step, minus the control cost of U(-1,1)^6 (0.05 * 6/3)
    assert -2.4 * 200 < a["return_mean"] < -1.6 * 200


def test_normalised_score_formula():
    rows = [
        {"method": m, "label": lab, "return_mean": R, "normalized": None}
        for m, lab, R in [("random", "g", -300.0), ("expert", "g", -50.0), ("hyperzero", "g", -100.0), ("hyperzero", "h", -1.0)]
    ]
    stats.normalize(rows)
    # negative returns: (R - random) / (expert - random), never R / expert; no expert for h, no score
    assert [r["normalized"] for r in rows] == [0.0, 1.0, pytest.approx(0.8), None]


def test_top_k_success_is_per_policy_not_per_episode():
    # 10 generated policies, each succeeding in 1 of 2 episodes, and one that always succeeds
    per_policy = [0.5] * 10 + [1.0]
    top = stats.top_k_success(per_policy)
    assert top == {"top5_success": pytest.approx(0.6), "top10_success": pytest.approx(0.55)}
    # the released code's shortcut (sort the 22 episode successes, average the top k) would give 1.0 for both
    episodes = sorted([1.0, 0.0] * 10 + [1.0, 1.0], reverse=True)
    assert np.mean(episodes[:5]) == np.mean(episodes[:10]) == 1.0
    summary = stats.summarize(
        [
            {"method": "hypformer", "heldout": False, "return_mean": 1.0, "normalized": None, "success_rate": 0.5, **top},
            {
                "method": "hypformer",
                "heldout": True,
                "return_mean": 1.0,
                "normalized": None,
                "success_rate": 0.0,
                "top5_success": 0.0,
                "top10_success": 0.0,
            },
        ]
    )[0]
    assert (summary["train_success"], summary["heldout_success"], summary["all_top5_success"]) == (0.5, 0.0, 0.3)
    assert "top-5 success" in stats.format_table([summary])


def test_metaworld_plots_include_success(tmp_path):
    rows = [
        {"method": m, "label": t, "context": {"env_name": t, "goal_seed": 1}, "heldout": t == "b-v3", "return_mean": 1.0,
         "return_std": 0.0, "normalized": 0.5, "success_rate": 1.0}
        for m in ("random", "expert", "hypformer") for t in ("a-v3", "b-v3")
    ]  # fmt: skip
    assert evaluate.plot(rows, "metaworld", tmp_path) == ["returns.png", "normalized.png", "success.png"]
    assert all((tmp_path / f).stat().st_size > 0 for f in ("returns.png", "normalized.png", "success.png"))


def run_cli(*argv):
    return subprocess.run([sys.executable, "evaluate.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_errors(tiny_experts, tmp_path):
    r = run_cli("--out-dir", str(tmp_path / "a"))
    assert r.returncode == 2 and "nothing to evaluate" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--experts", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "b"))
    assert r.returncode == 2 and "no experts found" in r.stderr
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    torch.save({"format": "something-else"}, bogus / "model.pt")
    r = run_cli("--experts", str(tiny_experts), "--policies", str(bogus), "--out-dir", str(tmp_path / "c"))
    assert r.returncode == 2 and "unknown format 'something-else'" in r.stderr
    r = run_cli("--experts", str(tiny_experts), "--contexts", "9", "--out-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "out of range" in r.stderr
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written on bad input


def test_mixed_tasks_refused(tiny_experts, tmp_path):
    e = torch.load(next(Path(tiny_experts).glob("expert_*.pt")), weights_only=True)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in Path(tiny_experts).glob("expert_*.pt"):
        (mixed / f.name).write_bytes(f.read_bytes())
    torch.save({**e, "task": "cheetah-run", "label": "speed_2_length_0.5"}, mixed / "expert_speed_2_length_0.5.pt")
    with pytest.raises(runio.UserError, match="differ in task"):  # policy.load_experts refuses the mixed shards
        evaluate.main(evaluate.Args(experts=(str(mixed),), out_dir=str(tmp_path / "x")))
    # experts of one task, a policy of another
    root, _ = write_linear_rollouts(tmp_path / "r", [0.5, 1.0], 50, 0, reward=lambda obs, g: obs.sum(1), terminal=True)
    ckpt = hyperzero.main(hyperzero.Args(rollouts=str(root), out_dir=str(tmp_path / "h"), steps=1, embed_dim=8))["ckpt"]
    runio.atomic_save({**ckpt, "task": "cheetah-run"}, tmp_path / "run" / "hyperzero.pt")
    with pytest.raises(runio.UserError, match="experts and policies differ in task"):
        evaluate.main(evaluate.Args(experts=(str(tiny_experts),), policies=(str(tmp_path / "run"),), out_dir=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(
    ctypes.util.find_library("OSMesa") is None, reason="no libOSMesa (Debian: libosmesa6) to render MuJoCo on the CPU"
)
def test_capture_video(tiny_experts, tmp_path):
    # rendering needs a GL backend, chosen when MuJoCo is first imported: set it for this subprocess only
    argv = ["evaluate.py", "--experts", str(tiny_experts), "--episodes", "1", "--capture-video", "--out-dir", str(tmp_path / "v")]
    env = os.environ | {"MUJOCO_GL": "osmesa"}
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    gifs = sorted((tmp_path / "v" / "videos").glob("*.gif"))
    assert [g.name for g in gifs] == ["expert_goal_0.5.gif", "expert_goal_2.gif"]
    import imageio.v2 as imageio

    frames = imageio.mimread(gifs[0])
    assert 50 <= len(frames) <= 100 and np.asarray(frames[0]).std() > 1  # 100 frames written (GIF merges repeats), not blank


# ---------------------------------------------------------------------------------------------------------------------
# Intervals: the bootstrap's known answers, runs x contexts, and a cross-check against rliable where it imports
# ---------------------------------------------------------------------------------------------------------------------
def test_iqm_known_answers():
    assert stats.iqm(np.arange(1, 9)) == 4.5  # int(8/4) = 2 cut from each end: mean(3, 4, 5, 6)
    assert stats.iqm(np.arange(1, 7)) == 3.5  # int(6/4) = 1 cut: mean(2, 3, 4, 5), as scipy.stats.trim_mean(x, 0.25)
    assert stats.iqm(np.array([[8, 1, 7, 2, 6, 3, 5, 4]]), axis=-1).tolist() == [4.5]  # one IQM per replicate row
    assert stats.iqm(np.array([[1.0, 100.0], [2.0, 3.0]])) == 2.5  # pools everything: mean(2, 3)


def test_bootstrap_constant_scores_and_one_run_one_context_give_zero_width():
    ci = stats.bootstrap_ci(np.full((3, 4), 0.7), reps=200)
    assert ci["mean_ci"] == pytest.approx([0.7, 0.7]) and ci["iqm_ci"] == pytest.approx([0.7, 0.7])
    assert (ci["runs"], ci["tasks"]) == (3, 4)
    one = stats.bootstrap_ci(np.array([[0.3]]), reps=200)
    assert one["mean"] == one["mean_ci"][0] == one["mean_ci"][1] == 0.3


def test_bootstrap_mean_interval_of_a_normal_sample():
    x = np.random.default_rng(0).normal(2.0, 3.0, 200)
    half = 1.96 * x.std() / np.sqrt(len(x))  # the normal approximation of the mean's 95 % interval
    for scores in (x[:, None], x[None, :]):  # 200 runs of one context, or one run of 200 contexts (resampled)
        ci = stats.bootstrap_ci(scores, reps=20000, seed=1)
        lo, hi = ci["mean_ci"]
        assert lo < x.mean() < hi
        # each side on its own: a 96 % or an asymmetric interval moves one bound by >= 7 %
        assert x.mean() - lo == pytest.approx(half, rel=0.05) and hi - x.mean() == pytest.approx(half, rel=0.05)
        assert ci["iqm_ci"][0] < ci["iqm"] < ci["iqm_ci"][1]


def test_resampling_contexts_widens_or_equals():
    g = np.random.default_rng(2)
    scores = np.linspace(0.2, 1.0, 6)[None, :] + g.normal(0, 0.05, (5, 6))  # contexts differ far more than runs
    within = stats.bootstrap_ci(scores, reps=2000, seed=0, resample_tasks=False)
    both = stats.bootstrap_ci(scores, reps=2000, seed=0, resample_tasks=True)
    width = lambda ci, k: ci[k][1] - ci[k][0]  # noqa: E731
    assert width(both, "mean_ci") >= width(within, "mean_ci") and width(both, "iqm_ci") >= width(within, "iqm_ci")
    assert width(both, "mean_ci") > 3 * width(within, "mean_ci")
    assert stats.bootstrap_ci(scores, seed=5) == stats.bootstrap_ci(scores, seed=5)  # seeded


def test_bootstrap_known_answers_from_rliable():
    """rliable 1.2.0's get_interval_estimates on these scores (reps 50000, mean of 3 seeds, MC spread <= 0.001),
    computed once in a side environment where it imports (pandas < 3): [mean lo, mean hi, IQM lo, IQM hi]."""
    s = np.random.default_rng(3).normal(0.7, 0.2, (5, 4))
    rliable = {False: [0.5719, 0.7844, 0.5928, 0.7150], True: [0.5651, 0.7967, 0.5796, 0.7519]}
    for task_bootstrap, want in rliable.items():
        ours = stats.bootstrap_ci(s, reps=50000, seed=0, resample_tasks=task_bootstrap)
        np.testing.assert_allclose(ours["mean_ci"] + ours["iqm_ci"], want, atol=0.004)


def test_bootstrap_matches_rliable():
    try:  # rliable 1.2.0 raises a TypeError on import with pandas 3 (arch's deprecate_kwarg), not an ImportError
        from rliable import library as rly
        from rliable import metrics
    except Exception as e:
        pytest.skip(f"rliable does not import here ({type(e).__name__}: {str(e)[:80]}); it is not a dependency")
    s = np.random.default_rng(3).normal(0.7, 0.2, (5, 4))
    agg = lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])  # noqa: E731
    for task_bootstrap in (False, True):
        est, cis = rly.get_interval_estimates({"m": s}, agg, reps=20000, task_bootstrap=task_bootstrap)
        ours = stats.bootstrap_ci(s, reps=20000, resample_tasks=task_bootstrap)
        assert est["m"] == pytest.approx([ours["mean"], ours["iqm"]])
        np.testing.assert_allclose(np.asarray(cis["m"]).T.ravel(), ours["mean_ci"] + ours["iqm_ci"], atol=0.005)


def score_rows(method, runs, heldout_of, value):
    return [
        {"method": method, "run": run, "label": f"g{c}", "heldout": heldout_of(run, c), "return_mean": -float(c),
         "normalized": value(run, c), "success_rate": None}
        for run in runs for c in range(4)
    ]  # fmt: skip


def test_summary_aggregates_runs_within_contexts():
    rows = score_rows("hz", ["a", "b", "c"], lambda run, c: c == 3, lambda run, c: 0.1 * c + {"a": 0, "b": 0.02, "c": 0.04}[run])
    rows += score_rows("random", [None], lambda run, c: c == 3, lambda run, c: 0.0)
    (hz, rnd) = stats.summarize(rows, reps=500, seed=1)
    assert (hz["train_runs"], hz["train_contexts"], hz["heldout_runs"], hz["heldout_contexts"]) == (3, 3, 3, 1)
    train = np.array([[0.1 * c + d for c in range(3)] for d in (0, 0.02, 0.04)])
    assert hz["train_normalized"] == pytest.approx(train.mean()) and hz["train_normalized_iqm"] == pytest.approx(stats.iqm(train))
    lo, hi = hz["heldout_normalized_ci"]  # one held-out context: only its 3 runs (0.30, 0.32, 0.34) are resampled
    assert hz["heldout_normalized"] == pytest.approx(0.32) and 0.30 - 1e-9 <= lo < 0.32 < hi <= 0.34 + 1e-9
    assert hz["all_return"] == pytest.approx(-1.5) and hz["train_success"] is None and not hz["heldout_by_run"]
    assert rnd["heldout_normalized_ci"] == [0.0, 0.0] and rnd["train_runs"] == 1
    table = stats.format_table([hz, rnd])
    assert (
        f"| hz | held out | 3 | 1 | 0.32 [{lo:.2f}, {hi:.2f}] |" in table
        and "| random | train | 1 | 3 | 0.00 [0.00, 0.00] |" in table
    )
    assert "*" not in table


def test_runs_holding_out_different_contexts_are_summarised_by_their_means():
    rows = score_rows("hz", ["a", "b"], lambda run, c: c == {"a": 0, "b": 3}[run], lambda run, c: {"a": 0.2, "b": 0.6}[run])
    (hz,) = stats.summarize(rows, reps=500)
    assert hz["heldout_by_run"] and hz["heldout_contexts"] == 2 and hz["heldout_normalized"] == pytest.approx(0.4)
    assert stats.score_matrix([r for r in rows if r["heldout"]], "normalized")[0].shape == (2, 1)
    assert "held out * |" in stats.format_table([hz]) and "over each run's mean" in stats.format_table([hz])


def test_save_figure_is_atomic(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    runio.save_figure(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    (tmp_path / "b.png").write_bytes(b"earlier")
    fig, _ = plt.subplots()
    with pytest.raises(ValueError):  # a format matplotlib cannot write: the earlier file stays, no temp file is left
        runio.save_figure(fig, tmp_path / "b.nosuchformat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line before any rollout, nothing written
# ---------------------------------------------------------------------------------------------------------------------
FLAG_CASES = [
    (dict(episodes=0), "--episodes must be a finite number > 0, got 0"),
    (dict(samples=0), "--samples must be a finite number > 0, got 0"),
    (dict(adapt_transitions=-1), "--adapt-transitions must be"),
    (dict(bootstrap_reps=0), "--bootstrap-reps must be"),
    (dict(seed=-5), "--seed must be a finite number >= 0, got -5"),
    (dict(torch_threads=-1), "--torch-threads must be"),
    (dict(adapt_steps=-2), "--adapt-steps must be >= 0, or -1"),
    (dict(contexts=("9",)), "out of range"),
]
if not torch.cuda.is_available():
    FLAG_CASES.append((dict(device="cuda"), "cuda"))


@pytest.mark.parametrize("kw, message", FLAG_CASES, ids=[",".join(kw) for kw, _ in FLAG_CASES])
def test_bad_flags_refused_before_any_work(tiny_experts, tmp_path, kw, message):
    with pytest.raises(runio.UserError, match=message):
        evaluate.main(evaluate.Args(experts=(str(tiny_experts),), out_dir=str(tmp_path / "out"), **kw))
    assert not (tmp_path / "out").exists()


def test_policies_that_are_not_ours(tmp_path):
    d = tmp_path / "p"
    cases = {
        "list": ([1, 2], "model.pt: holds a list, not a checkpoint"),
        "no_format": ({"model": "hyperzero"}, "unknown format ''"),
        "hz_incomplete": ({"format": "cleanhyper-hyperzero-v1", "model": "mlp"}, "incomplete hyperzero.py checkpoint: no task"),
        "meta_incomplete": ({"format": "cleanhyper-meta-v1", "model": "maml"}, "incomplete meta.py checkpoint: no task"),
    }  # fmt: skip
    for name, (obj, message) in cases.items():
        runio.atomic_save(obj, d / name / "model.pt")
        with pytest.raises(runio.UserError, match=message) as e:
            evaluate.main(evaluate.Args(policies=(str(d / name),), out_dir=str(tmp_path / "out")))
        assert "\n" not in str(e.value)
    (d / "truncated").mkdir()
    (d / "truncated" / "hyperzero.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(runio.UserError, match="cannot load .*hyperzero.pt"):
        evaluate.main(evaluate.Args(policies=(str(d / "truncated"),), out_dir=str(tmp_path / "out")))
    with pytest.raises(runio.UserError, match="lists .* twice"):
        evaluate.main(evaluate.Args(policies=(str(d / "list"), str(d / "list") + "/"), out_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_out_dir_a_file_or_an_earlier_run(tiny_experts, tmp_path):
    args = dict(experts=(str(tiny_experts),), episodes=1, bootstrap_reps=10)
    (tmp_path / "file").write_text("x")
    with pytest.raises(runio.UserError, match="is a file"):
        evaluate.main(evaluate.Args(out_dir=str(tmp_path / "file"), **args))
    evaluate.main(evaluate.Args(out_dir=str(tmp_path / "ev"), **args))
    before = (tmp_path / "ev" / "results.json").read_text()
    with pytest.raises(runio.UserError, match="already holds an earlier run .*--overwrite"):
        evaluate.main(evaluate.Args(out_dir=str(tmp_path / "ev"), seed=2, **args))
    assert (tmp_path / "ev" / "results.json").read_text() == before
    evaluate.main(evaluate.Args(out_dir=str(tmp_path / "ev"), seed=2, overwrite=True, **args))
    assert (tmp_path / "ev" / "results.json").read_text() != before
    assert not [p for p in (tmp_path / "ev").iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("argv", [["--episodes", "0"], ["--samples", "0"], ["--seed", "-5"]])
def test_cli_bad_flags_one_line_exit_2(tiny_experts, tmp_path, argv, refused):
    line = refused("evaluate.py", "--experts", tiny_experts, "--out-dir", tmp_path / "out", *argv)
    assert f"{argv[0]} must be a finite number" in line and not (tmp_path / "out").exists()


def test_plots_follow_the_varying_context_variables(tmp_path):
    """cheetah-run contexts carry speed and length: one varying -> return against it, no heat map; both -> a heat map
    whose cells are each method's mean over runs, held-out cells known."""

    def rows_for(grid):
        return [
            {"method": m, "run": run, "label": f"s{sp}_l{ln}", "context": {"speed": sp, "length": ln},
             "heldout": (sp, ln) == (2.0, 0.4) and m == "hz", "return_mean": sp, "return_std": 0.0,
             "normalized": None if m == "random" else sp / 2 + ln + (0.1 if run == "b" else 0.0), "success_rate": None}
            for m, runs in (("random", [None]), ("expert", [None]), ("hz", ["a", "b"])) for run in runs for sp, ln in grid
        ]  # fmt: skip

    one = rows_for([(1.0, 0.5), (2.0, 0.5), (3.0, 0.5)])
    assert evaluate.varying(one) == ["speed"]
    assert evaluate.plot(one, "cheetah-run", tmp_path / "a") == ["returns.png", "normalized.png"]
    both = rows_for([(sp, ln) for sp in (1.0, 2.0) for ln in (0.4, 0.6)])
    assert evaluate.varying(both) == ["speed", "length"]
    assert evaluate.plot(both, "cheetah-run", tmp_path / "b") == ["returns.png", "normalized.png", "heatmap.png"]
    assert (tmp_path / "b" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    gx, gy, grid, held = evaluate.score_grid([r for r in both if r["method"] == "hz"], ["speed", "length"])
    assert gx == [1.0, 2.0] and gy == [0.4, 0.6] and held == {(1, 0)}
    np.testing.assert_allclose(grid, [[0.95, 1.45], [1.15, 1.65]])  # [length, speed]: speed/2 + length + 0.05
