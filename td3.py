"""td3.py — the policy form, and TD3 that trains K experts (one per context) at once.

One process trains one independent TD3 expert per context: K environments step together and the actor, the twin
critics Q1 and Q2, their targets and Adam states are tensors batched over K (weights [K, in, out]). Each context's
loss is averaged over its own batch and the K losses are summed, so every context gets exactly the gradient (and,
Adam being elementwise, the update) of a separate run; K = 1 is plain TD3 (Fujimoto et al. 2018, as in CleanRL's
td3_continuous_action.py). Where we differ from HyperZero's released experts: docs/reference_code.md#td3-experts.

    python td3.py --task cheetah-vel --contexts 0.5 1.5 2.5 --total-timesteps 50000 \
        --learning-starts 5000 --seed 1 --out-dir runs/vel/experts

Past one machine, every task of a job array runs the same command with `--shard I/N` (contexts I, I+N, ... into its
own --out-dir), and later stages take the shards' directories together (`load_experts`). Progress goes to stdout,
metrics.csv and TensorBoard event files in out_dir/tb (`tensorboard --logdir runs`; Weights & Biases with --track).

Later stages import from here: the policy form (`layer_sizes`, `init_layers`, `mlp`, `flatten_layers`,
`unflatten_layers`), the one episode loop (`rollout`, `evaluate_policy`) and the file helpers (`atomic_save`,
`safe_load`, `load_experts`, `expert_layers`, `Tracker`, `resolve_device`). The tasks, `UserError`, `cli` and the
shared checks of flags and --out-dir live in tasks.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tasks import UserError, check_flags, cli, context_label, context_vector, make_env, parse_contexts, prepare_out_dir


@dataclass
class Args:
    task: str = "cheetah-vel"
    """task family: cheetah-vel, cheetah-run, walker-walk, or metaworld (contexts = MetaWorld task names)"""
    contexts: tuple[str, ...] = ("1.5",)
    """one expert per context: plain numbers for the task's first variable, 'speed=2,length=0.4' for several, or MetaWorld task names ('reach-v3')"""
    shard: str = "0/1"
    """I/N: train only contexts I, I+N, I+2N, ... of --contexts (0 <= I < N), so that every task of a Slurm job array
    runs one command line (slurm/experts.sbatch). Environment seeds follow each context's place in the full list;
    the initial weights and the replay samples are drawn for this shard's contexts only"""
    total_timesteps: int = 200_000
    """environment steps per context"""
    learning_starts: int = 5_000
    """uniform-random actions (and no updates) before this step"""
    seed: int = 1
    """seed of torch, the environments and (MetaWorld) the fixed goal"""
    out_dir: str = "runs/td3"
    """everything this run writes goes here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir (they are removed before this run starts)"""
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
    updates_per_step: int = 1
    """gradient updates per environment step once learning starts (the update-to-data ratio; 1: TD3)"""
    action_penalty: float = 0.0
    """weight of mean(u^2) of the actor's pre-tanh outputs u, added to its loss: keeps tanh out of saturation, where its
    gradient vanishes (0: TD3)"""
    sac: bool = False
    """SAC's entropy-regularised actor instead of TD3's deterministic one (Haarnoja et al. 2018; the Gen-HypRL experts are
    SAC): a tanh-Gaussian policy (the actor's last layer gives mean and log-std), exploration by sampling it, the
    entropy bonus in the critic target and actor loss, and a temperature per context tuned to entropy -act_dim.
    exploration_noise, policy_noise, noise_clip and action_penalty are unused; the actor is updated every
    policy_frequency updates (1: every update, as the SAC paper). Evaluation, snapshots and the expert files take the
    mean action tanh(mean)"""
    layer_norm: bool = False
    """LayerNorm (no gain or bias) on every hidden layer of the critics, before the ReLU: bounds the features Q is
    read from, which keeps its values and its action-gradient from running away early in training (Ball et al. 2023,
    RLPD; Nauman et al. 2024). Off: TD3"""
    shared_init: bool = False
    """start every context from the same initial actor and critics (as K separate runs with one seed would), which
    keeps the experts nearer each other in parameter space for the generators of hyplatent.py"""
    eval_interval: int = 10_000
    """evaluate the deterministic policy every this many steps (0: only at the end)"""
    eval_episodes: int = 5
    """episodes per context per evaluation"""
    keep_best: bool = False
    """the expert file holds the actor and critics of the best evaluation (success rate first, then return) instead
    of the last ones: MetaWorld actors can succeed mid-run and fail at the end. Its eval_* are then best-of-N on the
    same seeds, hence optimistic; evaluate.py re-scores experts on fresh seeds"""
    snapshot_interval: int = 0
    """save the flat actor parameters every this many steps, for Gen-HypRL (0: off)"""
    snapshot_start: int = 0
    """first step at which snapshots are taken"""
    checkpoint_interval: int = 20_000
    """write a resumable checkpoint at the first episode end after every this many steps (0: off)"""
    resume: bool = False
    """continue from out_dir/checkpoint.pt: the same run (its flags must match; --total-timesteps may grow, the
    directory may have moved), with the same bits as if it had never stopped"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch; 0: torch's default, one per core, the fastest for one run alone (2-core CPU, 8000 steps
    at K=1 hidden 256: 65 s on 1 thread, 48 s on 2; 4000 steps at K=8 hidden 64: 36 s and 26 s). Give 1 to each of
    several runs sharing the cores"""
    log_interval: int = 2_000
    """print progress, and log it to TensorBoard, every this many steps"""
    track: bool = False
    """log to Weights & Biases too (pip install wandb); TensorBoard event files are always written to out_dir/tb"""
    wandb_project_name: str = "cleanhyper"
    """Weights & Biases project (with --track)"""
    wandb_entity: str | None = None
    """Weights & Biases entity, a user or team (with --track; default: yours)"""
    compile: bool = False
    """torch.compile the losses of the TD3 update (critic and actor; the optimiser steps stay eager): equal to the
    eager update up to float rounding. The first updates wait for the compiler (tens of seconds on a CPU)"""
    cudagraphs: bool = False
    """CUDA only: replay each TD3 update as a captured CUDA graph (with or without --compile), which removes the
    launch cost of many small kernels. Not yet run on a GPU in this repository's tests"""


# ---------------------------------------------------------------------------------------------
# The one policy form: layers (W [K, in, out], b [K, 1, out]) batched over K contexts
# ---------------------------------------------------------------------------------------------
def layer_sizes(obs_dim: int, hidden, out_dim: int) -> list[int]:
    return [obs_dim, *hidden, out_dim]


def init_layers(k: int, sizes: list[int], device="cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K independent nn.Linear-style inits: W, b ~ U(-1/sqrt(in), 1/sqrt(in))."""
    layers = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(i)
        W = (torch.rand(k, i, o, device=device) * 2 - 1) * bound
        b = (torch.rand(k, 1, o, device=device) * 2 - 1) * bound
        layers.append((W, b))
    return layers


def mlp(layers, x: torch.Tensor, out_act=torch.tanh, norm: bool = False) -> torch.Tensor:
    """x [K, N, in] -> [K, N, out]: relu on hidden layers (with norm: each hidden layer's outputs normalised to mean 0
    and variance 1 over its units first, LayerNorm without gain or bias), out_act (tanh for actors) at the end."""
    for i, (W, b) in enumerate(layers):
        x = torch.baddbmm(b, x, W)
        if i < len(layers) - 1:
            x = torch.relu(torch.nn.functional.layer_norm(x, x.shape[-1:]) if norm else x)
    return out_act(x) if out_act is not None else x


def flatten_layers(layers) -> torch.Tensor:
    """layers -> [K, P]. Order: for each layer, W row-major ([in, out], W[i, o] at i*out + o), then b."""
    k = layers[0][0].shape[0]
    return torch.cat([t.reshape(k, -1) for W, b in layers for t in (W, b)], dim=1)


def unflatten_layers(flat: torch.Tensor, sizes: list[int]):
    """[K, P] -> layers; the inverse of flatten_layers for the given sizes."""
    k, p = flat.shape
    need = n_params(sizes)
    if p != need:
        raise UserError(f"parameter vector has {p} entries; sizes {sizes} need {need}")
    layers, at = [], 0
    for i, o in zip(sizes[:-1], sizes[1:]):
        W = flat[:, at : at + i * o].reshape(k, i, o)
        at += i * o
        b = flat[:, at : at + o].reshape(k, 1, o)
        at += o
        layers.append((W, b))
    return layers


def n_params(sizes: list[int]) -> int:
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def tensors(layers) -> list[torch.Tensor]:
    """[(W0, b0), (W1, b1), ...] -> [W0, b0, W1, b1, ...], as optimisers and foreach ops take them."""
    return [t for layer in layers for t in layer]


# ---------------------------------------------------------------------------------------------
# TD3 over K contexts
# ---------------------------------------------------------------------------------------------
class TD3:
    """K independent TD3 learners as one: the actor, the twin critics Q1 and Q2 (on cat[s, a]), their targets and Adam
    states. Each network is a list of layers (W, b); the actor's W is [K, in, out], the critic's carries the twin first,
    W [2, K, in, out] (W[0] is Q1's, W[1] Q2's), so that both twins run as one batched matmul (twin_q)."""

    def __init__(self, k, obs_dim, act_dim, hidden, lr, device, shared=False, compile=False, cudagraphs=False, **loss_opts):
        self.k, self.act_dim = k, act_dim  # loss_opts: action_penalty (0: off), layer_norm and sac (False: off), as Args
        self.action_penalty, self.layer_norm = loss_opts.pop("action_penalty", 0.0), loss_opts.pop("layer_norm", False)
        self.sac = loss_opts.pop("sac", False)
        assert not loss_opts, f"unknown TD3 options {sorted(loss_opts)}"
        n = 1 if shared else k  # shared: one draw, repeated over the contexts (Q1 and Q2 still differ)
        actor = init_layers(n, layer_sizes(obs_dim, hidden, act_dim * (2 if self.sac else 1)), device)  # SAC: mean, log-std
        critic = init_layers(2 * n, layer_sizes(obs_dim + act_dim, hidden, 1), device)  # Q1 of every context, then Q2
        critic = [(W.unflatten(0, (2, n)), b.unflatten(0, (2, n))) for W, b in critic]  # [2n, ...] -> [twin, n, ...]
        if shared:
            actor = [(W.repeat(k, 1, 1), b.repeat(k, 1, 1)) for W, b in actor]
            critic = [(W.repeat(1, k, 1, 1), b.repeat(1, k, 1, 1)) for W, b in critic]
        self.actor = [(W.requires_grad_(), b.requires_grad_()) for W, b in actor]
        self.critic = [(W.requires_grad_(), b.requires_grad_()) for W, b in critic]
        self.actor_t = [(W.detach().clone(), b.detach().clone()) for W, b in actor]
        self.critic_t = [(W.detach().clone(), b.detach().clone()) for W, b in critic]
        # capturable: Adam keeps its step count on the device, as a CUDA graph needs
        self.actor_opt = torch.optim.Adam(tensors(self.actor), lr=lr, capturable=cudagraphs)
        self.critic_opt = torch.optim.Adam(tensors(self.critic), lr=lr, capturable=cudagraphs)
        self.critic_loss_fn = torch.compile(self.critic_loss) if compile else self.critic_loss
        self.actor_loss_fn = torch.compile(self.actor_loss) if compile else self.actor_loss
        self.step = CudaGraphed(self.train_step) if cudagraphs else self.train_step
        if self.sac:  # the temperature alpha = exp(log_alpha), one per context, tuned towards entropy -act_dim
            # (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications", section 5)
            self.log_alpha = torch.zeros(k, 1, device=device, requires_grad=True)
            self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=lr, capturable=cudagraphs)

    def policy(self, layers):
        """The deterministic policy's layers: the mean head of a SAC actor (its last layer's first act_dim outputs; the
        log-std head is dropped), TD3's actor as it is. pi(s) = tanh(mlp(policy(actor), s))."""
        *hidden, (W, b) = layers
        return [*hidden, (W[..., : self.act_dim], b[..., : self.act_dim])]

    def sample(self, layers, obs, eps) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC's tanh-Gaussian policy: a = tanh(mean + std * eps) [K, B, A] and log pi(a|s) [K, B] (change of variables
        through tanh, SAC appendix C). The log-std is squashed into [-5, 2] (as CleanRL's sac_continuous_action.py)."""
        mean, log_std = mlp(layers, obs, None).chunk(2, -1)
        log_std = -5 + 3.5 * (torch.tanh(log_std) + 1)
        a = torch.tanh(mean + log_std.exp() * eps)
        logp = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi) - torch.log(1 - a**2 + 1e-6)).sum(-1)
        return a, logp

    def twin_q(self, critic, obs, act) -> torch.Tensor:
        """Q1(s, a) and Q2(s, a) as q [2, K, B] (q[0] is Q1), for obs [K, B, S] and act [K, B, A]: both twins in one
        batched matmul per layer, their weights viewed as 2K sets (no copy)."""
        x = torch.cat([obs, act], -1).repeat(2, 1, 1)  # [2K, B, S + A]
        q = mlp([(W.flatten(0, 1), b.flatten(0, 1)) for W, b in critic], x, None, self.layer_norm)  # [2K, B, 1]
        return q.view(2, self.k, -1)

    def critic_loss(self, obs, act, rew, next_obs, done, noise, gamma: float, noise_clip: float) -> torch.Tensor:
        """The MSE of Q1 and of Q2 against the clipped double-Q target, per context (mean over its batch), summed over
        the contexts: each context's gradient is its own run's. noise: the target policy smoothing noise [K, B, A]."""
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
        """-Q1(s, pi(s)), mean over each context's batch, summed over the contexts: the actor ascends Q1. With
        action_penalty, + that weight x mean(u^2) of the pre-tanh actions u = pi's last layer before tanh."""
        if self.sac:  # SAC: E[alpha log pi(a|s) - min(Q1, Q2)(s, a)], a ~ pi(s) reparameterised
            act, logp = self.sample(self.actor, obs, torch.randn(*obs.shape[:2], self.act_dim, device=obs.device))
            q = torch.minimum(*self.twin_q(self.critic, obs, act))
            self.last_logp = logp.detach()  # for the temperature step
            return (self.log_alpha.exp().detach() * logp - q).mean(1).sum()
        u = mlp(self.actor, obs, None)  # [K, B, A] pre-tanh
        loss = -self.twin_q(self.critic, obs, torch.tanh(u))[0].mean(1).sum()
        return loss + self.action_penalty * (u**2).mean((1, 2)).sum() if self.action_penalty else loss

    def train_step(self, batch, noise, update_actor: bool, gamma: float, tau: float, noise_clip: float) -> dict:
        """The critic step and, with update_actor, the actor step and the Polyak update of both targets. Returns the
        losses as tensors (summed over contexts): no host sync in here, so that a CUDA graph can capture it."""
        critic_loss = self.critic_loss_fn(*batch, noise, gamma, noise_clip)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        out = {"qf_loss": critic_loss.detach()}
        if update_actor:
            actor_loss = self.actor_loss_fn(batch[0])
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            if self.sac:  # the temperature: alpha rises while the entropy is below -act_dim and falls above it
                alpha_loss = -(self.log_alpha * (self.last_logp - self.act_dim)).mean(1).sum()
                self.alpha_opt.zero_grad()
                alpha_loss.backward()
                self.alpha_opt.step()
            with torch.no_grad():
                online = [t.detach() for t in tensors(self.actor) + tensors(self.critic)]
                torch._foreach_lerp_(tensors(self.actor_t) + tensors(self.critic_t), online, tau)
            out["actor_loss"] = actor_loss.detach()
        return out

    def update(self, batch, update_actor: bool, *, gamma, tau, policy_noise, noise_clip, noise=None) -> dict:
        """One TD3 step for all K contexts. batch: obs [K,B,S], act [K,B,A], rew [K,B], next_obs, done [K,B]. Returns
        qf_loss and (with update_actor) actor_loss, each the mean over contexts, as floats."""
        if noise is None:  # target policy smoothing noise [K, B, A] (tests pass their own); SAC: its standard normal
            noise = torch.randn_like(batch[1]) * (1.0 if self.sac else policy_noise)
        out = self.step(batch, noise, update_actor, gamma, tau, noise_clip)
        return {name: loss.item() / self.k for name, loss in out.items()}

    def actor_of(self, i: int):
        """Context i's actor as layers with K = 1 (detached: for rollouts)."""
        return [(W[i : i + 1].detach(), b[i : i + 1].detach()) for W, b in self.policy(self.actor)]

    def expert_weights(self, i: int) -> dict:
        """Context i's actor, Q1 and Q2 as CPU copies [W0, b0, W1, b1, ...]: the expert file's tensors."""
        copy = lambda ts: [t.detach().cpu().clone() for t in ts]  # noqa: E731
        critic = tensors(self.critic)
        return {
            "actor": copy(t[i] for t in tensors(self.policy(self.actor))),
            "critic1": copy(t[0, i] for t in critic),
            "critic2": copy(t[1, i] for t in critic),
        }

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
                for (W, b), (W_saved, b_saved) in zip(net, s[name]):
                    W.copy_(W_saved)
                    b.copy_(b_saved)
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        if self.sac:
            with torch.no_grad():
                self.log_alpha.copy_(s["log_alpha"])
            self.alpha_opt.load_state_dict(s["alpha_opt"])


class CudaGraphed:
    """TD3.train_step captured as CUDA graphs, one without and one with the actor step, each replayed on static copies
    of batch and noise: one launch per update instead of one per small kernel. LeanRL's approach
    (pytorch-labs/LeanRL: leanrl/td3_continuous_action_torchcompile.py, through tensordict's CudaGraphModule), written
    out with torch.cuda.graph. Each variant first runs `warmup` times eagerly on a side stream (real updates; Adam
    creates its state there), as capture requires. Not yet run on a GPU in this repository's tests."""

    def __init__(self, fn, warmup: int = 3):
        self.fn, self.warmup = fn, warmup
        self.calls, self.graphs, self.static = {}, {}, None

    def __call__(self, batch, noise, update_actor: bool, *hyper) -> dict:
        inputs = (*batch, noise)
        if self.calls.get(update_actor, 0) < self.warmup:
            self.calls[update_actor] = self.calls.get(update_actor, 0) + 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn(batch, noise, update_actor, *hyper)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.static is None:
            self.static = [t.clone() for t in inputs]
        if update_actor not in self.graphs:  # capture records the kernels without running them; replay runs them
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.fn(tuple(self.static[:-1]), self.static[-1], update_actor, *hyper)
            self.graphs[update_actor] = (graph, out)
        for static, x in zip(self.static, inputs):
            static.copy_(x)
        graph, out = self.graphs[update_actor]
        graph.replay()
        return out  # static tensors: read them before the next call


class Replay:
    """Per-context ring buffers [K, capacity, dim] on the device; each context samples its own indices."""

    def __init__(self, k, capacity, obs_dim, act_dim, device):
        self.k, self.capacity, self.size, self.pos = k, capacity, 0, 0
        z = lambda *d: torch.zeros(k, capacity, *d, device=device)  # noqa: E731
        self.obs, self.act, self.rew, self.next_obs, self.done = z(obs_dim), z(act_dim), z(), z(obs_dim), z()

    def add(self, obs, act, rew, next_obs, done):  # each [K, ...]
        for buf, x in zip((self.obs, self.act, self.rew, self.next_obs, self.done), (obs, act, rew, next_obs, done)):
            buf[:, self.pos] = torch.as_tensor(x, dtype=torch.float32, device=buf.device)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size):
        idx = torch.randint(0, self.size, (self.k, batch_size), device=self.obs.device)
        take = lambda buf: buf[torch.arange(self.k, device=idx.device)[:, None], idx]  # noqa: E731
        return tuple(take(b) for b in (self.obs, self.act, self.rew, self.next_obs, self.done))

    def state(self) -> dict:
        n = self.size  # save only the filled part
        return {
            "size": n,
            "pos": self.pos,
            **{f: getattr(self, f)[:, :n].cpu() for f in ("obs", "act", "rew", "next_obs", "done")},
        }

    def load(self, s: dict) -> None:
        # a run resumed with a larger --total-timesteps has a larger buffer: keep writing after the saved data
        self.size = s["size"]
        self.pos = s["pos"] if self.size == self.capacity else self.size
        for f in ("obs", "act", "rew", "next_obs", "done"):
            getattr(self, f)[:, : self.size] = s[f].to(self.obs.device)


# ---------------------------------------------------------------------------------------------
# Episodes: the one loop every stage rolls a policy out with
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def rollout(env, layers, reset_seed: int, device=None, render: bool = False) -> dict:
    """One deterministic episode of a policy (layers with K = 1; None: uniform-random actions seeded by reset_seed).
    Returns states [T+1, S] (s_0..s_T), actions [T, A], rewards [T], terminated [T], the return, success_step (index
    m of the first state reached by a step with info['success'], -1 if none) and, with render, the frames."""
    obs, _ = env.reset(seed=reset_seed)
    env.action_space.seed(reset_seed)
    states, actions, rewards, terms, frames = [obs], [], [], [], []
    ret, success_step, done = 0.0, -1, False
    while not done:
        if render:
            frames.append(env.render())
        if layers is None:
            a = env.action_space.sample()
        else:
            x = torch.as_tensor(obs, dtype=torch.float32, device=layers[0][0].device).view(1, 1, -1)
            a = mlp(layers, x)[0, 0].cpu().numpy()
        obs, r, terminated, truncated, info = env.step(a)
        states.append(obs)
        actions.append(a)
        rewards.append(r)
        terms.append(terminated)
        if success_step < 0 and info.get("success", 0.0):
            success_step = len(actions)
        ret += float(r)  # in step order; plain float (MetaWorld returns numpy scalars, which weights_only refuses)
        done = terminated or truncated
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    out = {"states": f32(states), "actions": f32(actions), "rewards": f32(rewards), "terminated": f32(terms)}
    return out | {"return": ret, "success_step": success_step, "frames": frames}


def evaluate_policy(task: str, ctx: dict, layers, episodes: int, seed: int) -> dict:
    """Deterministic rollouts of one policy (layers with K = 1, or None for uniform-random actions); episode e
    resets with seed + e."""
    env = make_env(task, ctx, seed)
    eps = [rollout(env, layers, seed + e) for e in range(episodes)]
    env.close()
    returns = [ep["return"] for ep in eps]
    return {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "success_rate": float(np.mean([ep["success_step"] >= 0 for ep in eps])) if task == "metaworld" else None,
        "returns": returns,
    }


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, safe loads
# ---------------------------------------------------------------------------------------------
def atomic_save(obj, path) -> None:
    """torch.save / np.save / text or bytes to a temp file, then rename: a crash never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(obj, np.ndarray):
                np.save(f, obj, allow_pickle=False)
            elif isinstance(obj, (str, bytes)):
                f.write(obj.encode() if isinstance(obj, str) else obj)
            else:
                torch.save(obj, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_figure(fig, path, dpi: int = 100) -> None:
    """A matplotlib figure to path (its suffix names the format), written atomically, then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix[1:], dpi=dpi)
    plt.close(fig)
    atomic_save(buf.getvalue(), path)


def safe_load(path) -> dict:
    """torch.load without pickle; a missing or corrupt file becomes one clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickled objects, ...
        raise UserError(f"cannot load {path}: not a valid weights_only checkpoint ({type(e).__name__})") from None


def write_csv(path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_save(buf.getvalue(), path)


EXPERT_KEYS = {"task": str, "label": str, "context": dict, "obs_dim": int, "act_dim": int, "hidden": (list, tuple)}
EXPERT_KEYS |= {"gamma": (int, float), "actor": list, "critic1": list, "critic2": list}
SHARED = ("task", "obs_dim", "act_dim", "hidden", "gamma")  # what the experts of one sweep have in common


def require_keys(e: dict, keys: dict, f) -> None:
    """Every key (name -> type or tuple of types) present in expert dict e and of its type (bools are not numbers)."""
    for key, types in keys.items():
        if key not in e or not isinstance(e[key], types) or isinstance(e[key], bool):
            want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise UserError(f"{f} is not an expert file written by td3.py: {key!r} missing or not a {want}")


def check_expert(e, f) -> dict:
    """One expert file's contents, checked for what later stages read: the keys and their types, then the actor
    and both critics as lists of finite float tensors of the layer sizes obs_dim, hidden, act_dim give."""
    if not isinstance(e, dict):
        raise UserError(f"{f} is not an expert file written by td3.py: it holds a {type(e).__name__}, not a dict")
    require_keys(e, EXPERT_KEYS, f)
    S, A, H = e["obs_dim"], e["act_dim"], e["hidden"]
    if not all(type(n) is int and n > 0 for n in (S, A, *H)):
        raise UserError(f"{f}: obs_dim {S}, act_dim {A} and hidden {H} must be positive integers")
    for key, out in (("actor", A), ("critic1", 1), ("critic2", 1)):
        sizes = layer_sizes(S + (A if out == 1 else 0), H, out)
        want = [s for i, o in zip(sizes[:-1], sizes[1:]) for s in ((i, o), (1, o))]  # W [in, out], b [1, out]
        if [getattr(t, "shape", None) for t in e[key]] != [torch.Size(s) for s in want]:
            raise UserError(f"{f}: {key!r} is not a list of tensors of shapes {want} (layer sizes {sizes})")
        if not all(t.is_floating_point() and t.isfinite().all() for t in e[key]):
            raise UserError(f"bad data in {f}: {key!r} holds NaN, infinite or non-float weights")
    return e


def load_experts(paths) -> list[dict]:
    """The experts of one run or of the shards of a sweep: `paths` is one path or a list, each a directory written by
    td3.py (its expert_*.pt) or one expert file. Every file is checked (check_expert); all must share task,
    observation/action sizes, hidden sizes and discount, and no context may come twice. Sorted by file name
    (expert_<label>.pt), so the order is the same whichever shard or directory an expert came from."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = {}  # resolved path -> the path as given: a directory named twice is read once
    for path in map(Path, paths):
        found = [path] if path.is_file() else sorted(path.glob("expert_*.pt")) if path.is_dir() else []
        if not found:
            raise UserError(f"no experts found at {path} (expected expert_*.pt files written by td3.py)")
        files |= {f.resolve(): f for f in found if f.resolve() not in files}
    files = list(files.values())
    experts = [check_expert(safe_load(f), f) for f in files]
    first = {}  # label -> the file that holds it
    for f, e in zip(files, experts):
        for key in SHARED:
            a, b = json.dumps(experts[0][key]), json.dumps(e[key])
            if a != b:
                raise UserError(f"{files[0]} and {f} differ in {key} ({a} vs {b}): they are not experts of one sweep")
        if e["label"] in first:
            raise UserError(f"{first[e['label']]} and {f} hold the same context {e['label']}: give each context once")
        first[e["label"]] = f
    return sorted(experts, key=lambda e: f"expert_{e['label']}.pt")


def expert_layers(expert: dict, key: str = "actor", device="cpu"):
    """Expert dict -> layers with K = 1."""
    ts = [t.to(device) for t in expert[key]]
    return [(ts[i].unsqueeze(0), ts[i + 1].unsqueeze(0)) for i in range(0, len(ts), 2)]


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' is cuda when present, else cpu; asking for cuda where there is none is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise UserError(f"--device {name!r} is not a device; valid: auto, cpu, cuda, cuda:N")
    if name != "cpu" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device on this machine; use --device auto or cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return torch.device(name)


class Tracker:
    """Scalars to TensorBoard event files in out_dir/tb (`tensorboard --logdir runs`), and with --track also to
    Weights & Biases (an optional install: pip install wandb), as CleanRL logs them. metrics.csv stays the record."""

    def __init__(self, out_dir, args, track: bool = False, project: str = "cleanhyper", entity: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        config = asdict(args)
        if track:
            try:
                import wandb
            except ImportError:
                raise UserError("--track logs to Weights & Biases, which is not installed: pip install wandb") from None
            wandb.init(
                project=project, entity=entity, config=config, name=Path(out_dir).name, dir=str(out_dir), sync_tensorboard=True
            )
        self.writer = SummaryWriter(str(Path(out_dir) / "tb"))
        self.writer.add_text("args", "|flag|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in config.items()))
        self.track = track

    def log(self, step: int, **scalars) -> None:
        """log(step, **{"losses/qf_loss": 0.3, "charts/SPS": 812}); None values are skipped."""
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        self.writer.close()
        if self.track:
            import wandb

            wandb.finish()


# ---------------------------------------------------------------------------------------------
# The run: its state (what a checkpoint holds), evaluation, the expert files
# ---------------------------------------------------------------------------------------------
CHECKPOINT_FORMAT = "cleanhyper-td3-checkpoint-v2"

# Flags that may differ between a run and its resumption (everything else must match).
RESUMABLE = {
    "total_timesteps",
    "resume",
    "overwrite",
    "out_dir",  # a moved run directory resumes
    "device",
    "torch_threads",
    "log_interval",
    "eval_interval",
    "eval_episodes",
    "checkpoint_interval",
    "track",
    "wandb_project_name",
    "wandb_entity",
    "compile",
    "cudagraphs",
}


@dataclass
class RunState:
    """Everything a run carries from step to step besides its environments (checkpoints are written at episode ends,
    when every environment has just been reset) and torch's RNG (saved with it)."""

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
        with torch.no_grad():
            flat = flatten_layers(self.agent.policy(self.agent.actor)).cpu()  # [K, P]
        for i, snaps in enumerate(self.snapshots):
            snaps.append(flat[i].clone())
        self.snapshot_steps.append(self.step)

    def save(self, path, args: dict) -> None:
        ck = {"format": CHECKPOINT_FORMAT, "args": args, "agent": self.agent.state(), "replay": self.replay.state()}
        ck |= {f: getattr(self, f) for f in self.AS_IS}
        ck["snapshots"] = [torch.stack(s) if s else torch.zeros(0) for s in self.snapshots]
        atomic_save(ck | {"rng": torch.get_rng_state()}, path)

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
    """--resume: the checkpoint of the same run, checked before any work. Every flag outside RESUMABLE must match, and
    --total-timesteps must not fall behind the checkpoint's step."""
    if not Path(path).is_file():
        raise UserError(
            f"--resume: no checkpoint at {path}; start without --resume (a run writes one every --checkpoint-interval steps)"
        )
    ck = safe_load(path)
    if not isinstance(ck, dict) or "agent" not in ck:
        raise UserError(f"cannot resume {path}: not a checkpoint written by td3.py")
    try:
        ck = ck if "format" in ck else from_flat_checkpoint(ck)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UserError(f"cannot resume {path}: not a checkpoint written by td3.py") from None
    if ck["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"cannot resume {path}: its format is {ck['format']!r}, this td3.py reads {CHECKPOINT_FORMAT!r}")
    missing = sorted({"args", "agent", "replay", "snapshots", "rng", *RunState.AS_IS} - set(ck))
    if missing or not isinstance(ck["args"], dict) or not isinstance(ck["step"], int):
        raise UserError(
            f"cannot resume {path}: an incomplete checkpoint (missing or malformed: {', '.join(missing) or 'args, step'})"
        )
    old = asdict(Args()) | ck["args"]  # a flag newer than the checkpoint had its default then
    diff = {f for f, v in old.items() if f not in RESUMABLE and not same_flag(f, v, args.get(f), args["task"])}
    if diff:
        raise UserError(f"cannot resume {path}: flags differ from the checkpointed run: {', '.join(sorted(diff))}")
    if ck["step"] > args["total_timesteps"]:
        raise UserError(
            f"cannot resume {path}: it is at step {ck['step']}, past --total-timesteps {args['total_timesteps']}; "
            f"give --total-timesteps >= {ck['step']}"
        )
    return ck


def same_flag(name: str, old, new, task: str) -> bool:
    """A flag of the checkpointed run and of its resumption agree: contexts by what they parse to ('0.30' and '0.3' are
    one context), every other flag as JSON."""
    if name == "contexts" and old != new:
        try:
            return [context_label(c) for c in parse_contexts(task, old)] == [context_label(c) for c in parse_contexts(task, new)]
        except (UserError, TypeError):
            return False
    return json.dumps(old) == json.dumps(new)


def from_flat_checkpoint(ck: dict) -> dict:
    """A checkpoint of the td3.py before RunState (networks as flat [W0, b0, W1, ...] lists, the twin critics stacked
    as [2K, ...], no "best" before --keep-best) in today's layout, so that runs started then still resume."""
    pairs = lambda ts: [list(ts[i : i + 2]) for i in range(0, len(ts), 2)]  # noqa: E731
    twin = lambda t: t.unflatten(0, (2, -1))  # noqa: E731  [2K, ...] -> [twin, K, ...]
    old = ck["agent"]
    agent = {
        name: pairs([twin(t) if name.startswith("critic") else t for t in old[name]])
        for name in ("actor", "critic", "actor_t", "critic_t")
    }
    for moments in old["critic_opt"]["state"].values():
        moments["exp_avg"], moments["exp_avg_sq"] = twin(moments["exp_avg"]), twin(moments["exp_avg_sq"])
    agent |= {"actor_opt": old["actor_opt"], "critic_opt": old["critic_opt"]}
    return ck | {"format": CHECKPOINT_FORMAT, "agent": agent, "best": ck.get("best", [None] * len(old["actor"][0]))}


def evaluate(run: RunState, args: Args, contexts: list[dict], labels: list[str], tracker: Tracker) -> None:
    """Deterministic evaluation of every context's actor (episode e resets with seed + 100000 + e), recorded in
    run.last_eval, with --keep-best in run.best, and logged at its step (mean over contexts, and each)."""
    for i, (ctx, lab) in enumerate(zip(contexts, labels)):
        r = evaluate_policy(args.task, ctx, run.agent.actor_of(i), args.eval_episodes, args.seed + 100_000)
        run.last_eval[lab] = {"step": run.step, **r}
        score = [r["success_rate"] or 0.0, r["return_mean"]]
        if args.keep_best and (run.best[i] is None or score > run.best[i]["score"]):  # ties keep the earlier actor
            run.best[i] = {"score": score, "step": run.step, "eval": r, **run.agent.expert_weights(i)}
        tracker.log(run.step, **{f"charts/eval_return/{lab}": r["return_mean"], f"charts/eval_success/{lab}": r["success_rate"]})
    evals = [run.last_eval[lab] for lab in labels]
    success = [e["success_rate"] for e in evals if e["success_rate"] is not None]
    mean = {
        "charts/eval_return": np.mean([e["return_mean"] for e in evals]),
        "charts/eval_success": np.mean(success) if success else None,
    }
    tracker.log(run.step, **mean)


def expert_file(args: Args, ctx: dict, label: str, kept: dict, final_step: int, obs_dim: int, act_dim: int) -> dict:
    """The expert file (format cleanhyper-expert-v1): a plain dict that loads with weights_only."""
    return {
        "format": "cleanhyper-expert-v1",
        "task": args.task,
        "context": ctx,
        "context_names": [n for n in ctx if n not in ("env_name", "goal_seed")],
        "context_vector": context_vector(ctx),
        "label": label,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "hidden": list(args.hidden),
        "actor": kept["actor"],  # W0 [S,H], b0 [1,H], W1, b1, W2 [H,A], b2 [1,A]
        "critic1": kept["critic1"],  # Q1 of this context (input cat[s, a])
        "critic2": kept["critic2"],
        "critic_layer_norm": args.layer_norm,  # the critics' hidden layers are normalised (td3.mlp(..., norm=True))
        "step": kept["step"],
        "final_step": final_step,
        "eval_return": kept["eval"]["return_mean"],
        "eval_return_std": kept["eval"]["return_std"],
        "eval_success": kept["eval"]["success_rate"],
        "eval_seed": args.seed + 100_000,
        "eval_episodes": args.eval_episodes,
        "gamma": args.gamma,
        "args": asdict(args),
    }


OUTPUTS = ("expert_*.pt", "checkpoint.pt", "metrics.csv", "snapshots_*.npy", "snapshot_steps.npy", "args.json", "tb")
POSITIVE = ("total_timesteps", "batch_size", "learning_rate", "buffer_size", "policy_frequency", "eval_episodes", "log_interval")
POSITIVE += ("updates_per_step",)
NONNEGATIVE = ("seed", "learning_starts", "policy_noise", "noise_clip", "exploration_noise", "eval_interval", "action_penalty")
NONNEGATIVE += ("snapshot_interval", "snapshot_start", "checkpoint_interval", "torch_threads")


def checked_contexts(args: Args) -> tuple[list[int], list[dict], list[str]]:
    """The flags and the contexts, checked before any work (one line naming what is wrong). Returns this shard's
    contexts: their places in the full --contexts list (which seed their environments), the contexts, their labels."""
    check_flags(args, positive=(*POSITIVE, "hidden"), nonnegative=NONNEGATIVE, fraction=("gamma", "tau"))
    if args.learning_starts < args.batch_size:
        raise UserError(f"--learning-starts {args.learning_starts} must be >= --batch-size {args.batch_size}")
    contexts = parse_contexts(args.task, args.contexts, args.seed)
    labels = [context_label(c) for c in contexts]
    if not contexts:
        raise UserError("no contexts given (--contexts)")
    if len(set(labels)) != len(labels):
        raise UserError(f"duplicate contexts: {labels}")
    m = re.fullmatch(r"(\d+)/(\d+)", args.shard.strip())
    if not m or int(m[1]) >= int(m[2]):
        raise UserError(f"--shard must be I/N with 0 <= I < N (this process trains contexts I, I+N, ...), got {args.shard!r}")
    ids = list(range(len(contexts)))[int(m[1]) :: int(m[2])]
    if not ids:
        raise UserError(
            f"--shard {args.shard}: no context falls to shard {m[1]} of {len(contexts)} contexts; use at most {len(contexts)} shards"
        )
    return ids, [contexts[i] for i in ids], [labels[i] for i in ids]


def diverged(run: RunState, losses: dict) -> str:
    """The message of a non-finite loss: bad data from the environment, or the update diverging."""
    bad = ", ".join(f"{name} {v}" for name, v in losses.items() if not math.isfinite(v))
    r = run.replay
    data = [f for f in ("obs", "rew", "next_obs") if not getattr(r, f)[:, : r.size].isfinite().all()]
    if data:
        return f"bad data at step {run.step}: the environment returned non-finite {', '.join(data)} (so {bad})"
    return f"non-finite {bad} at step {run.step}: the TD3 update diverged; lower --learning-rate or check the task's rewards"


def progress(run: RunState, labels: list[str], losses: dict, sps: float) -> dict:
    """The progress line's figures under CleanRL's names: the last episode's return (mean over contexts, and each),
    the losses and charts/SPS in environment steps per second over all K contexts (evaluate logs its own)."""
    last = {r["context"]: r["episodic_return"] for r in run.rows[-len(labels) :]}
    return {
        "charts/episodic_return": np.mean(list(last.values())) if last else None,
        **{f"charts/episodic_return/{lab}": ret for lab, ret in last.items()},
        "losses/qf_loss": losses.get("qf_loss"),
        "losses/actor_loss": losses.get("actor_loss"),
        "charts/SPS": sps * len(labels),
    }


def main(args: Args) -> dict:
    ids, contexts, labels = checked_contexts(args)  # every flag, before any work
    device = resolve_device(args.device)
    if args.cudagraphs and device.type != "cuda":
        raise UserError(f"--cudagraphs needs a CUDA device; --device {args.device} gives {device}")
    ck = read_checkpoint(Path(args.out_dir) / "checkpoint.pt", asdict(args)) if args.resume else None
    out = prepare_out_dir(args.out_dir, OUTPUTS, resume=args.resume, overwrite=args.overwrite)
    tracker = Tracker(out, args, args.track, args.wandb_project_name, args.wandb_entity)
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    k = len(contexts)
    hyper = {"gamma": args.gamma, "tau": args.tau, "policy_noise": args.policy_noise, "noise_clip": args.noise_clip}

    # TRY NOT TO MODIFY: one env per context; episode n of context i (its place in the full --contexts list) resets
    # with a seed derived from both, so a resumed run or a shard replays the same initial states.
    envs = [make_env(args.task, c, args.seed + 1000 * i) for i, c in zip(ids, contexts)]

    def reset_all(n):  # the first observations [K, S] of episode n
        return np.stack([env.reset(seed=args.seed + 1000 * i + 7919 * n)[0] for i, env in zip(ids, envs)])

    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    opts = dict(shared=args.shared_init, compile=args.compile, cudagraphs=args.cudagraphs, action_penalty=args.action_penalty)
    opts |= {"layer_norm": args.layer_norm, "sac": args.sac}
    agent = TD3(k, obs_dim, act_dim, args.hidden, args.learning_rate, device, **opts)
    run = RunState(agent, Replay(k, min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device))
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
        results = [env.step(a) for env, a in zip(envs, act)]
        next_obs = np.stack([r[0] for r in results])
        rew = np.array([r[1] for r in results])
        term = np.array([r[2] for r in results], dtype=np.float32)
        trunc = np.array([r[3] for r in results])
        run.replay.add(obs, act, rew, next_obs, term)  # next_obs is the real one: we reset by hand below
        ep_ret += rew
        obs = next_obs
        run.step += 1

        for j in range(args.updates_per_step if run.step > args.learning_starts else 0):
            # the policy delay counts updates: update u = step * updates_per_step + j
            new = agent.update(
                run.replay.sample(args.batch_size), (run.step * args.updates_per_step + j) % args.policy_frequency == 0, **hyper
            )
            losses.update(new)  # actor_loss keeps its last value between delayed actor updates
            if not all(math.isfinite(v) for v in new.values()):
                raise UserError(diverged(run, new))
        if args.snapshot_interval and run.step >= args.snapshot_start and run.step % args.snapshot_interval == 0:
            run.take_snapshot()
        if args.eval_interval and run.step % args.eval_interval == 0:  # before the checkpoint below, so resume sees it
            evaluate(run, args, contexts, labels, tracker)

        if term.any() or trunc.any():  # every task here ends all K episodes at the same step
            sps = round((run.step - s0) / (time.time() - t0), 1)
            for lab, ret in zip(labels, ep_ret):
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
                write_csv(out / "metrics.csv", run.rows)

        if run.step % args.log_interval == 0:
            sps = (run.step - s0) / (time.time() - t0)  # since start (or resume); x K for expert-steps/s
            rets = " ".join(f"{r['context']}:{r['episodic_return']:.1f}" for r in run.rows[-k:]) or "-"
            print(
                f"step {run.step:>8}  SPS {sps * k:7.0f} (x{k} contexts)  last return {rets}  qf_loss {losses.get('qf_loss', float('nan')):.3g}",
                flush=True,
            )
            tracker.log(run.step, **progress(run, labels, losses, sps))

    # Final evaluation (unless the loop's last step had one) and the files
    if any(run.last_eval.get(lab, {}).get("step") != run.step for lab in labels):
        evaluate(run, args, contexts, labels, tracker)
    final = [run.last_eval[lab] for lab in labels]
    tracker.close()
    paths = []
    for i, (ctx, lab) in enumerate(zip(contexts, labels)):
        kept = run.best[i] if args.keep_best else {"step": run.step, "eval": final[i], **agent.expert_weights(i)}
        paths.append(out / f"expert_{lab}.pt")
        atomic_save(expert_file(args, ctx, lab, kept, run.step, obs_dim, act_dim), paths[-1])
        if run.snapshots[i]:
            atomic_save(torch.stack(run.snapshots[i]).numpy().astype(np.float32), out / f"snapshots_{lab}.npy")
    if run.snapshot_steps:
        atomic_save(np.asarray(run.snapshot_steps, dtype=np.int64), out / "snapshot_steps.npy")
    write_csv(out / "metrics.csv", run.rows)
    atomic_save(json.dumps(asdict(args), indent=2), out / "args.json")
    wall = time.time() - t0
    print(f"\nfinal evaluation (deterministic, {args.eval_episodes} episodes):")
    for i, (lab, r) in enumerate(zip(labels, final)):
        sr = f"  success {r['success_rate']:.2f}" if r["success_rate"] is not None else ""
        note = f"  (kept step {run.best[i]['step']}: {run.best[i]['score']})" if args.keep_best else ""
        print(f"  {lab:>24}: return {r['return_mean']:9.2f} +- {r['return_std']:.2f}{sr}{note}")
    print(
        f"wrote {len(paths)} experts, metrics.csv, args.json{' and snapshots' if run.snapshot_steps else ''} to {out}  ({wall:.0f} s)"
    )
    return {"out_dir": str(out), "experts": [str(p) for p in paths], "eval": dict(zip(labels, final)), "wall_s": wall}


if __name__ == "__main__":
    cli(main, Args)
