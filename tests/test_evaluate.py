"""evaluate.py: rows and keys, the normalised score, paired seeds, plots, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
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
    (ctx,) = td3.parse_contexts("cheetah-vel", ["2.0"])
    a = td3.evaluate_policy("cheetah-vel", ctx, None, 2, 5)  # layers None: uniform-random actions
    b = td3.evaluate_policy("cheetah-vel", ctx, None, 2, 5)
    assert a == b and a["returns"][0] != a["returns"][1]
    # a random cheetah barely moves: about -|goal| per step, minus the control cost of U(-1,1)^6 (0.05 * 6/3)
    assert -2.4 * 200 < a["return_mean"] < -1.6 * 200


def test_normalised_score_formula():
    rows = [
        {"method": "random", "label": "g", "return_mean": -300.0},
        {"method": "expert", "label": "g", "return_mean": -50.0},
        {"method": "hyperzero", "label": "g", "return_mean": -100.0},
    ]
    ref = {(r["method"], r["label"]): r["return_mean"] for r in rows}
    lo, hi = ref[("random", "g")], ref[("expert", "g")]
    assert (rows[2]["return_mean"] - lo) / (hi - lo) == pytest.approx(0.8)  # negative returns: never divide by expert alone


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
    with pytest.raises(td3.UserError, match="different tasks"):
        evaluate.main(evaluate.Args(experts=str(mixed), out_dir=str(tmp_path / "x")))


@pytest.mark.skipif(
    not any(Path(p).exists() for p in ("/lib/x86_64-linux-gnu/libOSMesa.so.8", "/usr/lib/x86_64-linux-gnu/libOSMesa.so.8")),
    reason="libosmesa6 not installed",
)
def test_capture_video(tiny_experts, tmp_path):
    r = run_cli("--experts", str(tiny_experts), "--episodes", "1", "--capture-video", "--out-dir", str(tmp_path / "v"))
    assert r.returncode == 0, r.stderr[-2000:]
    gifs = sorted((tmp_path / "v" / "videos").glob("*.gif"))
    assert [g.name for g in gifs] == ["expert_goal_0.5.gif", "expert_goal_2.gif"]
    import imageio.v2 as imageio

    frames = imageio.mimread(gifs[0])
    assert 50 <= len(frames) <= 100 and np.asarray(frames[0]).std() > 1  # 100 frames written (GIF merges repeats), not blank
