"""hypformer.py — Gen-HypRL stage 3: HypFormer refines L latent priors sampled from a frozen HypLatent generator.

    python hypformer.py --hyplatent runs/vel/hyplatent --seed 1 --out-dir runs/vel/hypformer

For every sample the frozen generator G (eval mode, no grad) draws L priors Z_j = G(n_j, condition) with fresh noise.
Tokens [learnable token, L projected priors, projected condition] [B, L+2, T] pass one transformer encoder layer that
attends across the tokens of each sample; a shared MLP, then a latent head and a residue head, each averaged over the
tokens. Losses (Gen-HypRL eq. 6-8): cosine to the expert latent, residue to (expert - mean prior), and consistency
of latent + residue with the expert. Inference: latent + residue, decoded by HypLatent's autoencoder.
"The released code" (or "code") is jayaramreddy10/gen-hyprl_code at the commit in docs/reference_code.md#sources:
transformer_encoder_residue.py (SampleLatentNet) and train_unet1d_samplenet_residue.py. Where we differ and why:
docs/reference_code.md#gen-hyprl-hypformer.

Writes hypformer.pt (weights_only, a plain dict): format, task, obs/act dims, policy_sizes, condition, context_names,
split (as HypLatent's), the HypFormer state_dict and sizes, num_priors, args, stats, and under "hyplatent" the whole
HypLatent checkpoint but its discriminator, so the file alone generates policies; TensorBoard events of the losses
in tb/.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import collect
import hyplatent
import runio
from policy import unflatten_layers
from runio import UserError, descend
from tasks import context_label

FORMAT = "cleanhyper-hypformer-v1"


@dataclass
class Args:
    hyplatent: str = "runs/vel/hyplatent"
    """HypLatent output directory (or its hyplatent.pt)"""
    data: str = ""
    """behaviour data (collect.py's rollouts directory); empty = the one HypLatent was trained on"""
    seed: int = 1
    """seed of torch (everything is deterministic on CPU)"""
    out_dir: str = "runs/vel/hypformer"
    """writes hypformer.pt and the TensorBoard events (tb/) here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir (they are removed before this run starts)"""
    num_priors: int = 8
    """L, generator priors per sample (paper 8; 32 was best on unseen tasks)"""
    token_dim: int = 64
    """transformer token size (paper 256)"""
    heads: int = 4
    """attention heads (paper and code 128, i.e. heads of size 2)"""
    ffn_dim: int = 256
    """feed-forward width of the encoder layer (code: PyTorch's default 2048)"""
    dropout: float = 0.2
    """dropout of the projection MLPs and heads (code 0.2; the encoder layer keeps PyTorch's 0.1)"""
    steps: int = 1500
    """updates (code: 3000 epochs at batch 128, best checkpoint at epoch 1550)"""
    batch_size: int = 64
    """minibatch (code 128)"""
    lr: float = 2e-4
    """Adam learning rate, betas (0.5, 0.999), weight decay 1e-5 (code)"""
    lambda_cos: float = 1e3
    """eq. 6, cosine loss weight (paper and code 1e3)"""
    lambda_res: float = 1e3
    """eq. 7, residue loss weight (paper and code 1e3)"""
    lambda_con: float = 1e3
    """eq. 8, consistency loss weight (paper and code 1e3)"""
    residue_loss: Literal["smooth-l1", "mse"] = "smooth-l1"
    """eq. 7's error: 'smooth-l1' (released code, beta 1) or 'mse' (the paper's squared error)"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'; runs are deterministic on CPU"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default, one per core: fastest for one run alone; give 1 to each of several
    runs sharing the cores)"""
    log_interval: int = 500
    """print progress, and log losses and steps/s to TensorBoard, every this many updates (0: never)"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb); TensorBoard event files are always written to out_dir/tb"""
    wandb_project_name: str = "cleanhyper"
    """Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """Weights & Biases entity (team or user; with --track)"""


def mlp2(i: int, h: int, o: int, p: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Dropout(p), nn.Linear(h, o))


class HypFormer(nn.Module):
    """The released SampleLatentNet (transformer_encoder_residue.py) with attention across each sample's own tokens."""

    def __init__(self, D: int, cond_dim: int, T: int, heads: int, ffn_dim: int, p: float):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, D))  # the paper's learnable Z_token, in latent space
        self.prior_proj, self.cond_proj, self.mix = mlp2(D, T, T, p), nn.Linear(cond_dim, T), mlp2(T, T, T, p)
        # batch_first=True: the input is [B, L+2, T], so attention mixes the L+2 tokens of each sample. The released
        # code leaves batch_first=False on the same input, so it attends across the samples of the batch
        # (docs/reference_code.md#gen-hyprl-hypformer):
        # a prediction then depends on which other samples share its batch. Deliberately not reproduced.
        self.encoder = nn.TransformerEncoderLayer(T, heads, ffn_dim, dropout=0.1, batch_first=True)
        self.shared, self.latent_head, self.residue_head = mlp2(T, T, T, p), mlp2(T, T, D, p), mlp2(T, T, D, p)

    def forward(self, priors, cond):  # priors [B, L, D], cond [B, c] -> latent [B, D], residue [B, D]
        x = self.prior_proj(torch.cat([self.token.expand(len(priors), -1, -1), priors], 1))  # [B, 1+L, T]
        x = self.mix(torch.cat([x, self.cond_proj(cond)[:, None]], 1))  # [B, L+2, T]
        x = self.shared(self.encoder(x))
        # Each head is the code's MLP averaged over all L+2 tokens; its last Linear commutes with the mean, so the mean
        # is taken first: the same numbers, L+2 times cheaper.
        return self.latent_head[3](self.latent_head[:3](x).mean(1)), self.residue_head[3](self.residue_head[:3](x).mean(1))


def hypformer_losses(z_pred, res_pred, z_gt, priors, args: Args) -> dict:
    """z_pred, res_pred, z_gt [B, D]; priors [B, L, D]. Returns the weighted terms and their sum."""
    res_gt = z_gt - priors.mean(1)  # the code's residue target: expert minus the mean prior (the paper: minus z_pred)
    cos = args.lambda_cos * (1 - F.cosine_similarity(z_pred, z_gt, dim=1, eps=1e-6)).mean()  # eq. 6
    err = F.smooth_l1_loss if args.residue_loss == "smooth-l1" else F.mse_loss
    res = args.lambda_res * err(res_pred, res_gt)  # eq. 7
    con = args.lambda_con * F.mse_loss(z_pred + res_pred, z_gt)  # eq. 8: latent + residue must land on the expert
    return {"cos": cos, "res": res, "con": con, "total": cos + res + con}


@torch.no_grad()
def sample_priors(hl: dict, G, cond, L: int, generator=None):
    """cond [B, c] -> priors [B, L, D] from the frozen generator with fresh noise per prior."""
    noise = torch.randn(len(cond) * L, hl["noise_dim"], generator=generator).to(cond.device)
    return G(noise, cond.repeat_interleave(L, 0)).view(len(cond), L, -1)


def load_checkpoint(path) -> dict:
    """hypformer.pt (or the directory holding it), loaded without pickle, format and contents checked."""
    path = Path(path)
    if path.is_dir() and not (path / "hypformer.pt").is_file():
        raise UserError(f"no hypformer.pt in {path} (the --out-dir of a hypformer.py run)")
    path = path / "hypformer.pt" if path.is_dir() else path
    ck = runio.safe_load(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise UserError(f"{path} is not a HypFormer checkpoint (format {fmt!r}; expected {FORMAT!r})")
    if missing := [k for k in ("sizes", "hypformer", "num_priors", "hyplatent") if k not in ck]:
        raise UserError(f"{path} is an incomplete HypFormer checkpoint (no {', '.join(missing)})")
    if not isinstance(ck["hyplatent"], dict):
        raise UserError(f"{path} is a damaged HypFormer checkpoint: its 'hyplatent' entry is not a HypLatent checkpoint")
    hyplatent.check_checkpoint(ck["hyplatent"], path, "HypFormer")
    try:
        with torch.device("meta"):  # names and shapes only: no memory, no draw from the RNG
            want = {k: v.shape for k, v in HypFormer(**ck["sizes"]).state_dict().items()}
        ok = want == {k: v.shape for k, v in ck["hypformer"].items()} and type(ck["num_priors"]) is int
    except (TypeError, ValueError, AttributeError, RuntimeError, AssertionError):
        ok = False
    if not ok:
        raise UserError(f"{path} is a damaged HypFormer checkpoint: its weights do not match the sizes it states")
    return ck


def build_model(ckpt: dict, device="cpu") -> HypFormer:
    model = HypFormer(**ckpt["sizes"])
    model.load_state_dict(ckpt["hypformer"])
    return model.to(device).eval()


@torch.no_grad()
def generate_policies(ckpt: dict, contexts: list, n: int = 1, seed: int = 0, device="cpu", conditions=None):
    """len(contexts) * n policies in td3's layer form (context-major); same contract as hyplatent.generate_policies."""
    hl, model = ckpt["hyplatent"], build_model(ckpt, device)
    models = hyplatent.build_models(hl, device)
    cond = hyplatent.conditions_of(hl, models, contexts, conditions, device).repeat_interleave(n, 0)  # [K*n, c]
    priors = sample_priors(hl, models["G"], cond, ckpt["num_priors"], torch.Generator().manual_seed(seed))
    z, res = model(priors, cond)
    return unflatten_layers(hyplatent.decode_latents(hl, models, z + res), hl["policy_sizes"])  # inference: latent + residue


OUTPUTS = ("hypformer.pt", "tb")  # what a run writes into --out-dir


def main(args: Args) -> dict:
    # Every flag and every input file is checked before any work; nothing is written until they pass.
    positive = ("num_priors", "token_dim", "heads", "ffn_dim", "steps", "batch_size", "lr")
    nonnegative = ("seed", "lambda_cos", "lambda_res", "lambda_con", "torch_threads", "log_interval")
    runio.check_flags(args, positive, nonnegative, fraction=("dropout",))
    if args.residue_loss not in ("smooth-l1", "mse"):
        raise UserError(f"--residue-loss must be smooth-l1 or mse, not '{args.residue_loss}'")
    if args.token_dim % args.heads:
        raise UserError(f"--token-dim must be divisible by --heads, got {args.token_dim} and {args.heads}")
    device = runio.resolve_device(args.device)
    hl = hyplatent.load_checkpoint(args.hyplatent)
    data_dir = args.data or hl["data_dir"]  # the behaviour data HypLatent was trained on, unless --data says otherwise
    if not Path(data_dir).exists():
        raise UserError(f"behaviour data {data_dir} not found; pass --data (collect.py's rollouts directory)")
    data = collect.load_behaviour(data_dir)
    if (data["task"], data["policy_sizes"], data["context_names"]) != (hl["task"], hl["policy_sizes"], hl["context_names"]):
        got, want = ((d["task"], d["policy_sizes"], d["context_names"]) for d in (data, hl))
        raise UserError(
            f"{data_dir} (task, policy sizes, context names {got}) does not match the HypLatent {args.hyplatent} ({want})"
        )
    labels = [context_label(data["contexts"][i]) for i in data["context_id"].tolist()]
    test = {context_label(c) for c in hl["split"]["test"]}
    train = torch.tensor([lab not in test for lab in labels], device=device)
    if train.sum() < 2:
        raise UserError("fewer than 2 training samples outside HypLatent's held-out contexts")
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, overwrite=args.overwrite)

    torch.manual_seed(args.seed)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    t0 = time.time()
    models = hyplatent.build_models(hl, device)  # eval mode: BatchNorm running statistics, no dropout
    for p in models["G"].parameters():
        p.requires_grad_(False)
    Z, C = hyplatent.encode_dataset(hl, models, data)  # [M, D], [M, c], normalised as G's output and input
    Zt, Ct = Z[train], C[train]
    sizes = dict(D=Z.shape[1], cond_dim=C.shape[1], T=args.token_dim, heads=args.heads, ffn_dim=args.ffn_dim, p=args.dropout)
    model = HypFormer(**sizes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999), weight_decay=1e-5, foreach=True)
    n_weights = sum(p.numel() for p in model.parameters())
    print(f"{hl['task']}: {len(Zt)} training samples, L = {args.num_priors} priors, {n_weights} parameters")
    avg, t1 = {}, time.time()
    tracker = runio.Tracker(out, args, track=args.track, project=args.wandb_project_name, entity=args.wandb_entity)
    with closing(tracker):
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, len(Zt), (args.batch_size,))
            priors = sample_priors(hl, models["G"], Ct[idx], args.num_priors)  # fresh priors every batch
            losses = hypformer_losses(*model(priors, Ct[idx]), Zt[idx], priors, args)
            descend(opt, losses["total"])
            cur = {k: v.item() for k, v in losses.items()}
            hyplatent.check(step, cur, "--lr")
            avg = {k: 0.98 * avg.get(k, v) + 0.02 * v for k, v in cur.items()}
            hyplatent.log("hypformer", step, args.steps, t1, avg, args.log_interval, tracker)

    # How much closer to the expert latents than the priors (normalised latent space, fixed noise, eval mode). Held-out
    # contexts' experts are networks the autoencoder never saw, so their numbers only say how foreign they are.
    model.eval()
    stats = {"losses": avg}
    with torch.no_grad():
        for name, mask in (("train", train), ("heldout", ~train)):
            if mask.any():
                priors = sample_priors(hl, models["G"], C[mask], args.num_priors, torch.Generator().manual_seed(args.seed))
                z, res = model(priors, C[mask])
                mse = lambda a, m=mask: F.mse_loss(a, Z[m]).item()
                stats[name] = {
                    "mse_hypformer": mse(z + res),
                    "mse_mean_prior": mse(priors.mean(1)),
                    "mse_one_prior": mse(priors[:, 0]),
                }
                print(f"{name}: latent MSE to the experts: " + "  ".join(f"{k[4:]} {v:.4f}" for k, v in stats[name].items()))
    shared = ("task", "obs_dim", "act_dim", "policy_sizes", "condition", "context_names", "split")  # what evaluate.py reads
    ckpt = {
        "format": FORMAT,
        **{k: hl[k] for k in shared},
        "hypformer": {k: v.cpu() for k, v in model.state_dict().items()},
        "sizes": sizes,
        "num_priors": args.num_priors,
        "args": asdict(args),
        "hyplatent_path": str(Path(args.hyplatent).resolve()),
        "hyplatent": {k: v for k, v in hl.items() if k != "discriminator"},  # all that generation needs: the file stands alone
        "stats": stats,
    }
    runio.atomic_save(ckpt, out / "hypformer.pt")
    runio.finish_out_dir(out)
    print(f"wrote {out / 'hypformer.pt'}  ({time.time() - t0:.0f} s)")
    return {"checkpoint": str(out / "hypformer.pt"), **stats, "wall_s": time.time() - t0}


if __name__ == "__main__":
    runio.cli(main, Args)
