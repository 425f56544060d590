"""td3.py: contextual tasks, the policy form, batched TD3, files, determinism, resume and error paths."""

import csv
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest
import torch

import td3

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(out, **kw) -> td3.Args:
    base = dict(
        task="cheetah-vel",
        contexts=("0.5", "2.0"),
        total_timesteps=600,
        learning_starts=200,
        batch_size=32,
        hidden=(16, 16),
        eval_interval=0,
        eval_episodes=2,
        checkpoint_interval=200,
        log_interval=10_000,
        out_dir=str(out),
    )
    base.update(kw)
    return td3.Args(**base)


# ---------------------------------------------------------------------------------------------- tasks
# dm_control.utils.rewards.tolerance(x, bounds=(0, 1), margin=1, value_at_margin=0.1) at x = 1.5, 2, 3
REFERENCE = {
    "gaussian": (0.5623, 0.1, 1e-4),
    "linear": (0.55, 0.1, 0.0),
    "hyperbolic": (0.4264, 0.1, 0.005),
    "long_tail": (0.3077, 0.1, 0.027),
    "reciprocal": (0.1818, 0.1, 0.0526),
    "cosine": (0.6581, 0.1, 0.0),
    "quadratic": (0.775, 0.1, 0.0),
    "tanh_squared": (0.4805, 0.1, 0.0028),
}


@pytest.mark.parametrize("sigmoid", sorted(REFERENCE))
def test_tolerance_matches_dm_control(sigmoid):
    got = td3.tolerance(np.array([1.5, 2.0, 3.0]), bounds=(0, 1), margin=1, sigmoid=sigmoid, value_at_margin=0.1)
    np.testing.assert_allclose(got, REFERENCE[sigmoid], atol=6e-4, rtol=2e-3)
    assert td3.tolerance(0.5, bounds=(0, 1), margin=1, sigmoid=sigmoid) == 1.0  # inside the bounds
    assert td3.tolerance(-0.5, bounds=(0, 1), margin=0.0) == 0.0  # margin 0: an indicator


def test_parse_contexts_fills_defaults_and_validates():
    assert td3.parse_contexts("cheetah-vel", ["1.5"]) == [{"goal": 1.5}]
    assert td3.parse_contexts("cheetah-run", ["speed=3,length=0.4"]) == [{"speed": 3.0, "length": 0.4}]
    assert td3.parse_contexts("walker-walk", ["2"]) == [{"speed": 2.0, "length": 0.2}]
    assert td3.parse_contexts("metaworld", ["reach-v3"], seed=4) == [{"env_name": "reach-v3", "goal_seed": 4}]
    for task, spec, msg in [
        ("cheetah-vel", "3.5", "out of range"),
        ("cheetah-vel", "-0.1", "out of range"),
        ("cheetah-run", "length=0", "out of range"),
        ("cheetah-run", "mass=2", "no context 'mass'"),
        ("cheetah-vel", "fast", "not a number"),
        ("metaworld", "reach-v2", "unknown MetaWorld task"),
        ("hopper", "1", "unknown task"),
    ]:
        with pytest.raises(td3.UserError, match=msg):
            td3.parse_contexts(task, [spec])


def _rollout(env, actions, seed=0):
    env.reset(seed=seed)
    out = [env.step(a) for a in actions]
    return np.array([o[0] for o in out]), np.array([o[1] for o in out]), [o[4] for o in out]


def test_speed_changes_only_the_reward():
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 6))
    (c1,) = td3.parse_contexts("cheetah-run", ["speed=1"])
    (c2,) = td3.parse_contexts("cheetah-run", ["speed=5"])
    obs1, rew1, info1 = _rollout(td3.make_env("cheetah-run", c1), actions)
    obs2, rew2, _ = _rollout(td3.make_env("cheetah-run", c2), actions)
    np.testing.assert_array_equal(obs1, obs2)  # same dynamics
    v = np.array([i["x_velocity"] for i in info1])
    np.testing.assert_allclose(rew1, td3.tolerance(v, (1, np.inf), 1, "linear", 0.1))
    np.testing.assert_allclose(rew2, td3.tolerance(v, (5, np.inf), 5, "linear", 0.1))
    assert np.abs(rew1 - rew2).max() > 0.05


def test_cheetah_vel_reward_formula():
    (ctx,) = td3.parse_contexts("cheetah-vel", ["2.0"])
    actions = np.random.default_rng(1).uniform(-1, 1, (20, 6))
    _, rew, info = _rollout(td3.make_env("cheetah-vel", ctx), actions)
    v = np.array([i["x_velocity"] for i in info])
    np.testing.assert_allclose(rew, -np.abs(v - 2.0) - 0.05 * (actions**2).sum(1))


def test_walker_reward_and_no_early_termination():
    (ctx,) = td3.parse_contexts("walker-walk", ["1.0"])
    env = td3.make_env("walker-walk", ctx)
    env.reset(seed=0)
    for _ in range(300):  # a falling walker is not terminated
        _, r, terminated, truncated, info = env.step(-np.ones(6))
        assert not terminated and 0.0 <= r <= 1.0
    q = env.unwrapped.data.qpos
    stand = (3 * td3.tolerance(q[1], (1.2, np.inf), 0.6) + (1 + np.cos(q[2])) / 2) / 4
    move = td3.tolerance(info["x_velocity"], (1.0, np.inf), 1.0, "linear", 0.1)
    assert r == pytest.approx(stand * (5 * move + 1) / 6)


def test_length_changes_model_and_motion_only_for_cheetah_torso():
    base, longer = td3.parse_contexts("cheetah-run", ["length=0.5", "length=0.8"])
    m0 = td3.make_env("cheetah-run", base).unwrapped.model
    m1 = td3.make_env("cheetah-run", longer).unwrapped.model
    g0, g1 = m0.geom("torso"), m1.geom("torso")
    assert g0.size[1] == pytest.approx(0.5) and g1.size[1] == pytest.approx(0.8)  # capsule half-length
    np.testing.assert_allclose(m1.body("fthigh").pos, [0.8, 0, 0])
    np.testing.assert_allclose(m1.body("bthigh").pos, [-0.8, 0, 0])
    np.testing.assert_allclose(m1.geom("head").pos, [0.9, 0, 0.1])
    assert m1.body_subtreemass[1] == pytest.approx(14.0)  # settotalmass keeps 14 kg, redistributed
    assert m1.body("torso").mass[0] > m0.body("torso").mass[0]
    np.testing.assert_allclose(m1.body("bshin").pos, m0.body("bshin").pos)  # the legs are unchanged
    # the stock model equals length 0.5
    stock = mujoco.MjModel.from_xml_path(str(Path(td3.gym.__file__).parent / "envs/mujoco/assets/half_cheetah.xml"))
    np.testing.assert_allclose(stock.body_mass, m0.body_mass, rtol=1e-6)
    actions = np.random.default_rng(2).uniform(-1, 1, (50, 6))
    obs0, _, _ = _rollout(td3.make_env("cheetah-run", base), actions)
    obs1, _, _ = _rollout(td3.make_env("cheetah-run", longer), actions)
    assert np.abs(obs0 - obs1).max() > 0.1  # same actions, different motion


def test_walker_length_changes_torso_geom():
    short, long = td3.parse_contexts("walker-walk", ["length=0.15", "length=0.35"])
    g0 = td3.make_env("walker-walk", short).unwrapped.model.geom("torso_geom")
    g1 = td3.make_env("walker-walk", long).unwrapped.model.geom("torso_geom")
    assert g0.size[1] == pytest.approx(0.15) and g1.size[1] == pytest.approx(0.35)


def test_metaworld_goal_fixed_by_seed_and_truncation_at_500():
    (c0,) = td3.parse_contexts("metaworld", ["reach-v3"], seed=0)
    (c1,) = td3.parse_contexts("metaworld", ["reach-v3"], seed=1)
    e0, e0b, e1 = td3.make_env("metaworld", c0), td3.make_env("metaworld", c0), td3.make_env("metaworld", c1)
    o0, o0b, o1 = e0.reset()[0], e0b.reset()[0], e1.reset()[0]
    np.testing.assert_array_equal(o0, o0b)
    assert np.abs(o0[36:39] - o1[36:39]).max() > 1e-3  # another seed, another goal
    for t in range(500):
        _, _, terminated, truncated, info = e0.step(np.zeros(4))
        assert not terminated and truncated == (t == 499) and "success" in info


def test_metaworld_evaluation_survives_a_weights_only_checkpoint(tmp_path):
    # evaluations go into checkpoint.pt; a numpy scalar from MetaWorld's reward made resume fail to load
    (ctx,) = td3.parse_contexts("metaworld", ["coffee-button-v3"], seed=1)  # its reward is a numpy.float64
    r = td3.evaluate_policy("metaworld", ctx, None, 1, seed=3)
    td3.atomic_save(
        {"last_eval": {"coffee-button-v3": r}, "best": [{"score": [r["success_rate"], r["return_mean"]]}]}, tmp_path / "c.pt"
    )
    assert td3.safe_load(tmp_path / "c.pt")["last_eval"]["coffee-button-v3"] == r


# ---------------------------------------------------------------------------------------------- policy form
def test_mlp_equals_nn_sequential_and_flatten_round_trip():
    torch.manual_seed(0)
    sizes = [5, 8, 7, 3]
    layers = td3.init_layers(4, sizes)
    flat = td3.flatten_layers(layers)
    assert flat.shape == (4, td3.n_params(sizes))
    back = td3.unflatten_layers(flat, sizes)
    for (W, b), (W2, b2) in zip(layers, back):
        assert torch.equal(W, W2) and torch.equal(b, b2)
    x = torch.randn(4, 10, 5)
    y = td3.mlp(layers, x)
    for k in range(4):
        seq = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3), torch.nn.Tanh()
        )
        with torch.no_grad():
            for lin, (W, b) in zip([seq[0], seq[2], seq[4]], layers):
                lin.weight.copy_(W[k].T)
                lin.bias.copy_(b[k, 0])
        torch.testing.assert_close(y[k], seq(x[k]), rtol=1e-5, atol=1e-6)
    # documented flat order: layer 0's W row-major, then its bias
    assert flat[1, 0] == layers[0][0][1, 0, 0] and flat[1, 1] == layers[0][0][1, 0, 1]
    assert flat[1, 5 * 8] == layers[0][1][1, 0, 0]
    with pytest.raises(td3.UserError, match="need"):
        td3.unflatten_layers(flat[:, :-1], sizes)


def test_batched_update_equals_separate_updates():
    """K contexts in one TD3 equal K single-context TD3s: critics, actor, targets and Adam state."""
    torch.manual_seed(0)
    K, B, S, A = 3, 16, 5, 2
    args = td3.Args(hidden=(8, 8), tau=0.05)
    big = td3.TD3(K, S, A, args.hidden, 1e-3, "cpu")
    singles = [td3.TD3(1, S, A, args.hidden, 1e-3, "cpu") for _ in range(K)]
    with torch.no_grad():
        for k, one in enumerate(singles):
            for src, dst in ((big.actor, one.actor), (big.actor_t, one.actor_t)):
                for s, d in zip(src, dst):
                    d.copy_(s[k : k + 1])
            for src, dst in ((big.critic, one.critic), (big.critic_t, one.critic_t)):
                for s, d in zip(src, dst):
                    d.copy_(torch.cat([s[k : k + 1], s[K + k : K + k + 1]]))  # Q1 of k, Q2 of k
    for it in range(4):
        batch = (
            torch.randn(K, B, S),
            torch.rand(K, B, A) * 2 - 1,
            torch.randn(K, B),
            torch.randn(K, B, S),
            (torch.rand(K, B) < 0.2).float(),
        )
        noise = torch.randn(K, B, A) * args.policy_noise
        big.update(batch, args, update_actor=it % 2 == 1, noise=noise)
        for k, one in enumerate(singles):
            one.update(tuple(t[k : k + 1] for t in batch), args, update_actor=it % 2 == 1, noise=noise[k : k + 1])
    for k, one in enumerate(singles):
        for name in ("actor", "actor_t"):
            for s, d in zip(getattr(big, name), getattr(one, name)):
                torch.testing.assert_close(s[k : k + 1].detach(), d.detach(), rtol=1e-5, atol=1e-6)
        for name in ("critic", "critic_t"):
            for s, d in zip(getattr(big, name), getattr(one, name)):
                torch.testing.assert_close(
                    torch.cat([s[k : k + 1], s[K + k : K + k + 1]]).detach(), d.detach(), rtol=1e-5, atol=1e-6
                )
        for opt_big, opt_one, twin in ((big.actor_opt, one.actor_opt, False), (big.critic_opt, one.critic_opt, True)):
            for p_big, p_one in zip(opt_big.param_groups[0]["params"], opt_one.param_groups[0]["params"]):
                for key in ("exp_avg", "exp_avg_sq"):
                    sb = opt_big.state[p_big][key]
                    sb = torch.cat([sb[k : k + 1], sb[K + k : K + k + 1]]) if twin else sb[k : k + 1]
                    torch.testing.assert_close(sb, opt_one.state[p_one][key], rtol=1e-5, atol=1e-7)
                assert float(opt_big.state[p_big]["step"]) == float(opt_one.state[p_one]["step"])


# ---------------------------------------------------------------------------------------------- runs and files
def test_short_run_writes_loadable_experts_and_reproducible_eval(tmp_path):
    res = td3.main(tiny_args(tmp_path / "run", snapshot_interval=100, snapshot_start=300))
    assert len(res["experts"]) == 2
    for f in ("metrics.csv", "args.json", "snapshots_goal_0.5.npy", "snapshot_steps.npy", "checkpoint.pt"):
        assert (tmp_path / "run" / f).is_file()
    snaps = np.load(tmp_path / "run" / "snapshots_goal_2.npy", allow_pickle=False)
    steps = np.load(tmp_path / "run" / "snapshot_steps.npy", allow_pickle=False)
    assert snaps.shape == (4, td3.n_params([17, 16, 16, 6])) and snaps.dtype == np.float32
    assert steps.tolist() == [300, 400, 500, 600]
    e = torch.load(res["experts"][1], weights_only=True)
    assert e["context"] == {"goal": 2.0} and e["task"] == "cheetah-vel" and e["step"] == 600
    assert [tuple(t.shape) for t in e["actor"]] == [(17, 16), (1, 16), (16, 16), (1, 16), (16, 6), (1, 6)]
    assert e["args"]["hidden"] == [16, 16] or tuple(e["args"]["hidden"]) == (16, 16)
    # the saved evaluation is reproduced by rolling the loaded actor out with the same seed
    again = td3.evaluate_policy("cheetah-vel", e["context"], td3.expert_layers(e), e["eval_episodes"], e["eval_seed"])
    assert again["return_mean"] == pytest.approx(e["eval_return"], abs=1e-6)
    # snapshots are taken along training: the one at step 600 is the final actor, earlier ones differ
    final = td3.flatten_layers(td3.expert_layers(e)).numpy()[0]
    np.testing.assert_array_equal(snaps[-1], final)
    assert not np.allclose(snaps[0], final)


def test_keep_best_saves_the_best_evaluated_actor(tmp_path):
    res = td3.main(tiny_args(tmp_path / "run", total_timesteps=1000, eval_interval=200, keep_best=True, snapshot_interval=200))
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    snaps_at = np.load(tmp_path / "run" / "snapshot_steps.npy", allow_pickle=False).tolist()
    kept_steps = []
    for path in res["experts"]:
        e = torch.load(path, weights_only=True)
        # every evaluation is logged at the episode end of its step (200-step episodes): the kept one is the best
        evals = {int(r["step"]): float(r["eval_return"]) for r in rows if r["context"] == e["label"]}
        assert sorted(evals) == [200, 400, 600, 800, 1000] and e["final_step"] == 1000
        assert e["step"] == max(evals, key=evals.get) and e["eval_return"] == pytest.approx(max(evals.values()))
        # the kept weights are the actor of that step (its snapshot) and reproduce the saved evaluation
        snap = np.load(tmp_path / "run" / f"snapshots_{e['label']}.npy", allow_pickle=False)[snaps_at.index(e["step"])]
        np.testing.assert_array_equal(td3.flatten_layers(td3.expert_layers(e)).numpy()[0], snap)
        again = td3.evaluate_policy("cheetah-vel", e["context"], td3.expert_layers(e), e["eval_episodes"], e["eval_seed"])
        assert again["return_mean"] == pytest.approx(e["eval_return"], abs=1e-6)
        kept_steps.append(e["step"])
    assert min(kept_steps) < 1000  # at least one context peaked before the end, so the flag changed something


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = td3.main(tiny_args(tmp_path / "a", contexts=("1.0",), total_timesteps=400))
    b = td3.main(tiny_args(tmp_path / "b", contexts=("1.0",), total_timesteps=400))
    c = td3.main(tiny_args(tmp_path / "c", contexts=("1.0",), total_timesteps=400, seed=2))
    ea, eb, ec = (torch.load(r["experts"][0], weights_only=True) for r in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(ea["actor"] + ea["critic1"], eb["actor"] + eb["critic1"]))
    assert not torch.equal(ea["actor"][0], ec["actor"][0])


@pytest.mark.parametrize("keep_best", [False, True])
def test_resume_reaches_the_same_state(tmp_path, keep_best):
    kw = {"keep_best": keep_best, "eval_interval": 200 if keep_best else 0}
    full = td3.main(tiny_args(tmp_path / "full", total_timesteps=800, **kw))
    td3.main(tiny_args(tmp_path / "part", total_timesteps=400, **kw))  # "killed" after its checkpoint at 400
    part = td3.main(tiny_args(tmp_path / "part", total_timesteps=800, resume=True, **kw))
    for f_full, f_part in zip(full["experts"], part["experts"]):
        x, y = torch.load(f_full, weights_only=True), torch.load(f_part, weights_only=True)
        for key in ("actor", "critic1", "critic2"):
            assert all(torch.equal(a, b) for a, b in zip(x[key], y[key])), key
        assert (x["eval_return"], x["step"]) == (y["eval_return"], y["step"])
    ck_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    ck_part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ck_full["replay"]["obs"], ck_part["replay"]["obs"])
    assert [r["episodic_return"] for r in ck_full["rows"]] == [r["episodic_return"] for r in ck_part["rows"]]


# ---------------------------------------------------------------------------------------------- bad input
def run_cli(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, "td3.py", *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--task", "hopper"], "unknown task 'hopper'; valid tasks: cheetah-vel"),
        (["--task", "cheetah-run", "--contexts", "mass=2"], "has no context 'mass'; its contexts: speed, length"),
        (["--contexts", "4.0"], "out of range; valid: [0.0, 3.0]"),
        (["--task", "cheetah-run", "--contexts", "length=-1"], "out of range"),
    ],
)
def test_cli_bad_input_one_line_exit_2(argv, msg, tmp_path):
    r = run_cli(*argv, "--out-dir", str(tmp_path / "x"))
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing written


def test_cli_corrupt_and_incompatible_resume(tmp_path):
    run = tmp_path / "run"
    td3.main(tiny_args(run, total_timesteps=400))
    good = (run / "checkpoint.pt").read_bytes()
    experts_before = {p.name: p.read_bytes() for p in run.glob("expert_*.pt")}
    common = ["--total-timesteps", "800", "--learning-starts", "200", "--batch-size", "32", "--hidden", "16", "16"]
    common += ["--contexts", "0.5", "2.0", "--out-dir", str(run), "--resume", "--eval-interval", "0"]
    r = run_cli(*common, "--gamma", "0.9", "--checkpoint-interval", "200")
    assert r.returncode == 2 and "flags differ from the checkpointed run: gamma" in r.stderr and "Traceback" not in r.stderr
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])  # truncated
    r = run_cli(*common, "--checkpoint-interval", "200")
    assert r.returncode == 2 and "cannot load" in r.stderr and "checkpoint.pt" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in run.glob("expert_*.pt")} == experts_before  # nothing overwritten
    (run / "checkpoint.pt").unlink()
    r = run_cli(*common)
    assert r.returncode == 2 and "missing file" in r.stderr


def test_help_explains_flags():
    r = run_cli("--help")
    assert r.returncode == 0 and "--total-timesteps" in r.stdout and "environment steps per context" in r.stdout


def test_atomic_save_permissions_and_no_partial_file(tmp_path):
    td3.atomic_save(np.arange(3, dtype=np.float32), tmp_path / "a.npy")
    assert (tmp_path / "a.npy").stat().st_mode & 0o044 == 0o044  # readable by others, as open() would make it
    with pytest.raises((TypeError, AttributeError)):  # a lambda cannot be pickled
        td3.atomic_save({"x": lambda: 0}, tmp_path / "b.pt")  # fails half-way: nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_shared_init_starts_every_context_from_one_draw():
    torch.manual_seed(0)
    shared = td3.TD3(3, 5, 2, (8, 8), 1e-3, "cpu", shared=True)
    for t in shared.actor:
        assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2])
    for t in shared.critic:  # [Q1 x 3, Q2 x 3]: the contexts share, the twins differ
        assert torch.equal(t[0], t[2]) and torch.equal(t[3], t[5]) and not torch.equal(t[0], t[3])
    torch.manual_seed(0)
    separate = td3.TD3(3, 5, 2, (8, 8), 1e-3, "cpu")
    assert not torch.equal(separate.actor[0][0], separate.actor[0][1])
