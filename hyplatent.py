"""hyplatent.py — Gen-HypRL stages 1-2: parameter autoencoder, behaviour embedding and HypLatent (a conditional AAE).

    python hyplatent.py --data runs/vel/rollouts --seed 1 --out-dir runs/vel/hyplatent

Stage 1, Make-An-Agent's autoencoder: a flat actor vector [P] (td3 flatten order, z-scored per feature) is split into
[first layer | rest]; each chunk goes through its own bias-free Linear to one token of --latent-dim, then a shared
LayerNorm: latent [2, d]. Stage 1b (MetaWorld): a behaviour embedding h = phi(trajectory), trained with InfoNCE
against psi(post-success states). Stage 2, HypLatent: generator G(noise, condition) -> latent (normalised to [-1, 1]
per feature), discriminator F with an auxiliary head Q that reconstructs the condition (Gen-HypRL eq. 3-5). The
condition is the numeric context (Cheetah-Vel: the goal velocity) or h. Defaults are sized for a laptop CPU at
quickstart scale; each flag names the paper's value. "The released code" is jayaramreddy10/gen-hyprl_code and "MAA"
cheryyunl/Make-An-Agent (docs/reference_code.md#sources; where we differ and why: docs/reference_code.md#gen-hyprl-hyplatent).

Writes hyplatent.pt (weights_only, a plain dict: sizes, normalisers {shift, scale}, the state_dicts, args, split
{train, test}, per-context summary, stats; CHECKPOINT_KEYS), latent_pca.png and TensorBoard events in tb/. Later
stages call load_checkpoint and generate_policies. Walk-through: docs/hyplatent.md.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import runio
from collect import load_behaviour
from policy import n_params, unflatten_layers
from runio import UserError, descend
from tasks import TASKS, context_label, parse_contexts

FORMAT = "cleanhyper-hyplatent-v1"
GAIN = 1 / 3  # initial LayerNorm gain: latents start inside the clamp [-1, 1] (gain 1 clips a third, with no gradient)


@dataclass
class Args:
    data: str = "runs/vel/rollouts"
    """rollouts directory written by collect.py (manifest.json and behaviour/)"""
    seed: int = 1
    """seed of torch (everything is deterministic on CPU)"""
    out_dir: str = "runs/vel/hyplatent"
    """writes hyplatent.pt, latent_pca.png and the TensorBoard events (tb/) here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir"""
    condition: Literal["auto", "context", "behaviour"] = "auto"
    """'context' (numeric context, e.g. the Cheetah-Vel goal), 'behaviour' (trajectory embedding), or 'auto': context when the task has numeric contexts, else behaviour (MetaWorld)"""
    test_contexts: tuple[str, ...] = ()
    """contexts held out of all training (numbers, 'name=value,...' or MetaWorld task names)"""
    latent_dim: int = 128
    """size of each of the 2 latent tokens (paper 1024)"""
    ae_steps: int = 1000
    """autoencoder updates (MAA: 3000 epochs at batch 32)"""
    ae_batch_size: int = 32
    """autoencoder minibatch (MAA 32)"""
    ae_lr: float = 1e-3
    """AdamW learning rate, cosine-annealed to 0 (MAA 1e-3 with warm restarts)"""
    ae_weight_decay: float = 5e-3
    """AdamW weight decay (MAA 5e-3)"""
    ae_loss_weight: float = 1.0
    """weight of the reconstruction MSE (eq. 1 says 1e3, MAA's code 1; Adam makes the scale nearly irrelevant)"""
    input_noise: float = 0.001
    """autoencoder input noise factor (MAA 0.001)"""
    latent_noise: float = 0.01
    """autoencoder latent noise factor (MAA 0.01)"""
    embed_dim: int = 128
    """behaviour embedding size, the MetaWorld condition (paper 128)"""
    embed_hidden: int = 256
    """hidden width of the trajectory encoder phi (MAA 1024)"""
    embed_steps: int = 1000
    """behaviour-embedding updates (MAA: 400 epochs at batch 16)"""
    embed_batch_size: int = 16
    """InfoNCE batch: the other samples of the batch are the negatives (MAA 16)"""
    embed_lr: float = 1e-4
    """AdamW learning rate of the embedding (MAA 1e-4, weight decay 1e-4)"""
    noise_dim: int = 0
    """generator noise size; 0 = the paper's: 4 for a numeric context (Cheetah-Vel), 128 for behaviour (MetaWorld)"""
    gan_steps: int = 2000
    """HypLatent iterations (released code: 5000 epochs at batch 128, best near epoch 3400)"""
    gan_batch_size: int = 128
    """HypLatent minibatch (released 128)"""
    gan_lr: float = 2e-4
    """Adam learning rate of G, F and the info step, betas (0.5, 0.999), weight decay 1e-5 (released)"""
    lambda_reg: float = 1e3
    """eq. 5: weight of the info term MSE(Q(F(G(z))), condition) (paper and code 1e3)"""
    paired_l2_weight: float = 10.0
    """weight of MSE(G(z), the sample's own latent): not in the paper (0: the samples keep the data's spread but few
    work: MetaWorld seen success 12 % against 74 %); released code 1e3 (about 3x less spread between samples than 10)"""
    label_smoothing: bool = True
    """noisy label smoothing as the released code: real target 1-U(0.01,0.2) for F, 1-U(0.01,0.3) for G; fake U(0.01,0.2)"""
    dropout: float = 0.1
    """dropout in the generator blocks (released 0.1)"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'; runs are deterministic on CPU"""
    torch_threads: int = 0
    """CPU threads for torch (0: one per core, the fastest alone); give 1 to each of several runs sharing the cores"""
    log_interval: int = 500
    """print progress, and log losses and steps/s to TensorBoard, every this many updates (0: never)"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb); TensorBoard event files are always written to out_dir/tb"""
    wandb_project_name: str = "cleanhyper"
    """Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """Weights & Biases entity (team or user; with --track)"""


# Normalisers {shift, scale}: x_n = (x - shift) / scale
def zscore(x):  # per feature; the floor keeps features that never move finite
    return {"shift": x.mean(0), "scale": x.std(0, unbiased=False).clamp_min(1e-6)}


def limits(x):  # per feature to [-1, 1] (MAA's LinearNormalizer mode='limits'); one that never moves (range < 1e-4) is
    lo, hi = x.min(0).values, x.max(0).values  # only shifted, as there: a 1e-6 scale would blow up an unseen task's value
    return {"shift": (hi + lo) / 2, "scale": torch.where(hi - lo < 1e-4, 1.0, (hi - lo) / 2)}


def normalize(x, nrm):
    return (x - nrm["shift"].to(x.device)) / nrm["scale"].to(x.device)


def unnormalize(x, nrm):
    return x * nrm["scale"].to(x.device) + nrm["shift"].to(x.device)


# Models
def chunks_of(sizes: list[int]) -> list[int]:
    """The autoencoder's split of a flat actor [P] into [first layer | rest], one latent token each, as MAA's
    input_splits [5120, 17544] (its SAC actor's Linear(39, 128), then the rest). sizes: td3 layer sizes [S, h1, ..., A]."""
    first = sizes[0] * sizes[1] + sizes[1]  # W0 [S, h1] and b0 come first in policy.flatten_layers order
    return [first, n_params(sizes) - first]


class ParamAutoencoder(nn.Module):
    """MAA's EncoderDecoder (autoencoder/model_proj.py): per-chunk bias-free Linear -> token, shared LayerNorm; back per token."""

    def __init__(self, chunks: list[int], d: int):
        super().__init__()
        self.chunks = chunks
        self.enc = nn.ModuleList(nn.Linear(c, d, bias=False) for c in chunks)
        self.norm = nn.LayerNorm(d)
        nn.init.constant_(self.norm.weight, GAIN)
        self.dec = nn.ModuleList(nn.Linear(d, c, bias=False) for c in chunks)

    def encode(self, x):  # [B, P] -> [B, T, d], T = len(chunks) = 2
        return self.norm(torch.stack([e(c) for e, c in zip(self.enc, x.split(self.chunks, 1))], 1))

    def decode(self, z):  # [B, T, d] -> [B, P]; clamped because training clamps (the decoder never saw |z| > 1)
        z = z.clamp(-1, 1)
        return torch.cat([dec(z[:, i]) for i, dec in enumerate(self.dec)], 1)

    def forward(self, x, input_noise: float, latent_noise: float):  # MAA's training pass
        z = self.encode(torch.randn_like(x) * input_noise + x * (1 - input_noise))
        return self.decode(torch.randn_like(z) * latent_noise + z * (1 - latent_noise))


class BehaviourEmbedding(nn.Module):
    """MAA's behaviour embedding (behavior_embedding/embed_model.py): phi(traj) -> h, psi(post-success) -> v, bilinear W."""

    def __init__(self, traj_dim: int, post_dim: int, hidden: int, dim: int):
        super().__init__()
        h = hidden
        self.phi = nn.Sequential(nn.Linear(traj_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, dim))
        self.psi = nn.Sequential(nn.Linear(post_dim, 256), nn.LayerNorm(256), nn.Tanh(), nn.Linear(256, dim))
        self.W = nn.Parameter(torch.rand(dim, dim))  # U[0, 1) as MAA


def info_nce(h, v, W):
    """Eq. 2 as MAA's code: row i of h W v^T [B, B] should pick v_i (cross-entropy); returns (loss, row accuracy)."""
    logits = h @ (W @ v.T)
    logits = logits - logits.max(1, keepdim=True).values  # CURL's stabiliser; cross-entropy is shift invariant
    target = torch.arange(len(h), device=h.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()


def block(i: int, o: int, p: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.GELU(), nn.Dropout(p))


class Generator(nn.Module):
    """G, the released PolicyGeneratorUnet1D (modelDropout.py): the paper's "1D U-Net" is an MLP D -> D/2 -> D/4 -> D/8 and
    back with additive skips."""

    def __init__(self, in_dim: int, D: int, p: float):
        super().__init__()
        self.d1, self.u1 = nn.Linear(in_dim, D), nn.Linear(D // 2, D)
        self.d2, self.d3, self.d4 = block(D, D // 2, p), block(D // 2, D // 4, p), block(D // 4, D // 8, p)
        self.u3, self.u2 = block(D // 8, D // 4, p), block(D // 4, D // 2, p)

    def forward(self, noise, cond):  # [B, noise_dim], [B, c] -> unbounded normalised latent [B, D]
        d1 = self.d1(torch.cat([noise, cond], 1))  # noise first, as the released code
        d2 = self.d2(d1)
        d3 = self.d3(d2)
        u3 = self.u3(self.d4(d3)) + d3
        return self.u1(self.u2(u3) + d2) + d1


class Discriminator(nn.Module):
    """F, the released PolicyDiscriminatorCB (modelDropout.py): unconditional 3-layer trunk; a real/fake logit and Q, one
    Linear to the condition (paper: 2-layer)."""

    def __init__(self, D: int, cond_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(D, D // 2), nn.GELU(), nn.Linear(D // 2, D // 2), nn.GELU(), nn.Linear(D // 2, D // 4), nn.GELU()
        )
        self.real, self.q = nn.Linear(D // 4, 1), nn.Linear(D // 4, cond_dim)

    def forward(self, z):  # [B, D] -> logit of p(real) [B, 1] (the code's Sigmoid lives in the BCE), Q(z) [B, c]
        x = self.trunk(z)
        return self.real(x), self.q(x)


# Training
def check(step: int, losses: dict, lr_flag: str) -> None:
    """Stop on a non-finite loss. The data were checked finite when loaded, so the step size is the likely cause."""
    for k, v in losses.items():
        if not np.isfinite(v):
            raise UserError(f"non-finite {k} = {v} at step {step}; lower {lr_flag}")


def log(stage: str, step: int, total: int, t0: float, losses: dict, every: int, tracker=None) -> None:
    """Every `every` steps and at the last (0: never): print progress; log losses/<stage>_<name> and charts/<stage>_SPS."""
    if every and (step % every == 0 or step == total):
        rate, text = step / (time.time() - t0), "  ".join(f"{k} {v:.4g}" for k, v in losses.items())
        print(f"{stage} {step:>6}/{total}  {rate:6.0f} steps/s  {text}", flush=True)
        if tracker is not None:
            tags = {f"{'charts' if k == 'acc' else 'losses'}/{stage}_{k}": v for k, v in losses.items()}
            tracker.log(step, **tags, **{f"charts/{stage}_SPS": rate})


def train_autoencoder(x, chunks: list[int], args: Args, tracker=None) -> ParamAutoencoder:
    """x: normalised params [N, P]. Eq. 1: weight * MSE(x, decode(clamp(noisy(encode(noisy(x))))))."""
    ae = ParamAutoencoder(chunks, args.latent_dim).to(x.device)
    opt = torch.optim.AdamW(ae.parameters(), lr=args.ae_lr, weight_decay=args.ae_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, args.ae_steps))
    t0 = time.time()
    for step in range(1, args.ae_steps + 1):
        xb = x[torch.randint(0, len(x), (args.ae_batch_size,))].to(x.device)
        loss = args.ae_loss_weight * F.mse_loss(ae(xb, args.input_noise, args.latent_noise), xb)
        descend(opt, loss)
        sched.step()
        check(step, {"ae_loss": loss.item()}, "--ae-lr")
        log("ae", step, args.ae_steps, t0, {"loss": loss.item()}, args.log_interval, tracker)
    return ae.eval()


def train_embedding(traj, post, args: Args, tracker=None) -> tuple[BehaviourEmbedding, float]:
    """traj [N, 20(S+3A)], post [N, 3S], both normalised. Returns the nets and the last InfoNCE row accuracy."""
    emb = BehaviourEmbedding(traj.shape[1], post.shape[1], args.embed_hidden, args.embed_dim).to(traj.device)
    opt = torch.optim.AdamW(emb.parameters(), lr=args.embed_lr, weight_decay=1e-4)
    t0, accs = time.time(), []
    for step in range(1, args.embed_steps + 1):
        idx = torch.randperm(len(traj))[: args.embed_batch_size]  # distinct samples: a repeat would be a false negative
        loss, acc = info_nce(emb.phi(traj[idx]), emb.psi(post[idx]), emb.W)
        descend(opt, loss)
        check(step, {"infonce": loss.item()}, "--embed-lr")
        accs = (accs + [acc.item()])[-100:]
        log("embed", step, args.embed_steps, t0, {"infonce": loss.item(), "acc": np.mean(accs)}, args.log_interval, tracker)
    return emb.eval(), float(np.mean(accs)) if accs else float("nan")


def train_gan(Z, C, args: Args, tracker=None) -> tuple[Generator, Discriminator, dict]:
    """Z: normalised latents [N, D], C: normalised conditions [N, c]. Losses eq. 3-5 as the released
    train_cond_behaviour_unet1d.py (docs/reference_code.md#gen-hyprl-hyplatent)."""
    D, c, B = Z.shape[1], C.shape[1], args.gan_batch_size
    G, Fd = Generator(args.noise_dim + c, D, args.dropout).to(Z.device), Discriminator(D, c).to(Z.device)
    adam = lambda ps: torch.optim.Adam(ps, lr=args.gan_lr, betas=(0.5, 0.999), weight_decay=1e-5, foreach=True)
    g_opt, d_opt, mi_opt = adam(G.parameters()), adam(Fd.parameters()), adam([*G.parameters(), *Fd.parameters()])
    bce = F.binary_cross_entropy_with_logits
    eps = lambda hi: (
        torch.empty(B, 1, device=Z.device).uniform_(0.01, hi) if args.label_smoothing else torch.zeros(B, 1, device=Z.device)
    )
    t0, avg = time.time(), {}
    for step in range(1, args.gan_steps + 1):
        idx = torch.randint(0, len(Z), (B,))
        z_real, cond = Z[idx], C[idx]
        noise = torch.randn(B, args.noise_dim, device=Z.device)
        fake = G(noise, cond)
        # eq. 4: F tells real latents (target 1 - eps) from generated ones (target eps); the trunk is unconditional
        loss_d = 0.5 * (bce(Fd(z_real)[0], 1 - eps(0.2)) + bce(Fd(fake.detach())[0], eps(0.2)))
        descend(d_opt, loss_d)
        # eq. 3, non-saturating form as the code (-log F(G(z))), plus the released code's paired L2 to the sample's own latent.
        # (The released code runs this pass twice, stepping after each with gradients accumulated since one zero_grad;
        # we take one pass and one step.)
        loss_adv = bce(Fd(fake)[0], 1 - eps(0.3))
        loss_l2 = F.mse_loss(fake, z_real)
        loss_g = loss_adv + args.paired_l2_weight * loss_l2
        descend(g_opt, loss_g)
        # eq. 5: the info term makes G's output carry its condition: Q(F_trunk(G(z))) ~ condition, on G and F together
        loss_mi = args.lambda_reg * F.mse_loss(Fd(G(noise, cond))[1], cond)
        descend(mi_opt, loss_mi)
        cur = {"loss_d": loss_d.item(), "loss_adv": loss_adv.item(), "loss_l2": loss_l2.item(), "loss_info": loss_mi.item()}
        check(step, cur, "--gan-lr")
        avg = {k: 0.98 * avg.get(k, v) + 0.02 * v for k, v in cur.items()}  # smoothed for the log
        log("gan", step, args.gan_steps, t0, avg, args.log_interval, tracker)
    return G.eval(), Fd.eval(), avg


# Checkpoint -> policies (the API evaluate.py and hypformer.py use)
# what generation needs (evaluate.py, hypformer.py); the discriminator only trains, and hypformer.pt leaves it out
CHECKPOINT_KEYS = ("task", "obs_dim", "act_dim", "policy_sizes", "condition", "context_names", "chunks", "latent_dim")
CHECKPOINT_KEYS += ("noise_dim", "cond_dim", "param_norm", "latent_norm", "cond_norm", "traj_norm", "autoencoder")
CHECKPOINT_KEYS += ("generator", "embedding", "embed_sizes", "args", "data_dir", "split")


def load_checkpoint(path) -> dict:
    """hyplatent.pt (or the directory holding it), loaded without pickle, format and contents checked."""
    path = Path(path)
    if path.is_dir() and not (path / "hyplatent.pt").is_file():
        raise UserError(f"no hyplatent.pt in {path} (the --out-dir of a hyplatent.py run)")
    path = path / "hyplatent.pt" if path.is_dir() else path
    ck = runio.safe_load(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise UserError(f"{path} is not a HypLatent checkpoint (format {fmt!r}; expected {FORMAT!r})")
    check_checkpoint(ck, path, "HypLatent")
    return ck


def check_checkpoint(ck: dict, path, what: str) -> None:
    """Every key generation reads, every state_dict's names and shapes and the normalisers' sizes agree with the
    sizes the checkpoint states; checked on the meta device (no memory, no draw from the RNG)."""
    if missing := [k for k in CHECKPOINT_KEYS if k not in ck]:
        raise UserError(f"{path} is an incomplete {what} checkpoint (no {', '.join(missing)})")
    try:
        D, behaviour = len(ck["chunks"]) * ck["latent_dim"], ck["condition"] == "behaviour"
        with torch.device("meta"):
            nets = {"autoencoder": ParamAutoencoder(ck["chunks"], ck["latent_dim"])}
            nets["generator"] = Generator(ck["noise_dim"] + ck["cond_dim"], D, ck["args"]["dropout"])
            if behaviour:
                nets["embedding"] = BehaviourEmbedding(**ck["embed_sizes"])
        norms = {"param_norm": sum(ck["chunks"]), "latent_norm": D, "cond_norm": ck["cond_dim"]}
        norms |= {"traj_norm": ck["embed_sizes"]["traj_dim"]} if behaviour else {}
        ok = sum(ck["chunks"]) == n_params(ck["policy_sizes"]) and ck["condition"] in ("context", "behaviour")
        ok = ok and behaviour == (ck["embedding"] is not None)
        for name, net in nets.items():
            ok = ok and {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ck[name].items()}
        for name, n in norms.items():
            ok = ok and all(ck[name][part].shape == (n,) for part in ("shift", "scale"))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is a damaged {what} checkpoint: its weights do not match the sizes it states")


def build_models(ckpt: dict, device="cpu") -> dict:
    """Autoencoder, generator and (behaviour kind) embedding from a checkpoint, in eval mode."""
    ae = ParamAutoencoder(ckpt["chunks"], ckpt["latent_dim"])
    G = Generator(ckpt["noise_dim"] + ckpt["cond_dim"], len(ckpt["chunks"]) * ckpt["latent_dim"], ckpt["args"]["dropout"])
    ae.load_state_dict(ckpt["autoencoder"])
    G.load_state_dict(ckpt["generator"])
    models = {"ae": ae, "G": G, "embed": None}
    if ckpt["embedding"] is not None:
        models["embed"] = BehaviourEmbedding(**ckpt["embed_sizes"])
        models["embed"].load_state_dict(ckpt["embedding"])
    return {k: m.to(device).eval() if m is not None else None for k, m in models.items()}


@torch.no_grad()
def conditions_of(ckpt: dict, models: dict, contexts: list, conditions=None, device="cpu"):
    """Normalised conditions [K, c]: the numeric contexts, or phi(raw trajectory features [K, traj_dim])."""
    if ckpt["condition"] == "context":
        names = ckpt["context_names"]
        for ctx in contexts:
            if not isinstance(ctx, dict) or any(n not in ctx for n in names):
                raise UserError(f"context {ctx!r} lacks one of {names}, which this HypLatent is conditioned on")
        return normalize(torch.tensor([[float(ctx[n]) for n in names] for ctx in contexts], device=device), ckpt["cond_norm"])
    if conditions is None:
        raise UserError(
            "this model is conditioned on behaviour: pass conditions = demo trajectory features [len(contexts), traj_dim]"
        )
    traj = torch.as_tensor(conditions, dtype=torch.float32, device=device)
    want = (len(contexts), ckpt["embed_sizes"]["traj_dim"])
    if tuple(traj.shape) != want:
        raise UserError(f"conditions have shape {tuple(traj.shape)}; expected {want} (one trajectory feature row per context)")
    return normalize(models["embed"].phi(normalize(traj, ckpt["traj_norm"])), ckpt["cond_norm"])


@torch.no_grad()
def encode_dataset(ckpt: dict, models: dict, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of the data -> (normalised latent [M, T*d] as the decoder sees it, normalised condition [M, c])."""
    dev = next(models["ae"].parameters()).device
    z = models["ae"].encode(normalize(data["params"].to(dev), ckpt["param_norm"])).clamp(-1, 1).flatten(1)
    if ckpt["condition"] == "context":
        cond = normalize(data["context"].to(dev), ckpt["cond_norm"])
    else:
        cond = normalize(models["embed"].phi(normalize(data["traj"].to(dev), ckpt["traj_norm"])), ckpt["cond_norm"])
    return normalize(z, ckpt["latent_norm"]), cond


@torch.no_grad()
def sample_latents(ckpt: dict, models: dict, cond, n: int, seed: int):
    """n generator samples per condition row, context-major: [K, c] -> normalised latents [K*n, D]."""
    g = torch.Generator().manual_seed(seed)  # noise drawn on CPU: the same numbers on every device
    noise = torch.randn(len(cond) * n, ckpt["noise_dim"], generator=g).to(cond.device)
    return models["G"](noise, cond.repeat_interleave(n, 0))


@torch.no_grad()
def decode_latents(ckpt: dict, models: dict, z):
    """Normalised latents [K, T*d] -> flat actor parameters [K, P] (td3 flatten order)."""
    z = unnormalize(z, ckpt["latent_norm"]).view(len(z), len(ckpt["chunks"]), ckpt["latent_dim"])
    return unnormalize(models["ae"].decode(z), ckpt["param_norm"])


@torch.no_grad()
def generate_policies(ckpt: dict, contexts: list, n: int = 1, seed: int = 0, device="cpu", conditions=None):
    """len(contexts) * n policies in td3's layer form (context-major). Behaviour kind: conditions [len(contexts), traj_dim]."""
    models = build_models(ckpt, device)
    z = sample_latents(ckpt, models, conditions_of(ckpt, models, contexts, conditions, device), n, seed)
    return unflatten_layers(decode_latents(ckpt, models, z), ckpt["policy_sizes"])


@torch.no_grad()
def plot_latent_pca(ckpt: dict, data_dir, path, per_context: int = 200) -> None:
    """The paper's Fig. 4: ground-truth (o) and generated (x) latents per context, on the GT latents' first 2 PCs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, models = load_behaviour(data_dir), build_models(ckpt)
    Z, C = encode_dataset(ckpt, models, data)
    mean = Z.mean(0)
    V = torch.linalg.svd(Z - mean, full_matrices=False)[2][:2]  # [2, D] principal directions
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, ctx in enumerate(data["contexts"]):
        sel = (data["context_id"] == k).nonzero().squeeze(1)[:per_context]
        if len(sel) == 0:
            continue
        # context kind: the context's condition n times; behaviour kind: one sample per demo trajectory
        cond, n = (C[sel[:1]], len(sel)) if ckpt["condition"] == "context" else (C[sel], 1)
        fake = sample_latents(ckpt, models, cond, n, k)
        real, fake = ((Z[sel] - mean) @ V.T).numpy(), ((fake - mean) @ V.T).numpy()
        lab = context_label(ctx) + (" (held out)" if ctx in ckpt["split"]["test"] else "")
        pts = ax.scatter(real[:, 0], real[:, 1], marker="o", alpha=0.35, label=f"{lab} data")
        ax.scatter(fake[:, 0], fake[:, 1], marker="x", color=pts.get_facecolor()[0][:3], label=f"{lab} generated")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"HypLatent latents, {data['task']} ({ckpt['condition']} condition)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    runio.save_figure(fig, path)


OUTPUTS = ("hyplatent.pt", "latent_pca.png", "tb")  # what a run writes into --out-dir


def main(args: Args) -> dict:
    # Every flag and every input file is checked before any work; nothing is written until they pass.
    positive = ("latent_dim", "ae_steps", "ae_batch_size", "ae_lr", "embed_dim", "embed_hidden", "embed_steps")
    positive += ("embed_batch_size", "embed_lr", "gan_steps", "gan_batch_size", "gan_lr")
    nonnegative = ("seed", "ae_weight_decay", "ae_loss_weight", "noise_dim", "lambda_reg", "paired_l2_weight")
    runio.check_flags(args, positive, nonnegative + ("torch_threads", "log_interval"), ("input_noise", "latent_noise", "dropout"))
    if args.latent_dim < 8:
        raise UserError(f"--latent-dim must be >= 8 (the generator narrows 2 x latent-dim by 8), got {args.latent_dim}")
    if args.gan_batch_size < 2:
        raise UserError(f"--gan-batch-size must be >= 2 (the generator's BatchNorm needs 2 samples), got {args.gan_batch_size}")
    if args.condition not in ("auto", "context", "behaviour"):
        raise UserError(f"--condition must be auto, context or behaviour, not '{args.condition}'")
    dev = runio.resolve_device(args.device)
    data = load_behaviour(args.data)
    labels = [context_label(c) for c in data["contexts"]]
    kind = args.condition if args.condition != "auto" else ("context" if data["context_names"] else "behaviour")
    if kind == "context" and not data["context_names"]:
        raise UserError(f"task '{data['task']}' has no numeric context; use --condition behaviour")
    test = [context_label(c) for c in parse_contexts(data["task"], args.test_contexts, args.seed)]
    if unknown := [t for t in test if t not in labels]:
        raise UserError(f"test contexts {unknown} are not in the data; its contexts: {' '.join(labels)}")
    ids = data["context_id"]
    train = torch.tensor([labels[i] not in test for i in ids.tolist()])  # [M] bool
    if train.sum() < 2:
        raise UserError("fewer than 2 training samples after holding out --test-contexts")
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, overwrite=args.overwrite)

    torch.manual_seed(args.seed)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    t_start = time.time()
    tracker = runio.Tracker(out, args, track=args.track, project=args.wandb_project_name, entity=args.wandb_entity)
    with closing(tracker):  # closed on an error too: the losses up to a failure stay readable in out_dir/tb
        args = replace(args, noise_dim=args.noise_dim or (4 if kind == "context" else 128))  # the paper's sizes
        sizes, chunks = data["policy_sizes"], chunks_of(data["policy_sizes"])
        print(f"{data['task']}: {int(train.sum())} train / {int((~train).sum())} held-out samples, P = {sum(chunks)}, {kind}")
        ckpt = {"format": FORMAT, "task": data["task"], "obs_dim": data["obs_dim"], "act_dim": data["act_dim"]}
        ckpt.update(policy_sizes=sizes, condition=kind, context_names=data["context_names"], chunks=chunks)
        ckpt.update(latent_dim=args.latent_dim, noise_dim=args.noise_dim, embedding=None, embed_sizes=None)
        ckpt.update(traj_norm=None, post_norm=None)

        # Stage 1: the parameter autoencoder on params z-scored per feature over the training samples.
        ckpt["param_norm"] = zscore(data["params"][train])
        x = normalize(data["params"], ckpt["param_norm"]).to(dev)
        ae = train_autoencoder(x[train.to(dev)], chunks, args, tracker)
        with torch.no_grad():  # relative reconstruction error in raw parameter space, and relative to the spread around the mean
            err = (unnormalize(ae.decode(ae.encode(x)), ckpt["param_norm"]).cpu() - data["params"]).norm(dim=1)
            rel, rel_c = err / data["params"].norm(dim=1), err / (data["params"] - ckpt["param_norm"]["shift"]).norm(dim=1)
        ae_stats = {"rel_error": rel[train].mean().item(), "rel_error_centered": rel_c[train].mean().item()}
        if (~train).any():  # held-out contexts' actors are networks the autoencoder never saw (other runs): expect ~1
            ae_stats.update(heldout_rel_error=rel[~train].mean().item(), heldout_rel_error_centered=rel_c[~train].mean().item())
        print("autoencoder: " + "  ".join(f"{k} {v:.4f}" for k, v in ae_stats.items()))

        # Stage 1b: the condition. A numeric context maps the task's valid range to [-1, 1] (fixed, so unseen contexts in
        # the range stay in it); behaviour: h = phi(traj), limits-normalised over the training samples.
        models, embed_acc = {"ae": ae, "embed": None}, None
        if kind == "context":
            rng = torch.tensor([TASKS[data["task"]]["vars"][n][1:] for n in data["context_names"]])  # [C, (lo, hi)]
            ckpt["cond_norm"], ckpt["cond_dim"] = {"shift": rng.mean(1), "scale": (rng[:, 1] - rng[:, 0]) / 2}, rng.shape[0]
        else:
            ckpt["traj_norm"], ckpt["post_norm"] = limits(data["traj"][train]), limits(data["post"][train])
            tr = normalize(data["traj"][train], ckpt["traj_norm"]).to(dev)  # [N, 20(S+3A)]
            po = normalize(data["post"][train], ckpt["post_norm"]).to(dev)  # [N, 3S]
            models["embed"], embed_acc = train_embedding(tr, po, args, tracker)
            with torch.no_grad():
                ckpt["cond_norm"], ckpt["cond_dim"] = limits(models["embed"].phi(tr).cpu()), args.embed_dim
            ckpt["embedding"] = {k: v.cpu() for k, v in models["embed"].state_dict().items()}
            ckpt["embed_sizes"] = dict(traj_dim=tr.shape[1], post_dim=po.shape[1], hidden=args.embed_hidden, dim=args.embed_dim)
        with torch.no_grad():  # latents normalised per feature to [-1, 1] over the training samples, as the released code
            ckpt["latent_norm"] = limits(ae.encode(x[train.to(dev)]).clamp(-1, 1).flatten(1).cpu())
        Z, C = encode_dataset(ckpt, models, data)  # [M, 2d], [M, c]

        # Stage 2: HypLatent.
        G, Fd, gan_stats = train_gan(Z[train.to(dev)], C[train.to(dev)], args, tracker)
        Z, C, present = Z.cpu(), C.cpu(), [k for k in range(len(labels)) if (ids == k).any()]
        ckpt.update(
            autoencoder={k: v.cpu() for k, v in ae.state_dict().items()},
            generator={k: v.cpu() for k, v in G.state_dict().items()},
            discriminator={k: v.cpu() for k, v in Fd.state_dict().items()},
            args={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items()},
            data_dir=str(Path(args.data).resolve()),
            split={"train": [data["contexts"][k] for k in present if labels[k] not in test]}
            | {"test": [data["contexts"][labels.index(t)] for t in test]},
            # per context present in the data: sample count, mean condition and mean latent (normalised)
            summary={"labels": [labels[k] for k in present], "count": [int((ids == k).sum()) for k in present]}
            | {"condition_mean": torch.stack([C[ids == k].mean(0) for k in present])}
            | {"latent_mean": torch.stack([Z[ids == k].mean(0) for k in present])},
            stats={"autoencoder": ae_stats, "embed_accuracy": embed_acc, "gan": gan_stats},
        )
    # the checkpoint last: it marks a complete run
    plot_latent_pca(ckpt, args.data, out / "latent_pca.png")
    runio.atomic_save(ckpt, out / "hyplatent.pt")
    runio.finish_out_dir(out)
    wall = time.time() - t_start
    print(f"wrote {out / 'hyplatent.pt'} and {out / 'latent_pca.png'}  ({wall:.0f} s)")
    return {"checkpoint": str(out / "hyplatent.pt"), "plot": str(out / "latent_pca.png"), **ckpt["stats"], "wall_s": wall}


if __name__ == "__main__":
    runio.cli(main, Args)
