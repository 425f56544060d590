"""evaluate.py: rows and keys, the normalised score, paired seeds, plots, and bad input."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import tasks
import td3

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"method", "task", "context", "heldout", "episodes", "return_mean", "return_std", "success_rate", "normalized"}


def test_experts_only_rows_and_normalisation(tiny_experts, tmp_path):
    res = evaluate.main(evaluate.Args(experts=str(tiny_experts), episodes=2, seed=3, out_dir=str(tmp_path / "ev")))
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert rows == json.loads(json.dumps(res["rows"]))
    assert {(r["method"], r["context"]["goal"]) for r in rows} == {(m, g) for m in ("random", "expert") for g in (0.5, 2.0)}
    for r in rows:
        assert KEYS <= set(r) and r["task"] == "cheetah-vel" and r["episodes"] == 2
        assert r["success_rate"] is None and r["heldout"] is None  # no approximator: nobody held anything out
        assert r["normalized"] == pytest.approx(1.0 if r["method"] == "expert" else 0.0)
    # the expert row is the deterministic rollout of the expert with the same seeds
    e = td3.load_experts(tiny_experts)[0]
    direct = td3.evaluate_policy("cheetah-vel", e["context"], td3.expert_layers(e), 2, 3)
    row = next(r for r in rows if r["method"] == "expert" and r["label"] == e["label"])
    assert row["return_mean"] == pytest.approx(direct["return_mean"])
    for f in ("results.csv", "summary.json", "returns.png", "normalized.png"):
        assert (tmp_path / "ev" / f).stat().st_size > 0


def test_random_baseline_is_seeded_and_near_zero_velocity():
    (ctx,) = tasks.parse_contexts("cheetah-vel", ["2.0"])
    a = td3.evaluate_policy("cheetah-vel", ctx, None, 2, 5)  # layers None: uniform-random actions
    b = td3.evaluate_policy("cheetah-vel", ctx, None, 2, 5)
    assert a == b and a["returns"][0] != a["returns"][1]
    # a random cheetah barely moves: about -|goal| per step, minus the control cost of U(-1,1)^6 (0.05 * 6/3)
    assert -2.4 * 200 < a["return_mean"] < -1.6 * 200


def test_normalised_score_formula():
    rows = [
        {"method": m, "label": lab, "return_mean": R, "normalized": None}
        for m, lab, R in [("random", "g", -300.0), ("expert", "g", -50.0), ("hyperzero", "g", -100.0), ("hyperzero", "h", -1.0)]
    ]
    evaluate.normalize(rows)
    # negative returns: (R - random) / (expert - random), never R / expert; no expert for h, no score
    assert [r["normalized"] for r in rows] == [0.0, 1.0, pytest.approx(0.8), None]


def test_top_k_success_is_per_policy_not_per_episode():
    # 10 generated policies, each succeeding in 1 of 2 episodes, and one that always succeeds
    per_policy = [0.5] * 10 + [1.0]
    top = evaluate.top_k_success(per_policy)
    assert top == {"top5_success": pytest.approx(0.6), "top10_success": pytest.approx(0.55)}
    # the released code's shortcut (sort the 22 episode successes, average the top k) would give 1.0 for both
    episodes = sorted([1.0, 0.0] * 10 + [1.0, 1.0], reverse=True)
    assert np.mean(episodes[:5]) == np.mean(episodes[:10]) == 1.0
    summary = evaluate.summarize(
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
    assert "top-5 success" in evaluate.format_table([summary])


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
    with pytest.raises(tasks.UserError, match="different tasks"):
        evaluate.main(evaluate.Args(experts=str(mixed), out_dir=str(tmp_path / "x")))


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
