"""Tests of hypformer.py: attention stays inside each sample, the loss terms, checkpoints and generation."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hypformer
import hyplatent
import policy
import runio
import tasks
from runio import UserError
from test_hyplatent import mw_data, scalars, tiny_args, truncate, vel_data


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
    res = hypformer.main(tiny_hf_args(tmp_path, log_interval=10))
    assert {"train", "heldout", "losses"} <= set(res) and np.isfinite(res["train"]["mse_hypformer"])
    assert [step for step, _ in scalars(tmp_path / "hf", "losses/hypformer_total")] == [10, 20]  # TensorBoard events
    assert [step for step, _ in scalars(tmp_path / "hf", "charts/hypformer_SPS")] == [10, 20]
    raw = torch.load(tmp_path / "hf" / "hypformer.pt", weights_only=True)
    assert raw["format"] == "cleanhyper-hypformer-v1" and raw["num_priors"] == 8
    hypformer.main(tiny_hf_args(tmp_path, out_dir=str(tmp_path / "hf2")))  # the same seed gives the same weights (logging or not)
    raw2 = torch.load(tmp_path / "hf2" / "hypformer.pt", weights_only=True)
    assert all(torch.equal(raw["hypformer"][k], raw2["hypformer"][k]) for k in raw["hypformer"])
    shutil.rmtree(tmp_path / "hl")  # the HypFormer file carries everything generation needs
    ck = hypformer.load_checkpoint(tmp_path / "hf")
    assert ck["split"]["test"] == [{"goal": 2.5}] and ck["condition"] == "context" and ck["task"] == "cheetah-vel"
    contexts = tasks.parse_contexts("cheetah-vel", ["0.5", "2.5", "3.0"])
    layers = hypformer.generate_policies(ck, contexts, n=2, seed=1)
    assert [tuple(W.shape) for W, _ in layers] == [(6, 17, 8), (6, 8, 8), (6, 8, 6)]
    assert [tuple(b.shape) for _, b in layers] == [(6, 1, 8), (6, 1, 8), (6, 1, 6)]
    act = policy.mlp(layers, torch.randn(6, 4, 17))
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


# ---------------------------------------------------------------------------------------------
# Bad input: every flag and file refused before any work, in one line, nothing written
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hl_dir(tmp_path_factory):
    """A tiny Cheetah-Vel HypLatent (its out_dir), trained once for the cases below."""
    tmp = tmp_path_factory.mktemp("hl")
    hyplatent.main(tiny_args(tmp, vel_data(tmp)))
    return tmp / "hl"


FLAG_CASES = [
    ({"steps": 0}, r"--steps must be a finite number > 0, got 0"),
    ({"batch_size": -4}, r"--batch-size must be a finite number > 0, got -4"),
    ({"lr": float("nan")}, r"--lr must be a finite number > 0, got nan"),
    ({"seed": -5}, r"--seed must be a finite number >= 0, got -5"),
    ({"num_priors": 0}, r"--num-priors must be a finite number > 0, got 0"),
    ({"lambda_res": -1.0}, r"--lambda-res must be a finite number >= 0, got -1.0"),
    ({"dropout": 2.0}, r"--dropout must be a finite number in \[0, 1\], got 2.0"),
    ({"token_dim": 30}, r"--token-dim must be divisible by --heads, got 30 and 4"),
    ({"residue_loss": "l1"}, r"--residue-loss must be smooth-l1 or mse"),
    pytest.param({"device": "cuda"}, r"cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
]


@pytest.mark.parametrize("flags,msg", FLAG_CASES)
def test_bad_flags_refused_before_any_work(hl_dir, tmp_path, flags, msg):
    with pytest.raises(UserError, match=msg):
        hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(hl_dir), **flags))
    assert not (tmp_path / "hf").exists()


def broken_hyplatent(hl_dir, d, change=None) -> dict:
    """--hyplatent d/x holding hl_dir's hyplatent.pt changed by `change` (checkpoint -> what to save), or truncated."""
    (d / "x").mkdir()
    if change is None:
        (d / "x" / "hyplatent.pt").write_bytes((hl_dir / "hyplatent.pt").read_bytes()[:2000])
    else:
        runio.atomic_save(change(torch.load(hl_dir / "hyplatent.pt", weights_only=True)), d / "x" / "hyplatent.pt")
    return {"hyplatent": str(d / "x")}


def other_variable(data):  # the same task and sizes, conditioned on another set of context variables
    man = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps(man | {"context_names": []}))
    np.save(data / "behaviour" / "param_context.npy", np.zeros((30, 0), np.float32))
    return data


def truncated_manifest(data):
    truncate(data / "manifest.json")
    return data


FILE_CASES = {  # name -> (hl_dir, a scratch dir -> --hyplatent and --data; the message: what is wrong, naming the file)
    "no hyplatent.pt": (lambda hl, d: {"hyplatent": str(d)}, r"no hyplatent.pt in .* \(the --out-dir of a hyplatent.py run\)"),
    "a .pt holding a list": (
        lambda hl, d: broken_hyplatent(hl, d, lambda ck: [1, 2]),
        r"x/hyplatent.pt is not a HypLatent checkpoint \(format 'list'",
    ),
    "a hyplatent.pt without its generator": (
        lambda hl, d: broken_hyplatent(hl, d, lambda ck: {k: v for k, v in ck.items() if k != "generator"}),
        r"x/hyplatent.pt is an incomplete HypLatent checkpoint \(no generator\)",
    ),
    "a truncated hyplatent.pt": (lambda hl, d: broken_hyplatent(hl, d), r"cannot load .*x/hyplatent.pt"),
    "data of other context variables": (
        lambda hl, d: {"hyplatent": str(hl), "data": str(other_variable(vel_data(d)))},
        r"vel \(task, policy sizes, context names .*\) does not match the HypLatent",
    ),
    "truncated data manifest": (
        lambda hl, d: {"hyplatent": str(hl), "data": str(truncated_manifest(vel_data(d)))},
        r"vel/manifest.json is not valid JSON",
    ),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_files_refused_before_any_work(hl_dir, tmp_path, case):
    paths, msg = FILE_CASES[case]
    with pytest.raises(UserError, match=msg):
        hypformer.main(tiny_hf_args(tmp_path, **paths(hl_dir, tmp_path)))
    assert not (tmp_path / "hf").exists()


def test_out_dir_a_file_or_holding_an_earlier_run(hl_dir, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="is a file"):
        hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(hl_dir), out_dir=str(tmp_path / "file")))
    hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(hl_dir)))
    before = (tmp_path / "hf" / "hypformer.pt").read_bytes()
    with pytest.raises(UserError, match=r"already holds an earlier run \(hypformer.pt.*\); pass --overwrite"):
        hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(hl_dir), seed=2))
    assert (tmp_path / "hf" / "hypformer.pt").read_bytes() == before
    hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(hl_dir), seed=2, overwrite=True))
    assert hypformer.load_checkpoint(tmp_path / "hf")["args"]["seed"] == 2


def test_checkpoints_that_are_not_hypformer_ones(hl_dir, tmp_path):
    hypformer.main(tiny_hf_args(tmp_path, hyplatent=str(hl_dir)))
    ck = torch.load(tmp_path / "hf" / "hypformer.pt", weights_only=True)
    cases = {
        "list": ([1, 2], r"is not a HypFormer checkpoint \(format 'list'"),
        "no sizes": ({k: v for k, v in ck.items() if k != "sizes"}, r"incomplete HypFormer checkpoint \(no sizes\)"),
        "other sizes": (ck | {"sizes": ck["sizes"] | {"T": 16}}, r"damaged HypFormer checkpoint"),
        "damaged hyplatent part": (ck | {"hyplatent": ck["hyplatent"] | {"latent_dim": 8}}, r"damaged HypFormer checkpoint"),
    }
    for name, (obj, msg) in cases.items():
        runio.atomic_save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(UserError, match=msg):
            hypformer.load_checkpoint(tmp_path / f"{name}.pt")


@pytest.mark.parametrize(
    "flags,msg",
    [(["--steps", "0"], "error: --steps must be a finite number > 0, got 0"), (["--seed", "-5"], "error: --seed")],
)
def test_cli_one_line_exit_2(hl_dir, tmp_path, flags, msg, refused):
    assert refused("hypformer.py", "--hyplatent", hl_dir, "--out-dir", tmp_path / "hf", *flags).startswith(msg)
    assert not (tmp_path / "hf").exists()
