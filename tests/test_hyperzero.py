"""hyperzero.py: generated policy form, context-major = per-sample, TD loss by hand, zero-shot known answer,
MLP folding, checkpoints, determinism and error paths (maml and pearl refused: meta.py)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import collect
import hyperzero
import policy
import runio
from runio import UserError
from synthetic import M0, M1, A, S, write_linear_rollouts

ROOT = Path(__file__).resolve().parents[1]


def write_rollouts(root, goals, rows=300, seed=0) -> Path:
    """Q* = r = sum(s) with every transition terminal, so the value and TD targets are consistent."""
    return write_linear_rollouts(root, goals, rows, seed, reward=lambda obs, g: obs.sum(1), terminal=True)[0]


def small(rollouts, out, **kw) -> hyperzero.Args:
    base = dict(
        rollouts=str(rollouts), out_dir=str(out), embed_dim=32, policy_hidden=(32,), batch_size=120, steps=30, log_interval=10
    )
    return hyperzero.Args(**{**base, **kw})


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_rollouts(tmp_path_factory.mktemp("synth"), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


def random_batch(cb=3, n=5, c_dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return (r(cb, c_dim), r(cb, n, S), r(cb, n, A).tanh(), r(cb, n), r(cb, n, S), (r(cb, n) > 0).float(), r(cb, n))


def test_generated_shapes_and_mlp_equals_nn_sequential():
    torch.manual_seed(0)
    pi_sizes, q_sizes = [S, 8, 7, A], [S + A, 8, 7, 1]
    model = hyperzero.build_model("hyperzero", 2, 16, pi_sizes, q_sizes)
    c = torch.randn(3, 2)
    pi, q = model(c)
    assert [(tuple(W.shape), tuple(b.shape)) for W, b in pi] == [
        ((3, i, o), (3, 1, o)) for i, o in zip(pi_sizes[:-1], pi_sizes[1:])
    ]
    assert [tuple(W.shape) for W, _ in q] == [(3, i, o) for i, o in zip(q_sizes[:-1], q_sizes[1:])]
    x = torch.randn(3, 10, S)
    got = policy.mlp(pi, x)
    for k in range(3):
        lins = [torch.nn.Linear(W.shape[1], W.shape[2]) for W, _ in pi]
        with torch.no_grad():
            for lin, (W, b) in zip(lins, pi):
                lin.weight.copy_(W[k].T)
                lin.bias.copy_(b[k, 0])
        net = torch.nn.Sequential(lins[0], torch.nn.ReLU(), lins[1], torch.nn.ReLU(), lins[2], torch.nn.Tanh())
        torch.testing.assert_close(got[k], net(x[k]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["hyperzero", "mlp-q-td"])
def test_context_major_equals_per_sample(name):
    torch.manual_seed(0)
    model = hyperzero.build_model(name, 1, 16, [S, 8, A], [S + A, 8, 1])
    batch = random_batch()
    losses, grads = [], []
    for per_sample in (False, True):
        parts = hyperzero.compute_losses(model, batch, 0.99, use_td=True, per_sample=per_sample)
        model.zero_grad()
        (parts["bc"] + parts["value"] + parts["td"]).backward()
        losses.append(torch.stack([parts[k].detach() for k in ("bc", "value", "td")]))
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-5)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-4)


def test_td_loss_equals_hand_computed_value():
    # pi(s) = tanh(s), Q(s, a) = 2 s + a + 0.5 (S = A = 1), given to compute_losses as fixed generated layers.
    pi_W, q_W = torch.ones(1, 1, 1, requires_grad=True), torch.tensor([[[2.0], [1.0]]], requires_grad=True)
    layers = lambda c: ([(pi_W, torch.zeros(1, 1, 1))], [(q_W, torch.full((1, 1, 1), 0.5))])
    obs, act = torch.tensor([[[0.1], [0.2]]]), torch.tensor([[[0.3], [-0.1]]])
    rew, term, q = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 2.5]])
    next_obs = torch.tensor([[[0.5], [7.0]]])
    parts = hyperzero.compute_losses(layers, (torch.zeros(1, 1), obs, act, rew, next_obs, term, q), 0.99, use_td=True)
    # row 0: target 1 + 0.99 (2*0.5 + tanh(0.5) + 0.5); row 1 is terminal: target = r = 2
    want = ((3.0 - (1 + 0.99 * (1.0 + math.tanh(0.5) + 0.5))) ** 2 + (2.5 - 2.0) ** 2) / 2
    assert parts["td"].item() == pytest.approx(want, rel=1e-6)
    assert parts["value"].item() == pytest.approx(((3 - 0.2 - 0.3 - 0.5) ** 2 + (2.5 - 0.4 + 0.1 - 0.5) ** 2) / 2, rel=1e-6)
    parts["td"].backward()
    assert pi_W.grad is None or pi_W.grad.abs().sum() == 0  # sg(pi(s')): no gradient into the policy
    assert q_W.grad.abs().sum() > 0  # the bootstrapped side carries the gradient, as in the released code
    # --normalize-q: Q = 1 + 2 net(s, a), losses in units of 2
    batch = (torch.zeros(1, 1), obs, act, rew, next_obs, term, q)
    scaled = hyperzero.compute_losses(layers, batch, 0.99, use_td=True, q_shift=1.0, q_scale=2.0)
    want = ((3.0 - (1 + 0.99 * (1 + 2 * (1.0 + math.tanh(0.5) + 0.5)))) ** 2 + (2.5 - 2.0) ** 2) / 2 / 4
    assert scaled["td"].item() == pytest.approx(want, rel=1e-6)
    assert scaled["value"].item() == pytest.approx(((3 - 1 - 2 * 1.0) ** 2 + (2.5 - 1 - 2 * 0.8) ** 2) / 2 / 4, rel=1e-4)


def test_hyperzero_zero_shot_known_answer(synth, tmp_path):
    # held out: goal 1.25 and 2.25 (interpolation); the action is a smooth function of (goal, s)
    root = write_rollouts(tmp_path / "data", [0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 2.25, 2.5, 3.0], rows=400)
    res = hyperzero.main(
        small(
            root, tmp_path / "hz", test_contexts=("1.25", "2.25"), steps=600, batch_contexts=7, batch_size=280, log_interval=300
        )
    )
    assert res["split"]["test"] == [{"goal": 1.25}, {"goal": 2.25}]
    ckpt = hyperzero.load_checkpoint(tmp_path / "hz")
    layers = hyperzero.generate_policies(ckpt, res["split"]["test"])
    obs = torch.randn(2, 500, S, generator=torch.Generator().manual_seed(1))
    true = torch.tanh(
        torch.einsum("kas,kns->kna", torch.from_numpy(M0)[None] + torch.tensor([1.25, 2.25])[:, None, None] * M1, obs)
    )
    mse = ((policy.mlp(layers, obs) - true) ** 2).mean().item()
    constant = ((true - true.mean((0, 1))) ** 2).mean().item()  # best constant predictor, even given the test actions
    print(f"held-out MSE {mse:.2e} vs constant {constant:.3f}; logged held-out bc {res['test_bc']:.2e}")
    assert mse < 0.005 and mse < 0.02 * constant  # stated error: 0.005 (measured ~1e-4 at 600 steps)
    assert res["test_bc"] == pytest.approx(mse, abs=0.005)


def test_generate_policies_mlp_equals_concat_forward(synth, tmp_path):
    res = hyperzero.main(small(synth, tmp_path / "m", model="mlp", test_contexts=("1.5",)))
    ckpt = res["ckpt"]
    ctxs = [{"goal": 1.5}, {"goal": 0.25}, {"goal": 2.9}]
    layers = hyperzero.generate_policies(ckpt, ctxs)
    assert [tuple(W.shape) for W, _ in layers] == [(3, S, 32), (3, 32, A)]
    model = hyperzero.build_model("mlp", 1, 32, ckpt["policy_sizes"], ckpt["q_sizes"])
    model.load_state_dict(ckpt["state_dict"])
    c = (torch.tensor([[1.5], [0.25], [2.9]]) - torch.tensor(ckpt["ctx_mean"])) / torch.tensor(ckpt["ctx_std"])
    x = torch.randn(3, 20, S)
    torch.testing.assert_close(policy.mlp(layers, x), model.act(c, x), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(policy.mlp(layers, x)[0], policy.mlp(layers, x)[1])  # the context matters


@pytest.mark.parametrize("name", sorted(hyperzero.MODELS))
def test_every_model_trains_and_round_trips(synth, tmp_path, name):
    res = hyperzero.main(small(synth, tmp_path / name, model=name, steps=20))
    ckpt = torch.load(tmp_path / name / "hyperzero.pt", weights_only=True)  # plain dict, no pickle
    assert ckpt["format"] == "cleanhyper-hyperzero-v1" and ckpt["model"] == name and ckpt["gamma"] == 0.99
    held_out = np.isin(np.load(synth / "context.npy")[:, 0], [c["goal"] for c in ckpt["split"]["test"]])
    q_train = np.load(synth / "q.npy")[~held_out].astype(np.float64)
    assert (ckpt["q_shift"], ckpt["q_scale"]) == pytest.approx((q_train.mean(), q_train.std()), rel=1e-6)
    assert ckpt["policy_sizes"] == [S, 32, A] and ckpt["context_names"] == ["goal"] and ckpt["args"]["policy_hidden"] == [32]
    assert len(ckpt["split"]["test"]) == 1 and len(ckpt["split"]["train"]) == 6  # int(0.15 * 7) -> at least 1
    assert set(res["history"][-1]) >= {"loss", "bc", "test_bc", "steps_per_s"}
    assert ("td" in res["history"][-1]) == hyperzero.MODELS[name].td and ("value" in res["history"][-1]) == hyperzero.MODELS[
        name
    ].q
    ctxs = [{"goal": 0.7}, {"goal": 3.0}]
    for (W0, b0), (W1, b1) in zip(hyperzero.generate_policies(res["ckpt"], ctxs), hyperzero.generate_policies(ckpt, ctxs)):
        assert torch.equal(W0, W1) and torch.equal(b0, b1)


def test_split_seeded_and_stored(synth, tmp_path):
    a = hyperzero.main(small(synth, tmp_path / "a", steps=2, seed=5, test_fraction=0.3))
    b = hyperzero.main(small(synth, tmp_path / "b", steps=2, seed=5, test_fraction=0.3))
    assert a["split"] == b["split"] and len(a["split"]["test"]) == 2
    assert a["ckpt"]["split"] == a["split"]
    splits = {
        json.dumps(hyperzero.main(small(synth, tmp_path / f"s{s}", steps=1, seed=s, test_fraction=0.3))["split"])
        for s in range(4)
    }
    assert len(splits) > 1


def test_same_seed_same_weights(synth, tmp_path):
    sd = [
        hyperzero.main(small(synth, tmp_path / f"r{i}", steps=5, seed=s))["ckpt"]["state_dict"] for i, s in enumerate((1, 1, 2))
    ]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    assert not all(torch.equal(sd[0][k], sd[2][k]) for k in sd[0])


def test_real_pipeline_collect_then_train(tiny_experts, tmp_path):
    collect.main(collect.Args(experts=(str(tiny_experts),), episodes=1, seed=1, out_dir=str(tmp_path / "r"), snapshots=False))
    res = hyperzero.main(
        hyperzero.Args(rollouts=str(tmp_path / "r"), test_contexts=("2.0",), out_dir=str(tmp_path / "h"), steps=10, embed_dim=32)
    )
    assert res["split"] == {"train": [{"goal": 0.5}], "test": [{"goal": 2.0}]} and math.isfinite(res["test_bc"])
    layers = hyperzero.generate_policies(hyperzero.load_checkpoint(tmp_path / "h" / "hyperzero.pt"), [{"goal": 1.0}])
    ev = policy.evaluate_policy("cheetah-vel", {"goal": 1.0}, layers, 1, 0)  # the generated form runs in the environment
    assert math.isfinite(ev["return_mean"])


def test_error_paths(synth, tmp_path):
    with pytest.raises(UserError, match="valid models: hyperzero, hyperzero-no-td"):
        hyperzero.main(small(synth, tmp_path / "x", model="transformer"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no rollouts"):
        hyperzero.main(small(tmp_path / "empty", tmp_path / "x"))
    mixed = write_rollouts(tmp_path / "mixed", [0.5, 1.0])
    np.save(mixed / "obs.npy", np.zeros((7, S), np.float32))  # an array from another rollout set
    with pytest.raises(UserError, match="inconsistent"):
        hyperzero.main(small(mixed, tmp_path / "x"))
    with pytest.raises(UserError, match="not in the rollouts"):
        hyperzero.main(small(synth, tmp_path / "x", test_contexts=("1.7",)))
    with pytest.raises(UserError, match="every context is held out"):
        hyperzero.main(small(synth, tmp_path / "x", test_contexts=tuple(str(g) for g in (0, 0.5, 1, 1.5, 2, 2.5, 3))))
    ckpt = hyperzero.main(small(synth, tmp_path / "ok", steps=1))["ckpt"]
    for bad in ({"speed": 1.0}, {"goal": 1.0, "length": 0.5}):
        with pytest.raises(UserError, match="context variables"):
            hyperzero.generate_policies(ckpt, [bad])
    runio.atomic_save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a hyperzero.py checkpoint"):
        hyperzero.load_checkpoint(tmp_path / "other.pt")


def test_non_finite_loss_names_the_step(tmp_path):
    root = write_rollouts(tmp_path / "d", [0.5, 1.0, 2.0])
    np.save(root / "q.npy", np.full(900, 1e30, np.float32))  # (1e30)^2 overflows float32
    with pytest.raises(UserError, match="non-finite loss at step 1"):
        hyperzero.main(small(root, tmp_path / "x"))


def test_meta_models_refused_with_a_pointer_to_meta_py(synth, tmp_path):
    for name in ("maml", "pearl"):
        with pytest.raises(UserError, match=f"--model {name} is trained by meta.py now"):
            hyperzero.main(small(synth, tmp_path / "x", model=name))
    p = subprocess.run(
        [sys.executable, "hyperzero.py", "--rollouts", str(synth), "--model", "maml", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "python meta.py --model maml" in p.stderr
    assert not (tmp_path / "hyperzero.pt").exists()
    # a checkpoint an older hyperzero.py wrote with --model maml (same format name): one line saying to retrain
    ckpt = hyperzero.main(small(synth, tmp_path / "ok", steps=1))["ckpt"]
    runio.atomic_save({**ckpt, "model": "pearl"}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="old hyperzero.py --model pearl checkpoint: retrain it with meta.py --model pearl"):
        hyperzero.load_checkpoint(tmp_path / "old.pt")


def test_cli_error_one_line_exit_2(synth, tmp_path):
    p = subprocess.run(
        [sys.executable, "hyperzero.py", "--rollouts", str(synth), "--model", "nope", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.startswith("error: unknown model 'nope'") and len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Bad input (flags, --out-dir, rollout files, checkpoints): one line, before any work, nothing written
# ---------------------------------------------------------------------------------------------------------------------
NO_CUDA = not torch.cuda.is_available()

FLAG_CASES = [  # Args overrides -> the one line that refuses them
    (dict(steps=0), "--steps must be a finite number > 0, got 0"),
    (dict(batch_size=-4), "--batch-size must be a finite number > 0, got -4"),
    (dict(batch_contexts=0), "--batch-contexts must be"),
    (dict(log_interval=0), "--log-interval must be a finite number > 0"),
    (dict(learning_rate=float("nan")), "--learning-rate must be a finite number > 0, got nan"),
    (dict(embed_dim=0), "--embed-dim must be"),
    (dict(policy_hidden=(32, 0)), r"--policy-hidden must be a finite number > 0, got \(32, 0\)"),
    (dict(seed=-5), "--seed must be a finite number >= 0, got -5"),
    (dict(epochs=-1), "--epochs must be a finite number >= 0"),
    (dict(td_weight=float("inf")), "--td-weight must be a finite number >= 0, got inf"),
    (dict(test_fraction=1.0), r"--test-fraction must be in \[0, 1\), got 1.0"),
    (dict(test_fraction=float("nan")), "--test-fraction must be in"),
    (dict(model="maml"), "--model maml is trained by meta.py now"),
]
if NO_CUDA:
    FLAG_CASES.append((dict(device="cuda"), "cuda"))


@pytest.mark.parametrize("kw, message", FLAG_CASES, ids=[",".join(kw) + f"={list(kw.values())[0]}" for kw, _ in FLAG_CASES])
def test_bad_flags_refused_before_any_work(synth, tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        hyperzero.main(small(synth, tmp_path / "out", **kw))
    assert not (tmp_path / "out").exists()  # refused before --out-dir is made


def test_out_dir_a_file_or_an_earlier_run(synth, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        hyperzero.main(small(synth, tmp_path / "file", steps=1))
    first = hyperzero.main(small(synth, tmp_path / "run", steps=2))["ckpt"]["state_dict"]
    with pytest.raises(UserError, match="already holds an earlier run .*hyperzero.pt.*--overwrite"):
        hyperzero.main(small(synth, tmp_path / "run", steps=2, seed=2))
    kept = torch.load(tmp_path / "run" / "hyperzero.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], kept[k]) for k in first)  # the refused run left the earlier one as it was
    second = hyperzero.main(small(synth, tmp_path / "run", steps=2, seed=2, overwrite=True))["ckpt"]["state_dict"]
    assert not all(torch.equal(first[k], second[k]) for k in first)


def corrupt(path: Path, how: str) -> str:
    """Damage one file of a copy of a rollout set; returns the file name the message must name."""
    man = json.loads((path / "manifest.json").read_text())
    if how == "truncated manifest":
        (path / "manifest.json").write_text(json.dumps(man)[:40])
        return "manifest.json is not valid JSON"
    if how == "manifest a list":
        (path / "manifest.json").write_text("[1, 2]")
        return "manifest.json holds a JSON list, not the object collect.py writes"
    if how.startswith("manifest without "):
        key = how.split()[-1]
        (path / "manifest.json").write_text(json.dumps({k: v for k, v in man.items() if k != key}))
        return f"manifest.json has no '{key}' entry"
    if how == "manifest obs_dim a string":
        (path / "manifest.json").write_text(json.dumps({**man, "obs_dim": "4"}))
        return "manifest.json: 'obs_dim' is '4'; expected a int"
    if how == "NaN context in manifest":
        (path / "manifest.json").write_text(json.dumps({**man, "contexts": [{"goal": float("nan")}] + man["contexts"][1:]}))
        return "bad data in .*manifest.json: context 0"
    if how == "float context_id":
        np.save(path / "context_id.npy", np.load(path / "context_id.npy").astype(np.float32))
        return "context_id.npy holds float32 values; expected integer values"
    if how == "truncated npy":
        data = (path / "obs.npy").read_bytes()
        (path / "obs.npy").write_bytes(data[: len(data) // 2])
        return "cannot read .*obs.npy"
    if how == "empty npy":
        (path / "q.npy").write_bytes(b"")
        return "cannot read .*q.npy"
    if how == "object npy":
        np.save(path / "reward.npy", np.array([{"r": 1}] * man["counts"]["rows"], dtype=object), allow_pickle=True)
        return "cannot read .*reward.npy: .*Object arrays cannot be loaded"
    if how == "string npy":
        np.save(path / "action.npy", np.full((man["counts"]["rows"], A), "a"))
        return "action.npy holds <U1 values; expected floating-point values"
    if how == "arrays of different lengths":
        np.save(path / "reward.npy", np.load(path / "reward.npy")[:-3])
        return "reward.npy has shape .* but the manifest says .*inconsistent"
    if how == "NaN in the data":
        obs = np.load(path / "obs.npy")
        obs[5, 1] = np.nan
        np.save(path / "obs.npy", obs)
        return "bad data in .*obs.npy: 1 NaN or infinite values"
    raise ValueError(how)


ROLLOUT_CASES = [
    "truncated manifest",
    "manifest a list",
    "manifest without obs_dim",
    "manifest without contexts",
    "manifest without counts",
    "manifest obs_dim a string",
    "NaN context in manifest",
    "float context_id",
    "truncated npy",
    "empty npy",
    "object npy",
    "string npy",
    "arrays of different lengths",
    "NaN in the data",
]


@pytest.mark.parametrize("how", ROLLOUT_CASES)
def test_bad_rollout_files_name_the_file(tmp_path, how):
    root = write_rollouts(tmp_path / "data", [0.5, 1.0, 2.0], rows=50)
    message = corrupt(root, how)
    with pytest.raises(UserError, match=message) as e:
        hyperzero.main(small(root, tmp_path / "out"))
    assert "\n" not in str(e.value) and str(root) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_checkpoints_that_are_not_ours(synth, tmp_path):
    ckpt = hyperzero.main(small(synth, tmp_path / "ok", steps=1))["ckpt"]
    sd = ckpt["state_dict"]
    cases = {
        "list.pt": ([1, 2, 3], "list.pt is not a hyperzero.py checkpoint \\(format 'a list'"),
        "no_format.pt": ({"model": "hyperzero"}, "no_format.pt is not a hyperzero.py checkpoint \\(format None"),
        "incomplete.pt": ({"format": hyperzero.FORMAT, "model": "mlp"}, "incomplete.pt is an incomplete hyperzero.py checkpoint: no task"),
        "shapes.pt": ({**ckpt, "state_dict": {k: v[..., :1] for k, v in sd.items()}}, "shapes.pt is a damaged checkpoint"),
        "split.pt": ({**ckpt, "split": {"train": "goal"}}, "split.pt is a damaged checkpoint"),
    }  # fmt: skip
    for name, (obj, message) in cases.items():
        runio.atomic_save(obj, tmp_path / name)
        with pytest.raises(UserError, match=message) as e:
            hyperzero.load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "ok" / "hyperzero.pt").read_bytes()[:500])
    with pytest.raises(UserError, match="cannot load"):
        hyperzero.load_checkpoint(tmp_path / "truncated.pt")
    state = torch.random.get_rng_state()
    hyperzero.load_checkpoint(tmp_path / "ok")  # checking builds the model: the caller's RNG is left as it was
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-5"], "--seed must be a finite number >= 0, got -5"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
        (["--rollouts", "TRUNCATED"], "manifest.json is not valid JSON"),
        (["--out-dir", "FILE"], "is a file"),
    ],
)
def test_cli_bad_input_one_line_exit_2(synth, tmp_path, argv, message, refused):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": "cleanhyper-rollouts-v1", "ta')
    (tmp_path / "file").write_text("x")
    argv = [{"TRUNCATED": str(bad), "FILE": str(tmp_path / "file")}.get(a, a) for a in argv]
    base = ["--rollouts", str(synth), "--out-dir", str(tmp_path / "out"), "--steps", "2"]
    assert message in refused("hyperzero.py", *base, *argv)
    assert not (tmp_path / "out").exists()


def test_losses_logged_to_tensorboard(synth, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hyperzero.main(small(synth, tmp_path / "t", steps=20, log_interval=10, test_contexts=("1.5",)))
    acc = EventAccumulator(str(tmp_path / "t" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"losses/total", "losses/bc", "losses/value", "losses/td", "losses/heldout_bc", "charts/SPS"} <= set(tags)
    assert [e.step for e in acc.Scalars("losses/bc")] == [10, 20]
    ckpt = torch.load(tmp_path / "t" / "hyperzero.pt", weights_only=True)
    assert [e.value for e in acc.Scalars("losses/bc")] == pytest.approx([r["bc"] for r in ckpt["history"]])
