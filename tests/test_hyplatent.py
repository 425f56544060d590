"""Tests of hyplatent.py: autoencoder on real TD3 actors, behaviour embedding, HypLatent on a toy distribution, checkpoints."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import hyplatent
import policy
import runio
import tasks
import td3
from runio import UserError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Fixture helpers: collect.py's behaviour-data layout (its docstring), written from given arrays
# ---------------------------------------------------------------------------------------------
def write_behaviour_data(root, task, contexts, sizes, params, context_id, traj=None, post=None, seed=0):
    """Writes ROLLOUTS/manifest.json and ROLLOUTS/behaviour/ exactly as collect.py's contract; random traj/post by default."""
    root = Path(root)
    (root / "behaviour").mkdir(parents=True, exist_ok=True)
    s, a = sizes[0], sizes[-1]
    params = np.asarray(params, dtype=np.float32)
    m = len(params)
    rng = np.random.default_rng(seed)
    names = [n for n in contexts[0] if n not in ("env_name", "goal_seed")]
    context_id = np.asarray(context_id, dtype=np.int64)
    arrays = {
        "params": params,
        "param_context_id": context_id,
        "param_context": np.asarray([tasks.context_vector(contexts[i]) for i in context_id], dtype=np.float32).reshape(
            m, len(names)
        ),
        "param_step": np.arange(m, dtype=np.int64),
        "param_return": rng.normal(size=m).astype(np.float32),
        "param_success": np.full(m, np.nan, dtype=np.float32),
        "traj": rng.normal(size=(m, 20 * (s + 3 * a))).astype(np.float32) if traj is None else np.asarray(traj, dtype=np.float32),
        "post_success": rng.normal(size=(m, 3 * s)).astype(np.float32) if post is None else np.asarray(post, dtype=np.float32),
    }
    for k, v in arrays.items():
        np.save(root / "behaviour" / f"{k}.npy", v, allow_pickle=False)
    man = {"task": task, "context_names": names, "contexts": contexts, "obs_dim": s, "act_dim": a, "gamma": 0.99}
    (root / "manifest.json").write_text(json.dumps(man))
    (root / "behaviour" / "manifest.json").write_text(json.dumps({"policy_sizes": list(sizes), "hidden": list(sizes[1:-1])}))
    return root


def tiny_args(tmp_path, data, **kw):
    """hyplatent.Args that train in about a second."""
    base = dict(
        data=str(data), out_dir=str(tmp_path / "hl"), latent_dim=16, ae_steps=30, gan_steps=30, embed_steps=20, log_interval=0
    )
    return hyplatent.Args(**{**base, **kw})


def vel_data(tmp_path, sizes=(17, 8, 8, 6), per=10, seed=0):
    """Synthetic Cheetah-Vel behaviour data: 3 goals, `per` random actors each (context-specific offsets)."""
    contexts = tasks.parse_contexts("cheetah-vel", ["0.5", "1.5", "2.5"])
    g = torch.Generator().manual_seed(seed)
    cid = np.repeat(np.arange(3), per)
    base = torch.randn(3, policy.n_params(list(sizes)), generator=g) * 0.3
    params = base[cid] + 0.03 * torch.randn(len(cid), base.shape[1], generator=g)
    return write_behaviour_data(tmp_path / "vel", "cheetah-vel", contexts, list(sizes), params.numpy(), cid, seed=seed)


def mw_data(tmp_path, sizes=(39, 8, 8, 4), per=8, seed=0):
    """Synthetic MetaWorld behaviour data (no numeric context: the condition is the trajectory embedding)."""
    contexts = [{"env_name": n, "goal_seed": 1} for n in ("reach-v3", "door-open-v3")]
    g = torch.Generator().manual_seed(seed)
    cid = np.repeat(np.arange(2), per)
    params = torch.randn(len(cid), policy.n_params(list(sizes)), generator=g) * 0.3
    return write_behaviour_data(tmp_path / "mw", "metaworld", contexts, list(sizes), params.numpy(), cid, seed=seed)


# ---------------------------------------------------------------------------------------------
# Stage 1: the autoencoder on real TD3 actors
# ---------------------------------------------------------------------------------------------
def test_limits_maps_each_feature_to_the_unit_range_and_only_shifts_one_that_never_moves():
    x = torch.tensor([[0.0, 5.0, 2.0], [4.0, 5.0, 2.00001]])
    nrm = hyplatent.limits(x)
    assert torch.allclose(hyplatent.normalize(x, nrm)[:, 0], torch.tensor([-1.0, 1.0]))
    # a constant feature (MetaWorld's zero padding): another task's value 6 is 1 away, not 1e6 (MAA: range_eps 1e-4)
    z = hyplatent.normalize(torch.tensor([[2.0, 6.0, 2.0]]), nrm)
    assert z[0, 1].item() == pytest.approx(1.0) and abs(z[0, 2].item()) < 1e-4
    assert torch.allclose(hyplatent.unnormalize(hyplatent.normalize(x, nrm), nrm), x)


def test_chunks_are_first_layer_then_rest():
    assert hyplatent.chunks_of([39, 128, 128, 4])[0] == 5120  # MAA's first chunk: Linear(39, 128) with its bias
    sizes = [17, 16, 16, 6]
    assert hyplatent.chunks_of(sizes) == [17 * 16 + 16, policy.n_params(sizes) - 17 * 16 - 16]
    layers = policy.init_layers(2, sizes)
    first = hyplatent.chunks_of(sizes)[0]
    assert torch.equal(policy.flatten_layers(layers)[:, :first], policy.flatten_layers(layers[:1]))  # W0, b0 lead the flat vector


def test_autoencoder_round_trip_on_real_actor_parameters(tmp_path):
    torch.manual_seed(0)
    td3.main(
        td3.Args(
            task="cheetah-vel",
            contexts=("1.0",),
            total_timesteps=600,
            learning_starts=300,
            batch_size=64,
            hidden=(16, 16),
            eval_interval=0,
            eval_episodes=1,
            snapshot_interval=100,
            snapshot_start=300,
            out_dir=str(tmp_path / "e"),
            checkpoint_interval=0,
        )
    )
    expert = policy.load_experts(tmp_path / "e")[0]
    sizes = policy.layer_sizes(17, [16, 16], 6)
    real = torch.cat(
        [
            torch.from_numpy(np.load(tmp_path / "e" / "snapshots_goal_1.npy")),
            policy.flatten_layers(policy.expert_layers(expert)),
        ]
    )  # [5, P]: 4 snapshots + the final actor
    fresh = policy.flatten_layers(policy.init_layers(27, sizes))  # other (untrained) actors, as other contexts would give
    params = torch.cat([real, fresh])  # [32, 662]
    nrm = hyplatent.zscore(params)
    args = hyplatent.Args(latent_dim=32, ae_steps=1000, ae_lr=3e-3, log_interval=0)
    ae = hyplatent.train_autoencoder(hyplatent.normalize(params, nrm), hyplatent.chunks_of(sizes), args)
    with torch.no_grad():
        rec = hyplatent.unnormalize(ae.decode(ae.encode(hyplatent.normalize(params, nrm))), nrm)
    rel = (rec - params).norm(dim=1) / params.norm(dim=1)
    rel_centered = (rec - params).norm(dim=1) / (params - nrm["shift"]).norm(dim=1)
    assert rel.max() < 0.15 and rel.mean() < 0.05, rel  # the 5 real actors are one tight cluster: the hardest to resolve
    assert rel_centered.mean() < 0.2, rel_centered  # reconstructs the variation, not only the mean actor
    layers = policy.unflatten_layers(rec[4:5], sizes)  # the decoded final actor in the policy form
    act = policy.mlp(layers, torch.randn(1, 50, 17) * 3)
    assert torch.isfinite(act).all() and act.abs().max() <= 1
    dec = policy.evaluate_policy("cheetah-vel", expert["context"], layers, 1, seed=5)
    ref = policy.evaluate_policy("cheetah-vel", expert["context"], policy.expert_layers(expert), 1, seed=5)
    assert np.isfinite(dec["return_mean"]) and abs(dec["return_mean"] - ref["return_mean"]) < 0.1 * abs(ref["return_mean"]) + 5


# ---------------------------------------------------------------------------------------------
# Stage 1b: the behaviour embedding
# ---------------------------------------------------------------------------------------------
def test_info_nce_equals_hand_computed_cross_entropy():
    h, v, W = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.eye(2)
    logits = torch.tensor([[1.0, 0.0], [2.0, 2.0]])  # h_i . v_j
    want = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2
    loss, acc = hyplatent.info_nce(h, v, W)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert loss.item() == pytest.approx((np.log(1 + np.exp(-1)) + np.log(2)) / 2, abs=1e-6)
    assert acc.item() == 0.5  # row 1 ties: argmax picks column 0


def test_behaviour_embedding_separates_two_behaviour_families():
    # Two families whose trajectories differ only in 3 of 60 features (noise elsewhere); the post-success states tell
    # only the family. Contrastive training must find those features; a random phi separates the families much worse.
    torch.manual_seed(0)
    n = 800
    fam = torch.arange(n) % 2
    traj = torch.randn(n, 60)
    traj[:, :3] += (fam[:, None] * 2 - 1) * 1.5  # the best possible accuracy is 0.995
    post = (fam[:, None] * 2 - 1) * torch.ones(n, 6)
    args = hyplatent.Args(embed_hidden=64, embed_dim=16, embed_steps=800, embed_batch_size=32, embed_lr=1e-3, log_interval=0)

    def accuracy(phi):  # nearest family centroid on the second half, centroids from the first half
        with torch.no_grad():
            h = phi(traj)
        cents = torch.stack([h[: n // 2][fam[: n // 2] == k].mean(0) for k in (0, 1)])
        return (torch.cdist(h[n // 2 :], cents).argmin(1) == fam[n // 2 :]).float().mean().item()

    untrained = accuracy(hyplatent.BehaviourEmbedding(60, 6, 64, 16).phi)
    emb, _ = hyplatent.train_embedding(traj[: n // 2], post[: n // 2], args)
    trained = accuracy(emb.phi)
    assert trained > 0.93 and trained > untrained + 0.1, (trained, untrained)  # seeds 0-4: >= 0.96 vs <= 0.80


# ---------------------------------------------------------------------------------------------
# Stage 2: HypLatent
# ---------------------------------------------------------------------------------------------
def test_hyplatent_learns_a_toy_conditional_distribution():
    torch.manual_seed(0)
    n, d = 256, 32
    cond = (torch.arange(n) % 2).float()[:, None] * 2 - 1  # two conditions, -1 and +1
    Z = 0.5 * cond * torch.ones(1, d) + 0.3 * torch.randn(n, d)  # two clusters, std 0.3 per feature
    args = hyplatent.Args(gan_steps=1000, gan_batch_size=64, noise_dim=4, log_interval=0)
    G, _, stats = hyplatent.train_gan(Z, cond, args)
    assert not G.training
    with torch.no_grad():
        for c in (-1.0, 1.0):
            z = G(torch.randn(400, 4), torch.full((400, 1), c))
            own, other = Z[cond[:, 0] == c].mean(0), Z[cond[:, 0] == -c].mean(0)
            assert ((z - own).norm(dim=1) < (z - other).norm(dim=1)).float().mean() > 0.95  # its own condition's cluster
            assert (z.mean(0) - own).norm() < 0.5 * (own - other).norm()  # seeds 0-5: <= 0.38
            assert 0.1 < z.std(0).mean() < 0.6  # diverse samples for one condition, on the data's scale (0.3; seeds 0-5: >= 0.2)


# ---------------------------------------------------------------------------------------------
# main, checkpoint, generate_policies, errors
# ---------------------------------------------------------------------------------------------
def scalars(out_dir, tag) -> list[tuple[int, float]]:
    """(step, value) of one tag in the TensorBoard events under out_dir/tb, read back as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = {p.parent for p in (Path(out_dir) / "tb").rglob("events.out.tfevents*")}
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_main_checkpoint_generates_policies_deterministically(tmp_path):
    data = vel_data(tmp_path)
    res = hyplatent.main(tiny_args(tmp_path, data, test_contexts=("1.5",), log_interval=10))
    for stage in ("ae", "gan"):  # losses and steps/s at the log interval, in TensorBoard
        loss = scalars(tmp_path / "hl", "losses/ae_loss" if stage == "ae" else "losses/gan_loss_info")
        assert [step for step, _ in loss] == [10, 20, 30] and all(np.isfinite(v) for _, v in loss)
        assert [step for step, _ in scalars(tmp_path / "hl", f"charts/{stage}_SPS")] == [10, 20, 30]
    assert Path(res["plot"]).is_file() and np.isfinite(res["autoencoder"]["rel_error"])
    raw = torch.load(tmp_path / "hl" / "hyplatent.pt", weights_only=True)  # plain tensors, lists, dicts: no pickle
    ck = hyplatent.load_checkpoint(tmp_path / "hl")
    assert raw["format"] == ck["format"] == "cleanhyper-hyplatent-v1" and ck["condition"] == "context" and ck["noise_dim"] == 4
    assert ck["split"] == {"train": [{"goal": 0.5}, {"goal": 2.5}], "test": [{"goal": 1.5}]}
    assert ck["policy_sizes"] == [17, 8, 8, 6] and ck["embedding"] is None
    contexts = tasks.parse_contexts("cheetah-vel", ["0.5", "1.5", "3.0"])
    layers = hyplatent.generate_policies(ck, contexts, n=2, seed=3)
    assert [tuple(W.shape) for W, _ in layers] == [(6, 17, 8), (6, 8, 8), (6, 8, 6)]
    assert [tuple(b.shape) for _, b in layers] == [(6, 1, 8), (6, 1, 8), (6, 1, 6)]
    act = policy.mlp(layers, torch.randn(6, 4, 17))
    assert torch.isfinite(act).all() and act.abs().max() <= 1
    again = hyplatent.generate_policies(ck, contexts, n=2, seed=3)
    other = hyplatent.generate_policies(ck, contexts, n=2, seed=4)
    assert all(torch.equal(W, W2) for (W, _), (W2, _) in zip(layers, again))
    assert not torch.equal(layers[0][0], other[0][0])
    assert not torch.equal(layers[0][0][0], layers[0][0][1])  # the n samples of one context differ
    fake = {"G": lambda noise, cond: cond}  # context-major: the n samples of context 0 come first
    rows = hyplatent.sample_latents(ck, fake, hyplatent.conditions_of(ck, fake, contexts), 2, seed=0)
    assert rows[:, 0].tolist() == pytest.approx([-2 / 3, -2 / 3, 0.0, 0.0, 1.0, 1.0])  # goals 0.5, 1.5, 3 of [0, 3] -> [-1, 1]
    # the same seed gives the same checkpoint (logging or not)
    hyplatent.main(tiny_args(tmp_path, data, test_contexts=("1.5",), out_dir=str(tmp_path / "hl2")))
    ck2 = hyplatent.load_checkpoint(tmp_path / "hl2" / "hyplatent.pt")
    for part in ("autoencoder", "generator", "discriminator"):
        assert all(torch.equal(ck[part][k], ck2[part][k]) for k in ck[part])


def test_behaviour_condition_needs_demo_trajectories(tmp_path):
    data = mw_data(tmp_path)
    hyplatent.main(tiny_args(tmp_path, data))
    ck = hyplatent.load_checkpoint(tmp_path / "hl")
    assert ck["condition"] == "behaviour" and ck["noise_dim"] == 128 and ck["cond_dim"] == 128 and ck["embedding"] is not None
    contexts = ck["split"]["train"]
    with pytest.raises(UserError, match="conditions"):
        hyplatent.generate_policies(ck, contexts, n=2)
    traj = np.load(data / "behaviour" / "traj.npy")[[0, 8]]  # one demo per task
    with pytest.raises(UserError, match="shape"):
        hyplatent.generate_policies(ck, contexts, n=2, conditions=traj[:1])
    layers = hyplatent.generate_policies(ck, contexts, n=3, conditions=torch.as_tensor(traj))
    assert layers[0][0].shape == (6, 39, 8) and layers[-1][1].shape == (6, 1, 4)


def test_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing file"):
        hyplatent.load_checkpoint(tmp_path / "nothing.pt")
    runio.atomic_save({"format": "cleanhyper-hyperzero-v1"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a HypLatent checkpoint"):
        hyplatent.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="no behaviour data"):
        hyplatent.main(tiny_args(tmp_path, tmp_path / "nowhere"))
    data = vel_data(tmp_path)
    with pytest.raises(UserError, match="not in the data"):
        hyplatent.main(tiny_args(tmp_path, data, test_contexts=("1.0",)))
    with pytest.raises(UserError, match="no numeric context"):
        hyplatent.main(tiny_args(tmp_path, mw_data(tmp_path), condition="context"))
    params = np.load(data / "behaviour" / "params.npy")
    params[3, 5] = np.nan
    np.save(data / "behaviour" / "params.npy", params)
    with pytest.raises(UserError, match=r"bad data in .*params.npy: 1 NaN"):  # the data, not the learning rate
        hyplatent.main(tiny_args(tmp_path, data))
    with pytest.raises(UserError, match="non-finite ae_loss = nan at step 7; lower --ae-lr"):
        hyplatent.check(7, {"ae_loss": float("nan")}, "--ae-lr")
    params[3, 5] = 0.0
    np.save(data / "behaviour" / "params.npy", params[:, :-1])
    with pytest.raises(UserError, match="shape"):
        hyplatent.main(tiny_args(tmp_path, data))


# ---------------------------------------------------------------------------------------------
# Bad input: every flag and file refused before any work, in one line, nothing written
# ---------------------------------------------------------------------------------------------
FLAG_CASES = [
    ({"ae_steps": 0}, r"--ae-steps must be a finite number > 0, got 0"),
    ({"gan_batch_size": -4}, r"--gan-batch-size must be a finite number > 0, got -4"),
    ({"gan_lr": float("nan")}, r"--gan-lr must be a finite number > 0, got nan"),
    ({"ae_lr": float("inf")}, r"--ae-lr must be a finite number > 0, got inf"),
    ({"seed": -5}, r"--seed must be a finite number >= 0, got -5"),
    ({"log_interval": -1}, r"--log-interval must be a finite number >= 0, got -1"),
    ({"dropout": 1.5}, r"--dropout must be a finite number in \[0, 1\], got 1.5"),
    ({"latent_dim": 4}, r"--latent-dim must be >= 8"),
    ({"condition": "both"}, r"--condition must be auto, context or behaviour"),
    pytest.param({"device": "cuda"}, r"cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
]


@pytest.mark.parametrize("flags,msg", FLAG_CASES)
def test_bad_flags_refused_before_any_work(tmp_path, flags, msg):
    with pytest.raises(UserError, match=msg):
        hyplatent.main(tiny_args(tmp_path, vel_data(tmp_path), **flags))
    assert not (tmp_path / "hl").exists()


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def edit_json(name, change):
    def edit(d):
        (d / name).write_text(json.dumps(change(json.loads((d / name).read_text()))))

    return edit


def edit_npy(name, change):
    def edit(d):
        np.save(d / "behaviour" / name, change(np.load(d / "behaviour" / name)), allow_pickle=False)

    return edit


def with_nan(a):
    a = a.copy()
    a[3, 5] = np.nan
    return a


FILE_CASES = {  # name -> (an edit of vel_data, the message: what is wrong, naming the file)
    "truncated manifest": (lambda d: truncate(d / "manifest.json"), r"manifest.json is not valid JSON"),
    "manifest a list": (lambda d: (d / "manifest.json").write_text("[]"), r"manifest.json holds a JSON list"),
    "manifest missing a key": (edit_json("manifest.json", lambda m: m.pop("obs_dim") and m), r"manifest.json has no 'obs_dim'"),
    "manifest key of the wrong type": (
        edit_json("manifest.json", lambda m: m | {"act_dim": "6"}),
        r"manifest.json: 'act_dim' is '6'; expected a int",
    ),
    "unknown task": (edit_json("manifest.json", lambda m: m | {"task": "pong"}), r"manifest.json: unknown task 'pong'"),
    "behaviour manifest missing policy_sizes": (
        edit_json("behaviour/manifest.json", lambda m: {}),
        r"behaviour/manifest.json has no 'policy_sizes'",
    ),
    "policy sizes not from obs_dim to act_dim": (
        edit_json("behaviour/manifest.json", lambda m: m | {"policy_sizes": [18, 8, 8, 6]}),
        r"behaviour/manifest.json: policy_sizes \[18, 8, 8, 6\]",
    ),
    "float context_id": (
        edit_npy("param_context_id.npy", lambda a: a.astype(np.float32)),
        r"param_context_id.npy holds float32 values; expected integer",
    ),
    "context_id out of range": (edit_npy("param_context_id.npy", lambda a: a + 1), r"param_context_id.npy must index the 3"),
    "truncated npy": (lambda d: truncate(d / "behaviour" / "params.npy"), r"cannot read .*params.npy"),
    "object-dtype npy": (
        lambda d: np.save(d / "behaviour" / "traj.npy", np.array([{}, None], dtype=object), allow_pickle=True),
        r"cannot read .*traj.npy",
    ),
    "missing npy": (lambda d: (d / "behaviour" / "post_success.npy").unlink(), r"missing file: .*post_success.npy"),
    "NaN in the data": (edit_npy("traj.npy", with_nan), r"bad data in .*traj.npy: 1 NaN or infinite"),
    "params of other width": (
        edit_npy("params.npy", lambda a: a[:, :-1]),
        r"params.npy has shape \(30, 269\); expected \(30, 270\)",
    ),
    "arrays of different lengths": (
        edit_npy("traj.npy", lambda a: a[:-1]),
        r"traj.npy has shape \(29, 700\); expected \(30, 700\) \(30 rows",
    ),
    "params of rank 1": (
        edit_npy("params.npy", lambda a: a[0]),
        r"params.npy has shape \(270,\); expected an array of 2 dimensions",
    ),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_files_refused_before_any_work(tmp_path, case):
    edit, msg = FILE_CASES[case]
    data = vel_data(tmp_path)
    edit(data)
    with pytest.raises(UserError, match=msg):
        hyplatent.main(tiny_args(tmp_path, data))
    assert not (tmp_path / "hl").exists()


def test_out_dir_a_file_or_holding_an_earlier_run(tmp_path):
    data = vel_data(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="is a file"):
        hyplatent.main(tiny_args(tmp_path, data, out_dir=str(tmp_path / "file")))
    hyplatent.main(tiny_args(tmp_path, data, log_interval=10))
    before = {p: p.read_bytes() for p in (tmp_path / "hl").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"already holds an earlier run .*; pass --overwrite"):
        hyplatent.main(tiny_args(tmp_path, data, seed=2))
    assert {p: p.read_bytes() for p in (tmp_path / "hl").rglob("*") if p.is_file()} == before  # left as it was
    hyplatent.main(tiny_args(tmp_path, data, seed=2, overwrite=True))  # replaces it, the earlier events with it
    assert hyplatent.load_checkpoint(tmp_path / "hl")["args"]["seed"] == 2
    assert not [p for p in before if p.exists() and "tb" in p.parts]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_out_dir_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        hyplatent.main(tiny_args(tmp_path, vel_data(tmp_path), out_dir=str(tmp_path / "ro")))


def test_checkpoints_that_are_not_hyplatent_ones(tmp_path):
    hyplatent.main(tiny_args(tmp_path, vel_data(tmp_path)))
    ck = torch.load(tmp_path / "hl" / "hyplatent.pt", weights_only=True)
    cases = {
        "list": ([1, 2], r"is not a HypLatent checkpoint \(format 'list'"),
        "no format": ({"generator": {}}, r"is not a HypLatent checkpoint \(format None"),
        "no generator": ({k: v for k, v in ck.items() if k != "generator"}, r"incomplete HypLatent checkpoint \(no generator\)"),
        "other sizes": (ck | {"latent_dim": 32}, r"damaged HypLatent checkpoint: its weights do not match"),
    }
    for name, (obj, msg) in cases.items():
        runio.atomic_save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(UserError, match=msg):
            hyplatent.load_checkpoint(tmp_path / f"{name}.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "hl" / "hyplatent.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match=r"cannot load .*truncated.pt"):
        hyplatent.load_checkpoint(tmp_path / "truncated.pt")


CLI_CASES = [  # (flags, an edit of the data, the one line on stderr starts with)
    (["--ae-steps", "0"], None, "error: --ae-steps must be a finite number > 0, got 0"),
    (["--seed", "-5"], None, "error: --seed must be a finite number >= 0, got -5"),
    ([], lambda d: truncate(d / "manifest.json"), f"error: {{}}{os.sep}manifest.json is not valid JSON"),
]


@pytest.mark.parametrize("flags,edit,msg", CLI_CASES)
def test_cli_one_line_exit_2(tmp_path, flags, edit, msg, refused):
    data = vel_data(tmp_path)
    if edit:
        edit(data)
    assert refused("hyplatent.py", "--data", data, "--out-dir", tmp_path / "hl", *flags).startswith(msg.format(data))
    assert not (tmp_path / "hl").exists()
