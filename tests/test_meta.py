"""meta.py (MAML and PEARL) and their few-shot adaptation in evaluate.py: MAML's second-order gradient and its
fast adaptation on a toy task family, PEARL's posterior (narrowing, separating contexts, no action leak), the policy
form, checkpoints, determinism and the evaluate.py rows."""

import math

import numpy as np
import pytest
import torch

import collect
import evaluate
import hyperzero
import meta
import policy
import runio
import tasks
from runio import UserError
from synthetic import A, S, write_linear_rollouts

torch.set_num_threads(1)  # as every stage's --torch-threads: small nets, and 2 threads fight on a shared CPU


def write_rollouts(root, goals, rows=200, seed=0):
    """r = -|s_0 - goal|, no terminal rows."""
    return write_linear_rollouts(root, goals, rows, seed, reward=lambda obs, g: -np.abs(obs[:, 0] - g), terminal=False)


def small(rollouts, out, **kw) -> meta.Args:
    base = dict(rollouts=str(rollouts), out_dir=str(out), embed_dim=32, policy_hidden=(32,), steps=20, log_interval=10)
    return meta.Args(**{**base, **kw})


def as_transitions(arrays, goal, n):
    rows = np.flatnonzero(arrays["context"][:, 0] == goal)[:n]
    return {f: arrays[f][rows] for f in ("obs", "action", "reward", "next_obs")}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_rollouts(tmp_path_factory.mktemp("meta"), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


# ---------------------------------------------------------------------------------------------------------------------
# MAML
# ---------------------------------------------------------------------------------------------------------------------
def test_maml_gradient_is_second_order_and_first_order_drops_it():
    torch.manual_seed(0)
    model = meta.build_model("maml", 1, 16, [S, 8, A])
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 1, generator=g)
    (xs, xq), (ys, yq) = torch.randn(2, 3, 6, S, generator=g), torch.rand(2, 3, 6, A, generator=g) - 0.5
    grads = {}
    for first_order in (False, True):
        model.zero_grad()
        meta.maml_loss(model, (c, xs, ys), (c, xq, yq), 3, 0.5, first_order).backward()
        got = [p.grad.clone() for p in model.parameters()]
        # by hand, one context at a time: autograd.grad with create_graph (learn2learn's MAML) or detached (FOMAML)
        model.zero_grad()
        loss = 0.0
        for i in range(3):
            p = dict(model.named_parameters())
            for _ in range(3):
                gi = torch.autograd.grad(
                    meta.bc_loss(model, p, c[i], xs[i], ys[i]), list(p.values()), create_graph=not first_order
                )
                p = {k: v - 0.5 * d for (k, v), d in zip(p.items(), gi)}
            loss = loss + meta.bc_loss(model, p, c[i], xq[i], yq[i]) / 3
        loss.backward()
        for a, b in zip(got, (p.grad for p in model.parameters())):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        grads[first_order] = torch.cat([t.flatten() for t in got])
    assert (grads[True] - grads[False]).norm() > 0.05 * grads[False].norm()  # the second-order terms matter here


def sinusoids(g, m, k=10):
    """m regression tasks y = a sin(x + p), a in [0.2, 0.9], p in [0, pi]; the context c = 0 says nothing about them."""
    a, p = 0.2 + 0.7 * torch.rand(m, 1, 1, generator=g), math.pi * torch.rand(m, 1, 1, generator=g)
    xs, xq = (10 * torch.rand(m, k, 1, generator=g) - 5 for _ in range(2))
    c = torch.zeros(m, 1)
    return (c, xs, a * torch.sin(xs + p)), (c, xq, a * torch.sin(xq + p))


def test_maml_adapts_a_new_task_far_faster_than_a_pretrained_init():
    # The classic MAML sinusoid family (Finn et al. 2017, §5.1). Both models train on the same task batches; the
    # pre-trained one with 0 inner steps, i.e. plain multi-task regression (the average function, here ~0).
    after, before = {}, {}
    for name, inner in (("maml", 3), ("pretrained", 0)):
        torch.manual_seed(0)
        model = meta.build_model("maml", 1, 8, [1, 40, 40, 1])
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(150):
            loss = meta.maml_loss(model, *sinusoids(g, 10), inner, 0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        new = sinusoids(torch.Generator().manual_seed(123), 200)  # unseen tasks: 3 SGD steps on 10 points each
        before[name] = meta.maml_loss(model, *new, 0, 0.1).item()
        after[name] = meta.maml_loss(model, *new, 3, 0.1, first_order=True).item()
    print(f"query MSE before -> after 3 steps: {before} -> {after}")  # measured: maml 0.12 -> 0.03, pretrained 0.12 -> 0.10
    gain = {k: before[k] - after[k] for k in after}
    assert gain["maml"] > 3 * gain["pretrained"] and after["maml"] < 0.5 * after["pretrained"]


# ---------------------------------------------------------------------------------------------------------------------
# PEARL
# ---------------------------------------------------------------------------------------------------------------------
def test_pearl_no_action_leak():
    torch.manual_seed(0)
    model = meta.build_model("pearl", 1, 16, [S, 8, A], latent_dim=3)
    g = torch.Generator().manual_seed(0)
    data = {
        f: torch.randn(50, d, generator=g).squeeze(-1) for f, d in (("obs", S), ("action", A), ("reward", 1), ("next_obs", S))
    }
    start, count, ctx = torch.tensor([0, 25]), torch.tensor([25, 25]), torch.tensor([1, 0])
    for _ in range(200):  # support and query rows: inside their context, never shared
        sup, qry = meta.meta_rows(start, count, ctx, 10, 10)
        for k in range(2):
            rows = torch.cat([sup[k], qry[k]])
            assert len(set(rows.tolist())) == 20 and ((rows >= start[ctx[k]]) & (rows < start[ctx[k]] + 25)).all()

    def run(edit=None):
        d = {k: v.clone() for k, v in data.items()}
        if edit is not None:
            d["action"][edit] += 1.0
        torch.manual_seed(7)  # the same reparameterisation noise
        parts, z = meta.pearl_losses(model, d, sup, qry)
        return parts["bc"].item(), z

    bc0, z0 = run()
    bc1, z1 = run(qry[0, 0])  # the action of a row being predicted
    assert torch.equal(z1, z0) and bc1 != bc0  # it is a label (the loss sees it) but the latent does not
    _, z2 = run(sup[0, 0])  # an action in the context set
    assert not torch.allclose(z2[0], z0[0]) and torch.equal(z2[1], z0[1])


def test_pearl_posterior_narrows_and_separates_contexts(synth, tmp_path):
    root, arrays = synth
    # the default kl_weight 1e-3: at the released code's 0.01 this run collapses the posterior onto the prior (measured)
    args = small(root, tmp_path / "p", model="pearl", latent_dim=4, steps=600, kl_weight=1e-3, test_contexts=("2.5",))
    ckpt = meta.main(args)["ckpt"]
    model = meta.build_model("pearl", 1, 32, ckpt["policy_sizes"], 4)
    model.load_state_dict(ckpt["state_dict"])
    post = {}
    with torch.no_grad():
        for goal in (0.5, 2.0):
            t = {k: torch.from_numpy(v) for k, v in as_transitions(arrays, goal, 64).items()}
            post[goal] = [model.posterior(meta.transitions(t, slice(0, m))[None]) for m in (0, 1, 2, 4, 8, 16, 32, 64)]
    for goal, ps in post.items():
        var = torch.stack([v.mean() for _, v in ps])
        assert ps[0][0].abs().max() == 0 and torch.allclose(ps[0][1], torch.ones(1, 4))  # no transitions: the prior
        assert (var[1:] < var[:-1]).all(), f"goal {goal}: posterior variance not decreasing: {var}"
    # the means, in units of the posterior std along each latent (unused latents keep a wide posterior and count ~0)
    (mu_a, var_a), (mu_b, var_b) = post[0.5][-1], post[2.0][-1]
    separation = ((mu_a - mu_b) ** 2 / (var_a + var_b)).sum().sqrt().item()
    print(f"posterior means {(mu_a - mu_b).norm():.3f} apart, {separation:.1f} std")  # measured: 11 and 22 (seeds 1, 2)
    assert separation > 5

    # inferring z from the held-out context's transitions helps: BC error there, posterior mean vs prior (zero-shot)
    held = as_transitions(arrays, 2.5, 200)
    obs, act = torch.from_numpy(held["obs"])[None], torch.from_numpy(held["action"])[None]
    zero = policy.mlp(meta.generate_policies(ckpt, [{"goal": 2.5}]), obs)
    adapted = policy.mlp(meta.adapt_policies(ckpt, [{"goal": 2.5}], [as_transitions(arrays, 2.5, 64)], 0), obs)
    print(f"held-out BC: prior {((zero - act) ** 2).mean():.4f}, posterior {((adapted - act) ** 2).mean():.4f}")  # 0.33, 0.03
    assert ((adapted - act) ** 2).mean() < 0.3 * ((zero - act) ** 2).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Policy form, checkpoints, determinism, errors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["maml", "pearl"])
def test_policy_form_round_trip_and_seed(synth, tmp_path, name):
    root, arrays = synth
    kw = dict(model=name, steps=5, meta_batch=3, support_size=16, query_size=8, inner_steps=2)
    res = meta.main(small(root, tmp_path / "a", **kw))
    again = meta.main(small(root, tmp_path / "b", **kw))
    other = meta.main(small(root, tmp_path / "c", seed=2, **kw))
    sd = [r["ckpt"]["state_dict"] for r in (res, again, other)]
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0]) and not all(torch.equal(sd[0][k], sd[2][k]) for k in sd[0])
    ckpt = torch.load(tmp_path / "a" / "meta.pt", weights_only=True)
    assert ckpt["model"] == name and ckpt["format"] == "cleanhyper-meta-v1" and ckpt["args"]["inner_steps"] == 2
    assert ckpt["policy_sizes"] == [S, 32, A] and ckpt["context_names"] == ["goal"] and ckpt["args"]["policy_hidden"] == [32]
    assert len(ckpt["split"]["test"]) == 1 and len(ckpt["split"]["train"]) == 6  # int(0.15 * 7) -> at least 1
    assert set(res["history"][-1]) >= {"loss", "bc", "test_bc", "steps_per_s"} and not {"value", "td"} & set(res["history"][-1])
    ctxs = [{"goal": 0.7}, {"goal": 3.0}, {"goal": 1.2}]
    trans = [as_transitions(arrays, g, 30) for g in (0.5, 3.0, 1.0)]
    for layers in (meta.generate_policies(ckpt, ctxs), meta.adapt_policies(ckpt, ctxs, trans, 2)):
        assert [(tuple(W.shape), tuple(b.shape)) for W, b in layers] == [((3, S, 32), (3, 1, 32)), ((3, 32, A), (3, 1, A))]
        assert policy.mlp(layers, torch.randn(3, 5, S)).shape == (3, 5, A)
    for (W0, b0), (W1, b1) in zip(meta.adapt_policies(res["ckpt"], ctxs, trans, 2), meta.adapt_policies(ckpt, ctxs, trans, 2)):
        assert torch.equal(W0, W1) and torch.equal(b0, b1)
    for (W0, b0), (W1, b1) in zip(meta.generate_policies(res["ckpt"], ctxs), meta.generate_policies(ckpt, ctxs)):
        assert torch.equal(W0, W1) and torch.equal(b0, b1)
    zero, adapted = meta.generate_policies(ckpt, ctxs), meta.adapt_policies(ckpt, ctxs, trans, 2)
    assert not torch.allclose(zero[0][1], adapted[0][1])  # adaptation changes the policy
    if name == "maml":  # 0 inner steps: the meta-learned initialisation itself
        for (W0, b0), (W1, b1) in zip(zero, meta.adapt_policies(ckpt, ctxs, trans, 0)):
            torch.testing.assert_close(W0, W1)
            torch.testing.assert_close(b0, b1)
    else:  # zero-shot PEARL acts at the prior mean: one policy for every context
        assert torch.equal(zero[0][1][0], zero[0][1][1])


def test_maml_outer_gradient_is_clipped(synth, tmp_path):
    # Adam normalises the gradient's scale, so only a clip far below eps shows: steps 2-3 then barely move the weights
    root, _ = synth
    kw = dict(model="maml", meta_batch=2, support_size=8, query_size=8, inner_steps=1)
    moved = {}
    for clip in (0.0, 1e-12):
        sd = [
            meta.main(small(root, tmp_path / f"{clip}_{n}", steps=n, max_grad_norm=clip, **kw))["ckpt"]["state_dict"]
            for n in (1, 3)
        ]
        moved[clip] = max((sd[1][k] - sd[0][k]).abs().max().item() for k in sd[0])
    assert moved[1e-12] < 1e-3 * moved[0.0]


def test_meta_errors(synth, tmp_path):
    root, arrays = synth
    with pytest.raises(UserError, match="--support-size \\+ --query-size needs 400"):
        meta.main(small(root, tmp_path / "x", model="maml", support_size=200, query_size=200))
    with pytest.raises(UserError, match="--latent-dim must be a finite number > 0, got 0"):
        meta.main(small(root, tmp_path / "x", model="pearl", latent_dim=0))
    hz = dict(rollouts=str(root), embed_dim=32, policy_hidden=(32,), log_interval=10)
    ckpt = hyperzero.main(hyperzero.Args(**hz, out_dir=str(tmp_path / "m"), model="mlp", steps=1))["ckpt"]
    with pytest.raises(UserError, match="not a meta.py checkpoint"):
        meta.adapt_policies(ckpt, [{"goal": 1.0}], [as_transitions(arrays, 1.0, 5)], 1)
    ckpt = meta.main(small(root, tmp_path / "p", model="pearl", steps=1))["ckpt"]
    bad = {**as_transitions(arrays, 1.0, 5), "action": np.zeros((5, 3), np.float32)}
    with pytest.raises(UserError, match="want obs"):
        meta.adapt_policies(ckpt, [{"goal": 1.0}], [bad], 1)


def test_old_hyperzero_maml_checkpoint_refused_with_one_line(synth, tmp_path):
    # before meta.py, hyperzero.py wrote MAML and PEARL as format cleanhyper-hyperzero-v1 in hyperzero.pt
    root, _ = synth
    ckpt = meta.main(small(root, tmp_path / "m", steps=1, meta_batch=2, support_size=8, query_size=8, inner_steps=1))["ckpt"]
    runio.atomic_save({**ckpt, "format": "cleanhyper-hyperzero-v1"}, tmp_path / "old" / "hyperzero.pt")
    with pytest.raises(UserError, match="old hyperzero.py --model maml checkpoint: retrain it with meta.py --model maml"):
        evaluate.main(evaluate.Args(policies=(str(tmp_path / "old"),), out_dir=str(tmp_path / "ev")))
    with pytest.raises(UserError, match="unknown model 'mlp'; valid models: maml, pearl"):
        meta.main(small(root, tmp_path / "x", model="mlp"))


# ---------------------------------------------------------------------------------------------------------------------
# evaluate.py: zero-shot and adapted rows on a real tiny pipeline
# ---------------------------------------------------------------------------------------------------------------------
def test_evaluate_adds_adapted_rows(tiny_experts, tmp_path, capsys):
    collect.main(collect.Args(experts=(str(tiny_experts),), episodes=1, seed=1, out_dir=str(tmp_path / "r"), snapshots=False))
    for name in ("maml", "pearl"):
        meta.main(small(tmp_path / "r", tmp_path / name, model=name, test_contexts=("2.0",), steps=3, inner_steps=2))
    res = evaluate.main(
        evaluate.Args(
            experts=(str(tiny_experts),),
            policies=(str(tmp_path / "maml"), str(tmp_path / "pearl")),
            contexts=("0.5", "2.0", "1.0"),  # 1.0 has no expert: no adaptation data
            episodes=1,
            adapt_transitions=50,
            out_dir=str(tmp_path / "ev"),
        )
    )
    got = {(r["method"], r["label"]): r for r in res["rows"]}
    for m in ("maml", "pearl"):
        assert {lab for meth, lab in got if meth == m} == {"goal_0.5", "goal_2", "goal_1"}
        assert {lab for meth, lab in got if meth == f"{m}-adapted"} == {"goal_0.5", "goal_2"}
        row = got[(f"{m}-adapted", "goal_2")]
        assert row["heldout"] is True and row["adapt_transitions"] == 50 and row["adapt_steps"] == (2 if m == "maml" else 0)
        assert math.isfinite(row["return_mean"]) and row["normalized"] is not None
    assert "skipped, no expert" in capsys.readouterr().out
    methods = [s["method"] for s in res["summary"]]
    assert {"maml", "maml-adapted", "pearl", "pearl-adapted"} <= set(methods)
    zero_shot = evaluate.main(  # --adapt-transitions 0: the zero-shot rows only, the same numbers
        evaluate.Args(
            experts=(str(tiny_experts),),
            policies=(str(tmp_path / "maml"), str(tmp_path / "pearl")),
            contexts=("0.5", "2.0", "1.0"),
            episodes=1,
            adapt_transitions=0,
            out_dir=str(tmp_path / "ev0"),
        )
    )
    assert [r for r in res["rows"] if not r["method"].endswith("-adapted")] == zero_shot["rows"]
    # the adaptation data are the expert's own transitions, from seeds apart from the evaluation episodes
    e = next(x for x in policy.load_experts(tiny_experts) if x["label"] == "goal_2")
    tr = evaluate.expert_transitions("cheetah-vel", e, 250, 1, "cpu")
    assert {k: v.shape for k, v in tr.items()} == {"obs": (250, 17), "action": (250, 6), "reward": (250,), "next_obs": (250, 17)}
    np.testing.assert_array_equal(tr["obs"][1:200], tr["next_obs"][:199])
    with torch.no_grad():
        np.testing.assert_allclose(
            policy.mlp(policy.expert_layers(e), torch.from_numpy(tr["obs"])[None])[0].numpy(), tr["action"], atol=1e-6
        )
    first = policy.rollout(tasks.make_env("cheetah-vel", e["context"], 1), policy.expert_layers(e), 1)  # evaluation episode 0
    assert not np.allclose(first["states"][0], tr["obs"][0])


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line before any work (rollout files: collect.load_rollouts, tested in test_hyperzero.py), tracking
# ---------------------------------------------------------------------------------------------------------------------
FLAG_CASES = [
    (dict(steps=0), "--steps must be a finite number > 0, got 0"),
    (dict(meta_batch=0), "--meta-batch must be"),
    (dict(support_size=-1), "--support-size must be"),
    (dict(query_size=0), "--query-size must be"),
    (dict(inner_steps=-1), "--inner-steps must be a finite number >= 0"),
    (dict(inner_lr=float("nan")), "--inner-lr must be a finite number > 0, got nan"),
    (dict(learning_rate=float("nan")), "--learning-rate must be a finite number > 0, got nan"),
    (dict(max_grad_norm=-1.0), "--max-grad-norm must be a finite number >= 0"),
    (dict(kl_weight=float("inf")), "--kl-weight must be"),
    (dict(log_interval=0), "--log-interval must be"),
    (dict(policy_hidden=(0,)), "--policy-hidden must be"),
    (dict(seed=-5), "--seed must be a finite number >= 0, got -5"),
    (dict(test_fraction=2.0), r"--test-fraction must be in \[0, 1\)"),
    (dict(support_size=150, query_size=60), "a training context has 200 rows; --support-size \\+ --query-size needs 210"),
    (dict(model="hyperzero"), "unknown model 'hyperzero'"),
]
if not torch.cuda.is_available():
    FLAG_CASES.append((dict(device="cuda"), "cuda"))


@pytest.mark.parametrize("kw, message", FLAG_CASES, ids=[",".join(kw) for kw, _ in FLAG_CASES])
def test_bad_flags_refused_before_any_work(synth, tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        meta.main(small(synth[0], tmp_path / "out", **kw))
    assert not (tmp_path / "out").exists()


def test_out_dir_and_checkpoints_that_are_not_ours(synth, tmp_path):
    root, _ = synth
    kw = dict(steps=1, meta_batch=2, support_size=8, query_size=8, inner_steps=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        meta.main(small(root, tmp_path / "file", **kw))
    ckpt = meta.main(small(root, tmp_path / "run", **kw))["ckpt"]
    with pytest.raises(UserError, match="already holds an earlier run .*meta.pt.*--overwrite"):
        meta.main(small(root, tmp_path / "run", **kw))
    meta.main(small(root, tmp_path / "run", overwrite=True, **kw))
    cases = {
        "list.pt": ([ckpt], "list.pt is not a meta.py checkpoint \\(format 'a list'"),
        "other.pt": ({"format": "cleanhyper-hyperzero-v1"}, "other.pt is not a meta.py checkpoint"),
        "incomplete.pt": ({k: v for k, v in ckpt.items() if k != "latent_dim"}, "incomplete meta.py checkpoint: no latent_dim"),
        "shapes.pt": ({**ckpt, "policy_sizes": [S, 7, A]}, "shapes.pt is a damaged checkpoint"),
        "model.pt": ({**ckpt, "model": "reptile"}, "model.pt is a damaged checkpoint .*unknown model 'reptile'"),
    }  # fmt: skip
    for name, (obj, message) in cases.items():
        runio.atomic_save(obj, tmp_path / name)
        with pytest.raises(UserError, match=message) as e:
            meta.load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)


def test_losses_logged_to_tensorboard(synth, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    meta.main(small(synth[0], tmp_path / "p", model="pearl", steps=6, log_interval=3))
    acc = EventAccumulator(str(tmp_path / "p" / "tb"))
    acc.Reload()
    assert {"losses/total", "losses/bc", "losses/kl", "losses/heldout_bc", "charts/SPS"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("losses/kl")] == [3, 6]
