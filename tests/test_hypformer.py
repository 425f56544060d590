"""Tests of hypformer.py: attention stays inside each sample, the loss terms, checkpoints and generation."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hypformer
import hyplatent
import tasks
import td3
from tasks import UserError
from test_hyplatent import mw_data, tiny_args, vel_data


def tiny_hf_args(tmp_path, **kw):
    base = dict(
        hyplatent=str(tmp_path / "hl"), out_dir=str(tmp_path / "hf"), steps=20, token_dim=32, heads=4, ffn_dim=64, log_interval=0
    )
    return hypformer.Args(**{**base, **kw})


def test_prediction_does_not_depend_on_the_other_samples_of_the_batch():
    torch.manual_seed(0)
    model = hypformer.HypFormer(D=12, cond_dim=2, T=16, heads=4, ffn_dim=32, p=0.2).eval()
    priors, cond = torch.randn(5, 8, 12), torch.randn(5, 2)
    others, other_cond = torch.randn(5, 8, 12), torch.randn(5, 2)
    with torch.no_grad():
        z, res = model(priors, cond)
        alone = model(priors[:1], cond[:1])
        mixed = model(torch.cat([priors[:1], others[1:]]), torch.cat([cond[:1], other_cond[1:]]))
        for out in (alone, mixed):
            assert torch.allclose(out[0][0], z[0], atol=1e-5) and torch.allclose(out[1][0], res[0], atol=1e-5)
        # The released code's batch_first=False attends across the batch: the same check must then fail.
        model.encoder.self_attn.batch_first = False
        z_bug = model(priors, cond)[0]
        mixed_bug = model(torch.cat([priors[:1], others[1:]]), torch.cat([cond[:1], other_cond[1:]]))[0]
    assert not torch.allclose(mixed_bug[0], z_bug[0], atol=1e-3)


def test_losses_equal_hand_computed_values():
    z_pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    res_pred = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    z_gt = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    priors = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]])  # mean prior [2, 0] and [0, 2]
    args = hypformer.Args(lambda_cos=1.0, lambda_res=10.0, lambda_con=100.0, residue_loss="mse")
    out = hypformer.hypformer_losses(z_pred, res_pred, z_gt, priors, args)
    # eq. 6: cosines 1 and 0 -> mean(1 - cos) = 0.5
    assert out["cos"].item() == pytest.approx(0.5)
    # eq. 7: residue target z_gt - mean prior = [[0, 0], [1, -2]]; squared errors 0.25, 0, 1, 4 -> mean 1.3125
    assert out["res"].item() == pytest.approx(10 * 1.3125)
    # eq. 8: z_pred + res_pred = [[1.5, 0], [0, 2]] vs z_gt: squared errors 0.25, 0, 1, 4 -> mean 1.3125
    assert out["con"].item() == pytest.approx(100 * 1.3125)
    assert out["total"].item() == pytest.approx(0.5 + 13.125 + 131.25)
    # the released code's SmoothL1 (beta 1): 0.5 x^2 below 1, |x| - 0.5 above: (0.125 + 0 + 0.5 + 1.5) / 4
    out = hypformer.hypformer_losses(z_pred, res_pred, z_gt, priors, hypformer.Args(lambda_res=1.0))
    assert out["res"].item() == pytest.approx(2.125 / 4)
    assert out["res"].item() == pytest.approx(F.smooth_l1_loss(res_pred, z_gt - priors.mean(1)).item())


def test_main_checkpoint_stands_alone_and_generates_deterministically(tmp_path):
    data = vel_data(tmp_path)
    hyplatent.main(tiny_args(tmp_path, data, test_contexts=("2.5",)))
    res = hypformer.main(tiny_hf_args(tmp_path))
    assert {"train", "heldout", "losses"} <= set(res) and np.isfinite(res["train"]["mse_hypformer"])
    raw = torch.load(tmp_path / "hf" / "hypformer.pt", weights_only=True)
    assert raw["format"] == "cleanhyper-hypformer-v1" and raw["num_priors"] == 8
    hypformer.main(tiny_hf_args(tmp_path, out_dir=str(tmp_path / "hf2")))  # the same seed gives the same weights
    raw2 = torch.load(tmp_path / "hf2" / "hypformer.pt", weights_only=True)
    assert all(torch.equal(raw["hypformer"][k], raw2["hypformer"][k]) for k in raw["hypformer"])
    shutil.rmtree(tmp_path / "hl")  # the HypFormer file carries everything generation needs
    ck = hypformer.load_checkpoint(tmp_path / "hf")
    assert ck["split"]["test"] == [{"goal": 2.5}] and ck["condition"] == "context" and ck["task"] == "cheetah-vel"
    contexts = tasks.parse_contexts("cheetah-vel", ["0.5", "2.5", "3.0"])
    layers = hypformer.generate_policies(ck, contexts, n=2, seed=1)
    assert [tuple(W.shape) for W, _ in layers] == [(6, 17, 8), (6, 8, 8), (6, 8, 6)]
    assert [tuple(b.shape) for _, b in layers] == [(6, 1, 8), (6, 1, 8), (6, 1, 6)]
    act = td3.mlp(layers, torch.randn(6, 4, 17))
    assert torch.isfinite(act).all() and act.abs().max() <= 1
    again = hypformer.generate_policies(ck, contexts, n=2, seed=1)
    assert all(torch.equal(a, b) for la, lb in zip(layers, again) for a, b in zip(la, lb))
    assert not torch.equal(layers[0][0], hypformer.generate_policies(ck, contexts, n=2, seed=2)[0][0])
    with pytest.raises(UserError, match="not a HypLatent checkpoint"):
        hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(tmp_path / "hf" / "hypformer.pt"), out_dir=str(tmp_path / "x")))


def test_behaviour_kind_and_errors(tmp_path):
    with pytest.raises(UserError, match="missing file"):
        hypformer.load_checkpoint(tmp_path / "nothing")
    data = mw_data(tmp_path)
    hyplatent.main(tiny_args(tmp_path, data))
    with pytest.raises(UserError, match="not a HypFormer checkpoint"):
        hypformer.load_checkpoint(tmp_path / "hl" / "hyplatent.pt")
    hypformer.main(tiny_hf_args(tmp_path))
    ck = hypformer.load_checkpoint(tmp_path / "hf" / "hypformer.pt")
    contexts = ck["split"]["train"]
    with pytest.raises(UserError, match="conditions"):
        hypformer.generate_policies(ck, contexts, n=2)
    traj = np.load(data / "behaviour" / "traj.npy")[[0, 8]]
    layers = hypformer.generate_policies(ck, contexts, n=2, conditions=traj)
    assert layers[0][0].shape == (4, 39, 8)
    with pytest.raises(UserError, match="does not match"):
        hypformer.main(tiny_hf_args(tmp_path, data=str(vel_data(tmp_path))))
    with pytest.raises(UserError, match="residue-loss"):
        hypformer.main(tiny_hf_args(tmp_path, residue_loss="l1"))
