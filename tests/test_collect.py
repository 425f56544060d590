"""collect.py: rollout arrays and manifest, Q* recomputed, determinism, returns, behaviour data, error paths."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import collect
import policy
import runio
import tasks
from runio import UserError

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"obs": 2, "action": 2, "reward": 1, "next_obs": 2, "terminated": 1, "q": 1, "context": 2, "context_id": 1, "episode": 1}


def run(experts, out, **kw) -> dict:
    return collect.main(collect.Args(experts=str(experts), out_dir=str(out), **{"episodes": 2, "seed": 3, **kw}))


def load(out, sub="") -> dict:
    d = Path(out) / sub
    return {p.stem: np.load(p, allow_pickle=False) for p in sorted(d.glob("*.npy"))}


@pytest.fixture(scope="module")
def rollouts(tiny_experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollouts")
    return out, run(tiny_experts, out)


def plain_mlp(ts, x, out_act=torch.tanh):  # unbatched (W [in,out], b [1,out]) list, written out by hand
    for i in range(0, len(ts), 2):
        x = x @ ts[i] + ts[i + 1]
        x = torch.relu(x) if i < len(ts) - 2 else x
    return out_act(x) if out_act else x


def test_arrays_shapes_dtypes_manifest(rollouts, tiny_experts):
    out, res = rollouts
    a, man = load(out), json.loads((out / "manifest.json").read_text())
    n, S, A = 2 * 2 * 200, 17, 6  # 2 experts x 2 episodes x 200 steps
    assert man["format"] == "cleanhyper-rollouts-v1" and man["task"] == "cheetah-vel" and man["context_names"] == ["goal"]
    assert man["contexts"] == [{"goal": 0.5}, {"goal": 2.0}] and [e["label"] for e in man["experts"]] == ["goal_0.5", "goal_2"]
    assert (man["obs_dim"], man["act_dim"], man["gamma"], man["counts"]["rows"]) == (S, A, 0.99, n)
    assert set(a) == set(FIELDS)
    for k, nd in FIELDS.items():
        assert a[k].shape[0] == n and a[k].ndim == nd, k
        assert a[k].dtype == (np.int64 if k in ("context_id", "episode") else np.float32), k
    assert a["obs"].shape == (n, S) and a["action"].shape == (n, A) and a["context"].shape == (n, 1)
    assert (np.diff(a["context_id"]) >= 0).all() and (np.diff(a["episode"]) >= 0).all()  # context-major
    np.testing.assert_array_equal(np.bincount(a["episode"]), [200] * 4)
    np.testing.assert_array_equal(a["context"][:, 0], np.where(a["context_id"] == 0, 0.5, 2.0))
    assert not a["terminated"].any()  # cheetah-vel only truncates
    same_ep = a["episode"][1:] == a["episode"][:-1]  # s' of row t is s of row t+1 inside an episode
    np.testing.assert_array_equal(a["next_obs"][:-1][same_ep], a["obs"][1:][same_ep])
    experts = {e["label"]: e for e in policy.load_experts(tiny_experts)}
    assert [e["expert_eval_return"] for e in man["experts"]] == [experts[k]["eval_return"] for k in ("goal_0.5", "goal_2")]


def test_actions_and_q_equal_expert_recomputed(rollouts, tiny_experts):
    out, _ = rollouts
    a = load(out)
    for i, e in enumerate(policy.load_experts(tiny_experts)):
        rows = a["context_id"] == i
        s = torch.from_numpy(a["obs"][rows])
        pi = plain_mlp(e["actor"], s)
        torch.testing.assert_close(torch.from_numpy(a["action"][rows]), pi, atol=1e-6, rtol=1e-5)
        q1 = plain_mlp(e["critic1"], torch.cat([s, pi], 1), None)[:, 0]  # Q1(s, pi(s)), not min(Q1, Q2)
        torch.testing.assert_close(torch.from_numpy(a["q"][rows]), q1, atol=1e-5, rtol=1e-5)
        q2 = plain_mlp(e["critic2"], torch.cat([s, pi], 1), None)[:, 0]
        assert not torch.allclose(q1, q2)  # would catch the wrong critic


def test_returns_match_evaluate_policy_and_reward_rows(rollouts, tiny_experts):
    out, _ = rollouts
    a, man = load(out), json.loads((out / "manifest.json").read_text())
    for i, e in enumerate(policy.load_experts(tiny_experts)):
        # the documented seeds: episode e of expert i resets with seed + 10000 i + e
        ev = policy.evaluate_policy("cheetah-vel", e["context"], policy.expert_layers(e), 2, 3 + 10_000 * i)
        assert man["experts"][i]["return_mean"] == pytest.approx(ev["return_mean"], rel=1e-9)
        per_ep = [a["reward"][a["episode"] == 2 * i + k].astype(np.float64).sum() for k in range(2)]
        np.testing.assert_allclose(per_ep, ev["returns"], rtol=1e-5)


def test_same_seed_identical_other_seed_differs(rollouts, tiny_experts, tmp_path):
    out, _ = rollouts
    run(tiny_experts, tmp_path / "again")
    for sub in ("", "behaviour"):
        a, b = load(out, sub), load(tmp_path / "again", sub)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    run(tiny_experts, tmp_path / "other", seed=4, snapshots=False)
    assert not np.array_equal(load(tmp_path / "other")["obs"], load(out)["obs"])
    assert not (tmp_path / "other" / "behaviour").exists()


def test_behaviour_files(rollouts, tiny_experts):
    out, _ = rollouts
    b, a = load(out, "behaviour"), load(out)
    bman = json.loads((out / "behaviour" / "manifest.json").read_text())
    S, A, sizes = 17, 6, [17, 16, 16, 6]
    P = policy.n_params(sizes)
    steps = np.load(tiny_experts / "snapshot_steps.npy")
    np.testing.assert_array_equal(steps, [200, 300, 400])
    M = 2 * (len(steps) + 1)  # every snapshot and the final actor, per context
    assert bman["policy_sizes"] == sizes and bman["n_params"] == P and bman["count"] == M
    assert b["params"].shape == (M, P) and b["params"].dtype == np.float32
    assert b["traj"].shape == (M, 20 * (S + 3 * A)) and b["post_success"].shape == (M, 3 * S)
    np.testing.assert_array_equal(b["param_context_id"], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(b["param_step"], [200, 300, 400, 400] * 2)
    np.testing.assert_array_equal(b["param_context"][:, 0], [0.5] * 4 + [2.0] * 4)
    assert np.isnan(b["param_success"]).all() and (b["post_success_step"] == -1).all()  # cheetah-vel: no success
    for i, e in enumerate(policy.load_experts(tiny_experts)):
        rows = np.flatnonzero(b["param_context_id"] == i)
        np.testing.assert_array_equal(b["params"][rows[:-1]], np.load(tiny_experts / f"snapshots_{e['label']}.npy"))
        np.testing.assert_array_equal(b["params"][rows[-1]], policy.flatten_layers(policy.expert_layers(e))[0].numpy())
        # the final actor's behaviour episode is the rollout set's episode 0 of that context (same reset seed)
        ep = a["episode"] == 2 * i
        obs, act, nxt = a["obs"][ep], a["action"][ep], a["next_obs"][ep]
        traj = b["traj"][rows[-1]].reshape(20, S + 3 * A)
        np.testing.assert_allclose(traj[0], np.concatenate([obs[0], act[0], act[1], act[2]]), atol=1e-6)  # s_0 a_0 a_1 a_2
        np.testing.assert_allclose(traj[7], np.concatenate([obs[21], act[21], act[22], act[23]]), atol=1e-6)
        # never succeeds -> the last 3 states s_{T-2}, s_{T-1}, s_T
        np.testing.assert_allclose(b["post_success"][rows[-1]], np.concatenate([obs[-2], obs[-1], nxt[-1]]), atol=1e-6)
        assert b["param_return"][rows[-1]] == pytest.approx(a["reward"][ep].astype(np.float64).sum(), rel=1e-5)


def test_behaviour_features_success_rule_and_padding():
    S, A, T = 2, 1, 10
    states = np.arange((T + 1) * S, dtype=np.float32).reshape(T + 1, S)  # s_t = [2t, 2t+1]
    actions = 100 + np.arange(T, dtype=np.float32).reshape(T, A)  # a_t = 100 + t
    traj, post = collect.behaviour_features(states, actions, success_step=4)
    blocks = traj.reshape(20, S + 3 * A)
    np.testing.assert_array_equal(blocks[0], [0, 1, 100, 101, 102])
    np.testing.assert_array_equal(blocks[2], [12, 13, 106, 107, 108])
    np.testing.assert_array_equal(blocks[3], [18, 19, 109, 0, 0])  # actions past the end are zeros
    assert not blocks[4:].any()  # states past s_T are zeros
    np.testing.assert_array_equal(post, states[4:7].reshape(-1))  # s_m, s_m+1, s_m+2
    np.testing.assert_array_equal(collect.behaviour_features(states, actions, 9)[1], states[[9, 10, 10]].reshape(-1))
    np.testing.assert_array_equal(collect.behaviour_features(states, actions, -1)[1], states[8:11].reshape(-1))


def test_metaworld_success_and_empty_context(tmp_path):
    # a random metaworld actor: context vector of size 0, success flags recorded (not NaN)
    env = tasks.make_env("metaworld", {"env_name": "reach-v3", "goal_seed": 1})
    S, A = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(0)
    flat = lambda sizes: [t[0] for W_b in policy.init_layers(1, sizes) for t in W_b]
    ctx = {"env_name": "reach-v3", "goal_seed": 1}
    expert = {"task": "metaworld", "context": ctx, "context_names": [], "context_vector": [], "label": "reach-v3"}
    expert |= {"obs_dim": S, "act_dim": A, "hidden": [8], "actor": flat([S, 8, A]), "critic1": flat([S + A, 8, 1])}
    expert |= {"critic2": flat([S + A, 8, 1]), "step": 50, "eval_return": 0.0, "gamma": 0.99}
    runio.atomic_save(expert, tmp_path / "experts" / "expert_reach-v3.pt")
    snaps = policy.flatten_layers(policy.init_layers(1, [S, 8, A])).numpy()
    np.save(tmp_path / "experts" / "snapshots_reach-v3.npy", snaps)
    np.save(tmp_path / "experts" / "snapshot_steps.npy", np.array([25]))
    run(tmp_path / "experts", tmp_path / "out", episodes=1)
    a, b = load(tmp_path / "out"), load(tmp_path / "out", "behaviour")
    assert a["obs"].shape == (500, S) and a["context"].shape == (500, 0)
    assert b["param_context"].shape == (2, 0) and np.isin(b["param_success"], [0.0, 1.0]).all()
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["contexts"] == [ctx] and man["experts"][0]["success_rate"] in (0.0, 1.0)


def corrupt_copy(src, dst, **changes):
    shutil.copytree(src, dst)
    f = sorted(dst.glob("expert_*.pt"))[-1]
    e = runio.safe_load(f)
    e.update(changes)
    runio.atomic_save(e, f)
    return dst


def with_obs_dim(n: int) -> dict:
    """An expert file's entries for another observation size, consistent in themselves (policy.load_experts checks each
    file's tensors against its sizes first): actor [n, 16, 16, 6], critics [n + 6, 16, 16, 1]."""
    torch.manual_seed(0)
    flat = lambda sizes: [t[0] for layer in policy.init_layers(1, sizes) for t in layer]  # noqa: E731
    critic = [n + 6, 16, 16, 1]
    return {"obs_dim": n, "actor": flat([n, 16, 16, 6]), "critic1": flat(critic), "critic2": flat(critic)}


@pytest.mark.parametrize(
    "changes,msg",
    [
        ({"task": "cheetah-run"}, "differ in task"),
        (with_obs_dim(18), "differ in obs_dim"),
        ({"context_names": ["speed"]}, "differ in context_names"),
    ],
)
def test_mixed_expert_dir_refused(tiny_experts, tmp_path, changes, msg):
    with pytest.raises(UserError, match=msg):
        run(corrupt_copy(tiny_experts, tmp_path / "mixed", **changes), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_empty_and_missing_dir_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    for d in ("empty", "missing"):
        with pytest.raises(UserError, match="no experts found"):
            run(tmp_path / d, tmp_path / "out")


def test_failure_leaves_no_complete_looking_set(rollouts, tiny_experts, tmp_path, monkeypatch):
    shutil.copytree(rollouts[0], tmp_path / "out")  # a previous complete set, being overwritten
    save = runio.atomic_save

    def failing(obj, path):
        if Path(path).name == "q.npy":
            raise OSError("disk full")
        save(obj, path)

    monkeypatch.setattr(runio, "atomic_save", failing)
    with pytest.raises(OSError):
        run(tiny_experts, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "behaviour" / "manifest.json").exists()


def test_cli_error_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    p = subprocess.run(
        [sys.executable, "collect.py", "--experts", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.startswith("error: no experts found") and len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Several --experts directories (shards of one sweep) merge
# ---------------------------------------------------------------------------------------------
def test_two_shards_give_the_same_bytes_as_one_directory(rollouts, tiny_experts, tmp_path):
    """Each shard holds one context's expert, snapshots and snapshot_steps.npy (as td3.py --shard writes them); given
    in either order, the merged set is ordered by label and every array equals the one-directory run's, byte for byte."""
    for shard, label in (("shard_1", "goal_0.5"), ("shard_0", "goal_2")):
        (tmp_path / shard).mkdir()
        for name in (f"expert_{label}.pt", f"snapshots_{label}.npy", "snapshot_steps.npy"):
            shutil.copy(tiny_experts / name, tmp_path / shard / name)
    res = collect.main(
        collect.Args(
            experts=(str(tmp_path / "shard_0"), str(tmp_path / "shard_1")), out_dir=str(tmp_path / "o"), episodes=2, seed=3
        )
    )
    assert [e["label"] for e in res["manifest"]["experts"]] == ["goal_0.5", "goal_2"]
    for sub in ("", "behaviour"):
        one, merged = sorted((rollouts[0] / sub).glob("*.npy")), sorted((tmp_path / "o" / sub).glob("*.npy"))
        assert [p.name for p in one] == [p.name for p in merged] and one
        for a, b in zip(one, merged):
            assert a.read_bytes() == b.read_bytes(), a.name


# ---------------------------------------------------------------------------------------------
# Bad input: every flag and file refused before any work, in one line, nothing written
# ---------------------------------------------------------------------------------------------
FLAG_CASES = [
    ({"episodes": 0}, r"--episodes must be a finite number > 0, got 0"),
    ({"snapshot_episodes": -1}, r"--snapshot-episodes must be a finite number > 0, got -1"),
    ({"seed": -5}, r"--seed must be a finite number >= 0, got -5"),
    ({"torch_threads": -2}, r"--torch-threads must be a finite number >= 0, got -2"),
    pytest.param({"device": "cuda"}, r"cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
]


@pytest.mark.parametrize("flags,msg", FLAG_CASES)
def test_bad_flags_refused_before_any_work(tiny_experts, tmp_path, flags, msg):
    with pytest.raises(UserError, match=msg):
        run(tiny_experts, tmp_path / "out", **flags)
    assert not (tmp_path / "out").exists()


def save_npy_object(path):  # an object array: loading it would need pickle
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def edit_expert(change):
    def edit(d):
        runio.atomic_save(change(runio.safe_load(d / "expert_goal_2.pt")), d / "expert_goal_2.pt")

    return edit


def edit_npy(name, change):
    def edit(d):
        np.save(d / name, change(np.load(d / name)), allow_pickle=False)

    return edit


FILE_CASES = {  # name -> (an edit of a copy of tiny_experts, the message: what is wrong, naming the file)
    "pt holding a list": (lambda d: runio.atomic_save([1, 2], d / "expert_goal_2.pt"), r"expert_goal_2.pt"),
    "pt holding only actor": (lambda d: runio.atomic_save({"actor": []}, d / "expert_goal_2.pt"), r"expert_goal_2.pt"),
    "truncated pt": (lambda d: truncate(d / "expert_goal_2.pt"), r"cannot load .*expert_goal_2.pt"),
    "actor of other sizes": (
        edit_expert(lambda e: e | {"hidden": [16, 8]}),
        r"expert_goal_2.pt: 'actor' is not a list of tensors",
    ),
    "NaN weights": (edit_expert(lambda e: e | {"actor": [t * np.nan for t in e["actor"]]}), r"bad data in .*expert_goal_2.pt"),
    "truncated snapshots": (lambda d: truncate(d / "snapshots_goal_2.npy"), r"cannot read .*snapshots_goal_2.npy"),
    "object-dtype snapshots": (lambda d: save_npy_object(d / "snapshots_goal_2.npy"), r"cannot read .*snapshots_goal_2.npy"),
    "NaN in snapshots": (edit_npy("snapshots_goal_2.npy", lambda a: a * np.nan), r"bad data in .*snapshots_goal_2.npy"),
    "float snapshot_steps": (edit_npy("snapshot_steps.npy", lambda a: a.astype(np.float32)), r"snapshot_steps.npy holds float32"),
    "snapshots of other width": (
        edit_npy("snapshots_goal_2.npy", lambda a: a[:, :-1]),
        r"snapshots_goal_2.npy has shape \(3, 661\); expected \(3, 662\)",
    ),
    "snapshots and steps of different lengths": (
        edit_npy("snapshot_steps.npy", lambda a: a[:-1]),
        r"snapshots_goal_0.5.npy has shape \(3, 662\); expected \(2, 662\)",
    ),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_files_refused_before_any_work(tiny_experts, tmp_path, case):
    edit, msg = FILE_CASES[case]
    shutil.copytree(tiny_experts, tmp_path / "experts")
    edit(tmp_path / "experts")
    with pytest.raises(UserError, match=msg):
        run(tmp_path / "experts", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_dir_a_file_or_holding_an_earlier_run(rollouts, tiny_experts, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="is a file"):
        run(tiny_experts, tmp_path / "file")
    shutil.copytree(rollouts[0], tmp_path / "out")  # an earlier run: refused, and left as it was
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"already holds an earlier run .* --overwrite"):
        run(tiny_experts, tmp_path / "out", seed=4)
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    (tmp_path / "out" / "behaviour" / "stale.npy").write_bytes(b"")  # removed with the earlier run's outputs
    run(tiny_experts, tmp_path / "out", seed=4, snapshots=False, overwrite=True)
    assert (
        not (tmp_path / "out" / "behaviour").exists()
        and json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == 4
    )


@pytest.mark.parametrize(
    "flags,msg",
    [(["--episodes", "0"], "error: --episodes must be a finite number > 0, got 0"), (["--seed", "-5"], "error: --seed")],
)
def test_cli_bad_flag_one_line_exit_2(tiny_experts, tmp_path, flags, msg, refused):
    assert refused("collect.py", "--experts", tiny_experts, "--out-dir", tmp_path / "o", *flags).startswith(msg)
    assert not (tmp_path / "o").exists()


def test_evenly_spaced_snapshots_known_answers():
    assert collect.evenly_spaced(301, 4).tolist() == [0, 100, 200, 300]  # first and last included
    assert collect.evenly_spaced(3, 2).tolist() == [0, 2]
    assert collect.evenly_spaced(5, 0).tolist() == collect.evenly_spaced(5, 9).tolist() == [0, 1, 2, 3, 4]  # all
