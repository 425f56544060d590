"""td3.py — contextual MuJoCo / MetaWorld tasks and TD3 that trains K experts at once.

One process trains one independent TD3 expert per context: K environments step together and the
actor, twin critics, targets and Adam state are tensors batched over K (weights [K, in, out]).
Each context's loss is averaged over its own batch and the K losses are summed, so every context
gets exactly the gradient (and, Adam being elementwise, the update) of a separate run; K = 1 is
plain TD3 (Fujimoto et al. 2018, as in CleanRL's td3_continuous_action.py).

    python td3.py --task cheetah-vel --contexts 0.5 1.5 2.5 --total-timesteps 50000 \
        --learning-starts 5000 --seed 1 --out-dir runs/vel/experts

Later stages import from here: `make_env`, `parse_contexts`, the policy form (`mlp`, `flatten_layers`,
`unflatten_layers`), the one episode loop (`rollout`, `evaluate_policy`), the file helpers (`atomic_save`, `safe_load`,
`load_experts`) and `cli`, every stage's entry point.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import torch
import tyro


@dataclass
class Args:
    task: str = "cheetah-vel"
    """task family: cheetah-vel, cheetah-run, walker-walk, or metaworld (contexts = MetaWorld task names)"""
    contexts: tuple[str, ...] = ("1.5",)
    """one expert per context: plain numbers for the task's first variable, 'speed=2,length=0.4' for several, or MetaWorld task names ('reach-v3')"""
    total_timesteps: int = 200_000
    """environment steps per context"""
    learning_starts: int = 5_000
    """uniform-random actions (and no updates) before this step"""
    seed: int = 1
    """seed of torch, the environments and (MetaWorld) the fixed goal"""
    out_dir: str = "runs/td3"
    """everything this run writes goes here"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden sizes of actor and critics (CleanRL and HyperZero: 256 256)"""
    batch_size: int = 256
    """minibatch size per context"""
    learning_rate: float = 3e-4
    """Adam learning rate of actor and critics (CleanRL 3e-4; HyperZero's reference 1e-4)"""
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
    """continue from out_dir/checkpoint.pt (the other flags must match the checkpointed run)"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 1
    """CPU threads for torch (1 is fastest for these small nets on 2 cores)"""
    log_interval: int = 2_000
    """print progress every this many steps"""


class UserError(Exception):
    """Bad input: printed as one line by the __main__ guard, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Contextual tasks
# ---------------------------------------------------------------------------------------------
# name -> (default, lowest valid, highest valid); the first variable is the one a plain number sets.
TASKS: dict[str, dict] = {
    "cheetah-vel": {"gym_id": "HalfCheetah-v5", "steps": 200, "vars": {"goal": (1.5, 0.0, 3.0)}},
    "cheetah-run": {
        "gym_id": "HalfCheetah-v5",
        "steps": 1000,
        "vars": {"speed": (2.0, 0.1, 12.0), "length": (0.5, 0.2, 1.0)},
    },
    "walker-walk": {
        "gym_id": "Walker2d-v5",
        "steps": 1000,
        "vars": {"speed": (1.0, 0.1, 8.0), "length": (0.2, 0.1, 0.4)},
    },
    "metaworld": {"steps": 500, "vars": {}},
}


def metaworld_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS)


def parse_contexts(task: str, specs, seed: int = 0) -> list[dict]:
    """CLI strings -> context dicts with every variable of the task, validated.

    MetaWorld contexts are {"env_name": name, "goal_seed": seed}: the goal is fixed by the seed."""
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; valid tasks: {', '.join(TASKS)}")
    out = []
    for spec in specs:
        spec = str(spec).strip()
        if task == "metaworld":
            if spec not in metaworld_names():
                raise UserError(f"unknown MetaWorld task '{spec}'; valid: {' '.join(metaworld_names())}")
            out.append({"env_name": spec, "goal_seed": int(seed)})
            continue
        vars_ = TASKS[task]["vars"]
        ctx = {k: v[0] for k, v in vars_.items()}
        items = spec.split(",") if "=" in spec else [f"{next(iter(vars_))}={spec}"]
        for item in items:
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in vars_:
                raise UserError(f"task '{task}' has no context '{name}'; its contexts: {', '.join(vars_)}")
            try:
                x = float(value)
            except ValueError:
                raise UserError(f"context {name}='{value}' is not a number") from None
            lo, hi = vars_[name][1:]
            if not (lo <= x <= hi) or not math.isfinite(x):
                raise UserError(f"context {name}={x} of '{task}' is out of range; valid: [{lo}, {hi}]")
            ctx[name] = x
        out.append(ctx)
    return out


def context_label(ctx: dict) -> str:
    """File-name-safe label: 'goal_1.5', 'speed_2_length_0.4', 'reach-v3'."""
    if "env_name" in ctx:
        return ctx["env_name"]
    return "_".join(f"{k}_{v:g}" for k, v in ctx.items())


def context_vector(ctx: dict) -> list[float]:
    """The numeric context an approximator sees (MetaWorld: none, the task name is the condition)."""
    return [float(v) for k, v in ctx.items() if k not in ("env_name", "goal_seed")]


def tolerance(x, bounds=(0.0, 0.0), margin=0.0, sigmoid="gaussian", value_at_margin=0.1):
    """numpy re-implementation of dm_control.utils.rewards.tolerance (1 inside bounds, decays outside)."""
    lower, upper = bounds
    x = np.asarray(x, dtype=np.float64)
    in_bounds = (lower <= x) & (x <= upper)
    if margin == 0:
        value = np.where(in_bounds, 1.0, 0.0)
    else:
        d = np.where(x < lower, lower - x, x - upper) / margin
        value = np.where(in_bounds, 1.0, _sigmoid(d, value_at_margin, sigmoid))
    return float(value) if value.ndim == 0 else value


def _sigmoid(x, v, kind):
    """Equals 1 at x = 0 and v at x = 1 (dm_control's _sigmoids)."""
    if kind == "gaussian":
        return np.exp(-0.5 * (x * np.sqrt(-2 * np.log(v))) ** 2)
    if kind == "hyperbolic":
        return 1 / np.cosh(x * np.arccosh(1 / v))
    if kind == "long_tail":
        return 1 / ((x * np.sqrt(1 / v - 1)) ** 2 + 1)
    if kind == "reciprocal":
        return 1 / (np.abs(x) * (1 / v - 1) + 1)
    if kind == "cosine":
        s = x * np.arccos(2 * v - 1) / np.pi
        return np.where(np.abs(s) < 1, (1 + np.cos(np.pi * s)) / 2, 0.0)
    if kind == "linear":
        s = x * (1 - v)
        return np.where(np.abs(s) < 1, 1 - s, 0.0)
    if kind == "quadratic":
        s = x * np.sqrt(1 - v)
        return np.where(np.abs(s) < 1, 1 - s**2, 0.0)
    if kind == "tanh_squared":
        return 1 - np.tanh(x * np.arctanh(np.sqrt(1 - v))) ** 2
    raise ValueError(f"unknown sigmoid '{kind}'")


def edited_model(task: str, length: float) -> mujoco.MjModel:
    """Compiled model with the dynamics context applied through MjSpec (as the contextual control suite
    does with lxml). Cheetah: torso half-length L, head at L+0.1, thighs at +-L; the XML's settotalmass=14
    holds, so total mass is 14 kg for every L, redistributed towards the torso. Walker: torso capsule
    half-length L, hips not moved (as the reference); no settotalmass, so the torso gets heavier.
    The spec is compiled directly: MjSpec.to_xml() in MuJoCo 3.3.0 drops settotalmass."""
    assets = Path(gym.__file__).parent / "envs/mujoco/assets"
    if task == "walker-walk":
        spec = mujoco.MjSpec.from_file(str(assets / "walker2d_v5.xml"))
        spec.geom("torso_geom").size[1] = length
    else:
        spec = mujoco.MjSpec.from_file(str(assets / "half_cheetah.xml"))
        spec.geom("torso").fromto = [-length, 0, 0, length, 0, 0]
        spec.geom("head").pos = [length + 0.1, 0, 0.1]
        spec.body("bthigh").pos = [-length, 0, 0]
        spec.body("fthigh").pos = [length, 0, 0]
    return spec.compile()


def _with_model(env_cls, model: mujoco.MjModel):
    """The Gymnasium env class, built on a given compiled model instead of its XML file."""

    class Edited(env_cls):
        def _initialize_simulation(self):
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
            return model, mujoco.MjData(model)

    return Edited


class ContextReward(gym.Wrapper):
    """Replaces the environment's reward with the context's (HyperZero's contextual suite, Cheetah-Vel)."""

    def __init__(self, env, task: str, ctx: dict):
        super().__init__(env)
        self.task, self.ctx = task, ctx

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        v = info["x_velocity"]
        if self.task == "cheetah-vel":  # MACAW / Prompt-DT: -|v - goal| - 0.05 |a|^2
            reward = -abs(v - self.ctx["goal"]) - 0.05 * float(np.sum(np.square(action)))
        elif self.task == "cheetah-run":  # dm_control run with bounds [speed, inf), margin = speed
            s = self.ctx["speed"]
            reward = tolerance(v, (s, np.inf), margin=s, sigmoid="linear", value_at_margin=0.1)
        else:  # walker-walk: stand * (5 move + 1) / 6
            qpos = self.env.unwrapped.data.qpos
            standing = tolerance(qpos[1], (1.2, np.inf), margin=0.6)  # torso height, gaussian
            upright = (1 + np.cos(qpos[2])) / 2  # torso zz: cosine of the pitch
            stand = (3 * standing + upright) / 4
            s = self.ctx["speed"]
            move = tolerance(v, (s, np.inf), margin=s, sigmoid="linear", value_at_margin=0.1)
            reward = stand * (5 * move + 1) / 6
        return obs, float(reward), terminated, truncated, info


def make_env(task: str, ctx: dict, seed: int = 0, render_mode: str | None = None) -> gym.Env:
    """One environment of `task` in context `ctx` (a dict from parse_contexts). Call reset(seed=...)."""
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; valid tasks: {', '.join(TASKS)}")
    if task == "metaworld":
        import metaworld  # noqa: F401  (registers the Meta-World/ environments)

        # MetaWorld ignores reset(seed=): the goal is fixed by the construction seed; it truncates at 500.
        env = gym.make(
            "Meta-World/goal_observable",
            env_name=ctx["env_name"],
            seed=int(ctx["goal_seed"]),
            disable_env_checker=True,
        )
        env.unwrapped.render_mode = render_mode  # its factory takes no render_mode; the renderer reads this
        env.action_space.seed(seed)
        return env
    kw = {"render_mode": render_mode}
    if task == "walker-walk":
        kw["terminate_when_unhealthy"] = False  # dm_control's walker never terminates early
    if "length" in ctx:
        env_cls = gym.spec(TASKS[task]["gym_id"]).entry_point
        env_cls = getattr(__import__(env_cls.split(":")[0], fromlist=["_"]), env_cls.split(":")[1])
        env = gym.wrappers.TimeLimit(_with_model(env_cls, edited_model(task, ctx["length"]))(**kw), TASKS[task]["steps"])
    else:
        env = gym.make(TASKS[task]["gym_id"], max_episode_steps=TASKS[task]["steps"], disable_env_checker=True, **kw)
    env = ContextReward(env, task, ctx)
    env.action_space.seed(seed)
    return env


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


def mlp(layers, x: torch.Tensor, out_act=torch.tanh) -> torch.Tensor:
    """x [K, N, in] -> [K, N, out]: relu on hidden layers, out_act (tanh for actors) at the end."""
    for i, (W, b) in enumerate(layers):
        x = torch.baddbmm(b, x, W)
        if i < len(layers) - 1:
            x = torch.relu(x)
    return out_act(x) if out_act is not None else x


def flatten_layers(layers) -> torch.Tensor:
    """layers -> [K, P]. Order: for each layer, W row-major ([in, out], W[i, o] at i*out + o), then b."""
    k = layers[0][0].shape[0]
    return torch.cat([t.reshape(k, -1) for W, b in layers for t in (W, b)], dim=1)


def unflatten_layers(flat: torch.Tensor, sizes: list[int]):
    """[K, P] -> layers; the inverse of flatten_layers for the given sizes."""
    k, p = flat.shape
    need = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
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
    """torch.save / np.save / text to a temp file, then rename: a crash never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(obj, np.ndarray):
                np.save(f, obj, allow_pickle=False)
            elif isinstance(obj, str):
                f.write(obj.encode())
            else:
                torch.save(obj, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def safe_load(path) -> dict:
    """torch.load without pickle; a missing or corrupt file becomes one clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickled objects, ...
        raise UserError(f"cannot load {path}: not a valid weights_only checkpoint ({type(e).__name__})") from None


def load_experts(path) -> list[dict]:
    """Every expert .pt in a directory written by td3.py (or one file), sorted by label."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("expert_*.pt")) if path.is_dir() else []
    if not files:
        raise UserError(f"no experts found at {path} (expected expert_*.pt files written by td3.py)")
    experts = [safe_load(f) for f in files]
    for f, e in zip(files, experts):
        if not isinstance(e, dict) or "actor" not in e:
            raise UserError(f"{f} is not an expert file written by td3.py")
    return experts


def expert_layers(expert: dict, key: str = "actor", device="cpu"):
    """Expert dict -> layers with K = 1."""
    ts = [t.to(device) for t in expert[key]]
    return [(ts[i].unsqueeze(0), ts[i + 1].unsqueeze(0)) for i in range(0, len(ts), 2)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# TD3 over K contexts
# ---------------------------------------------------------------------------------------------
class TD3:
    """Actor, twin critics (stacked as 2K: Q1 of every context, then Q2), targets and Adam states."""

    def __init__(self, k, obs_dim, act_dim, hidden, lr, device, shared: bool = False):
        self.k = k
        n = 1 if shared else k  # shared: one draw, repeated over the contexts (and over the twins: Q1 != Q2 still)
        actor = init_layers(n, layer_sizes(obs_dim, hidden, act_dim), device)
        critic = init_layers(2 * n, layer_sizes(obs_dim + act_dim, hidden, 1), device)
        if shared:
            actor = [(W.repeat(k, 1, 1), b.repeat(k, 1, 1)) for W, b in actor]
            critic = [(W.repeat_interleave(k, 0), b.repeat_interleave(k, 0)) for W, b in critic]  # [Q1 x K, Q2 x K]
        self.actor = [t.requires_grad_() for W_b in actor for t in W_b]
        self.critic = [t.requires_grad_() for W_b in critic for t in W_b]
        self.actor_t = [t.detach().clone() for t in self.actor]
        self.critic_t = [t.detach().clone() for t in self.critic]
        self.actor_opt = torch.optim.Adam(self.actor, lr=lr)
        self.critic_opt = torch.optim.Adam(self.critic, lr=lr)

    @staticmethod
    def pairs(flat):
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def q(self, critic, obs, act):  # obs [K, B, S], act [K, B, A] -> [2K, B]
        x = torch.cat([obs, act], -1).repeat(2, 1, 1)
        return mlp(self.pairs(critic), x, None).squeeze(-1)

    def update(self, batch, args, update_actor: bool, noise: torch.Tensor | None = None) -> dict:
        """One TD3 step for all K contexts. batch: obs [K,B,S], act [K,B,A], rew [K,B], next_obs, done [K,B]."""
        obs, act, rew, next_obs, done = batch
        with torch.no_grad():  # target with policy smoothing; clipped double-Q
            if noise is None:  # target policy smoothing noise [K, B, A] (tests pass their own)
                noise = torch.randn_like(act) * args.policy_noise
            noise = noise.clamp(-args.noise_clip, args.noise_clip)
            next_act = (mlp(self.pairs(self.actor_t), next_obs) + noise).clamp(-1, 1)
            q_next = self.q(self.critic_t, next_obs, next_act)
            q_next = torch.minimum(q_next[: self.k], q_next[self.k :])
            y = rew + args.gamma * (1 - done) * q_next  # done = terminated only: truncation bootstraps
        q = self.q(self.critic, obs, act)
        # per (twin, context) mean over the batch, summed: each context's gradient is its own run's
        critic_loss = ((q - y.repeat(2, 1)) ** 2).mean(1).sum()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        out = {"qf_loss": critic_loss.item() / self.k}
        if update_actor:
            q1 = self.q(self.critic, obs, mlp(self.pairs(self.actor), obs))[: self.k]
            actor_loss = -q1.mean(1).sum()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            with torch.no_grad():
                for src, dst in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                    torch._foreach_lerp_(dst, [p.detach() for p in src], args.tau)
            out["actor_loss"] = actor_loss.item() / self.k
        return out

    def state(self) -> dict:
        return {
            "actor": [t.detach().cpu() for t in self.actor],
            "critic": [t.detach().cpu() for t in self.critic],
            "actor_t": [t.cpu() for t in self.actor_t],
            "critic_t": [t.cpu() for t in self.critic_t],
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
        }

    def load(self, s: dict) -> None:
        with torch.no_grad():
            for dst, src in ((self.actor, s["actor"]), (self.critic, s["critic"])):
                for d, t in zip(dst, src):
                    d.copy_(t)
            for dst, src in ((self.actor_t, s["actor_t"]), (self.critic_t, s["critic_t"])):
                for d, t in zip(dst, src):
                    d.copy_(t)
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])


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


# Flags that may differ between a run and its resumption (everything else must match).
RESUMABLE = {
    "total_timesteps",
    "resume",
    "device",
    "torch_threads",
    "log_interval",
    "eval_interval",
    "eval_episodes",
    "checkpoint_interval",
}


def write_csv(path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_save(buf.getvalue(), path)


def main(args: Args) -> dict:
    contexts = parse_contexts(args.task, args.contexts, args.seed)
    if not contexts:
        raise UserError("no contexts given (--contexts)")
    labels = [context_label(c) for c in contexts]
    if len(set(labels)) != len(labels):
        raise UserError(f"duplicate contexts: {labels}")
    if args.learning_starts < args.batch_size or args.total_timesteps <= 0:
        raise UserError("need --total-timesteps > 0 and --learning-starts >= --batch-size")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = len(contexts)

    # TRY NOT TO MODIFY: one env per context; episode n of context i resets with a seed derived from both,
    # so a resumed run replays the same initial states without saving the environments' RNG.
    envs = [make_env(args.task, c, args.seed + 1000 * i) for i, c in enumerate(contexts)]
    obs_dim = envs[0].observation_space.shape[0]
    act_dim = envs[0].action_space.shape[0]
    agent = TD3(k, obs_dim, act_dim, args.hidden, args.learning_rate, device, args.shared_init)
    rb = Replay(k, min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    step, episode, last_ckpt, rows, snapshots, snap_steps, last_eval = 0, 0, 0, [], [[] for _ in contexts], [], {}
    best: list = [None] * k  # --keep-best: per context {"score", "step", "eval", "actor", "critic1", "critic2"}
    ckpt_path = out / "checkpoint.pt"
    cur_args = asdict(args)

    if args.resume:
        ck = safe_load(ckpt_path)
        diff = {f for f, v in ck["args"].items() if f not in RESUMABLE and json.dumps(v) != json.dumps(cur_args.get(f))}
        if diff:
            raise UserError(f"cannot resume {ckpt_path}: flags differ from the checkpointed run: {', '.join(sorted(diff))}")
        agent.load(ck["agent"])
        rb.load(ck["replay"])
        step, episode, last_ckpt, rows, last_eval = ck["step"], ck["episode"], ck["last_ckpt"], ck["rows"], ck["last_eval"]
        snapshots = [list(s) for s in ck["snapshots"]]
        snap_steps = list(ck["snapshot_steps"])
        best = list(ck.get("best", best))  # checkpoints before --keep-best have none
        torch.set_rng_state(ck["rng"])
        print(f"resumed from {ckpt_path} at step {step}")

    def reset_all():
        return np.stack([env.reset(seed=args.seed + 1000 * i + 7919 * episode)[0] for i, env in enumerate(envs)])

    def evaluate(at_step):
        res = [
            evaluate_policy(
                args.task,
                c,
                [(W[i : i + 1], b[i : i + 1]) for W, b in agent.pairs([t.detach() for t in agent.actor])],
                args.eval_episodes,
                args.seed + 100_000,
            )
            for i, c in enumerate(contexts)
        ]
        for i, (lab, r) in enumerate(zip(labels, res)):
            last_eval[lab] = {"step": at_step, **r}
            score = [r["success_rate"] or 0.0, r["return_mean"]]
            if args.keep_best and (best[i] is None or score > best[i]["score"]):  # ties keep the earlier actor
                best[i] = {"score": score, "step": at_step, "eval": r, **weights_of(i)}
        return res

    def weights_of(i):  # context i's actor [W0, b0, ...] and twin critics, detached CPU copies
        a = [t[i].detach().cpu().clone() for t in agent.actor]
        c1, c2 = ([t[j].detach().cpu().clone() for t in agent.critic] for j in (i, k + i))
        return {"actor": a, "critic1": c1, "critic2": c2}

    obs = reset_all()
    ep_ret = np.zeros(k)
    losses: dict = {}
    t0, s0 = time.time(), step
    while step < args.total_timesteps:
        # ALGO LOGIC: act (uniform random before learning_starts, then pi(s) + N(0, sigma))
        if step < args.learning_starts:
            act = torch.rand(k, act_dim) * 2 - 1
        else:
            with torch.no_grad():
                o = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(1)
                act = mlp(agent.pairs(agent.actor), o).squeeze(1).cpu()
                act = (act + torch.randn(k, act_dim) * args.exploration_noise).clamp(-1, 1)
        act = act.numpy()
        results = [env.step(a) for env, a in zip(envs, act)]
        next_obs = np.stack([r[0] for r in results])
        rew = np.array([r[1] for r in results])
        term = np.array([r[2] for r in results], dtype=np.float32)
        trunc = np.array([r[3] for r in results])
        rb.add(obs, act, rew, next_obs, term)  # next_obs is the real one: we reset by hand below
        ep_ret += rew
        obs = next_obs
        step += 1

        if step > args.learning_starts:
            new = agent.update(rb.sample(args.batch_size), args, step % args.policy_frequency == 0)
            losses.update(new)  # actor_loss keeps its last value between delayed actor updates
            if not all(math.isfinite(v) for v in new.values()):
                raise UserError(f"non-finite loss at step {step}: {losses}; lower --learning-rate or check the task")

        if args.snapshot_interval and step >= args.snapshot_start and step % args.snapshot_interval == 0:
            flat = flatten_layers(agent.pairs([t.detach() for t in agent.actor])).cpu()
            for i in range(k):
                snapshots[i].append(flat[i].clone())
            snap_steps.append(step)

        if args.eval_interval and step % args.eval_interval == 0:  # before the checkpoint below, so resume sees it
            evaluate(step)

        if term.any() or trunc.any():  # every task here ends all K episodes at the same step
            sps = (step - s0) / (time.time() - t0)
            for i, lab in enumerate(labels):
                ev = last_eval.get(lab, {})
                rows.append(
                    {
                        "step": step,
                        "context": lab,
                        "episodic_return": round(float(ep_ret[i]), 4),
                        "eval_return": ev.get("return_mean"),
                        "eval_success": ev.get("success_rate"),
                        "qf_loss": losses.get("qf_loss"),
                        "actor_loss": losses.get("actor_loss"),
                        "sps": round(sps, 1),
                    }
                )
            episode += 1
            obs, ep_ret = reset_all(), np.zeros(k)
            # TRY NOT TO MODIFY: checkpoint at the first episode end past each interval (and at the end),
            # when every env has just been reset, so resuming needs no environment state.
            due = args.checkpoint_interval and step // args.checkpoint_interval > last_ckpt // args.checkpoint_interval
            if due or (args.checkpoint_interval and step >= args.total_timesteps):
                last_ckpt = step
                ck = {
                    "args": cur_args,
                    "agent": agent.state(),
                    "replay": rb.state(),
                    "step": step,
                    "episode": episode,
                    "last_ckpt": last_ckpt,
                    "rows": rows,
                    "last_eval": last_eval,
                    "snapshots": [torch.stack(s) if s else torch.zeros(0) for s in snapshots],
                    "snapshot_steps": snap_steps,
                    "best": best,
                    "rng": torch.get_rng_state(),
                }
                atomic_save(ck, ckpt_path)
                write_csv(out / "metrics.csv", rows)

        if step % args.log_interval == 0:
            sps = (step - s0) / (time.time() - t0)  # since start (or resume); x K for expert-steps/s
            rets = " ".join(f"{lab}:{r['episodic_return']:.1f}" for lab, r in zip(labels, rows[-k:])) if rows else "-"
            print(
                f"step {step:>8}  SPS {sps * k:7.0f} (x{k} contexts)  last return {rets}  qf_loss {losses.get('qf_loss', float('nan')):.3g}",
                flush=True,
            )

    # Final evaluation and the expert files (plain dicts: weights_only-loadable).
    done = all(last_eval.get(lab, {}).get("step") == step for lab in labels)  # the loop's last step evaluated
    final = [last_eval[lab] for lab in labels] if done else evaluate(step)
    paths = []
    for i, (ctx, lab) in enumerate(zip(contexts, labels)):
        kept = best[i] if args.keep_best else {"step": step, "eval": final[i], **weights_of(i)}
        expert = {
            "format": "cleanhyper-expert-v1",
            "task": args.task,
            "context": ctx,
            "context_names": [n for n in ctx if n not in ("env_name", "goal_seed")],
            "context_vector": context_vector(ctx),
            "label": lab,
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "hidden": list(args.hidden),
            "actor": kept["actor"],  # W0 [S,H], b0 [1,H], W1, b1, W2 [H,A], b2 [1,A]
            "critic1": kept["critic1"],  # Q1 of this context (input cat[s, a])
            "critic2": kept["critic2"],
            "step": kept["step"],
            "final_step": step,
            "eval_return": kept["eval"]["return_mean"],
            "eval_return_std": kept["eval"]["return_std"],
            "eval_success": kept["eval"]["success_rate"],
            "eval_seed": args.seed + 100_000,
            "eval_episodes": args.eval_episodes,
            "gamma": args.gamma,
            "args": cur_args,
        }
        paths.append(out / f"expert_{lab}.pt")
        atomic_save(expert, paths[-1])
        if args.snapshot_interval and snapshots[i]:
            atomic_save(torch.stack(snapshots[i]).numpy().astype(np.float32), out / f"snapshots_{lab}.npy")
    if snap_steps:
        atomic_save(np.asarray(snap_steps, dtype=np.int64), out / "snapshot_steps.npy")
    write_csv(out / "metrics.csv", rows)
    atomic_save(json.dumps(cur_args, indent=2), out / "args.json")
    wall = time.time() - t0
    print(f"\nfinal evaluation (deterministic, {args.eval_episodes} episodes):")
    for i, (lab, r) in enumerate(zip(labels, final)):
        sr = f"  success {r['success_rate']:.2f}" if r["success_rate"] is not None else ""
        note = f"  (kept step {best[i]['step']}: {best[i]['score']})" if args.keep_best else ""
        print(f"  {lab:>24}: return {r['return_mean']:9.2f} +- {r['return_std']:.2f}{sr}{note}")
    print(f"wrote {len(paths)} experts, metrics.csv, args.json{' and snapshots' if snap_steps else ''} to {out}  ({wall:.0f} s)")
    return {
        "out_dir": str(out),
        "experts": [str(p) for p in paths],
        "eval": {lab: r for lab, r in zip(labels, final)},
        "wall_s": wall,
    }


def cli(main, args_cls) -> None:
    """Every stage's entry point: parse the flags (tyro turns Args' docstrings into --help), run main, and turn bad
    input into one line on stderr and exit code 2."""
    try:
        main(tyro.cli(args_cls))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli(main, Args)
