"""td3.py — TD3 that trains K experts, one per context, at once (SAC with --sac).

K environments step together; the actor, the twin critics Q1 and Q2, their targets and Adam states are tensors batched
over K (W [K, in, out], the policy form of policy.py). Each context's loss is averaged over its own batch and the K
losses are summed, so every context gets exactly the gradient (and, Adam being elementwise, the update) of a separate
run; K = 1 is plain TD3 (Fujimoto et al. 2018, as CleanRL's td3_continuous_action.py). Differences from HyperZero's
released experts: docs/reference_code.md#td3-experts. Walk-through: docs/td3.md.

    python td3.py --task cheetah-vel --contexts 0.5 1.5 2.5 --total-timesteps 50000 --seed 1 --out-dir runs/vel/experts

Writes expert_<label>.pt per context (policy.expert_file), metrics.csv, checkpoint.pt (--resume: bit for bit),
snapshots_<label>.npy, TensorBoard events in out_dir/tb. A Slurm job array runs one command with --shard I/N.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import runio
from policy import evaluate_policy, expert_file, flatten_layers, init_layers, layer_sizes, load_start, mlp, tensors
from runio import UserError, descend
from tasks import context_label, make_env, parse_contexts


@dataclass
class Args:
    task: str = "cheetah-vel"
    """task family: cheetah-vel, cheetah-run, walker-walk, or metaworld (contexts = MetaWorld task names)"""
    contexts: tuple[str, ...] = ("1.5",)
    """one expert per context: plain numbers for the task's first variable, 'speed=2,length=0.4' for several, or MetaWorld task names ('reach-v3')"""
    shard: str = "0/1"
    """I/N: train only contexts I, I+N, ... of --contexts, each seeded by its place in the full list (Slurm arrays)"""
    total_timesteps: int = 200_000
    """environment steps per context"""
    learning_starts: int = 5_000
    """uniform-random actions (and no updates) before this step"""
    seed: int = 1
    """seed of torch, the environments and (MetaWorld) the fixed goal"""
    seeds: int = 1
    """train this many learners per context side by side (own networks, noise and environment seeds: seed j's are
    shifted by 500000 j; at most 500 contexts) and write the better one: best final evaluation (success, then return; --keep-best: best kept)"""
    out_dir: str = "runs/td3"
    """everything this run writes goes here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir"""
    init_from: str | None = None
    """an expert file of this --task and --hidden: every learner's actor and critics start as its networks, one shared
    start (Gen-HypRL's data: snapshots of neighbouring goals then stay neighbours in parameter space)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden sizes of actor and critics (CleanRL and HyperZero: 256 256)"""
    batch_size: int = 256
    """minibatch size per context"""
    learning_rate: float = 3e-4
    """Adam learning rate of actor and critics (CleanRL 3e-4; HyperZero's released code 1e-4)"""
    buffer_size: int = 1_000_000
    """replay capacity per context"""
    gamma: float = 0.99
    """discount"""
    tau: float = 0.005
    """Polyak factor of the target networks (CleanRL 0.005; HyperZero 0.01)"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise"""
    noise_clip: float = 0.5
    """clip of the target-policy smoothing noise"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise after learning_starts"""
    policy_frequency: int = 2
    """actor and target updates every this many critic updates (the policy delay)"""
    action_penalty: float = 0.0
    """weight of mean(u^2) of the actor's pre-tanh outputs u in its loss: keeps tanh out of saturation (0: TD3)"""
    sac: bool = False
    """SAC instead of TD3 (Haarnoja et al. 2018; Gen-HypRL's experts): a tanh-Gaussian actor, entropy bonus and tuned
    temperature; the noise flags and action_penalty are unused. Evaluations and files take the mean action"""
    layer_norm: bool = False
    """LayerNorm (no gain or bias) before every hidden ReLU of the critics: Q cannot run away early (Ball et al. 2023)"""
    eval_interval: int = 10_000
    """evaluate the deterministic policy every this many steps (0: only at the end)"""
    eval_episodes: int = 5
    """episodes per context per evaluation"""
    keep_best: bool = False
    """write the best evaluation's networks (success, then return), not the last: MetaWorld actors can fail at the end"""
    snapshot_interval: int = 0
    """save the flat actor parameters every this many steps, for Gen-HypRL (0: off)"""
    snapshot_start: int = 0
    """first step at which snapshots are taken"""
    checkpoint_interval: int = 20_000
    """write a resumable checkpoint at the first episode end after every this many steps (0: off)"""
    resume: bool = False
    """continue out_dir/checkpoint.pt bit for bit (the flags must match; --total-timesteps may grow)"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch (0: one per core, the fastest alone); give 1 to each of several runs sharing the cores"""
    log_interval: int = 2_000
    """print and log progress every this many steps"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb); TensorBoard always (out_dir/tb)"""
    wandb_project_name: str = "cleanhyper"
    """Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """Weights & Biases entity, a user or team (with --track; default: yours)"""
    compile: bool = False
    """torch.compile the critic and actor losses (the optimiser steps stay eager): the eager update up to rounding"""
    cudagraphs: bool = False
    """CUDA only: --compile with mode="reduce-overhead", which replays the compiled losses as CUDA graphs"""


# --- TD3 over K contexts ---------------------------------------------------------------------
class TD3:
    """K independent TD3 learners as one: actor, twin critics Q1 and Q2 on cat[s, a], their targets and Adam states.
    Networks are layer lists; the actor's W is [K, in, out], the critics' W [2, K, in, out] (Q1, Q2: see twin_q)."""

    def __init__(self, k, obs_dim, act_dim, hidden, lr, device, compile=False, cudagraphs=False, action_penalty=0.0,
                 layer_norm=False, sac=False):  # fmt: skip
        self.k, self.act_dim, self.action_penalty, self.layer_norm, self.sac = k, act_dim, action_penalty, layer_norm, sac
        actor = init_layers(k, layer_sizes(obs_dim, hidden, act_dim * (2 if sac else 1)), device)  # SAC: mean, log-std
        critic = init_layers(2 * k, layer_sizes(obs_dim + act_dim, hidden, 1), device)  # Q1 of every context, then Q2
        critic = [(W.unflatten(0, (2, k)), b.unflatten(0, (2, k))) for W, b in critic]  # [2K, ...] -> [twin, K, ...]
        self.actor, self.critic = ([(W.requires_grad_(), b.requires_grad_()) for W, b in net] for net in (actor, critic))
        self.actor_t, self.critic_t = ([(W.detach().clone(), b.detach().clone()) for W, b in net] for net in (actor, critic))
        self.actor_opt, self.critic_opt = (torch.optim.Adam(tensors(net), lr=lr) for net in (self.actor, self.critic))
        # --compile fuses each loss's small kernels; --cudagraphs also replays them as CUDA graphs (one launch each)
        mode = "reduce-overhead" if cudagraphs else None
        fuse = (lambda f: torch.compile(f, mode=mode)) if compile or cudagraphs else (lambda f: f)
        self.critic_loss_fn, self.actor_loss_fn = fuse(self.critic_loss), fuse(self.actor_loss)
        if sac:  # alpha = exp(log_alpha) per context, tuned towards entropy -act_dim (Haarnoja et al. 2018b, section 5)
            self.log_alpha = torch.zeros(k, 1, device=device, requires_grad=True)
            self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=lr)

    def policy(self, layers):
        """The deterministic policy pi(s) = tanh(mlp(policy(actor), s)): TD3's actor, or a SAC actor's mean head."""
        *hidden, (W, b) = layers
        return [*hidden, (W[..., : self.act_dim], b[..., : self.act_dim])]

    def sample(self, layers, obs, eps) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC: a = tanh(mean + std * eps) [K, B, A] and log pi(a|s) [K, B] (SAC appendix C), log-std in [-5, 2]."""
        mean, log_std = mlp(layers, obs, None).chunk(2, -1)
        log_std = -5 + 3.5 * (torch.tanh(log_std) + 1)
        a = torch.tanh(mean + log_std.exp() * eps)
        logp = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi) - torch.log(1 - a**2 + 1e-6)).sum(-1)
        return a, logp

    def twin_q(self, critic, obs, act) -> torch.Tensor:
        """q [2, K, B] = Q1(s, a), Q2(s, a) for obs [K, B, S], act [K, B, A]: one matmul per layer over 2K weight sets."""
        x = torch.cat([obs, act], -1).repeat(2, 1, 1)  # [2K, B, S + A]
        q = mlp([(W.flatten(0, 1), b.flatten(0, 1)) for W, b in critic], x, None, self.layer_norm)  # [2K, B, 1]
        return q.view(2, self.k, -1)

    def critic_loss(self, obs, act, rew, next_obs, done, noise, gamma: float, noise_clip: float) -> torch.Tensor:
        """MSE of Q1 and Q2 to the clipped double-Q target, mean over each context's batch, summed over contexts (TD3
        eq. 10, Fujimoto et al. 2018): each context's gradient is its own run's. noise: target smoothing [K, B, A]."""
        with torch.no_grad():  # target with policy smoothing; clipped double-Q
            if self.sac:  # SAC: a' ~ pi(s') of the online actor (noise: standard normal), and the entropy bonus
                next_act, next_logp = self.sample(self.actor, next_obs, noise)
            else:
                next_act = (mlp(self.actor_t, next_obs) + noise.clamp(-noise_clip, noise_clip)).clamp(-1, 1)
            q_next = torch.minimum(*self.twin_q(self.critic_t, next_obs, next_act))
            if self.sac:
                q_next = q_next - self.log_alpha.exp() * next_logp
            y = rew + gamma * (1 - done) * q_next  # done = terminated only: truncation bootstraps
        q = self.twin_q(self.critic, obs, act)  # [2, K, B]: Q1, Q2
        return ((q - y) ** 2).mean(-1).sum()

    def actor_loss(self, obs) -> torch.Tensor:
        """-Q1(s, pi(s)) (the deterministic policy gradient), mean over each batch, summed over contexts; with
        action_penalty, + that weight x mean(u^2) of the pre-tanh actions u."""
        if self.sac:  # SAC: E[alpha log pi(a|s) - min(Q1, Q2)(s, a)], a ~ pi(s) reparameterised
            act, logp = self.sample(self.actor, obs, torch.randn(*obs.shape[:2], self.act_dim, device=obs.device))
            q = torch.minimum(*self.twin_q(self.critic, obs, act))
            self.last_logp = logp.detach()  # for the temperature step
            return (self.log_alpha.exp().detach() * logp - q).mean(1).sum()
        u = mlp(self.actor, obs, None)  # [K, B, A] pre-tanh
        loss = -self.twin_q(self.critic, obs, torch.tanh(u))[0].mean(1).sum()
        return loss + self.action_penalty * (u**2).mean((1, 2)).sum() if self.action_penalty else loss

    def update(self, batch, update_actor: bool, *, gamma, tau, policy_noise, noise_clip, noise=None) -> dict:
        """One TD3 step for all K contexts (batch: obs [K,B,S], act [K,B,A], rew, next_obs, done): the critic step and,
        with update_actor, the actor step and the Polyak update of both targets. Returns the losses, mean over K."""
        if noise is None:  # target policy smoothing noise [K, B, A] (tests pass their own); SAC: its standard normal
            noise = torch.randn_like(batch[1]) * (1.0 if self.sac else policy_noise)
        losses = {"qf_loss": descend(self.critic_opt, self.critic_loss_fn(*batch, noise, gamma, noise_clip))}
        if update_actor:
            losses["actor_loss"] = descend(self.actor_opt, self.actor_loss_fn(batch[0]))
            if self.sac:  # the temperature: alpha rises while the entropy is below -act_dim and falls above it
                descend(self.alpha_opt, -(self.log_alpha * (self.last_logp - self.act_dim)).mean(1).sum())
            with torch.no_grad():
                online = [t.detach() for t in tensors(self.actor) + tensors(self.critic)]
                torch._foreach_lerp_(tensors(self.actor_t) + tensors(self.critic_t), online, tau)
        return {name: loss.item() / self.k for name, loss in losses.items()}

    def start_from(self, e: dict) -> None:
        """--init-from: every context's actor (SAC: its mean head), Q1, Q2 and their targets become expert e's."""
        with torch.no_grad():
            for t, saved in zip(tensors(self.policy(self.actor)), e["actor"], strict=True):  # [K, in, out] <- [in, out]
                t.copy_(saved.expand_as(t))
            for twin, key in enumerate(("critic1", "critic2")):
                for t, saved in zip(tensors(self.critic), e[key], strict=True):
                    t[twin].copy_(saved.expand_as(t[twin]))
            for t, online in zip(tensors(self.actor_t) + tensors(self.critic_t), tensors(self.actor) + tensors(self.critic)):
                t.copy_(online)

    def actor_of(self, i: int):
        """Context i's actor as layers with K = 1 (detached: for rollouts)."""
        return [(W[i : i + 1].detach(), b[i : i + 1].detach()) for W, b in self.policy(self.actor)]

    def expert_weights(self, i: int) -> dict:
        """Context i's actor, Q1 and Q2 as CPU copies [W0, b0, W1, b1, ...]: the expert file's tensors."""
        pick = lambda ts, *at: [t[at].detach().cpu().clone() for t in ts]
        actor, critic = tensors(self.policy(self.actor)), tensors(self.critic)
        return {"actor": pick(actor, i), "critic1": pick(critic, 0, i), "critic2": pick(critic, 1, i)}

    def networks(self) -> dict:
        return {"actor": self.actor, "critic": self.critic, "actor_t": self.actor_t, "critic_t": self.critic_t}

    def state(self) -> dict:
        nets = {name: [[W.detach().cpu(), b.detach().cpu()] for W, b in net] for name, net in self.networks().items()}
        opts = {"actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict()}
        sac = {"log_alpha": self.log_alpha.detach().cpu(), "alpha_opt": self.alpha_opt.state_dict()} if self.sac else {}
        return nets | opts | sac

    def load(self, s: dict) -> None:
        with torch.no_grad():
            for name, net in self.networks().items():
                for t, saved in zip(tensors(net), tensors(s[name]), strict=True):
                    t.copy_(saved)
            if self.sac:
                self.log_alpha.copy_(s["log_alpha"])
        for name in ("actor_opt", "critic_opt", "alpha_opt") if self.sac else ("actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(s[name])


class Replay:
    """Per-context ring buffers [K, capacity, dim] on the device; each context samples its own indices."""

    FIELDS = ("obs", "act", "rew", "next_obs", "done")

    def __init__(self, k, capacity, obs_dim, act_dim, device):
        self.k, self.capacity, self.size, self.pos = k, capacity, 0, 0
        z = lambda *d: torch.zeros(k, capacity, *d, device=device)
        self.obs, self.act, self.rew, self.next_obs, self.done = z(obs_dim), z(act_dim), z(), z(obs_dim), z()

    def add(self, obs, act, rew, next_obs, done):  # each [K, ...]
        for f, x in zip(self.FIELDS, (obs, act, rew, next_obs, done)):
            getattr(self, f)[:, self.pos] = torch.as_tensor(x, dtype=torch.float32, device=self.obs.device)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size):
        idx = torch.randint(0, self.size, (self.k, batch_size), device=self.obs.device)
        take = lambda buf: buf[torch.arange(self.k, device=idx.device)[:, None], idx]
        return tuple(take(getattr(self, f)) for f in self.FIELDS)

    def state(self) -> dict:  # only the filled part
        return {"size": self.size, "pos": self.pos} | {f: getattr(self, f)[:, : self.size].cpu() for f in self.FIELDS}

    def load(self, s: dict) -> None:
        self.size = s["size"]  # resumed with a larger --total-timesteps, the buffer is larger: write after the data
        self.pos = s["pos"] if self.size == self.capacity else self.size
        for f in self.FIELDS:
            getattr(self, f)[:, : self.size] = s[f].to(self.obs.device)


# --- The run: its state (what a checkpoint holds), resuming it, evaluation ----------------------
CHECKPOINT_FORMAT = "cleanhyper-td3-checkpoint-v2"
# Flags that may differ between a run and its resumption (a moved --out-dir resumes); every other flag must match.
RESUMABLE = {"total_timesteps", "resume", "overwrite", "out_dir", "device", "torch_threads", "log_interval", "eval_interval"}
RESUMABLE |= {"eval_episodes", "checkpoint_interval", "track", "wandb_project_name", "wandb_entity", "compile", "cudagraphs"}


@dataclass
class RunState:
    """What a run carries from step to step besides its environments (reset at every checkpoint) and torch's RNG."""

    agent: TD3
    replay: Replay
    step: int = 0  # environment steps per context
    episode: int = 0  # finished episodes per context: episode n resets with a seed derived from n
    last_ckpt: int = 0  # step of the last checkpoint
    rows: list = field(default_factory=list)  # metrics.csv, one row per context per episode
    last_eval: dict = field(default_factory=dict)  # label -> the latest evaluation and its step
    snapshots: list = field(default_factory=list)  # per context: flat actors [P] taken along training
    snapshot_steps: list = field(default_factory=list)
    best: list = field(default_factory=list)  # --keep-best, per context: {"score", "step", "eval", "actor", "critic1", "critic2"}
    AS_IS = ("step", "episode", "last_ckpt", "rows", "last_eval", "snapshot_steps", "best")  # checkpointed unchanged

    def __post_init__(self):
        self.snapshots = self.snapshots or [[] for _ in range(self.agent.k)]
        self.best = self.best or [None] * self.agent.k

    def take_snapshot(self) -> None:
        flat = flatten_layers(self.agent.policy(self.agent.actor)).detach().cpu()  # [K, P]
        for i, snaps in enumerate(self.snapshots):
            snaps.append(flat[i].clone())
        self.snapshot_steps.append(self.step)

    def save(self, path, args: dict) -> None:
        ck = {"format": CHECKPOINT_FORMAT, "args": args, "agent": self.agent.state(), "replay": self.replay.state()}
        ck |= {f: getattr(self, f) for f in self.AS_IS}
        ck["snapshots"] = [torch.stack(s) if s else torch.zeros(0) for s in self.snapshots]
        runio.atomic_save(ck | {"rng": torch.get_rng_state()}, path)

    def restore(self, ck: dict, path) -> None:
        """Continue from a checkpoint that read_checkpoint accepted."""
        try:
            self.agent.load(ck["agent"])
            self.replay.load(ck["replay"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot resume {path}: its networks or replay do not fit this run ({type(e).__name__})") from None
        for f in self.AS_IS:
            setattr(self, f, ck[f])
        self.snapshots = [list(s) for s in ck["snapshots"]]
        torch.set_rng_state(ck["rng"])


def read_checkpoint(path, args: dict) -> dict:
    """--resume: the same run's checkpoint, checked before any work (flags outside RESUMABLE must match)."""
    if not Path(path).is_file():
        raise UserError(f"--resume: no checkpoint at {path}; start without --resume (or check --out-dir)")
    ck = runio.safe_load(path)
    if not isinstance(ck, dict) or "format" not in ck:
        raise UserError(f"cannot resume {path}: not a checkpoint written by td3.py")
    if ck["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"cannot resume {path}: its format is {ck['format']!r}, this td3.py reads {CHECKPOINT_FORMAT!r}")
    missing = sorted({"args", "agent", "replay", "snapshots", "rng", *RunState.AS_IS} - set(ck))
    if missing or not isinstance(ck["args"], dict) or not isinstance(ck["step"], int):
        raise UserError(f"cannot resume {path}: an incomplete checkpoint (missing or malformed: {', '.join(missing) or 'step'})")
    old = asdict(Args()) | ck["args"]  # a flag newer than the checkpoint had its default then; a removed one is ignored
    diff = {f for f, v in old.items() if f in args and f not in RESUMABLE and not same_flag(f, v, args[f], args["task"])}
    if diff:
        raise UserError(f"cannot resume {path}: flags differ from the checkpointed run: {', '.join(sorted(diff))}")
    if (step := ck["step"]) > args["total_timesteps"]:
        raise UserError(f"cannot resume {path}: it is at step {step}, past --total-timesteps {args['total_timesteps']}; "
                        f"give --total-timesteps >= {step}")  # fmt: skip
    return ck


def same_flag(name: str, old, new, task: str) -> bool:
    """A flag of the checkpoint and of its resumption agree: contexts as parsed ('0.30' is '0.3'), others as JSON."""
    if name == "contexts" and old != new:
        try:
            return [context_label(c) for c in parse_contexts(task, old)] == [context_label(c) for c in parse_contexts(task, new)]
        except (UserError, TypeError):
            return False
    return json.dumps(old) == json.dumps(new)


def evaluate(run: RunState, args: Args, contexts: list[dict], labels: list[str], tracker: runio.Tracker) -> None:
    """Every context's deterministic actor on episodes seeded seed + 100000 + e: run.last_eval, run.best, logged."""
    for i, (ctx, lab) in enumerate(zip(contexts, labels)):
        r = evaluate_policy(args.task, ctx, run.agent.actor_of(i), args.eval_episodes, args.seed + 100_000)
        run.last_eval[lab] = {"step": run.step, **r}
        score = [r["success_rate"] or 0.0, r["return_mean"]]
        if args.keep_best and (run.best[i] is None or score > run.best[i]["score"]):  # ties keep the earlier actor
            run.best[i] = {"score": score, "step": run.step, "eval": r, **run.agent.expert_weights(i)}
        tracker.log(run.step, **{f"charts/eval_return/{lab}": r["return_mean"], f"charts/eval_success/{lab}": r["success_rate"]})
    success = [e["success_rate"] for e in run.last_eval.values() if e["success_rate"] is not None]
    tracker.log(run.step, **{"charts/eval_return": np.mean([e["return_mean"] for e in run.last_eval.values()])})
    tracker.log(run.step, **{"charts/eval_success": np.mean(success) if success else None})


OUTPUTS = ("expert_*.pt", "checkpoint.pt", "metrics.csv", "snapshots_*.npy", "snapshot_steps.npy", "args.json", "tb")
POSITIVE = ("seeds", "total_timesteps", "batch_size", "learning_rate", "buffer_size", "policy_frequency", "eval_episodes")
POSITIVE += ("log_interval",)
NONNEGATIVE = ("seed", "learning_starts", "policy_noise", "noise_clip", "exploration_noise", "eval_interval", "action_penalty")
NONNEGATIVE += ("snapshot_interval", "snapshot_start", "checkpoint_interval", "torch_threads")


def checked_contexts(args: Args) -> tuple[list[int], list[dict], list[str]]:
    """Every flag, before any work. Returns this shard's contexts: their places in --contexts, the contexts, labels."""
    runio.check_flags(args, positive=(*POSITIVE, "hidden"), nonnegative=NONNEGATIVE, fraction=("gamma", "tau"))
    if not args.batch_size <= args.learning_starts < (args.total_timesteps if not args.resume else math.inf):  # updates
        ls, bs, tt = args.learning_starts, args.batch_size, args.total_timesteps
        raise UserError(f"--learning-starts {ls} must be >= --batch-size {bs} and < --total-timesteps {tt}")
    contexts = parse_contexts(args.task, args.contexts, args.seed)  # refuses duplicates
    if not contexts:
        raise UserError("no contexts given (--contexts)")
    if args.seeds > 1 and len(contexts) > 500:  # learner j of context i is seeded by place i + 500 j: no overlap
        raise UserError(f"--seeds {args.seeds} with {len(contexts)} contexts: at most 500 contexts with --seeds > 1")
    ids = runio.shard(args.shard, len(contexts))
    return ids, [contexts[i] for i in ids], [context_label(contexts[i]) for i in ids]


def diverged(run: RunState, losses: dict) -> str:
    """The message of a non-finite loss: bad data from the environment, or the update diverging."""
    bad = ", ".join(f"{name} {v}" for name, v in losses.items() if not math.isfinite(v))
    data = [f for f in ("obs", "rew", "next_obs") if not getattr(run.replay, f)[:, : run.replay.size].isfinite().all()]
    if data:
        return f"bad data at step {run.step}: the environment returned non-finite {', '.join(data)} (so {bad})"
    return f"non-finite {bad} at step {run.step}: the TD3 update diverged; lower --learning-rate or check the task's rewards"


def progress(run: RunState, labels: list[str], losses: dict, sps: float) -> dict:
    """Progress under CleanRL's names: last episodic returns (mean, each), losses, SPS over all K contexts."""
    last = {r["context"]: r["episodic_return"] for r in run.rows[-len(labels) :]}
    out = {"charts/episodic_return": np.mean(list(last.values())) if last else None, "charts/SPS": sps * len(labels)}
    out |= {f"charts/episodic_return/{lab}": ret for lab, ret in last.items()}
    return out | {"losses/qf_loss": losses.get("qf_loss"), "losses/actor_loss": losses.get("actor_loss")}


def main(args: Args) -> dict:
    ids, contexts, labels = checked_contexts(args)  # every flag, before any work
    n = len(contexts)  # --seeds: learner m trains context m % n, its seed m // n; seed 0's environments are unchanged
    places, members = [i + 500 * j for j in range(args.seeds) for i in ids], contexts * args.seeds
    tags = labels if args.seeds == 1 else [f"{lab}.seed{m // n}" for m, lab in enumerate(labels * args.seeds)]
    device = runio.resolve_device(args.device)
    if args.cudagraphs and device.type != "cuda":
        raise UserError(f"--cudagraphs needs a CUDA device; --device {args.device} gives {device}")
    ck = read_checkpoint(Path(args.out_dir) / "checkpoint.pt", asdict(args)) if args.resume else None
    start = load_start(args.init_from, args.task, args.hidden, args.layer_norm) if args.init_from else None
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, resume=args.resume, overwrite=args.overwrite)
    tracker = runio.Tracker(out, args, args.track, args.wandb_project_name, args.wandb_entity)
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    k = len(members)
    hyper = {"gamma": args.gamma, "tau": args.tau, "policy_noise": args.policy_noise, "noise_clip": args.noise_clip}

    # TRY NOT TO MODIFY: one env per learner; episode e of context i (its place in the full --contexts list) resets
    # with a seed derived from both, so a resumed run or a shard replays the same initial states.
    envs = [make_env(args.task, c, args.seed + 1000 * i) for i, c in zip(places, members)]
    reset_all = lambda e: np.stack([env.reset(seed=args.seed + 1000 * i + 7919 * e)[0] for i, env in zip(places, envs)])
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    agent = TD3(k, obs_dim, act_dim, args.hidden, args.learning_rate, device, args.compile, args.cudagraphs,
                args.action_penalty, args.layer_norm, args.sac)  # fmt: skip
    run = RunState(agent, Replay(k, min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device))
    if start is not None:
        agent.start_from(start)
    if ck is not None:
        run.restore(ck, out / "checkpoint.pt")
        print(f"resumed from {out / 'checkpoint.pt'} at step {run.step}")

    obs, ep_ret, losses = reset_all(run.episode), np.zeros(k), {}
    t0, s0 = time.time(), run.step
    while run.step < args.total_timesteps:
        # ALGO LOGIC: act (uniform random before learning_starts, then pi(s) + N(0, sigma); SAC: a ~ pi(s))
        if run.step < args.learning_starts:
            act = torch.rand(k, act_dim) * 2 - 1
        else:
            with torch.no_grad():
                o = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(1)  # [K, 1, S]
                if args.sac:
                    act = agent.sample(agent.actor, o, torch.randn(k, 1, act_dim).to(device))[0].squeeze(1).cpu()
                else:
                    act = mlp(agent.actor, o).squeeze(1).cpu()
                    act = (act + torch.randn(k, act_dim) * args.exploration_noise).clamp(-1, 1)
        act = act.numpy()
        next_obs, rew, term, trunc = map(np.array, list(zip(*[env.step(a) for env, a in zip(envs, act)]))[:4])
        run.replay.add(obs, act, rew, next_obs, term)  # next_obs is the real one: we reset by hand below
        ep_ret, obs = ep_ret + rew, next_obs
        run.step += 1

        if run.step > args.learning_starts:  # ALGO LOGIC: one update per step, the actor's delayed (policy_frequency)
            new = agent.update(run.replay.sample(args.batch_size), run.step % args.policy_frequency == 0, **hyper)
            losses.update(new)  # actor_loss keeps its last value between delayed actor updates
            if not all(math.isfinite(v) for v in new.values()):
                raise UserError(diverged(run, new))
        if args.snapshot_interval and run.step >= args.snapshot_start and run.step % args.snapshot_interval == 0:
            run.take_snapshot()
        if args.eval_interval and run.step % args.eval_interval == 0:  # before the checkpoint below, so resume sees it
            evaluate(run, args, members, tags, tracker)

        if term.any() or trunc.any():  # every task here ends all K episodes at the same step
            sps = round((run.step - s0) / (time.time() - t0), 1)
            for lab, ret in zip(tags, ep_ret):
                ev = run.last_eval.get(lab, {})
                row = {"step": run.step, "context": lab, "episodic_return": round(float(ret), 4)}
                row |= {"eval_return": ev.get("return_mean"), "eval_success": ev.get("success_rate")}
                run.rows.append(row | {"qf_loss": losses.get("qf_loss"), "actor_loss": losses.get("actor_loss"), "sps": sps})
            run.episode += 1
            obs, ep_ret = reset_all(run.episode), np.zeros(k)
            # TRY NOT TO MODIFY: checkpoint at the first episode end past each interval (and at the end),
            # when every env has just been reset, so resuming needs no environment state.
            every = args.checkpoint_interval
            if every and (run.step // every > run.last_ckpt // every or run.step >= args.total_timesteps):
                run.last_ckpt = run.step
                run.save(out / "checkpoint.pt", asdict(args))
                runio.write_csv(out / "metrics.csv", run.rows)

        if run.step % args.log_interval == 0:
            sps = (run.step - s0) / (time.time() - t0)  # since start (or resume); x K for expert-steps/s
            rets = " ".join(f"{r['context']}:{r['episodic_return']:.1f}" for r in run.rows[-k:]) or "-"
            qf = losses.get("qf_loss", float("nan"))
            print(f"step {run.step:>8}  SPS {sps * k:7.0f} (x{k} contexts)  last return {rets}  qf_loss {qf:.3g}", flush=True)
            tracker.log(run.step, **progress(run, tags, losses, sps))

    # Final evaluation (unless the loop's last step had one) and the files: per context its better seed (--seeds)
    if any(run.last_eval.get(lab, {}).get("step") != run.step for lab in tags):
        evaluate(run, args, members, tags, tracker)
    final, paths = [run.last_eval[lab] for lab in tags], [out / f"expert_{lab}.pt" for lab in labels]
    score = lambda m: run.best[m]["score"] if args.keep_best else [final[m]["success_rate"] or 0.0, final[m]["return_mean"]]
    tracker.close()
    print(f"\nfinal evaluation (deterministic, {args.eval_episodes} episodes):")
    for i, (ctx, lab) in enumerate(zip(contexts, labels)):
        m = max(range(i, k, n), key=score)  # ties keep the lower seed
        kept = run.best[m] if args.keep_best else {"step": run.step, "eval": final[m], **agent.expert_weights(m)}
        runio.atomic_save(expert_file(args, ctx, lab, kept, run.step, obs_dim, act_dim) | {"seed_kept": m // n}, paths[i])
        if run.snapshots[m]:
            runio.atomic_save(torch.stack(run.snapshots[m]).numpy().astype(np.float32), out / f"snapshots_{lab}.npy")
        for j in range(i, k, n):
            r = final[j]
            sr = f"  success {r['success_rate']:.2f}" if r["success_rate"] is not None else ""
            note = f"  (kept step {run.best[j]['step']}: {run.best[j]['score']})" if args.keep_best else ""
            note += "  <- written" * (args.seeds > 1 and j == m)
            print(f"  {tags[j]:>24}: return {r['return_mean']:9.2f} +- {r['return_std']:.2f}{sr}{note}")
    if run.snapshot_steps:
        runio.atomic_save(np.asarray(run.snapshot_steps, dtype=np.int64), out / "snapshot_steps.npy")
    runio.write_csv(out / "metrics.csv", run.rows)
    runio.atomic_save(json.dumps(asdict(args), indent=2), out / "args.json")
    runio.finish_out_dir(out)
    wall = time.time() - t0
    print(f"wrote {len(paths)} experts, metrics.csv, args.json{', snapshots' * bool(run.snapshot_steps)} to {out} ({wall:.0f} s)")
    return {"out_dir": str(out), "experts": [str(p) for p in paths], "eval": dict(zip(tags, final)), "wall_s": wall}


if __name__ == "__main__":
    runio.cli(main, Args)
