"""meta.py — the meta-learning baselines of HyperZero's comparison: MAML (Finn et al. 2017) and PEARL (Rakelly et al.
2019), trained on the same rollouts (collect.py) and context split as hyperzero.py.

Both meta-train on support / query rows of one context at a time, and unlike hyperzero.py's models they can also
ADAPT few-shot to a context from transitions of it (`adapt_policies`; evaluate.py reports those rows as
'<method>-adapted', which are not zero-shot). Zero-shot (`generate_policies`), MAML is its meta-learned
initialisation at the context and PEARL its policy at the prior mean z = 0, one policy for every context.

    python meta.py --rollouts runs/vel/rollouts --model maml --test-contexts 1.5 --seed 1 --out-dir runs/vel/maml

Writes meta.pt and TensorBoard event files (out_dir/tb); flags, rollouts and --out-dir are checked first, as in
hyperzero.py.

- maml: hyperzero.py's context-conditioned MLP ("Cond Policy") meta-trained with second-order MAML.
- pearl: the same MLP conditioned on a latent z instead of c; z ~ q(z | transitions) is a product of one Gaussian
  factor per transition and the prior, inferred by a context encoder.
"The released code" below is SAIC-MONTREAL/hyperzero (docs/reference_code.md#sources); its meta-learners,
their bugs and what we do instead: docs/reference_code.md#meta-learning-baselines-maml-pearl.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import collect
import policy
import runio
import tasks
from hyperzero import (
    CondMLP,
    check_checkpoint,
    checkpoint_contexts,
    checkpoint_file,
    context_major,
    fit,
    heldout_bc,
    split_contexts,
)
from runio import UserError

FORMAT = "cleanhyper-meta-v1"
MODELS = ("maml", "pearl")
OUTPUTS = ("meta.pt", "tb")  # what a run writes into --out-dir (runio.prepare_out_dir)
CHECKPOINT_KEYS = ("model", "task", "obs_dim", "act_dim", "context_names", "policy_sizes", "embed_dim", "latent_dim")
CHECKPOINT_KEYS += ("state_dict", "args", "split", "ctx_mean", "ctx_std")


@dataclass
class Args:
    rollouts: str = "runs/rollouts"
    """directory written by collect.py"""
    model: str = "maml"
    """maml or pearl"""
    test_contexts: tuple[str, ...] = ()
    """held-out contexts (as td3 --contexts); empty: a seeded --test-fraction of the contexts"""
    test_fraction: float = 0.15
    """fraction of contexts held out when --test-contexts is empty (as hyperzero.py)"""
    seed: int = 1
    """seed of torch (init, batches) and of the context split"""
    out_dir: str = "runs/meta"
    """everything this run writes goes here"""
    steps: int = 5_000
    """outer (meta) steps; the released code takes one per epoch, 500 in all"""
    learning_rate: float = 1e-3
    """Adam learning rate of the outer step (the released code: 1e-4)"""
    embed_dim: int = 256
    """context embedding size of the policy MLP, and PEARL's encoder width (the released code: 256)"""
    policy_hidden: tuple[int, ...] = (256,)
    """hidden sizes of the policy MLP (the released code: one layer of 256)"""
    normalize_context: bool = True
    """maml: standardise contexts with the training contexts' mean/std (the released code feeds raw values)"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default, one per core: fastest for one run alone; give 1 to each of several
    runs sharing the cores)"""
    log_interval: int = 500
    """print (and log) train and held-out losses every this many steps (held-out BC is zero-shot: no adaptation)"""
    meta_batch: int = 8
    """contexts per outer step (the released code: every training context)"""
    support_size: int = 32
    """rows of a context that MAML adapts on / PEARL's encoder sees (the released code: k_shot 10)"""
    query_size: int = 32
    """rows whose actions the adapted policy predicts, disjoint from the support rows (the released code: 10)"""
    inner_steps: int = 5
    """maml: inner SGD steps on the support rows (the released code: adaptation_steps 5)"""
    inner_lr: float = 0.01
    """maml: inner SGD learning rate (the released code: fast_lr 0.01)"""
    first_order: bool = False
    """maml: first-order MAML, no gradient through the inner steps (the released code: second order)"""
    max_grad_norm: float = 1.0
    """maml: clip the outer gradient's norm (0: off). Its second-order terms spike: in the quickstart, norms ~0.2 jumped
    to 66 at step ~1900 of 2000 and the tanh policy saturated for good (measured without clipping at lr 1e-3)"""
    latent_dim: int = 8
    """pearl: size of z (PEARL paper: 5 on MuJoCo; the released code: 256)"""
    kl_weight: float = 1e-3
    """pearl: weight of KL(q(z | support) || N(0, I)); the released code's kl_lambda 0.01 collapses q onto the prior here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir (they are removed before this run starts)"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb); TensorBoard event files are always written to out_dir/tb"""
    wandb_project_name: str = "cleanhyper"
    """Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """Weights & Biases entity (team or user; with --track)"""


# ---------------------------------------------------------------------------------------------
# MAML on the context-conditioned MLP
# ---------------------------------------------------------------------------------------------
def bc_loss(model, params, c, obs, act):
    """MSE(pi(c, s), a*) of one context with the given parameters: c [C], obs [n, S], act [n, A]."""
    pi, _ = functional_call(model, params, (c[None],))
    return F.mse_loss(policy.mlp(pi, obs[None]), act[None])


def maml_adapt(model, params: dict, c, obs, act, steps: int, lr: float, first_order: bool = False) -> dict:
    """MAML's inner loop (released code: approximators/policy.py, MetaPolicyApproximator.fast_adapt): `steps` SGD steps
    on one context's BC loss from `params`. The gradients torch.func.grad returns stay differentiable w.r.t. `params`,
    so a loss on the result differentiates through the steps (second-order MAML, learn2learn's create_graph);
    first_order detaches them (FOMAML: the outer gradient is the adapted one)."""
    for _ in range(steps):
        g = grad(bc_loss, argnums=1)(model, params, c, obs, act)
        params = {k: p - lr * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
    return params


def maml_loss(model, support, query, steps: int, lr: float, first_order: bool = False) -> torch.Tensor:
    """MAML's outer loss: query BC loss after adapting on the support, mean over the meta-batch; one outer Adam step per
    batch (the released code takes one per epoch). vmap over the contexts: 1.3x (second order) to 1.8x (first) faster
    than a loop on CPU. support, query: (c [Cb, C], obs [Cb, n, S], act [Cb, n, A]), the same contexts in the same order."""
    params = dict(model.named_parameters())

    def task(cs, obs_s, act_s, cq, obs_q, act_q):
        return bc_loss(model, maml_adapt(model, params, cs, obs_s, act_s, steps, lr, first_order), cq, obs_q, act_q)

    return vmap(task)(*support, *query).mean()


def meta_rows(start, count, ctx, n_support: int, n_query: int):
    """Disjoint random support [Cb, n_support] and query [Cb, n_query] rows of each context in ctx [Cb] (global ids)."""
    allowed = (torch.arange(int(count[ctx].max())) < count[ctx, None]).float()  # [Cb, max rows]
    idx = torch.multinomial(allowed, n_support + n_query) + start[ctx, None]  # without replacement
    return idx[:, :n_support], idx[:, n_support:]


# ---------------------------------------------------------------------------------------------
# PEARL as a behaviour-cloning baseline
# ---------------------------------------------------------------------------------------------
class Pearl(nn.Module):
    """PEARL with the released code's bugs fixed (docs/reference_code.md#bugs-in-the-released-code-and-what-we-do-instead):
    q(z | transitions) is the product of one Gaussian factor per transition (s, a, r, s') and the N(0, I) prior, as in
    the PEARL paper, and the policy is the Cond Policy MLP with z in place of c (released code: MLPActionPredictor with
    context_dim = the latent size)."""

    def __init__(self, embed_dim: int, latent_dim: int, pi_sizes: list[int]):
        super().__init__()
        S, A = pi_sizes[0], pi_sizes[-1]
        self.encoder = nn.Sequential(  # the released code's MLPContextEncoder, fed the whole transition
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


def transitions(data: dict, rows):
    """PEARL's encoder input for rows [..]: cat[s, a, r, s'] [.., 2S+A+1]."""
    return torch.cat([data["obs"][rows], data["action"][rows], data["reward"][rows][..., None], data["next_obs"][rows]], -1)


def pearl_losses(model: Pearl, data: dict, support, query) -> tuple[dict, torch.Tensor]:
    """BC of the query rows' actions given z ~ q(z | support rows) [Cb, L], and KL(q || N(0, I)). The encoder sees only
    the support rows, disjoint from the query rows, so never the action it is asked to predict (the released code's
    encoder sees it: a label leak)."""
    mu, var = model.posterior(transitions(data, support))
    z = mu + var.sqrt() * torch.randn_like(mu)  # reparameterisation
    pi, _ = model(z)
    kl = 0.5 * (var + mu**2 - 1 - var.log()).sum(-1).mean()  # KL(N(mu, var) || N(0, I)), mean over contexts
    return {"bc": F.mse_loss(policy.mlp(pi, data["obs"][query]), data["action"][query]), "kl": kl}, z


def build_model(name: str, ctx_dim: int, embed_dim: int, pi_sizes: list[int], latent_dim: int = 8) -> nn.Module:
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(MODELS)} (the others: hyperzero.py)")
    return Pearl(embed_dim, latent_dim, pi_sizes) if name == "pearl" else CondMLP(ctx_dim, embed_dim, pi_sizes, None)


# ---------------------------------------------------------------------------------------------
# Checkpoint -> policies: the functions every policy source offers evaluate.py, and adaptation
# ---------------------------------------------------------------------------------------------
def load_checkpoint(path) -> dict:
    file = checkpoint_file(path, "meta.pt")
    return check_checkpoint(runio.safe_load(file), file, FORMAT, "meta.py", CHECKPOINT_KEYS, checkpoint_model)


def checkpoint_model(ckpt: dict, device="cpu") -> nn.Module:
    """The checkpoint's model, its weights loaded."""
    model = build_model(ckpt["model"], len(ckpt["context_names"]), ckpt["embed_dim"], ckpt["policy_sizes"], ckpt["latent_dim"])
    model.to(device).load_state_dict(ckpt["state_dict"])
    return model


def load_model(ckpt: dict, contexts: list[dict], device="cpu") -> tuple[nn.Module, torch.Tensor]:
    """The checkpoint's model and what its policy is conditioned on: MAML the standardised contexts c [K, C], PEARL
    the prior mean z = 0 [K, L]."""
    if ckpt.get("format") != FORMAT:
        raise UserError(f"not a meta.py checkpoint (format {ckpt.get('format')!r}, want {FORMAT})")
    c = checkpoint_contexts(ckpt, contexts, device)
    model = checkpoint_model(ckpt, device)
    if ckpt["model"] == "pearl":  # zero-shot PEARL: the policy at the prior mean, the same for every context
        return model, torch.zeros(len(contexts), ckpt["latent_dim"], device=device)
    return model, c


def generate_policies(ckpt: dict, contexts: list[dict], n: int = 1, seed: int = 0, device="cpu", conditions=None):
    """Zero-shot policies in the td3 form, one per context whatever n (the signature of every policy source)."""
    model, c = load_model(ckpt, contexts, device)
    with torch.no_grad():
        pi, _ = model(c)
    return [(W.contiguous(), b.contiguous()) for W, b in pi]  # materialise the MLP's expanded weights


def adapt_steps(ckpt: dict, requested: int = -1) -> int:
    """The inner steps adapt_policies takes: MAML `requested` (-1: the checkpoint's --inner-steps), PEARL none."""
    if ckpt["model"] == "pearl":
        return 0
    return requested if requested >= 0 else ckpt["args"]["inner_steps"]


def adapt_policies(ckpt: dict, contexts: list[dict], transitions_: list[dict], steps: int, device="cpu"):
    """Few-shot (NOT zero-shot) policies in the td3 form, K = len(contexts): each context's policy after seeing
    transitions_[i] = {"obs" [n,S], "action" [n,A], "reward" [n], "next_obs" [n,S]} (numpy) of it.
    MAML: `steps` inner SGD steps (the checkpoint's inner lr) on their BC loss from the meta-learned initialisation.
    PEARL: the policy at the posterior mean of z given them; adaptation is inference, `steps` is unused."""
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


def main(args: Args) -> dict:
    if args.model not in MODELS:
        raise UserError(f"unknown model '{args.model}'; valid models: {', '.join(MODELS)} (the others: hyperzero.py)")
    # every flag and input file checked, and --out-dir prepared, before any compute
    positive = ("steps", "learning_rate", "embed_dim", "policy_hidden", "log_interval", "meta_batch", "support_size")
    positive += ("query_size", "inner_lr", "latent_dim")
    nonnegative = ("seed", "torch_threads", "inner_steps", "max_grad_norm", "kl_weight")
    runio.check_flags(args, positive, nonnegative)
    device = runio.resolve_device(args.device)
    man, arr = collect.load_rollouts(args.rollouts)
    train, test = split_contexts(man, args.test_contexts, args.test_fraction, args.seed)
    n_rows = args.support_size + args.query_size
    least = np.bincount(arr["context_id"], minlength=len(man["contexts"]))[train].min()
    if least < n_rows:
        raise UserError(f"a training context has {least} rows; --support-size + --query-size needs {n_rows}")
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    ctx_label = lambda ids: [tasks.context_label(man["contexts"][i]) for i in ids]
    print(f"split: train {ctx_label(train)}  test {ctx_label(test)}")

    data = context_major(man, arr, train, args.normalize_context, device)
    if args.model == "pearl":  # PEARL's policy is conditioned on z, not c: held-out BC is zero-shot, at the prior mean
        data["c"] = torch.zeros(len(man["contexts"]), args.latent_dim, device=device)
    start_t, count_t, train_t = torch.as_tensor(data["start"]), torch.as_tensor(data["count"]), torch.as_tensor(train)

    S, A = man["obs_dim"], man["act_dim"]
    pi_sizes = policy.layer_sizes(S, list(args.policy_hidden), A)
    model = build_model(args.model, len(man["context_names"]), args.embed_dim, pi_sizes, args.latent_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, fused=True)
    cb, n = min(args.meta_batch, len(train)), n_rows  # contexts, rows of each per step
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params} parameters, generated policy {pi_sizes}; {args.steps} steps of {cb} contexts x {n} rows")

    def batch_loss():
        # ALGO LOGIC: C_b training contexts, each split into disjoint support (adaptation) and query rows, as the
        # released code's fast_adapt splits a context's batch in halves
        ctx = train_t[torch.randperm(len(train))[:cb]]
        sup, qry = (r.to(device) for r in meta_rows(start_t, count_t, ctx, args.support_size, args.query_size))
        if args.model == "maml":  # bc = the query loss after adapting on the support rows
            c, obs, act = data["c"][ctx.to(device)], data["obs"], data["action"]
            support, query = (c, obs[sup], act[sup]), (c, obs[qry], act[qry])
            parts = {"bc": maml_loss(model, support, query, args.inner_steps, args.inner_lr, args.first_order)}
            return parts["bc"], parts
        parts, _ = pearl_losses(model, data, sup, qry)
        return parts["bc"] + args.kl_weight * parts["kl"], parts

    clip = args.max_grad_norm if args.model == "maml" else 0.0
    tracker = runio.Tracker(out, args, track=args.track, project=args.wandb_project_name, entity=args.wandb_entity)
    try:
        lr_flags = "--learning-rate or --inner-lr" if args.model == "maml" else "--learning-rate"
        history = fit(
            model, opt, args.steps, batch_loss, lambda: heldout_bc(model, data, test), args.log_interval, clip, tracker, lr_flags
        )
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
        "embed_dim": args.embed_dim,
        "latent_dim": args.latent_dim,  # pearl's z; maml's inner_steps and inner_lr are in args
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(args).items()},
        "split": split,
        "ctx_mean": data["ctx_mean"].tolist(),
        "ctx_std": data["ctx_std"].tolist(),
        "train_loss": final["loss"],
        "train_bc": final["bc"],
        "test_bc": final["test_bc"],
        "steps": args.steps,
        "history": history,
    }
    runio.atomic_save(ckpt, out / "meta.pt")
    runio.finish_out_dir(out)
    print(
        f"wrote {out / 'meta.pt'}  (train bc {final['bc']:.4g}, held-out bc {final['test_bc']}, {final['steps_per_s']:.0f} steps/s)"
    )
    figures = {k: ckpt[k] for k in ("split", "train_loss", "train_bc", "test_bc", "steps", "history")}
    return {**figures, "out_dir": str(out), "checkpoint": str(out / "meta.pt"), "steps_per_s": final["steps_per_s"], "ckpt": ckpt}


if __name__ == "__main__":
    runio.cli(main, Args)
