"""hyperzero.py — HyperZero (Rezaei-Shoshtari et al., AAAI 2023): context -> weights of a policy and its Q function.

A hypernetwork maps the MDP context c (reward and/or dynamics parameters) to the weights of a small policy net
pi_c(s) and Q net Q_c(s, a), trained by supervised regression on the experts' rollouts (collect.py) and used
zero-shot on contexts it never saw. `--model` picks HyperZero, its two ablations (without the TD loss, without the
Q net) or one of the three context-concatenation MLP baselines ("Cond Policy", "UVFA", "UVFA + TD"): the paper's
comparison. The meta-learners MAML and PEARL are meta.py, which imports its shared parts from here.

    python hyperzero.py --rollouts runs/vel/rollouts --model hyperzero --test-contexts 1.5 --seed 1 --out-dir runs/vel/hyperzero

Writes hyperzero.pt (weights, split, losses) and TensorBoard event files (out_dir/tb) of the losses and steps/s. Every
flag and the rollouts (collect.load_rollouts: entries, dtypes, shapes, finite values) are checked before any training; an
--out-dir holding an earlier run is refused unless --overwrite.

"The released code" below is SAIC-MONTREAL/hyperzero (docs/reference_code.md#sources); where we differ from it and
why: docs/reference_code.md#hyperzero-networks, #hyperzero-losses and #hyperzero-baselines.
Unlike the released code, weights are generated ONCE PER CONTEXT in a batch (context-major batches [C_b, n, S]) and
applied with policy.mlp, not once per sample: the same math, several times faster (benchmarks/hyperzero_step.py).
Every model, the MLP baselines included, is turned into the td3 policy form by `generate_policies` (evaluate.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import collect
import policy
import runio
import tasks
from runio import UserError

FORMAT = "cleanhyper-hyperzero-v1"


class Model(NamedTuple):
    """One row of the comparison (released code: cfgs/approximator/*.yaml)."""

    hyper: bool  # a hypernetwork writes the nets (else a context-concatenation MLP)
    q: bool  # a Q net trained with the value loss
    td: bool  # and the TD loss


MODELS = {
    "hyperzero": Model(hyper=True, q=True, td=True),
    "hyperzero-no-td": Model(hyper=True, q=True, td=False),
    "hyperzero-no-q": Model(hyper=True, q=False, td=False),
    "mlp": Model(hyper=False, q=False, td=False),  # "Cond Policy" (released: mlp_policy)
    "mlp-q": Model(hyper=False, q=True, td=False),  # "UVFA" (mlp_rl)
    "mlp-q-td": Model(hyper=False, q=True, td=True),  # "UVFA + TD" (mlp_rl_td)
}
META_MODELS = ("maml", "pearl")  # meta.py
OUTPUTS = ("hyperzero.pt", "tb")  # what a run writes into --out-dir (runio.prepare_out_dir)


@dataclass
class Args:
    rollouts: str = "runs/rollouts"
    """directory written by collect.py"""
    model: str = "hyperzero"
    """hyperzero, hyperzero-no-td, hyperzero-no-q, mlp, mlp-q or mlp-q-td (maml and pearl: meta.py)"""
    test_contexts: tuple[str, ...] = ()
    """held-out contexts (as td3 --contexts); empty: a seeded --test-fraction of the contexts"""
    test_fraction: float = 0.15
    """fraction of contexts held out when --test-contexts is empty (the released code: 0.15, at least one when > 0)"""
    seed: int = 1
    """seed of torch (init, batches) and of the context split"""
    out_dir: str = "runs/hyperzero"
    """everything this run writes goes here"""
    steps: int = 5_000
    """gradient steps (the released code: 500 epochs of batch 512, ~167k steps)"""
    epochs: int = 0
    """if > 0, train this many passes over the training rows instead of --steps"""
    batch_size: int = 512
    """rows per step (the released code: 512), split evenly over --batch-contexts contexts"""
    batch_contexts: int = 8
    """contexts per batch: weights are generated once for each of them"""
    learning_rate: float = 1e-3
    """Adam learning rate (the released code: 1e-4 for ~167k steps; 1e-3 learns in a few thousand steps at small scale)"""
    value_weight: float = 0.01
    """lambda_v, weight of MSE(Q(s, a*), Q*) (the released code: 0.01)"""
    td_weight: float = 0.01
    """lambda_td, weight of the TD-consistency loss (the released code: 0.01)"""
    embed_dim: int = 256
    """context embedding size z (the released code: 256)"""
    policy_hidden: tuple[int, ...] = (256,)
    """hidden sizes of the generated policy and Q nets (the released code: one layer of 256)"""
    normalize_context: bool = True
    """standardise contexts with the training contexts' mean/std (the released code feeds raw values)"""
    normalize_q: bool = True
    """predict Q as mean + std * net and measure value/TD losses in units of std (training rows' Q*); the released
    code uses raw Q*, whose offset (~-150 on cheetah-vel) a small learning rate needs many steps to reach"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default, one per core: fastest for one run alone; give 1 to each of several
    runs sharing the cores)"""
    log_interval: int = 500
    """print (and log) train and held-out losses every this many steps"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir (they are removed before this run starts)"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb); TensorBoard event files are always written to out_dir/tb"""
    wandb_project_name: str = "cleanhyper"
    """Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """Weights & Biases entity (team or user; with --track)"""


# ---------------------------------------------------------------------------------------------
# Models: context c [K, C] -> (policy layers, Q layers or None) in the td3 form (W [K,in,out], b [K,1,out])
# ---------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):  # pre-activation residual block (released code: models/hypenet_core.py, ResBlock)
        return x + self.b(torch.relu(self.a(torch.relu(x))))


def context_embedding(ctx_dim: int, embed_dim: int) -> nn.Sequential:
    """The released code's Meta_Embadding (models/hypenet_core.py): Linear(m,64) 2xRes, Linear(64,128) 2xRes,
    Linear(128,256) 2xRes (widths z/4, z/2, z)."""
    layers, d = [], ctx_dim
    for width in (max(embed_dim // 4, 1), max(embed_dim // 2, 1), embed_dim):
        layers += [nn.Linear(d, width), ResBlock(width), ResBlock(width)]
        d = width
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):  # Meta_Embadding.init_layers: weights U(+-1/(2 sqrt(fan_in))), default biases
            nn.init.uniform_(m.weight, -0.5 / math.sqrt(m.in_features), 0.5 / math.sqrt(m.in_features))
    return net


def weight_head(embed_dim: int, sizes: list[int]) -> nn.Linear:
    """z -> every parameter of one generated net, flat in policy.flatten_layers order. Initialised as the released code's
    Head (models/hypenet_core.py): weights U(-sigma, sigma), zero bias, sigma 0.05 for the first generated layer and
    0.008 for the last (0.05 for any between), so the generated net starts near a small, almost-zero-output MLP."""
    head = nn.Linear(embed_dim, policy.n_params(sizes))
    nn.init.zeros_(head.bias)
    at, n = 0, len(sizes) - 1
    with torch.no_grad():
        for j, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
            sigma = 0.008 if j == n - 1 else 0.05
            head.weight[at : at + i * o + o].uniform_(-sigma, sigma)
            at += i * o + o
    return head


class HyperZero(nn.Module):
    """Shared context embedding z(c) and one head per generated net (released code: models/hypenet_core.py,
    DoubleHeadedHyperNetwork)."""

    def __init__(self, ctx_dim: int, embed_dim: int, pi_sizes: list[int], q_sizes: list[int] | None):
        super().__init__()
        self.pi_sizes, self.q_sizes = pi_sizes, q_sizes
        self.embed = context_embedding(ctx_dim, embed_dim)
        self.pi_head = weight_head(embed_dim, pi_sizes)
        self.q_head = weight_head(embed_dim, q_sizes) if q_sizes else None

    def forward(self, c):  # c [K, C] -> K policies (+ K Q nets), one set of weights per context
        z = self.embed(c)  # [K, E]
        pi = policy.unflatten_layers(self.pi_head(z), self.pi_sizes)
        return pi, policy.unflatten_layers(self.q_head(z), self.q_sizes) if self.q_head is not None else None


def fold(linears: nn.ModuleList, z: torch.Tensor):
    """Concatenation net -> td3 form per context: cat[z, x] W + b = x W_x + (z W_z + b), so z enters the first bias."""
    k, e = z.shape
    w0 = linears[0].weight.T  # [E + in, out], rows of z first
    layers = [(w0[e:].expand(k, -1, -1), (z @ w0[:e] + linears[0].bias)[:, None])]
    return layers + [(m.weight.T.expand(k, -1, -1), m.bias.expand(k, 1, -1)) for m in linears[1:]]


class CondMLP(nn.Module):
    """The concatenation baselines (released code: models/rl_regressor.py, MLPActionPredictor and MLPRLSolution):
    pi = MLP(cat[z(c), s]), Q = MLP(cat[z(c), s, a]). meta.py's MAML and PEARL policies are this net too."""

    def __init__(self, ctx_dim: int, embed_dim: int, pi_sizes: list[int], q_sizes: list[int] | None):
        super().__init__()
        self.embed = context_embedding(ctx_dim, embed_dim)
        net = lambda sizes: nn.ModuleList(
            nn.Linear(i + (embed_dim if j == 0 else 0), o) for j, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
        )
        self.pi = net(pi_sizes)
        self.q = net(q_sizes) if q_sizes else None

    def forward(self, c):  # trained through the folded form: identical math to the concatenation below
        z = self.embed(c)
        return fold(self.pi, z), fold(self.q, z) if self.q is not None else None

    def act(self, c, s):  # the plain concatenation forward: c [K, C], s [K, N, S] -> [K, N, A]
        h = torch.cat([self.embed(c)[:, None].expand(-1, s.shape[1], -1), s], -1)
        for j, m in enumerate(self.pi):
            h = m(h) if j == len(self.pi) - 1 else torch.relu(m(h))
        return torch.tanh(h)


def build_model(name: str, ctx_dim: int, embed_dim: int, pi_sizes: list[int], q_sizes: list[int]) -> nn.Module:
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(MODELS)} ({' and '.join(META_MODELS)}: meta.py)")
    spec = MODELS[name]
    return (HyperZero if spec.hyper else CondMLP)(ctx_dim, embed_dim, pi_sizes, q_sizes if spec.q else None)


def compute_losses(model, batch, gamma: float, use_td: bool, per_sample: bool = False, q_shift=0.0, q_scale=1.0) -> dict:
    """The HyperZero losses (docs/reference_code.md#hyperzero-losses) on a context-major batch: c [Cb, C];
    obs, act, next_obs [Cb, n, .]; rew, term, q [Cb, n]. Q(s, a) = q_shift + q_scale * net(s, a); value and TD losses
    are divided by q_scale^2 (0 and 1: the released code). per_sample=True generates weights for every row, as the
    released code does (same numbers, slower)."""
    c, obs, act, rew, next_obs, term, q = batch
    if per_sample:  # B = Cb*n contexts of one row each
        c = c.repeat_interleave(obs.shape[1], 0)
        obs, act, next_obs = (t.reshape(-1, 1, t.shape[-1]) for t in (obs, act, next_obs))
        rew, term, q = (t.reshape(-1, 1) for t in (rew, term, q))
    pi, qnet = model(c)
    out = {"bc": F.mse_loss(policy.mlp(pi, obs), act)}  # behaviour cloning: MSE(pi(c, s), a*)
    if qnet is not None:
        q_hat = q_shift + q_scale * policy.mlp(qnet, torch.cat([obs, act], -1), None).squeeze(-1)
        out["value"] = F.mse_loss(q_hat, q) / q_scale**2  # MSE(Q(c, s, a*), Q*)
        if use_td:
            # L_TD = mean(Q* - [r + gamma (1 - terminated) Q(s', sg(pi(s')))])^2: Q* is the fixed side and the gradient
            # flows through the bootstrapped side, as in the released code (approximators/rl_solution.py,
            # get_td_error). Its discount is the environment's, always 1.0; we use the experts' gamma so the target
            # matches how Q* was trained (docs/reference_code.md#bugs-in-the-released-code-and-what-we-do-instead).
            with torch.no_grad():
                next_act = policy.mlp(pi, next_obs)
            q_next = q_shift + q_scale * policy.mlp(qnet, torch.cat([next_obs, next_act], -1), None).squeeze(-1)
            out["td"] = ((q - (rew + gamma * (1 - term) * q_next)) ** 2).mean() / q_scale**2
    return out


# ---------------------------------------------------------------------------------------------
# Data and split (meta.py uses these too)
# ---------------------------------------------------------------------------------------------
def split_contexts(man: dict, test_specs, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Context ids (manifest order) -> train, test. Named test contexts, else a seeded shuffle, as the released code's
    utils/dataset.py (docs/reference_code.md#hyperzero-split-and-evaluation)."""
    labels = [tasks.context_label(c) for c in man["contexts"]]
    if test_specs:
        test = []
        for ctx in tasks.parse_contexts(man["task"], test_specs):
            if tasks.context_label(ctx) not in labels:
                raise UserError(f"test context {tasks.context_label(ctx)} is not in the rollouts; they have: {', '.join(labels)}")
            test.append(labels.index(tasks.context_label(ctx)))
    else:
        if not 0 <= fraction < 1:
            raise UserError(f"--test-fraction must be in [0, 1), got {fraction}")
        n_test = max(int(fraction * len(labels)), 1 if fraction > 0 and len(labels) > 1 else 0)
        test = np.random.default_rng(seed).permutation(len(labels))[:n_test].tolist()
    train = [i for i in range(len(labels)) if i not in test]
    if not train:
        raise UserError("every context is held out: leave at least one for training")
    return train, sorted(test)


def context_major(man: dict, arr: dict, train: list[int], normalize_context: bool, device) -> dict:
    """The rows as tensors on the device, sorted context-major: context i owns rows start[i] : start[i] + count[i]
    (numpy). c [K, C]: every context standardised with the training contexts' mean and std (ctx_mean, ctx_std)."""
    order = np.argsort(arr["context_id"], kind="stable")
    count = np.bincount(arr["context_id"], minlength=len(man["contexts"]))
    cvec = np.array([[float(c[n]) for n in man["context_names"]] for c in man["contexts"]], np.float32)  # [K, C]
    mean, std = cvec[train].mean(0), cvec[train].std(0)
    if not normalize_context:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # one training context (or a constant variable): no scaling
    dev = lambda x: torch.as_tensor(x, device=device)
    data = {f: dev(arr[f][order].astype(np.float32)) for f in ("obs", "action", "reward", "next_obs", "terminated", "q")}
    data["c"] = dev((cvec - mean) / std)
    data["start"], data["count"] = np.concatenate([[0], np.cumsum(count)[:-1]]), count
    data["ctx_mean"], data["ctx_std"] = mean, std
    return data


def checkpoint_contexts(ckpt: dict, contexts: list[dict], device="cpu") -> torch.Tensor:
    """Context dicts -> c [K, C] standardised as the checkpoint's model saw them in training."""
    names = ckpt["context_names"]
    if not contexts:
        raise UserError("generate_policies needs at least one context")
    for ctx in contexts:
        got = sorted(k for k in ctx if k not in ("env_name", "goal_seed")) if isinstance(ctx, dict) else ctx
        if got != sorted(names):
            raise UserError(f"context {ctx} does not match the checkpoint's context variables {names}")
    c = torch.tensor([[float(ctx[n]) for n in names] for ctx in contexts], dtype=torch.float32, device=device)
    return (c - torch.tensor(ckpt["ctx_mean"], device=device)) / torch.tensor(ckpt["ctx_std"], device=device)


@torch.no_grad()
def heldout_bc(model, data: dict, ids: list[int]) -> float | None:
    """BC MSE over every row of the given contexts (one generated net per context)."""
    if not ids:
        return None
    pi, _ = model(data["c"][ids])
    err, count = 0.0, 0
    for k, i in enumerate(ids):
        rows = slice(data["start"][i], data["start"][i] + data["count"][i])
        a = policy.mlp([(W[k : k + 1], b[k : k + 1]) for W, b in pi], data["obs"][rows][None])[0]
        err += float(((a - data["action"][rows]) ** 2).sum())
        count += a.numel()
    return err / count


def fit(model, opt, steps, batch_loss, heldout, log_interval, max_grad_norm=0.0, tracker=None, lr_flags="--learning-rate"):
    """The training loop of every model here and in meta.py: `steps` optimiser steps on batch_loss() -> (loss, its
    parts); a non-finite loss stops training with a message naming the step. Every log_interval steps (and at the
    last) one row of the mean losses since the previous row, heldout() (the held-out BC) and steps/s: printed, logged
    to the runio.Tracker (CleanRL's tag names: losses/..., charts/...) and returned."""
    history, acc, t_train, t_log = [], {}, 0.0, 0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        loss, parts = batch_loss()
        if not torch.isfinite(loss):  # the data were checked finite (collect.load_rollouts): the training diverged
            parts_s = ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items())
            raise UserError(
                f"non-finite loss at step {step}: {loss.item()} ({parts_s}); the rollouts are finite, so training diverged:"
                f" lower {lr_flags}, or check the scale of the rollouts' values"
            )
        opt.zero_grad()
        loss.backward()
        if max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        t_train += time.perf_counter() - t0
        for k, v in {"loss": loss, **parts}.items():
            acc[k] = acc.get(k, 0.0) + v.item()
        if step % log_interval == 0 or step == steps:
            row = {"step": step, **{k: v / (step - t_log) for k, v in acc.items()}, "test_bc": heldout()}
            row["steps_per_s"] = step / t_train
            history.append(row)
            if tracker is not None:
                logged = {f"losses/{'total' if k == 'loss' else k}": v for k, v in row.items() if k in acc}
                logged |= {"charts/SPS": row["steps_per_s"]} | (
                    {"losses/heldout_bc": row["test_bc"]} if row["test_bc"] is not None else {}
                )
                tracker.log(step, **logged)
            parts_s = "  ".join(f"{k} {row[k]:.4g}" for k in ("bc", "value", "td", "kl") if k in row)
            test_s = f"{row['test_bc']:.4g}" if row["test_bc"] is not None else "-"
            print(
                f"step {step:>7}/{steps}  loss {row['loss']:.4g} ({parts_s})  held-out bc {test_s}  {row['steps_per_s']:.0f} steps/s",
                flush=True,
            )
            acc, t_log = {}, step
    return history


# ---------------------------------------------------------------------------------------------
# Checkpoint -> policies: the functions every policy source offers evaluate.py
# ---------------------------------------------------------------------------------------------
CHECKPOINT_KEYS = ("model", "task", "obs_dim", "act_dim", "context_names", "policy_sizes", "q_sizes", "embed_dim", "state_dict")
CHECKPOINT_KEYS += ("split", "ctx_mean", "ctx_std")


def check_checkpoint(ckpt, file, fmt: str, stage: str, keys: tuple[str, ...], build) -> dict:
    """A loaded .pt -> the checkpoint, or one UserError naming the file: not a dict of format `fmt`, an entry missing,
    a split that is not lists of contexts, or weights that do not load into build(ckpt) (hyperzero.py and meta.py)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        got = ckpt.get("format") if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise UserError(f"{file} is not a {stage} checkpoint (format {got!r}, want {fmt!r})")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise UserError(f"{file} is an incomplete {stage} checkpoint: no {', '.join(missing)}")
    try:
        checkpoint_contexts(ckpt, ckpt["split"]["train"] + ckpt["split"]["test"])
        with torch.random.fork_rng(devices=[]):  # building the model draws its initial weights: leave the caller's RNG
            build(ckpt)
    except (UserError, KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise UserError(
            f"{file} is a damaged checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return ckpt


def checkpoint_file(path, name: str) -> Path:
    return Path(path) / name if Path(path).is_dir() else Path(path)


def load_checkpoint(path) -> dict:
    file = checkpoint_file(path, "hyperzero.pt")
    ckpt = runio.safe_load(file)
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT and ckpt.get("model") in META_MODELS:  # before meta.py
        raise UserError(
            f"{path} is an old hyperzero.py --model {ckpt['model']} checkpoint: retrain it with meta.py --model {ckpt['model']}"
        )
    return check_checkpoint(ckpt, file, FORMAT, "hyperzero.py", CHECKPOINT_KEYS, checkpoint_model)


def checkpoint_model(ckpt: dict, device="cpu") -> nn.Module:
    """The checkpoint's model, its weights loaded."""
    model = build_model(ckpt["model"], len(ckpt["context_names"]), ckpt["embed_dim"], ckpt["policy_sizes"], ckpt["q_sizes"])
    model.to(device).load_state_dict(ckpt["state_dict"])
    return model


def load_model(ckpt: dict, contexts: list[dict], device="cpu") -> tuple[nn.Module, torch.Tensor]:
    """The checkpoint's model and its standardised contexts c [K, C]."""
    return checkpoint_model(ckpt, device), checkpoint_contexts(ckpt, contexts, device)


def generate_policies(ckpt: dict, contexts: list[dict], n: int = 1, seed: int = 0, device="cpu", conditions=None):
    """Context dicts -> the td3 policy form with K = len(contexts): policy.mlp(layers, obs [K,N,S]) is each context's
    action. Deterministic: one policy per context whatever n; n, seed and conditions are there so that every policy
    source (hyperzero.py, meta.py, hyplatent.py, hypformer.py) is called the same way."""
    model, c = load_model(ckpt, contexts, device)
    with torch.no_grad():
        pi, _ = model(c)
    return [(W.contiguous(), b.contiguous()) for W, b in pi]  # materialise the MLP baselines' expanded weights


def main(args: Args) -> dict:
    if args.model in META_MODELS:
        raise UserError(f"--model {args.model} is trained by meta.py now: python meta.py --model {args.model} --rollouts ...")
    if args.model not in MODELS:
        raise UserError(f"unknown model '{args.model}'; valid models: {', '.join(MODELS)} ({' and '.join(META_MODELS)}: meta.py)")
    # every flag and input file checked, and --out-dir prepared, before any compute
    positive = ("steps", "batch_size", "batch_contexts", "learning_rate", "embed_dim", "policy_hidden", "log_interval")
    runio.check_flags(args, positive, nonnegative=("seed", "epochs", "value_weight", "td_weight", "torch_threads"))
    device = runio.resolve_device(args.device)
    man, arr = collect.load_rollouts(args.rollouts)
    train, test = split_contexts(man, args.test_contexts, args.test_fraction, args.seed)
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    ctx_label = lambda ids: [tasks.context_label(man["contexts"][i]) for i in ids]
    print(f"split: train {ctx_label(train)}  test {ctx_label(test)}")

    data = context_major(man, arr, train, args.normalize_context, device)
    q_train = arr["q"][np.isin(arr["context_id"], train)].astype(np.float64)
    q_shift, q_scale = (float(q_train.mean()), float(q_train.std())) if args.normalize_q else (0.0, 1.0)
    q_scale = q_scale if q_scale > 1e-6 else 1.0
    start_t, count_t, train_t = torch.as_tensor(data["start"]), torch.as_tensor(data["count"]), torch.as_tensor(train)

    S, A = man["obs_dim"], man["act_dim"]
    pi_sizes = policy.layer_sizes(S, list(args.policy_hidden), A)
    q_sizes = policy.layer_sizes(S + A, list(args.policy_hidden), 1)
    model = build_model(args.model, len(man["context_names"]), args.embed_dim, pi_sizes, q_sizes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, fused=True)  # fused: ~3x faster step on CPU for 3.6M params
    spec, gamma = MODELS[args.model], float(man["gamma"])
    cb = min(args.batch_contexts, len(train))
    n = max(args.batch_size // cb, 1)  # rows per context in a batch
    steps = args.epochs * math.ceil(int(data["count"][train].sum()) / args.batch_size) if args.epochs > 0 else args.steps
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params} parameters, generated policy {pi_sizes}; {steps} steps of {cb} contexts x {n} rows")

    def batch_loss():
        # ALGO LOGIC: context-major batch: C_b training contexts, n random rows of each -> [C_b, n, .]
        ctx = train_t[torch.randperm(len(train))[:cb]]
        rows = (start_t[ctx, None] + (torch.rand(cb, n) * count_t[ctx, None]).long()).to(device)
        fields = ("obs", "action", "reward", "next_obs", "terminated", "q")
        batch = (data["c"][ctx.to(device)], *(data[f][rows] for f in fields))
        parts = compute_losses(model, batch, gamma, spec.td, q_shift=q_shift, q_scale=q_scale)
        # the HyperZero objective L = L_bc + lambda_v L_value + lambda_td L_TD (docs/reference_code.md#hyperzero-losses)
        return parts["bc"] + args.value_weight * parts.get("value", 0.0) + args.td_weight * parts.get("td", 0.0), parts

    tracker = runio.Tracker(out, args, track=args.track, project=args.wandb_project_name, entity=args.wandb_entity)
    try:
        history = fit(model, opt, steps, batch_loss, lambda: heldout_bc(model, data, test), args.log_interval, tracker=tracker)
    finally:
        tracker.close()

    final = history[-1]
    split = {"train": [man["contexts"][i] for i in train], "test": [man["contexts"][i] for i in test]}
    ckpt = {
        "format": FORMAT,
        "model": args.model,
        "task": man["task"],
        "obs_dim": S,
        "act_dim": A,
        "context_names": list(man["context_names"]),
        "policy_sizes": pi_sizes,
        "q_sizes": q_sizes,
        "embed_dim": args.embed_dim,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items()},
        "split": split,
        "ctx_mean": data["ctx_mean"].tolist(),
        "ctx_std": data["ctx_std"].tolist(),
        "q_shift": q_shift,  # Q(s, a) = q_shift + q_scale * policy.mlp(Q layers, cat[s, a])
        "q_scale": q_scale,
        "train_loss": final["loss"],
        "train_bc": final["bc"],
        "test_bc": final["test_bc"],
        "gamma": gamma,
        "steps": steps,
        "history": history,
    }
    runio.atomic_save(ckpt, out / "hyperzero.pt")
    runio.finish_out_dir(out)
    print(
        f"wrote {out / 'hyperzero.pt'}  (train bc {final['bc']:.4g}, held-out bc {final['test_bc']}, {final['steps_per_s']:.0f} steps/s)"
    )
    figures = {k: ckpt[k] for k in ("split", "train_loss", "train_bc", "test_bc", "steps", "history")}
    return {
        **figures,
        "out_dir": str(out),
        "checkpoint": str(out / "hyperzero.pt"),
        "steps_per_s": final["steps_per_s"],
        "ckpt": ckpt,
    }


if __name__ == "__main__":
    runio.cli(main, Args)
