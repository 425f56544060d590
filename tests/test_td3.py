"""td3.py: the policy form, batched TD3 (Q1 and Q2 named), the run state, files, determinism, resume and error paths."""

import csv
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import policy
import runio
import tasks
import td3
from runio import UserError
from tasks import parse_contexts

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- episodes and files
def test_metaworld_evaluation_survives_a_weights_only_checkpoint(tmp_path):
    # evaluations go into checkpoint.pt; a numpy scalar from MetaWorld's reward made resume fail to load
    (ctx,) = parse_contexts("metaworld", ["coffee-button-v3"], seed=1)  # its reward is a numpy.float64
    r = policy.evaluate_policy("metaworld", ctx, None, 1, seed=3)
    runio.atomic_save(
        {"last_eval": {"coffee-button-v3": r}, "best": [{"score": [r["success_rate"], r["return_mean"]]}]}, tmp_path / "c.pt"
    )
    assert runio.safe_load(tmp_path / "c.pt")["last_eval"]["coffee-button-v3"] == r


# ---------------------------------------------------------------------------------------------- policy form
def test_mlp_equals_nn_sequential_and_flatten_round_trip():
    torch.manual_seed(0)
    sizes = [5, 8, 7, 3]
    layers = policy.init_layers(4, sizes)
    flat = policy.flatten_layers(layers)
    assert flat.shape == (4, policy.n_params(sizes))
    back = policy.unflatten_layers(flat, sizes)
    for (W, b), (W2, b2) in zip(layers, back):
        assert torch.equal(W, W2) and torch.equal(b, b2)
    x = torch.randn(4, 10, 5)
    y = policy.mlp(layers, x)
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
    with pytest.raises(UserError, match="need"):
        policy.unflatten_layers(flat[:, :-1], sizes)


def one_context(name: str, t: torch.Tensor, k: int) -> torch.Tensor:
    """Context k of a batched TD3 tensor: actor tensors are [K, ...], critic tensors [twin, K, ...] (Q1 first)."""
    return t[:, k : k + 1] if name.startswith("critic") else t[k : k + 1]


def test_batched_update_equals_separate_updates():
    """K contexts in one TD3 equal K single-context TD3s: actor, Q1 and Q2, their targets and the Adam states."""
    torch.manual_seed(0)
    K, B, S, A = 3, 16, 5, 2
    hyper = {"gamma": 0.99, "tau": 0.05, "policy_noise": 0.2, "noise_clip": 0.5}
    big = td3.TD3(K, S, A, (8, 8), 1e-3, "cpu")
    singles = [td3.TD3(1, S, A, (8, 8), 1e-3, "cpu") for _ in range(K)]
    with torch.no_grad():
        for k, one in enumerate(singles):
            for name, net in one.networks().items():  # actor, critic, actor_t, critic_t
                for t, t_big in zip(policy.tensors(net), policy.tensors(big.networks()[name])):
                    t.copy_(one_context(name, t_big, k))
    for it in range(4):
        batch = (
            torch.randn(K, B, S),
            torch.rand(K, B, A) * 2 - 1,
            torch.randn(K, B),
            torch.randn(K, B, S),
            (torch.rand(K, B) < 0.2).float(),
        )
        noise = torch.randn(K, B, A) * hyper["policy_noise"]
        big.update(batch, it % 2 == 1, **hyper, noise=noise)
        for k, one in enumerate(singles):
            one.update(tuple(t[k : k + 1] for t in batch), it % 2 == 1, **hyper, noise=noise[k : k + 1])
    for k, one in enumerate(singles):
        for name, net in one.networks().items():
            for t, t_big in zip(policy.tensors(net), policy.tensors(big.networks()[name])):
                torch.testing.assert_close(one_context(name, t_big, k).detach(), t.detach(), rtol=1e-5, atol=1e-6)
        for name, opt_big, opt_one in (("actor", big.actor_opt, one.actor_opt), ("critic", big.critic_opt, one.critic_opt)):
            for p_big, p_one in zip(opt_big.param_groups[0]["params"], opt_one.param_groups[0]["params"]):
                for key in ("exp_avg", "exp_avg_sq"):
                    got = one_context(name, opt_big.state[p_big][key], k)
                    torch.testing.assert_close(got, opt_one.state[p_one][key], rtol=1e-5, atol=1e-7)
                assert float(opt_big.state[p_big]["step"]) == float(opt_one.state[p_one]["step"])


# ---------------------------------------------------------------------------------------------- runs and files
def test_short_run_writes_loadable_experts_and_reproducible_eval(tmp_path, tiny_args):
    res = td3.main(tiny_args(tmp_path / "run", snapshot_interval=100, snapshot_start=300))
    assert len(res["experts"]) == 2
    for f in ("metrics.csv", "args.json", "snapshots_goal_0.5.npy", "snapshot_steps.npy", "checkpoint.pt"):
        assert (tmp_path / "run" / f).is_file()
    snaps = np.load(tmp_path / "run" / "snapshots_goal_2.npy", allow_pickle=False)
    steps = np.load(tmp_path / "run" / "snapshot_steps.npy", allow_pickle=False)
    assert snaps.shape == (4, policy.n_params([17, 16, 16, 6])) and snaps.dtype == np.float32
    assert steps.tolist() == [300, 400, 500, 600]
    e = torch.load(res["experts"][1], weights_only=True)
    assert e["context"] == {"goal": 2.0} and e["task"] == "cheetah-vel" and e["step"] == 600
    assert [tuple(t.shape) for t in e["actor"]] == [(17, 16), (1, 16), (16, 16), (1, 16), (16, 6), (1, 6)]
    assert e["args"]["hidden"] == [16, 16] or tuple(e["args"]["hidden"]) == (16, 16)
    # the saved evaluation is reproduced by rolling the loaded actor out with the same seed
    again = policy.evaluate_policy("cheetah-vel", e["context"], policy.expert_layers(e), e["eval_episodes"], e["eval_seed"])
    assert again["return_mean"] == pytest.approx(e["eval_return"], abs=1e-6)
    # snapshots are taken along training: the one at step 600 is the final actor, earlier ones differ
    final = policy.flatten_layers(policy.expert_layers(e)).numpy()[0]
    np.testing.assert_array_equal(snaps[-1], final)
    assert not np.allclose(snaps[0], final)


def test_keep_best_saves_the_best_evaluated_actor(tmp_path, tiny_args):
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
        np.testing.assert_array_equal(policy.flatten_layers(policy.expert_layers(e)).numpy()[0], snap)
        again = policy.evaluate_policy("cheetah-vel", e["context"], policy.expert_layers(e), e["eval_episodes"], e["eval_seed"])
        assert again["return_mean"] == pytest.approx(e["eval_return"], abs=1e-6)
        kept_steps.append(e["step"])
    assert min(kept_steps) < 1000  # at least one context peaked before the end, so the flag changed something


def test_same_seed_same_weights_other_seed_differs(tmp_path, tiny_args):
    a = td3.main(tiny_args(tmp_path / "a", contexts=("1.0",), total_timesteps=400))
    b = td3.main(tiny_args(tmp_path / "b", contexts=("1.0",), total_timesteps=400))
    c = td3.main(tiny_args(tmp_path / "c", contexts=("1.0",), total_timesteps=400, seed=2))
    ea, eb, ec = (torch.load(r["experts"][0], weights_only=True) for r in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(ea["actor"] + ea["critic1"], eb["actor"] + eb["critic1"]))
    assert not torch.equal(ea["actor"][0], ec["actor"][0])


def test_seeds_train_learners_side_by_side_and_write_each_contexts_better_one(tmp_path, tiny_args):
    res = td3.main(tiny_args(tmp_path / "two", seeds=2, snapshot_interval=200, checkpoint_interval=600))
    assert sorted(res["eval"]) == ["goal_0.5.seed0", "goal_0.5.seed1", "goal_2.seed0", "goal_2.seed1"]
    assert [Path(p).name for p in res["experts"]] == ["expert_goal_0.5.pt", "expert_goal_2.pt"]
    for path in res["experts"]:
        e = torch.load(path, weights_only=True)
        r0, r1 = (res["eval"][f"{e['label']}.seed{j}"]["return_mean"] for j in (0, 1))
        assert r0 != r1 and e["eval_return"] == max(r0, r1) and e["seed_kept"] == int(r1 > r0)
        again = policy.evaluate_policy("cheetah-vel", e["context"], policy.expert_layers(e), e["eval_episodes"], e["eval_seed"])
        assert again["return_mean"] == pytest.approx(e["eval_return"], abs=1e-6)  # the written actor is the better one
        snaps = np.load(tmp_path / "two" / f"snapshots_{e['label']}.npy", allow_pickle=False)  # and so are its snapshots
        np.testing.assert_array_equal(snaps[-1], policy.flatten_layers(policy.expert_layers(e)).numpy()[0])
    # seed 0 of each context resets as a one-seed run does; seed 1 from other initial states
    td3.main(tiny_args(tmp_path / "one", checkpoint_interval=600))
    obs2, obs1 = (runio.safe_load(tmp_path / d / "checkpoint.pt")["replay"]["obs"] for d in ("two", "one"))
    assert obs2.shape[0] == 4 and torch.equal(obs2[:2, 0], obs1[:, 0]) and not torch.equal(obs2[2:, 0], obs1[:, 0])


@pytest.mark.parametrize("sac", [False, True])
def test_init_from_starts_every_learner_from_one_expert(tmp_path, tiny_args, tiny_experts, sac):
    e = policy.load_experts(tiny_experts)[0]
    agent = td3.TD3(3, 17, 6, (16, 16), 1e-3, "cpu", sac=sac)
    agent.start_from(e)
    for i in range(3):  # actor (SAC: its mean head), Q1, Q2 of every learner, and the targets
        assert all(
            torch.equal(a, b) for key in ("actor", "critic1", "critic2") for a, b in zip(agent.expert_weights(i)[key], e[key])
        )
    for t, online in zip(policy.tensors(agent.actor_t + agent.critic_t), policy.tensors(agent.actor + agent.critic)):
        assert torch.equal(t, online)
    # a run starts there: its snapshot of step 1 (a random action, no update yet) is the expert's actor, for both goals
    td3.main(tiny_args(tmp_path / "run", init_from=str(tiny_experts / "expert_goal_0.5.pt"), snapshot_interval=1, sac=sac))
    for goal in ("0.5", "2"):
        snaps = np.load(tmp_path / "run" / f"snapshots_goal_{goal}.npy", allow_pickle=False)
        np.testing.assert_array_equal(snaps[0], policy.flatten_layers(policy.expert_layers(e)).numpy()[0])
        assert not np.array_equal(snaps[-1], snaps[0])  # and trains on
    with pytest.raises(runio.UserError, match=r"--init-from .*: a cheetah-vel expert, hidden \[16, 16\].*--hidden 32 32"):
        td3.main(tiny_args(tmp_path / "bad", init_from=str(tiny_experts / "expert_goal_2.pt"), hidden=(32, 32)))
    with pytest.raises(runio.UserError, match="--init-from .*: no such file; give one expert file"):
        td3.main(tiny_args(tmp_path / "bad", init_from=str(tiny_experts)))  # a directory of several
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("keep_best,sac", [(False, False), (True, False), (False, True)])
def test_resume_reaches_the_same_state(tmp_path, tiny_args, keep_best, sac):
    kw = {"keep_best": keep_best, "eval_interval": 200 if keep_best else 0, "sac": sac}
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
    for name in ("actor", "critic", "actor_t", "critic_t"):  # the whole agent, targets included
        assert all(torch.equal(a, b) for la, lb in zip(ck_full["agent"][name], ck_part["agent"][name]) for a, b in zip(la, lb))
    assert torch.equal(ck_full["rng"], ck_part["rng"]) and ck_full["episode"] == ck_part["episode"]
    if sac:  # the temperatures and their Adam state too
        assert torch.equal(ck_full["agent"]["log_alpha"], ck_part["agent"]["log_alpha"])
        assert ck_full["agent"]["log_alpha"].abs().min() > 0  # it was tuned


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


def test_cli_corrupt_and_incompatible_resume(tmp_path, tiny_args):
    run = tmp_path / "run"
    td3.main(tiny_args(run, total_timesteps=400))
    good = (run / "checkpoint.pt").read_bytes()
    experts_before = {p.name: p.read_bytes() for p in run.glob("expert_*.pt")}
    common = ["--total-timesteps", "800", "--learning-starts", "200", "--batch-size", "32", "--hidden", "16", "16"]
    common += ["--contexts", "0.5", "2.0", "--out-dir", str(run), "--resume", "--eval-interval", "0"]
    r = run_cli(*common, "--gamma", "0.9", "--checkpoint-interval", "200")
    assert r.returncode == 2 and "flags differ from the checkpointed run: gamma" in r.stderr and "Traceback" not in r.stderr
    ck = runio.safe_load(run / "checkpoint.pt")
    args = {**ck["args"], "total_timesteps": 800}
    assert td3.read_checkpoint(run / "checkpoint.pt", {**args, "contexts": ["goal=0.50", "2"]})  # the same contexts
    for other in (["0.5"], ["2.0", "0.5"], ["0.6", "2.0"]):  # fewer, reordered, another: refused
        with pytest.raises(UserError, match="flags differ from the checkpointed run: contexts"):
            td3.read_checkpoint(run / "checkpoint.pt", {**args, "contexts": other})
    runio.atomic_save(runio.safe_load(run / "checkpoint.pt") | {"format": "cleanhyper-td3-checkpoint-v9"}, run / "checkpoint.pt")
    r = run_cli(*common, "--checkpoint-interval", "200")
    assert (
        r.returncode == 2
        and "its format is 'cleanhyper-td3-checkpoint-v9'" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])  # truncated
    r = run_cli(*common, "--checkpoint-interval", "200")
    assert r.returncode == 2 and "cannot load" in r.stderr and "checkpoint.pt" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in run.glob("expert_*.pt")} == experts_before  # nothing overwritten
    (run / "checkpoint.pt").unlink()
    r = run_cli(*common)
    assert r.returncode == 2 and "--resume: no checkpoint at" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_help_explains_flags():
    r = run_cli("--help")
    assert r.returncode == 0 and "--total-timesteps" in r.stdout and "environment steps per context" in r.stdout


def test_atomic_save_permissions_and_no_partial_file(tmp_path):
    runio.atomic_save(np.arange(3, dtype=np.float32), tmp_path / "a.npy")
    assert (tmp_path / "a.npy").stat().st_mode & 0o044 == 0o044  # readable by others, as open() would make it
    with pytest.raises((TypeError, AttributeError)):  # a lambda cannot be pickled
        runio.atomic_save({"x": lambda: 0}, tmp_path / "b.pt")  # fails half-way: nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


# ---------------------------------------------------------------------------------------------- shards: load_experts
def fake_expert(src: dict, label="goal_1", goal=1.0, hidden=None, **change) -> dict:
    """A copy of a real expert file as another context; with hidden, fresh weights of those sizes."""
    e = src | {"label": label, "context": {"goal": goal}, "context_vector": [goal]} | change
    if hidden:
        S, A = e["obs_dim"], e["act_dim"]
        e["hidden"] = hidden
        e["actor"] = [t[0] for t in policy.tensors(policy.init_layers(1, policy.layer_sizes(S, hidden, A)))]
        for key in ("critic1", "critic2"):
            e[key] = [t[0] for t in policy.tensors(policy.init_layers(1, policy.layer_sizes(S + A, hidden, 1)))]
    return e


def shard_dirs(tmp_path, tiny_experts, *extra) -> list[Path]:
    """tiny_experts (goal 0.5, 2.0) as shard_10, and shard_2 holding the extra expert dicts."""
    import shutil

    shutil.copytree(tiny_experts, tmp_path / "shard_10")
    (tmp_path / "shard_2").mkdir()
    for e in extra:
        runio.atomic_save(e, tmp_path / "shard_2" / f"expert_{e['label']}.pt")
    return [tmp_path / "shard_10", tmp_path / "shard_2"]


def test_load_experts_merges_shards_sorted_by_label(tmp_path, tiny_experts):
    src = policy.load_experts(tiny_experts)[0]
    dirs = shard_dirs(tmp_path, tiny_experts, fake_expert(src))
    merged = policy.load_experts(dirs)  # shard_10 lists before shard_2: the order is the labels', not the directories'
    assert [e["label"] for e in merged] == ["goal_0.5", "goal_1", "goal_2"]
    assert [e["label"] for e in policy.load_experts(dirs[::-1])] == ["goal_0.5", "goal_1", "goal_2"]
    assert [e["label"] for e in policy.load_experts(str(dirs[0]))] == ["goal_0.5", "goal_2"]  # one path, as a string
    assert [e["label"] for e in policy.load_experts([dirs[0], dirs[0] / "expert_goal_2.pt"])] == ["goal_0.5", "goal_2"]
    assert [e["label"] for e in policy.load_experts([dirs[1] / "expert_goal_1.pt"])] == ["goal_1"]


@pytest.mark.parametrize(
    "change, msg",
    [
        (
            {"label": "goal_2", "goal": 2.0},
            r"shard_10/expert_goal_2.pt and .*shard_2/expert_goal_2.pt hold the same context goal_2",
        ),
        ({"task": "cheetah-run"}, r"shard_10/expert_goal_0.5.pt and .*shard_2/expert_goal_1.pt differ in task"),
        ({"hidden": [8, 8]}, r"differ in hidden \(\[16, 16\] vs \[8, 8\]\)"),
        ({"gamma": 0.9}, r"differ in gamma \(0.99 vs 0.9\)"),
    ],
)
def test_load_experts_refuses_shards_of_different_sweeps(tmp_path, tiny_experts, change, msg):
    src = policy.load_experts(tiny_experts)[0]
    dirs = shard_dirs(tmp_path, tiny_experts, fake_expert(src, **change))
    with pytest.raises(UserError, match=msg):
        policy.load_experts(dirs)


@pytest.mark.parametrize(
    "content, msg",
    [
        ([1, 2], "holds a list, not a dict"),
        ({"actor": []}, "'task' missing or not a str"),
        ("hidden", r"'actor' is not a list of tensors of shapes \[\(17, 16\)"),
        ("nan", r"bad data in .*critic2.* holds NaN"),
        ("truncated", "cannot load"),
    ],
)
def test_load_experts_refuses_a_bad_file_naming_it(tmp_path, tiny_experts, content, msg):
    src = policy.load_experts(tiny_experts)[0]
    f = tmp_path / "expert_goal_0.5.pt"
    if content == "hidden":
        content = src | {"hidden": [16, 8]}
    elif content == "nan":
        content = src | {"critic2": [t * float("nan") for t in src["critic2"]]}
    if content == "truncated":
        f.write_bytes((tiny_experts / f.name).read_bytes()[:500])
    else:
        runio.atomic_save(content, f)
    with pytest.raises(UserError, match=msg) as e:
        policy.load_experts(tmp_path)
    assert str(f) in str(e.value)
    with pytest.raises(UserError, match="no experts found"):
        policy.load_experts([tmp_path, tmp_path / "missing"])


# ---------------------------------------------------------------------------------------------- shards: --shard I/N
def test_shards_train_the_contexts_of_one_run_with_its_environment_seeds(tmp_path, tiny_args):
    kw = dict(contexts=("0.5", "1.0", "2.0"), total_timesteps=400, checkpoint_interval=400)
    whole = td3.main(tiny_args(tmp_path / "whole", **kw))
    shards = [td3.main(tiny_args(tmp_path / f"shard_{i}", **kw, shard=f"{i}/2")) for i in range(2)]
    assert [Path(p).name for p in shards[0]["experts"]] == ["expert_goal_0.5.pt", "expert_goal_2.pt"]  # contexts 0, 2
    assert [Path(p).name for p in shards[1]["experts"]] == ["expert_goal_1.pt"]  # context 1
    merged = policy.load_experts([tmp_path / "shard_0", tmp_path / "shard_1"])
    assert [e["label"] for e in merged] == [e["label"] for e in policy.load_experts(tmp_path / "whole")]
    assert merged[1]["args"]["shard"] == "1/2" and whole["experts"]
    # context i's environment is seeded by its place i in the full list, sharded or not: the same first states
    obs = {name: runio.safe_load(tmp_path / name / "checkpoint.pt")["replay"]["obs"] for name in ("whole", "shard_0", "shard_1")}
    for i, (shard, j) in enumerate([("shard_0", 0), ("shard_1", 0), ("shard_0", 1)]):  # context i is shard's j-th
        assert torch.equal(obs["whole"][i, 0], obs[shard][j, 0])  # the first reset: seed + 1000 i
        assert torch.equal(obs["whole"][i, 200], obs[shard][j, 200])  # the second episode's (200-step episodes)
        assert not torch.equal(obs["whole"][i, 0], obs["whole"][(i + 1) % 3, 0])  # (the contexts' resets differ)


# ---------------------------------------------------------------------------------------------- bad input (issue 10)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
BAD_FLAGS = {  # name -> (overrides of tiny_args, the one line that refuses them)
    "eval episodes 0": ({"eval_episodes": 0}, "--eval-episodes must be a finite number > 0, got 0"),
    "seeds 0": ({"seeds": 0}, "--seeds must be a finite number > 0, got 0"),
    "seeds over 500 contexts": (  # learner j of context i has place i + 500 j: more would share environment seeds
        {"seeds": 2, "contexts": tuple(f"{i / 200:g}" for i in range(501))},
        "--seeds 2 with 501 contexts: at most 500 contexts with --seeds > 1",
    ),
    "batch size 0": ({"batch_size": 0}, "--batch-size must be a finite number > 0, got 0"),
    "batch size -4": ({"batch_size": -4}, "--batch-size must be a finite number > 0, got -4"),
    "total timesteps 0": ({"total_timesteps": 0}, "--total-timesteps must be a finite number > 0"),
    "buffer size 0": ({"buffer_size": 0}, "--buffer-size must be a finite number > 0"),
    "log interval 0": ({"log_interval": 0}, "--log-interval must be a finite number > 0"),
    "policy frequency 0": ({"policy_frequency": 0}, "--policy-frequency must be a finite number > 0"),
    "action penalty -1": ({"action_penalty": -1.0}, "--action-penalty must be a finite number >= 0, got -1.0"),
    "learning rate nan": ({"learning_rate": float("nan")}, "--learning-rate must be a finite number > 0, got nan"),
    "learning rate -1": ({"learning_rate": -1.0}, "--learning-rate must be a finite number > 0"),
    "hidden 0": ({"hidden": (16, 0)}, r"--hidden must be a finite number > 0, got \(16, 0\)"),
    "seed -5": ({"seed": -5}, "--seed must be a finite number >= 0, got -5"),
    "eval interval -1": ({"eval_interval": -1}, "--eval-interval must be a finite number >= 0"),
    "checkpoint interval -1": ({"checkpoint_interval": -1}, "--checkpoint-interval must be a finite number >= 0"),
    "snapshot interval -1": ({"snapshot_interval": -1}, "--snapshot-interval must be a finite number >= 0"),
    "exploration noise inf": ({"exploration_noise": float("inf")}, "--exploration-noise must be a finite number >= 0"),
    "gamma 1.5": ({"gamma": 1.5}, r"--gamma must be a finite number in \[0, 1\]"),
    "tau nan": ({"tau": float("nan")}, r"--tau must be a finite number in \[0, 1\]"),
    "learning starts < batch": ({"learning_starts": 16}, "--learning-starts 16 must be >= --batch-size 32"),
    "no contexts": ({"contexts": ()}, r"no contexts given \(--contexts\)"),
    "duplicate contexts": ({"contexts": ("0.5", "0.50")}, "duplicate contexts"),
    "unknown task": ({"task": "hopper"}, "unknown task 'hopper'"),
    "a variable twice": (
        {"task": "cheetah-run", "contexts": ("speed=2,speed=3",)},
        "context 'speed=2,speed=3' of 'cheetah-run' sets speed more than once",
    ),
    "empty context": ({"contexts": ("",)}, r"context goal='' is not a number; valid: goal in \[0.0, 3.0\]"),
    "shard 2/2": ({"shard": "2/2"}, "--shard must be I/N with 0 <= I < N"),
    "shard abc": ({"shard": "abc"}, "--shard must be I/N"),
    "empty shard": ({"shard": "2/3"}, "--shard 2/3: no context falls to shard 2 of 2 contexts; use at most 2 shards"),
    "unknown device": ({"device": "tpu"}, "--device 'tpu' is not a device"),
    "cuda without cuda": ({"device": "cuda"}, "--device cuda: no CUDA device"),
    "cudagraphs on cpu": ({"device": "cpu", "cudagraphs": True}, "--cudagraphs needs a CUDA device"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flags_refused_before_any_work(tmp_path, tiny_args, case):
    kw, msg = BAD_FLAGS[case]
    if kw.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match=msg):
        td3.main(tiny_args(tmp_path / "run", **kw))
    assert not (tmp_path / "run").exists()  # nothing written, not even the directory


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--eval-episodes", "0"], "error: --eval-episodes must be a finite number > 0, got 0"),
        (["--seed", "-5"], "error: --seed must be a finite number >= 0, got -5"),
        pytest.param(["--device", "cuda"], "error: --device cuda: no CUDA device", marks=NO_CUDA),
        (["--task", "cheetah-run", "--contexts", "speed=2,speed=3"], "error: context 'speed=2,speed=3'"),
        (["--task", "cheetah-run", "--contexts", "speed="], "error: context speed='' is not a number; valid: speed in [0.1"),
        (["--contexts", "0.5", "1.0", "--shard", "2/3"], "error: --shard 2/3: no context falls to shard 2"),
    ],
)
def test_cli_bad_flag_one_line_exit_2(tmp_path, argv, msg, refused):
    assert refused("td3.py", *argv, "--out-dir", tmp_path / "x").startswith(msg)
    assert not (tmp_path / "x").exists()


def test_out_dir_a_file_an_earlier_run_overwrite_and_resume(tmp_path, tiny_args):
    (tmp_path / "file").write_text("not a directory")
    r = run_cli("--out-dir", str(tmp_path / "file"))
    assert r.returncode == 2 and r.stderr.startswith("error: --out-dir") and "is a file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    run, kw = tmp_path / "run", dict(total_timesteps=400)
    td3.main(tiny_args(run, **kw))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"already holds an earlier run \(args.json, checkpoint.pt, .*--overwrite.*--resume"):
        td3.main(tiny_args(run, **kw, seed=2))  # another run into the same directory: refused, nothing touched
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    (run / "snapshots_goal_9.npy").write_bytes(b"")  # an output of the earlier run: removed by --overwrite
    td3.main(tiny_args(run, **kw, seed=2, overwrite=True))
    assert not (run / "snapshots_goal_9.npy").exists() and runio.safe_load(run / "checkpoint.pt")["args"]["seed"] == 2
    assert len(list((run / "tb").iterdir())) == 1  # the earlier run's event files went with it
    td3.main(tiny_args(run, total_timesteps=600, seed=2, resume=True))  # --resume continues it
    assert runio.safe_load(run / "checkpoint.pt")["step"] == 600


def test_resume_defects(tmp_path, tiny_args):
    run = tmp_path / "run"
    td3.main(tiny_args(run, total_timesteps=400))
    with pytest.raises(UserError, match=r"it is at step 400, past --total-timesteps 200; give --total-timesteps >= 400"):
        td3.main(tiny_args(run, total_timesteps=200, resume=True))
    # out_dir is not among the flags that must match: a moved directory, or one named with a trailing '/', resumes
    run.rename(tmp_path / "moved")
    res = td3.main(tiny_args(str(tmp_path / "moved") + "/", total_timesteps=600, resume=True))
    assert runio.safe_load(res["experts"][0])["step"] == 600
    with pytest.raises(UserError, match=r"--resume: no checkpoint at .*nothing/checkpoint.pt; start without --resume"):
        td3.main(tiny_args(tmp_path / "nothing", resume=True))
    assert not (tmp_path / "nothing").exists()
    ck = runio.safe_load(tmp_path / "moved" / "checkpoint.pt")
    for content, msg in [
        ({"actor": [torch.zeros(2)]}, "not a checkpoint written by td3.py"),  # an expert-like .pt
        ([1, 2], "not a checkpoint written by td3.py"),
        ({"agent": {}}, "not a checkpoint written by td3.py"),  # no format: read as the old flat layout, which it is not
        ({k: v for k, v in ck.items() if k != "replay"}, r"an incomplete checkpoint \(missing or malformed: replay\)"),
        (ck | {"replay": ck["replay"] | {"obs": torch.zeros(3)}}, "its networks or replay do not fit this run"),
    ]:
        runio.atomic_save(content, tmp_path / "moved" / "checkpoint.pt")
        with pytest.raises(UserError, match=msg) as e:
            td3.main(tiny_args(tmp_path / "moved", total_timesteps=800, resume=True))
        assert "moved/checkpoint.pt" in str(e.value)


def test_non_finite_loss_names_the_step_and_the_loss_or_the_data(tmp_path, tiny_args):
    with pytest.raises(UserError, match=r"non-finite qf_loss inf.* at step 20\d: the TD3 update diverged; lower --learning-rate"):
        td3.main(tiny_args(tmp_path / "run", learning_rate=1e30, total_timesteps=400))
    run = td3.RunState(td3.TD3(2, 3, 1, (4,), 1e-3, "cpu"), td3.Replay(2, 10, 3, 1, "cpu"))
    run.replay.add(np.zeros((2, 3)), np.zeros((2, 1)), np.array([0.0, np.nan]), np.zeros((2, 3)), np.zeros(2))
    run.step = 7
    assert td3.diverged(run, {"qf_loss": float("nan")}) == (
        "bad data at step 7: the environment returned non-finite rew (so qf_loss nan)"
    )


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_args):
    """A real kill -9 mid-run (after a checkpoint), then --resume: the experts and the checkpoint of a run never
    interrupted, bit for bit."""
    import signal
    import time

    kw = dict(total_timesteps=1400, checkpoint_interval=200)
    full = td3.main(tiny_args(tmp_path / "full", **kw))
    argv = ["--contexts", "0.5", "2.0", "--total-timesteps", "1400", "--learning-starts", "200", "--batch-size", "32"]
    argv += ["--hidden", "16", "16", "--eval-interval", "0", "--eval-episodes", "2", "--checkpoint-interval", "200"]
    argv += ["--out-dir", str(tmp_path / "killed")]
    p = subprocess.Popen([sys.executable, "td3.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "metrics.csv").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # metrics.csv is written with the first checkpoint
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not list((tmp_path / "killed").glob("expert_*.pt"))
    resumed = td3.main(tiny_args(tmp_path / "killed", **kw, resume=True))
    for f_full, f_part in zip(full["experts"], resumed["experts"]):
        x, y = torch.load(f_full, weights_only=True), torch.load(f_part, weights_only=True)
        assert all(torch.equal(a, b) for key in ("actor", "critic1", "critic2") for a, b in zip(x[key], y[key]))
    ck_full, ck_part = (runio.safe_load(tmp_path / d / "checkpoint.pt") for d in ("full", "killed"))
    assert torch.equal(ck_full["replay"]["obs"], ck_part["replay"]["obs"]) and torch.equal(ck_full["rng"], ck_part["rng"])


# ---------------------------------------------------------------------------------------------- tracking
def test_tensorboard_event_files_hold_the_progress_at_the_log_interval(tmp_path, tiny_args):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    td3.main(tiny_args(tmp_path / "run", log_interval=200, eval_interval=300, total_timesteps=600))
    (events,) = (tmp_path / "run" / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    steps = lambda tag: [e.step for e in acc.Scalars(tag)]  # noqa: E731
    for tag in ("charts/episodic_return", "charts/episodic_return/goal_0.5", "charts/episodic_return/goal_2", "charts/SPS"):
        assert steps(tag) == [200, 400, 600], tag
    for tag in ("losses/qf_loss", "losses/actor_loss"):
        assert steps(tag) == [400, 600], tag  # the first update is at step 201
    for tag in ("charts/eval_return", "charts/eval_return/goal_2"):
        assert steps(tag) == [300, 600], tag  # at each evaluation, once
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    ret = {int(r["step"]): float(r["episodic_return"]) for r in rows if r["context"] == "goal_2"}
    assert [e.value for e in acc.Scalars("charts/episodic_return/goal_2")] == pytest.approx([ret[200], ret[400], ret[600]])
    assert "charts/eval_success" not in acc.Tags()["scalars"]  # cheetah-vel has no success


# ---------------------------------------------------------------------------------------------- --compile
def test_compiled_update_equals_eager():
    """torch.compile of the losses (the optimiser steps eager) gives the eager update's networks, targets and losses up
    to float rounding, over critic-only and actor steps on the same batches and noise (measured: at most 3e-8 apart,
    most tensors bit-equal; inductor fuses the reductions in another order)."""
    K, B, S, A = 3, 16, 5, 2
    hyper = {"gamma": 0.99, "tau": 0.05, "policy_noise": 0.2, "noise_clip": 0.5}
    torch.manual_seed(0)
    eager = td3.TD3(K, S, A, (8, 8), 1e-3, "cpu")
    torch.manual_seed(0)
    compiled = td3.TD3(K, S, A, (8, 8), 1e-3, "cpu", compile=True)
    for it in range(4):
        batch = (torch.randn(K, B, S), torch.rand(K, B, A) * 2 - 1, torch.randn(K, B), torch.randn(K, B, S), torch.zeros(K, B))
        noise = torch.randn(K, B, A) * hyper["policy_noise"]
        losses = eager.update(batch, it % 2 == 1, **hyper, noise=noise)
        assert compiled.update(batch, it % 2 == 1, **hyper, noise=noise) == pytest.approx(losses, rel=1e-6)
    for name, net in eager.networks().items():
        for x, y in zip(policy.tensors(net), policy.tensors(compiled.networks()[name])):
            torch.testing.assert_close(y.detach(), x.detach(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Remedies for saturating actors (issue: MetaWorld experts): a pre-tanh action penalty
# ---------------------------------------------------------------------------------------------------------------------
def test_action_penalty_is_the_mean_square_of_the_pre_tanh_actions():
    K, B, S, A = 2, 7, 3, 2
    torch.manual_seed(0)
    agent = td3.TD3(K, S, A, (4,), 1e-3, "cpu", action_penalty=0.5)
    obs = torch.randn(K, B, S)
    u = policy.mlp(agent.actor, obs, None)
    q1 = agent.twin_q(agent.critic, obs, torch.tanh(u))[0]
    torch.testing.assert_close(agent.actor_loss(obs), -q1.mean(1).sum() + 0.5 * (u**2).mean((1, 2)).sum())
    agent.action_penalty = 0.0  # off: TD3's loss, bit for bit
    assert torch.equal(agent.actor_loss(obs), -agent.twin_q(agent.critic, obs, policy.mlp(agent.actor, obs))[0].mean(1).sum())


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_action_penalty_pulls_a_saturated_actor_back(penalty):
    """A critic that is flat in the action (Q = 0) gives the actor no gradient: a saturated actor stays saturated
    unless the penalty pulls its pre-tanh outputs towards 0."""
    K, B, S, A = 2, 64, 3, 2
    torch.manual_seed(0)
    agent = td3.TD3(K, S, A, (8,), 1e-2, "cpu", action_penalty=penalty)
    with torch.no_grad():
        agent.actor[-1][1].fill_(4.0)  # every pre-tanh output near 4: tanh(4) = 0.9993, saturated
        for W, b in agent.critic[-1:]:
            W.zero_(), b.zero_()
    obs = torch.randn(K, B, S)
    before = (policy.mlp(agent.actor, obs).abs() > 0.99).float().mean().item()
    for _ in range(200):
        agent.actor_opt.zero_grad()
        agent.actor_loss(obs).backward()
        agent.actor_opt.step()
    after = (policy.mlp(agent.actor, obs).abs() > 0.99).float().mean().item()
    assert before == 1.0 and (after == 1.0 if penalty == 0 else after < 0.05)


def test_the_policy_delay_counts_updates(tiny_args, tmp_path):
    """400 steps after 200 random ones: 200 critic updates and, with the policy delay 2, 100 actor updates. The Adam
    step counts in the final checkpoint say how many were taken."""
    td3.main(tiny_args(tmp_path / "run", total_timesteps=400, eval_episodes=1))
    agent = runio.safe_load(tmp_path / "run" / "checkpoint.pt")["agent"]
    steps = lambda opt: {float(s["step"]) for s in opt["state"].values()}  # noqa: E731
    assert steps(agent["critic_opt"]) == {200.0} and steps(agent["actor_opt"]) == {100.0}


def test_saturation_benchmark_counts_components_beyond_the_threshold(tiny_experts, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import saturation

    assert saturation.saturation(np.array([[0.995, -1.0], [0.5, -0.2]]), 0.99) == 0.5
    rows = saturation.main(saturation.Args(experts=(str(tiny_experts),)))
    assert [r["label"] for r in rows] == ["goal_0.5", "goal_2"] and all(0 <= r["saturated"] <= 1 for r in rows)
    assert rows[0]["success"] is None and "goal_0.5" in capsys.readouterr().out  # cheetah-vel has no success
    e = policy.load_experts(tiny_experts)[0]  # the share is the expert's own episode's
    ep = policy.rollout(tasks.make_env("cheetah-vel", e["context"], 1), policy.expert_layers(e), 1)
    assert rows[0]["saturated"] == saturation.saturation(ep["actions"], 0.99)


def test_layer_norm_critics_are_nn_layernorm_per_context_and_off_is_td3():
    """--layer-norm: each hidden layer of Q1 and Q2 is normalised over its units (nn.LayerNorm without gain or bias)
    before the ReLU, per context and twin; off, the critic is TD3's bit for bit."""
    K, B, S, A, H = 3, 5, 4, 2, (8, 6)
    torch.manual_seed(0)
    agent = td3.TD3(K, S, A, H, 1e-3, "cpu", layer_norm=True)
    obs, act = torch.randn(K, B, S), torch.rand(K, B, A) * 2 - 1
    q = agent.twin_q(agent.critic, obs, act)  # [2, K, B]
    ln = torch.nn.LayerNorm(H[0], elementwise_affine=False)
    for t in range(2):
        for i in range(K):
            (W0, b0), (W1, b1), (W2, b2) = [(W[t, i], b[t, i]) for W, b in agent.critic]
            x = torch.cat([obs[i], act[i]], -1)
            h = torch.relu(torch.nn.LayerNorm(H[1], elementwise_affine=False)(torch.relu(ln(x @ W0 + b0)) @ W1 + b1))
            torch.testing.assert_close(q[t, i], (h @ W2 + b2)[:, 0])
    agent.layer_norm = False
    plain = policy.mlp(
        [(W.flatten(0, 1), b.flatten(0, 1)) for W, b in agent.critic], torch.cat([obs, act], -1).repeat(2, 1, 1), None
    )
    assert torch.equal(agent.twin_q(agent.critic, obs, act), plain.view(2, K, B))


def test_layer_norm_bounds_q_under_any_input_scale():
    """Known answer: with the first layer's bias at 0, a normalised critic gives the same Q for (s, a) and c (s, a),
    c > 0 (LayerNorm undoes the scale); without the norm Q grows with c. This is what keeps Q's action-gradient
    bounded when the actor pushes its outputs out."""
    torch.manual_seed(0)
    for norm in (True, False):
        agent = td3.TD3(2, 3, 2, (16, 16), 1e-3, "cpu", layer_norm=norm)
        with torch.no_grad():
            agent.critic[0][1].zero_()
        obs, act = torch.randn(2, 7, 3), torch.randn(2, 7, 2)
        q1, q100 = agent.twin_q(agent.critic, obs, act), agent.twin_q(agent.critic, 100 * obs, 100 * act)
        assert torch.allclose(q1, q100, atol=1e-4) == norm


def test_layer_norm_runs_write_it_into_the_experts_and_collect_reads_it(tiny_args, tmp_path):
    """An expert trained with --layer-norm says so; collect.py's q column is its normalised critic's Q1(s, a*), which a
    plain critic with the same weights would not give."""
    import collect

    td3.main(tiny_args(tmp_path / "run", total_timesteps=400, layer_norm=True, eval_episodes=1))
    e = policy.load_experts(tmp_path / "run")[0]
    assert e["critic_layer_norm"] is True
    collect.main(collect.Args(experts=str(tmp_path / "run"), out_dir=str(tmp_path / "ro"), episodes=1, seed=3))
    d = {n: np.load(tmp_path / "ro" / f"{n}.npy", allow_pickle=False) for n in ("obs", "action", "q", "context_id")}
    rows = d["context_id"] == 0
    sa = torch.as_tensor(np.concatenate([d["obs"][rows], d["action"][rows]], 1))[None]
    critic = policy.expert_layers(e, "critic1")
    np.testing.assert_allclose(d["q"][rows], policy.mlp(critic, sa, None, True)[0, :, 0].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(d["q"][rows], policy.mlp(critic, sa, None)[0, :, 0].numpy(), rtol=1e-3)


def test_resume_of_a_checkpoint_older_than_a_flag_compares_it_with_the_default(tiny_args, tmp_path):
    """A checkpoint written before --layer-norm existed lacks the flag: resuming it plain is the same run, resuming
    it with --layer-norm is another and is refused."""
    td3.main(tiny_args(tmp_path / "run", total_timesteps=400))
    ck = runio.safe_load(tmp_path / "run" / "checkpoint.pt")
    del ck["args"]["layer_norm"]
    torch.save(ck, tmp_path / "run" / "checkpoint.pt")
    args = tiny_args(tmp_path / "run", total_timesteps=600, resume=True)
    assert td3.read_checkpoint(tmp_path / "run" / "checkpoint.pt", asdict(args))["step"] == 400
    with pytest.raises(UserError, match="flags differ.*layer_norm"):
        td3.read_checkpoint(tmp_path / "run" / "checkpoint.pt", asdict(replace(args, layer_norm=True)))


# ---------------------------------------------------------------------------------------------------------------------
# --sac: SAC's entropy-regularised actor (the Gen-HypRL experts are SAC)
# ---------------------------------------------------------------------------------------------------------------------
def test_sac_sample_is_a_tanh_gaussian_with_its_log_probability():
    """Known answer: a = tanh(x), x ~ N(mean, std) with log-std squashed into [-5, 2], and log pi(a|s) = log N(x) -
    sum log(1 - tanh(x)^2) (SAC appendix C), against torch.distributions, per context."""
    K, B, S, A = 2, 6, 3, 2
    torch.manual_seed(0)
    agent = td3.TD3(K, S, A, (8,), 1e-3, "cpu", sac=True)
    obs, eps = torch.randn(K, B, S), torch.randn(K, B, A)
    act, logp = agent.sample(agent.actor, obs, eps)
    out = policy.mlp(agent.actor, obs, None)  # [K, B, 2A]: mean, then the raw log-std
    mean, log_std = out[..., :A], -5 + 3.5 * (torch.tanh(out[..., A:]) + 1)
    x = mean + log_std.exp() * eps
    want = torch.distributions.Normal(mean, log_std.exp()).log_prob(x).sum(-1) - torch.log(1 - torch.tanh(x) ** 2 + 1e-6).sum(-1)
    torch.testing.assert_close(act, torch.tanh(x))
    torch.testing.assert_close(logp, want)
    assert log_std.min() >= -5 and log_std.max() <= 2
    # the deterministic policy is tanh of the mean head: what rollouts, snapshots and expert files see
    torch.testing.assert_close(policy.mlp(agent.policy(agent.actor), obs), torch.tanh(mean))
    assert agent.expert_weights(1)["actor"][-1].shape == (1, A) and agent.actor[-1][0].shape == (K, 8, 2 * A)


def test_sac_losses_known_answer_and_the_temperature_step():
    """The critic target is min(Q1', Q2')(s', a') - alpha log pi(a'|s') with a' from the online actor; the actor loss
    alpha log pi - min(Q1, Q2); one temperature step moves log alpha by +lr (Adam's first step) where the policy's
    entropy is below -act_dim (a near-deterministic policy): the bonus grows."""
    K, B, S, A = 2, 5, 3, 2
    torch.manual_seed(1)
    agent = td3.TD3(K, S, A, (8,), 1e-2, "cpu", sac=True)
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.5))
    obs, act, next_obs = torch.randn(K, B, S), torch.rand(K, B, A) * 2 - 1, torch.randn(K, B, S)
    rew, done, eps = torch.randn(K, B), torch.zeros(K, B), torch.randn(K, B, A)
    a2, logp2 = agent.sample(agent.actor, next_obs, eps)
    y = rew + 0.9 * (torch.minimum(*agent.twin_q(agent.critic_t, next_obs, a2)) - 0.5 * logp2)
    want = ((agent.twin_q(agent.critic, obs, act) - y) ** 2).mean(-1).sum()
    torch.testing.assert_close(agent.critic_loss(obs, act, rew, next_obs, done, eps, 0.9, 0.5), want)
    torch.manual_seed(7)
    loss = agent.actor_loss(obs)
    torch.manual_seed(7)
    a, logp = agent.sample(agent.actor, obs, torch.randn(K, B, A))
    torch.testing.assert_close(loss, (0.5 * logp - torch.minimum(*agent.twin_q(agent.critic, obs, a))).mean(1).sum())
    with torch.no_grad():  # a wide policy (std e^2): entropy far above -A, so alpha must fall
        agent.actor[-1][1][..., A:] = 10.0
    before = agent.log_alpha.detach().clone()
    batch = (obs, act, rew, next_obs, done)
    agent.update(batch, True, gamma=0.9, tau=0.005, policy_noise=0.2, noise_clip=0.5)
    torch.testing.assert_close(agent.log_alpha.detach(), before + 1e-2)


def test_sac_run_writes_mean_policy_experts_that_replay_their_evaluation(tiny_args, tmp_path):
    """A --sac run's experts and snapshots hold the mean head only (the layer sizes of a TD3 expert), so every later
    stage reads them unchanged; rolling the expert out again gives its recorded evaluation return."""
    r = td3.main(
        tiny_args(tmp_path / "run", total_timesteps=400, sac=True, eval_episodes=1, snapshot_interval=100, snapshot_start=200)
    )
    e = policy.load_experts(tmp_path / "run")[0]  # check_expert: actor shapes [S,16], [16,16], [16,A]
    assert e["args"]["sac"] is True
    snaps = np.load(tmp_path / "run" / f"snapshots_{e['label']}.npy", allow_pickle=False)
    assert snaps.shape == (3, policy.n_params(policy.layer_sizes(e["obs_dim"], e["hidden"], e["act_dim"])))
    assert np.array_equal(
        snaps[-1], policy.flatten_layers(policy.expert_layers(e))[0].numpy()
    )  # the last snapshot is the final actor
    again = policy.evaluate_policy(e["task"], e["context"], policy.expert_layers(e), 1, e["eval_seed"])
    assert again["return_mean"] == pytest.approx(r["eval"][e["label"]]["return_mean"])


def test_sac_temperature_falls_when_the_entropy_is_above_minus_act_dim():
    """The target entropy is -act_dim: a policy with std 1 and mean 0 (entropy about +1.4 over 2 dims, above -2) makes
    the first temperature step lower log alpha by lr; a target of +act_dim would raise it."""
    K, B, S, A = 2, 512, 3, 2
    torch.manual_seed(2)
    agent = td3.TD3(K, S, A, (8,), 1e-2, "cpu", sac=True)
    with torch.no_grad():  # last layer: mean head 0, raw log-std 0.4581 -> log-std -5 + 3.5 (tanh + 1) = 0
        agent.actor[-1][0].zero_()
        agent.actor[-1][1].zero_()
        agent.actor[-1][1][..., A:] = math.atanh(10 / 7 - 1)
    obs, act = torch.randn(K, B, S), torch.rand(K, B, A) * 2 - 1
    before = agent.log_alpha.detach().clone()
    agent.update(
        (obs, act, torch.randn(K, B), torch.randn(K, B, S), torch.zeros(K, B)),
        True,
        gamma=0.9,
        tau=0.005,
        policy_noise=0.2,
        noise_clip=0.5,
    )
    torch.testing.assert_close(agent.log_alpha.detach(), before - 1e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for minutes")
def test_gpu_check_refuses_without_cuda_in_one_line():
    r = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHON": sys.executable}
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr
