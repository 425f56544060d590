"""policy.py — the one policy form every stage shares, the one episode loop, and the expert files.

A policy is a list of layers [(W0, b0), (W1, b1), ...] with W [K, in, out] and b [K, 1, out]: K policies of one shape
side by side (K contexts, K generated policies, or K = 1), evaluated by one batched matmul per layer (`mlp`):
relu on the hidden layers, tanh at the end. td3.py trains them, hyperzero.py and meta.py write them from a context,
hyplatent.py and hypformer.py generate them as flat vectors [K, P] (`flatten_layers` / `unflatten_layers`), and
evaluate.py rolls all of them out with `rollout`. An expert file (`expert_file`, written by td3.py; `load_experts`
reads and checks it) is a plain dict of tensors that loads with weights_only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from runio import UserError, safe_load
from tasks import context_label, context_vector, make_env, nearest


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
    f32 = lambda x: np.asarray(x, dtype=np.float32)
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


def pick(layers, i: int, n: int = 1):
    """Policies i*n ... (i+1)*n - 1 of a batch of K: context i's n policies of a context-major batch."""
    return [(W[i * n : (i + 1) * n], b[i * n : (i + 1) * n]) for W, b in layers]


def evaluate_each(task: str, ctx: dict, layers, episodes: int, seed: int) -> list[dict]:
    """evaluate_policy of each of the K policies in layers, all on the same seeds."""
    return [evaluate_policy(task, ctx, pick(layers, j), episodes, seed) for j in range(len(layers[0][0]))]


def nearest_experts(task: str, ctx: dict, experts: list[dict]) -> list[str]:
    """Labels of the experts whose contexts are nearest to ctx, its own expert left out (ties all kept): the
    nearest-expert yardstick of zero-shot transfer, the expert of the closest other context used as it is."""
    others = [e for e in experts if e["label"] != context_label(ctx)]
    return [others[i]["label"] for i in nearest(task, ctx, [e["context"] for e in others])] if others else []


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


def load_start(f, task: str, hidden, layer_norm: bool) -> dict:
    """td3.py --init-from: one expert file whose actor and critics fit a run of this task, hidden sizes and critic
    layer norm (the run copies its tensors into every context's networks)."""
    if not Path(f).is_file():
        raise UserError(f"--init-from {f}: no such file; give one expert file (expert_<label>.pt of td3.py)")
    e = load_experts(f)[0]
    have = [e["task"], e["hidden"], e.get("critic_layer_norm", False)]
    if have != [task, list(hidden), layer_norm]:
        raise UserError(f"--init-from {f}: a {have[0]} expert, hidden {have[1]}, critic layer norm {have[2]}; "
                        f"this run needs --task {task}, --hidden {' '.join(map(str, hidden))}, layer norm {layer_norm}")  # fmt: skip
    return e


def expert_layers(expert: dict, key: str = "actor", device="cpu"):
    """Expert dict -> layers with K = 1."""
    ts = [t.to(device) for t in expert[key]]
    return [(ts[i].unsqueeze(0), ts[i + 1].unsqueeze(0)) for i in range(0, len(ts), 2)]


def expert_file(args, ctx: dict, label: str, kept: dict, final_step: int, obs_dim: int, act_dim: int) -> dict:
    """The expert file (format cleanhyper-expert-v1) of td3.py's Args and one context's kept actor and critics
    (kept: actor, critic1, critic2, step, eval): a plain dict that loads with weights_only."""
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
        "critic_layer_norm": args.layer_norm,  # the critics' hidden layers are normalised (mlp(..., norm=True))
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
