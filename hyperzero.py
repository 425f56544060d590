"""hyperzero.py — HyperZero (Rezaei-Shoshtari et al., AAAI 2023): context -> weights of a policy and its Q function.

A hypernetwork maps the MDP context c (reward and/or dynamics parameters) to the weights of a small policy net
pi_c(s) and Q net Q_c(s, a), trained by supervised regression on the experts' rollouts (collect.py) and used
zero-shot on contexts it never saw. Baselines: the ablations without TD / without Q, context-concatenation
MLPs (reference §4.4: "Cond Policy", "UVFA", "UVFA + TD") and the meta-learners MAML and PEARL (§4.5), which
`adapt_policies` also adapts few-shot on a context's own transitions (not zero-shot).

    python hyperzero.py --rollouts runs/vel/rollouts --model hyperzero --test-contexts 1.5 --seed 1 --out-dir runs/vel/hyperzero

Unlike the reference, weights are generated ONCE PER CONTEXT in a batch (context-major batches [C_b, n, S]) and
applied with td3.mlp, not once per sample: the same math, several times faster (benchmarks/hyperzero_step.py).
Every model, the MLP baselines included, is turned into the td3 policy form by `generate_policies` (evaluate.py).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import td3
from td3 import UserError

FORMAT = "cleanhyper-hyperzero-v1"
# name -> (hypernetwork?, Q net + value loss?, TD loss?)  (reference §4.4)
MODELS = {
    "hyperzero": (True, True, True),
    "hyperzero-no-td": (True, True, False),
    "hyperzero-no-q": (True, False, False),
    "mlp": (False, False, False),
    "mlp-q": (False, True, False),
    "mlp-q-td": (False, True, True),
    "maml": (False, False, False),  # the "mlp" Cond Policy, meta-trained (reference meta_policy)
    "pearl": (False, False, False),  # latent-conditioned policy + context encoder (reference pearl_policy, fixed)
}
ROLLOUT_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "q", "context", "context_id")


@dataclass
class Args:
    rollouts: str = "runs/rollouts"
    """directory written by collect.py"""
    model: str = "hyperzero"
    """hyperzero, hyperzero-no-td, hyperzero-no-q, mlp, mlp-q, mlp-q-td, maml or pearl"""
    test_contexts: tuple[str, ...] = ()
    """held-out contexts (as td3 --contexts); empty: a seeded --test-fraction of the contexts"""
    test_fraction: float = 0.15
    """fraction of contexts held out when --test-contexts is empty (reference: 0.15, at least one when > 0)"""
    seed: int = 1
    """seed of torch (init, batches) and of the context split"""
    out_dir: str = "runs/hyperzero"
    """everything this run writes goes here"""
    steps: int = 5_000
    """gradient steps (reference: 500 epochs of batch 512, ~167k steps)"""
    epochs: int = 0
    """if > 0, train this many passes over the training rows instead of --steps"""
    batch_size: int = 512
    """rows per step (reference 512), split evenly over --batch-contexts contexts"""
    batch_contexts: int = 8
    """contexts per batch: weights are generated once for each of them"""
    learning_rate: float = 1e-3
    """Adam learning rate (reference 1e-4 for ~167k steps; 1e-3 learns in a few thousand steps at small scale)"""
    value_weight: float = 0.01
    """lambda_v, weight of MSE(Q(s, a*), Q*) (reference 0.01)"""
    td_weight: float = 0.01
    """lambda_td, weight of the TD-consistency loss (reference 0.01)"""
    embed_dim: int = 256
    """context embedding size z (reference 256)"""
    policy_hidden: tuple[int, ...] = (256,)
    """hidden sizes of the generated policy and Q nets (reference: one layer of 256)"""
    normalize_context: bool = True
    """standardise contexts with the training contexts' mean/std (the reference feeds raw values)"""
    normalize_q: bool = True
    """predict Q as mean + std * net and measure value/TD losses in units of std (training rows' Q*); the reference
    uses raw Q*, whose offset (~-150 on cheetah-vel) a small learning rate needs many steps to reach"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 1
    """CPU threads for torch"""
    log_interval: int = 500
    """print train and held-out losses every this many steps"""
    meta_batch: int = 8
    """maml, pearl: contexts per outer step (reference: every training context)"""
    support_size: int = 32
    """maml, pearl: rows of a context that MAML adapts on / PEARL's encoder sees (reference k_shot 10)"""
    query_size: int = 32
    """maml, pearl: rows whose actions the adapted policy predicts, disjoint from the support rows (reference 10)"""
    inner_steps: int = 5
    """maml: inner SGD steps on the support rows (reference adaptation_steps 5)"""
    inner_lr: float = 0.01
    """maml: inner SGD learning rate (reference fast_lr 0.01)"""
    first_order: bool = False
    """maml: first-order MAML, no gradient through the inner steps (reference: second order)"""
    max_grad_norm: float = 1.0
    """maml: clip the outer gradient's norm (0: off). Its second-order terms spike: in the quickstart, norms ~0.2 jumped
    to 66 at step ~1900 of 2000 and the tanh policy saturated for good (measured without clipping at lr 1e-3)"""
    latent_dim: int = 8
    """pearl: size of z (PEARL paper 5 on MuJoCo; reference code 256)"""
    kl_weight: float = 1e-3
    """pearl: weight of KL(q(z | support) || N(0, I)); the reference's kl_lambda 0.01 collapses q onto the prior here"""


# ---------------------------------------------------------------------------------------------
# Models: context c [K, C] -> (policy layers, Q layers or None) in the td3 form (W [K,in,out], b [K,1,out])
# ---------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):  # pre-activation residual block (reference §4.1)
        return x + self.b(torch.relu(self.a(torch.relu(x))))


def context_embedding(ctx_dim: int, embed_dim: int) -> nn.Sequential:
    """Reference §4.1 Meta_Embadding: Linear(m,64) 2xRes, Linear(64,128) 2xRes, Linear(128,256) 2xRes (widths z/4, z/2, z)."""
    layers, d = [], ctx_dim
    for width in (max(embed_dim // 4, 1), max(embed_dim // 2, 1), embed_dim):
        layers += [nn.Linear(d, width), ResBlock(width), ResBlock(width)]
        d = width
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):  # reference init_layers: weights U(+-1/(2 sqrt(fan_in))), default biases
            nn.init.uniform_(m.weight, -0.5 / math.sqrt(m.in_features), 0.5 / math.sqrt(m.in_features))
    return net


def weight_head(embed_dim: int, sizes: list[int]) -> nn.Linear:
    """z -> every parameter of one generated net, flat in td3.flatten_layers order. Reference §4.1 Head init:
    weights U(-sigma, sigma), zero bias, sigma 0.05 for the first generated layer and 0.008 for the last
    (0.05 for any between), so the generated net starts near a small, almost-zero-output MLP."""
    head = nn.Linear(embed_dim, td3.n_params(sizes))
    nn.init.zeros_(head.bias)
    at, n = 0, len(sizes) - 1
    with torch.no_grad():
        for j, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
            sigma = 0.008 if j == n - 1 else 0.05
            head.weight[at : at + i * o + o].uniform_(-sigma, sigma)
            at += i * o + o
    return head


class HyperZero(nn.Module):
    """Shared context embedding z(c) and one head per generated net (reference DoubleHeadedHyperNetwork)."""

    def __init__(self, ctx_dim: int, embed_dim: int, pi_sizes: list[int], q_sizes: list[int] | None):
        super().__init__()
        self.pi_sizes, self.q_sizes = pi_sizes, q_sizes
        self.embed = context_embedding(ctx_dim, embed_dim)
        self.pi_head = weight_head(embed_dim, pi_sizes)
        self.q_head = weight_head(embed_dim, q_sizes) if q_sizes else None

    def forward(self, c):  # c [K, C] -> K policies (+ K Q nets), one set of weights per context
        z = self.embed(c)  # [K, E]
        pi = td3.unflatten_layers(self.pi_head(z), self.pi_sizes)
        return pi, td3.unflatten_layers(self.q_head(z), self.q_sizes) if self.q_head is not None else None


def fold(linears: nn.ModuleList, z: torch.Tensor):
    """Concatenation net -> td3 form per context: cat[z, x] W + b = x W_x + (z W_z + b), so z enters the first bias."""
    k, e = z.shape
    w0 = linears[0].weight.T  # [E + in, out], rows of z first
    layers = [(w0[e:].expand(k, -1, -1), (z @ w0[:e] + linears[0].bias)[:, None])]
    return layers + [(m.weight.T.expand(k, -1, -1), m.bias.expand(k, 1, -1)) for m in linears[1:]]


class CondMLP(nn.Module):
    """Reference MLPActionPredictor / MLPRLSolution: pi = MLP(cat[z(c), s]), Q = MLP(cat[z(c), s, a])."""

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


class Pearl(nn.Module):
    """PEARL (Rakelly et al. 2019) as a BC baseline, with the reference's bugs fixed (§7.8-9): q(z | transitions) is
    the product of one Gaussian factor per transition (s, a, r, s') and the N(0, I) prior, and the policy is the Cond
    Policy MLP with z in place of c (reference MLPActionPredictor(context_dim = latent))."""

    def __init__(self, embed_dim: int, latent_dim: int, pi_sizes: list[int]):
        super().__init__()
        S, A = pi_sizes[0], pi_sizes[-1]
        self.encoder = nn.Sequential(  # reference MLPContextEncoder, fed the whole transition
            nn.Linear(2 * S + A + 1, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(),
            nn.Linear(embed_dim, 2 * latent_dim),
        )
        self.policy = CondMLP(latent_dim, embed_dim, pi_sizes, None)

    def posterior(self, trans):  # trans [K, M, 2S+A+1] = cat[s, a, r, s'] -> mean, variance [K, L]
        mu, var = self.encoder(trans).chunk(2, -1)
        var = F.softplus(var).clamp(min=1e-7)  # PEARL's factor variance
        # product of Gaussians, prior included: precisions add, the mean is precision-weighted (M = 0: the prior)
        precision = 1 + (1 / var).sum(1)
        return (mu / var).sum(1) / precision, 1 / precision

    def forward(self, z):  # z [K, L] -> K policies (no Q net)
        return self.policy(z)


def build_model(
    name: str, ctx_dim: int, embed_dim: int, pi_sizes: list[int], q_sizes: list[int], latent_dim: int = 8
) -> nn.Module:
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
    if name == "pearl":
        return Pearl(embed_dim, latent_dim, pi_sizes)
    hyper, use_q, _ = MODELS[name]
    return (HyperZero if hyper else CondMLP)(ctx_dim, embed_dim, pi_sizes, q_sizes if use_q else None)


def compute_losses(model, batch, gamma: float, use_td: bool, per_sample: bool = False, q_shift=0.0, q_scale=1.0) -> dict:
    """Reference §4.3 on a context-major batch: c [Cb, C]; obs, act, next_obs [Cb, n, .]; rew, term, q [Cb, n].
    Q(s, a) = q_shift + q_scale * net(s, a); value and TD losses are divided by q_scale^2 (0 and 1: the reference).
    per_sample=True generates weights for every row, as the reference does (same numbers, slower)."""
    c, obs, act, rew, next_obs, term, q = batch
    if per_sample:  # B = Cb*n contexts of one row each
        c = c.repeat_interleave(obs.shape[1], 0)
        obs, act, next_obs = (t.reshape(-1, 1, t.shape[-1]) for t in (obs, act, next_obs))
        rew, term, q = (t.reshape(-1, 1) for t in (rew, term, q))
    pi, qnet = model(c)
    out = {"bc": F.mse_loss(td3.mlp(pi, obs), act)}  # behaviour cloning: MSE(pi(c, s), a*)
    if qnet is not None:
        q_hat = q_shift + q_scale * td3.mlp(qnet, torch.cat([obs, act], -1), None).squeeze(-1)
        out["value"] = F.mse_loss(q_hat, q) / q_scale**2  # MSE(Q(c, s, a*), Q*)
        if use_td:
            # L_TD = mean(Q* - [r + gamma (1 - terminated) Q(s', sg(pi(s')))])^2: Q* is the fixed side and the gradient
            # flows through the bootstrapped side (reference §4.3, §7.2). The reference's discount is the environment's
            # (always 1.0, §7.1); we use the experts' gamma so the target matches how Q* was trained.
            with torch.no_grad():
                next_act = td3.mlp(pi, next_obs)
            q_next = q_shift + q_scale * td3.mlp(qnet, torch.cat([next_obs, next_act], -1), None).squeeze(-1)
            out["td"] = ((q - (rew + gamma * (1 - term) * q_next)) ** 2).mean() / q_scale**2
    return out


# ---------------------------------------------------------------------------------------------
# Meta-learning baselines (reference §4.5): MAML on the Cond Policy, PEARL
# ---------------------------------------------------------------------------------------------
def bc_loss(model, params, c, obs, act):
    """MSE(pi(c, s), a*) of one context with the given parameters: c [C], obs [n, S], act [n, A]."""
    pi, _ = functional_call(model, params, (c[None],))
    return F.mse_loss(td3.mlp(pi, obs[None]), act[None])


def maml_adapt(model, params: dict, c, obs, act, steps: int, lr: float, first_order: bool = False) -> dict:
    """Reference §4.5 fast_adapt: `steps` SGD steps on one context's BC loss from `params`. The gradients torch.func.grad
    returns stay differentiable w.r.t. `params`, so a loss on the result differentiates through the steps (second-order
    MAML, learn2learn's create_graph); first_order detaches them (FOMAML: the outer gradient is the adapted one)."""
    for _ in range(steps):
        g = grad(bc_loss, argnums=1)(model, params, c, obs, act)
        params = {k: p - lr * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
    return params


def maml_loss(model, support, query, steps: int, lr: float, first_order: bool = False) -> torch.Tensor:
    """MAML's outer loss: query BC loss after adapting on the support, mean over the meta-batch; one outer Adam step per
    batch (not per epoch, §7.11). vmap over the contexts: 1.3x (second order) to 1.8x (first) faster than a loop on CPU.
    support, query: (c [Cb, C], obs [Cb, n, S], act [Cb, n, A]), the same contexts in the same order."""
    params = dict(model.named_parameters())

    def task(cs, obs_s, act_s, cq, obs_q, act_q):
        return bc_loss(model, maml_adapt(model, params, cs, obs_s, act_s, steps, lr, first_order), cq, obs_q, act_q)

    return vmap(task)(*support, *query).mean()


def meta_rows(start, count, ctx, n_support: int, n_query: int):
    """Disjoint random support [Cb, n_support] and query [Cb, n_query] rows of each context in ctx [Cb] (global ids)."""
    allowed = (torch.arange(int(count[ctx].max())) < count[ctx, None]).float()  # [Cb, max rows]
    idx = torch.multinomial(allowed, n_support + n_query) + start[ctx, None]  # without replacement
    return idx[:, :n_support], idx[:, n_support:]


def transitions(data: dict, rows):
    """PEARL's encoder input for rows [..]: cat[s, a, r, s'] [.., 2S+A+1]."""
    return torch.cat([data["obs"][rows], data["action"][rows], data["reward"][rows][..., None], data["next_obs"][rows]], -1)


def pearl_losses(model: Pearl, data: dict, support, query) -> tuple[dict, torch.Tensor]:
    """BC of the query rows' actions given z ~ q(z | support rows) [Cb, L], and KL(q || N(0, I)). The encoder sees only
    the support rows, disjoint from the query rows, so never the action it is asked to predict (reference §7.9 leak)."""
    mu, var = model.posterior(transitions(data, support))
    z = mu + var.sqrt() * torch.randn_like(mu)  # reparameterisation
    pi, _ = model(z)
    kl = 0.5 * (var + mu**2 - 1 - var.log()).sum(-1).mean()  # KL(N(mu, var) || N(0, I)), mean over contexts
    return {"bc": F.mse_loss(td3.mlp(pi, data["obs"][query]), data["action"][query]), "kl": kl}, z


# ---------------------------------------------------------------------------------------------
# Data, split, public API
# ---------------------------------------------------------------------------------------------
def load_rollouts(path) -> tuple[dict, dict[str, np.ndarray]]:
    """manifest.json + the arrays collect.py wrote, checked for consistency."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise UserError(f"no rollouts at {path} (manifest.json missing: run collect.py, or it was interrupted)")
    man = json.loads((path / "manifest.json").read_text())
    if man.get("format") != "cleanhyper-rollouts-v1":
        raise UserError(f"{path}/manifest.json is not a collect.py rollout set (format {man.get('format')!r})")
    arrays = {}
    for f in ROLLOUT_FIELDS:
        try:
            arrays[f] = np.load(path / f"{f}.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load {path / f'{f}.npy'}: {e}") from None
    n, S, A, C = man["counts"]["rows"], man["obs_dim"], man["act_dim"], len(man["context_names"])
    want = {"obs": (n, S), "action": (n, A), "reward": (n,), "next_obs": (n, S), "terminated": (n,), "q": (n,), "context": (n, C)}
    want["context_id"] = (n,)
    bad = [f"{f} {arrays[f].shape} (want {shape})" for f, shape in want.items() if arrays[f].shape != shape]
    if bad:
        raise UserError(f"rollouts at {path} are inconsistent with their manifest (mixed sets?): {'; '.join(bad)}")
    if n == 0 or arrays["context_id"].min() < 0 or arrays["context_id"].max() >= len(man["contexts"]):
        raise UserError(f"rollouts at {path}: context_id outside the manifest's {len(man['contexts'])} contexts")
    if C == 0:
        raise UserError(f"task '{man['task']}' has no numeric context (MetaWorld): HyperZero needs one")
    return man, arrays


def split_contexts(man: dict, test_specs, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Context ids (manifest order) -> train, test. Named test contexts, else a seeded shuffle (reference §1.4)."""
    labels = [td3.context_label(c) for c in man["contexts"]]
    if test_specs:
        test = []
        for ctx in td3.parse_contexts(man["task"], test_specs):
            if td3.context_label(ctx) not in labels:
                raise UserError(f"test context {td3.context_label(ctx)} is not in the rollouts; they have: {', '.join(labels)}")
            test.append(labels.index(td3.context_label(ctx)))
    else:
        if not 0 <= fraction < 1:
            raise UserError(f"--test-fraction must be in [0, 1), got {fraction}")
        n_test = max(int(fraction * len(labels)), 1 if fraction > 0 and len(labels) > 1 else 0)
        test = np.random.default_rng(seed).permutation(len(labels))[:n_test].tolist()
    train = [i for i in range(len(labels)) if i not in test]
    if not train:
        raise UserError("every context is held out: leave at least one for training")
    return train, sorted(test)


def load_checkpoint(path) -> dict:
    ckpt = td3.safe_load(Path(path) / "hyperzero.pt" if Path(path).is_dir() else path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a hyperzero.py checkpoint (format {FORMAT})")
    return ckpt


def load_model(ckpt: dict, contexts: list[dict], device="cpu") -> tuple[nn.Module, torch.Tensor]:
    """The checkpoint's model and its normalised contexts c [K, C] (PEARL: the prior mean z = 0 [K, L])."""
    names = ckpt["context_names"]
    if not contexts:
        raise UserError("generate_policies needs at least one context")
    for ctx in contexts:
        got = sorted(k for k in ctx if k not in ("env_name", "goal_seed")) if isinstance(ctx, dict) else ctx
        if got != sorted(names):
            raise UserError(f"context {ctx} does not match the checkpoint's context variables {names}")
    latent = ckpt.get("latent_dim", 8)
    model = build_model(ckpt["model"], len(names), ckpt["embed_dim"], ckpt["policy_sizes"], ckpt["q_sizes"], latent).to(device)
    model.load_state_dict(ckpt["state_dict"])
    if ckpt["model"] == "pearl":  # zero-shot PEARL: the policy at the prior mean, the same for every context
        return model, torch.zeros(len(contexts), latent, device=device)
    c = torch.tensor([[float(ctx[n]) for n in names] for ctx in contexts], dtype=torch.float32, device=device)
    return model, (c - torch.tensor(ckpt["ctx_mean"], device=device)) / torch.tensor(ckpt["ctx_std"], device=device)


def generate_policies(ckpt: dict, contexts: list[dict], device="cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Context dicts -> the td3 policy form with K = len(contexts): td3.mlp(layers, obs [K,N,S]) is each context's action."""
    model, c = load_model(ckpt, contexts, device)
    with torch.no_grad():
        pi, _ = model(c)
    return [(W.contiguous(), b.contiguous()) for W, b in pi]  # materialise the MLP baselines' expanded weights


def adapt_policies(ckpt: dict, contexts: list[dict], transitions_: list[dict], steps: int, device="cpu"):
    """Few-shot (NOT zero-shot) policies of MAML and PEARL in the td3 form, K = len(contexts): each context's policy
    after seeing transitions_[i] = {"obs" [n,S], "action" [n,A], "reward" [n], "next_obs" [n,S]} (numpy) of it.
    MAML: `steps` inner SGD steps (the checkpoint's inner lr) on their BC loss from the meta-learned initialisation.
    PEARL: the policy at the posterior mean of z given them; adaptation is inference, `steps` is unused."""
    if ckpt["model"] not in ("maml", "pearl"):
        raise UserError(f"adapt_policies needs a maml or pearl checkpoint, not '{ckpt['model']}'")
    if len(transitions_) != len(contexts):
        raise UserError(f"{len(contexts)} contexts but {len(transitions_)} sets of adaptation transitions")
    model, c = load_model(ckpt, contexts, device)
    S, A = ckpt["obs_dim"], ckpt["act_dim"]
    params = {k: p.detach() for k, p in model.named_parameters()}
    out = []
    for i, tr in enumerate(transitions_):
        t = {f: torch.as_tensor(np.asarray(tr[f], np.float32), device=device) for f in ("obs", "action", "reward", "next_obs")}
        n = len(t["obs"])
        want = {"obs": (n, S), "action": (n, A), "reward": (n,), "next_obs": (n, S)}
        if n == 0 or any(tuple(t[f].shape) != shape for f, shape in want.items()):
            raise UserError(
                f"adaptation transitions of context {i}: want obs [n,{S}], action [n,{A}], reward [n], next_obs [n,{S}], n > 0"
            )
        if ckpt["model"] == "pearl":
            with torch.no_grad():
                mu, _ = model.posterior(transitions(t, slice(None))[None])
                out.append(model(mu)[0])
        else:
            # first_order: no outer loss follows at test time, so no graph through the steps is needed
            p = maml_adapt(model, params, c[i], t["obs"], t["action"], steps, ckpt["args"]["inner_lr"], first_order=True)
            with torch.no_grad():
                out.append(functional_call(model, p, (c[i : i + 1],))[0])
    return [(torch.cat([W for W, _ in ls]).contiguous(), torch.cat([b for _, b in ls]).contiguous()) for ls in zip(*out)]


@torch.no_grad()
def heldout_bc(model, data: dict, ids: list[int]) -> float | None:
    """BC MSE over every row of the given contexts (one generated net per context)."""
    if not ids:
        return None
    pi, _ = model(data["c"][ids])
    err, count = 0.0, 0
    for k, i in enumerate(ids):
        rows = slice(data["start"][i], data["start"][i] + data["count"][i])
        a = td3.mlp([(W[k : k + 1], b[k : k + 1]) for W, b in pi], data["obs"][rows][None])[0]
        err += float(((a - data["action"][rows]) ** 2).sum())
        count += a.numel()
    return err / count


def main(args: Args) -> dict:
    if args.model not in MODELS:
        raise UserError(f"unknown model '{args.model}'; valid models: {', '.join(MODELS)}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = td3.resolve_device(args.device)
    man, arr = load_rollouts(args.rollouts)
    train, test = split_contexts(man, args.test_contexts, args.test_fraction, args.seed)
    ctx_label = lambda ids: [td3.context_label(man["contexts"][i]) for i in ids]
    print(f"split: train {ctx_label(train)}  test {ctx_label(test)}")
    if args.batch_size < 1 or args.batch_contexts < 1 or args.steps < 1:
        raise UserError("need --batch-size, --batch-contexts and --steps >= 1")
    meta = args.model in ("maml", "pearl")
    if meta and (min(args.meta_batch, args.support_size, args.query_size, args.latent_dim) < 1 or args.inner_steps < 0):
        raise UserError("need --meta-batch, --support-size, --query-size, --latent-dim >= 1 and --inner-steps >= 0")

    # Rows sorted context-major; context i owns rows start[i] : start[i] + count[i].
    order = np.argsort(arr["context_id"], kind="stable")
    count = np.bincount(arr["context_id"], minlength=len(man["contexts"]))
    cvec = np.array([[float(c[n]) for n in man["context_names"]] for c in man["contexts"]], np.float32)  # [K, C]
    mean, std = cvec[train].mean(0), cvec[train].std(0)
    if not args.normalize_context:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # one training context (or a constant variable): no scaling
    dev = lambda x: torch.as_tensor(x, device=device)
    data = {f: dev(arr[f][order].astype(np.float32)) for f in ("obs", "action", "reward", "next_obs", "terminated", "q")}
    data["c"] = dev((cvec - mean) / std)
    if args.model == "pearl":  # PEARL's policy is conditioned on z, not c: held-out BC is zero-shot, at the prior mean
        data["c"] = torch.zeros(len(cvec), args.latent_dim, device=device)
    q_train = arr["q"][np.isin(arr["context_id"], train)].astype(np.float64)
    q_shift, q_scale = (float(q_train.mean()), float(q_train.std())) if args.normalize_q else (0.0, 1.0)
    q_scale = q_scale if q_scale > 1e-6 else 1.0
    data["start"], data["count"] = np.concatenate([[0], np.cumsum(count)[:-1]]), count
    start_t, count_t, train_t = torch.as_tensor(data["start"]), torch.as_tensor(count), torch.as_tensor(train)

    S, A = man["obs_dim"], man["act_dim"]
    pi_sizes = td3.layer_sizes(S, list(args.policy_hidden), A)
    q_sizes = td3.layer_sizes(S + A, list(args.policy_hidden), 1)
    model = build_model(args.model, len(man["context_names"]), args.embed_dim, pi_sizes, q_sizes, args.latent_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, fused=True)  # fused: ~3x faster step on CPU for 3.6M params
    _, use_q, use_td = MODELS[args.model]
    gamma = float(man["gamma"])
    cb = min(args.meta_batch if meta else args.batch_contexts, len(train))
    n = args.support_size + args.query_size if meta else max(args.batch_size // cb, 1)  # rows per context in a batch
    if meta and count[train].min() < n:
        raise UserError(f"a training context has {count[train].min()} rows; --support-size + --query-size needs {n}")
    steps = args.epochs * math.ceil(int(count[train].sum()) / args.batch_size) if args.epochs > 0 else args.steps
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params} parameters, generated policy {pi_sizes}; {steps} steps of {cb} contexts x {n} rows")

    history, acc, t_train, t_log = [], {}, 0.0, 0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        # ALGO LOGIC: context-major batch: C_b training contexts, n random rows of each -> [C_b, n, .]
        ctx = train_t[torch.randperm(len(train))[:cb]]
        if meta:  # reference §4.5 splits each context's rows into support (adaptation) and query halves
            sup, qry = (r.to(device) for r in meta_rows(start_t, count_t, ctx, args.support_size, args.query_size))
        if args.model == "maml":  # bc = the query loss after adapting on the support rows
            c, obs, act = data["c"][ctx.to(device)], data["obs"], data["action"]
            support, query = (c, obs[sup], act[sup]), (c, obs[qry], act[qry])
            parts = {"bc": maml_loss(model, support, query, args.inner_steps, args.inner_lr, args.first_order)}
        elif args.model == "pearl":
            parts, _ = pearl_losses(model, data, sup, qry)
        else:
            rows = (start_t[ctx, None] + (torch.rand(cb, n) * count_t[ctx, None]).long()).to(device)
            batch = (
                data["c"][ctx.to(device)],
                *(data[f][rows] for f in ("obs", "action", "reward", "next_obs", "terminated", "q")),
            )
            parts = compute_losses(model, batch, gamma, use_td, q_shift=q_shift, q_scale=q_scale)
        # reference §4.3: L = L_bc + lambda_v L_value + lambda_td L_TD (+ PEARL's lambda_kl KL)
        loss = parts["bc"] + args.value_weight * parts.get("value", 0.0) + args.td_weight * parts.get("td", 0.0)
        loss = loss + args.kl_weight * parts.get("kl", 0.0)
        if not torch.isfinite(loss):
            raise UserError(
                f"non-finite loss at step {step}: {loss.item()} ({ {k: v.item() for k, v in parts.items()} }); lower --learning-rate"
            )
        opt.zero_grad()
        loss.backward()
        if args.model == "maml" and args.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        t_train += time.perf_counter() - t0
        for k, v in {"loss": loss, **parts}.items():
            acc[k] = acc.get(k, 0.0) + v.item()
        if step % args.log_interval == 0 or step == steps:
            row = {"step": step, **{k: v / (step - t_log) for k, v in acc.items()}, "test_bc": heldout_bc(model, data, test)}
            row["steps_per_s"] = step / t_train
            history.append(row)
            parts_s = "  ".join(f"{k} {row[k]:.4g}" for k in ("bc", "value", "td", "kl") if k in row)
            test_s = f"{row['test_bc']:.4g}" if test else "-"
            print(
                f"step {step:>7}/{steps}  loss {row['loss']:.4g} ({parts_s})  held-out bc {test_s}  {row['steps_per_s']:.0f} steps/s",
                flush=True,
            )
            acc, t_log = {}, step

    final = history[-1]
    split = {"train": [man["contexts"][i] for i in train], "test": [man["contexts"][i] for i in test]}
    out = Path(args.out_dir)
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
        "latent_dim": args.latent_dim,  # pearl's z; inner_steps / inner_lr of maml are in args
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items()},
        "split": split,
        "ctx_mean": mean.tolist(),
        "ctx_std": std.tolist(),
        "q_shift": q_shift,  # Q(s, a) = q_shift + q_scale * td3.mlp(Q layers, cat[s, a])
        "q_scale": q_scale,
        "train_loss": final["loss"],
        "train_bc": final["bc"],
        "test_bc": final["test_bc"],
        "gamma": gamma,
        "steps": steps,
        "history": history,
    }
    td3.atomic_save(ckpt, out / "hyperzero.pt")
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
    td3.cli(main, Args)
