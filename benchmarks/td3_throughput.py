"""Aggregate expert-steps/s of td3.py's batched K-context TD3, eager and compiled, against K independent learners.

One expert-step = one TD3 update (the policy delay included) for one context, with ("env+update") or without
("update only") one environment step before it. Columns:
  eager        td3.py's TD3 and Replay: K cheetah-vel envs stepped together, one batched update per step
  compiled     the same with --compile (torch.compile of the critic and actor losses; optimiser steps eager)
  graphed      CUDA only: --cudagraphs (torch.compile with mode="reduce-overhead": the losses replayed as CUDA graphs)
  independent  K CleanRL-style learners (nn.Module actor and two critics, their own Adam optimisers and replay),
               run one after another for the same number of steps, as K separate runs would
All start from a prefilled replay; compile time is spent in the warm-up steps, which are not timed.

    python benchmarks/td3_throughput.py --hidden 64 --ks 1 8       # this CPU
    python benchmarks/td3_throughput.py --ks 1 8 32 --steps 200 --device cuda
    python benchmarks/td3_throughput.py --check-only --device cuda     # compiled (and graphed) update == eager update
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import policy  # noqa: E402
import runio  # noqa: E402
import tasks  # noqa: E402
import td3  # noqa: E402


@dataclass
class Args:
    ks: tuple[int, ...] = (1, 4, 8, 16)
    """numbers of contexts trained together"""
    hidden: tuple[int, ...] = (64, 256)
    """hidden widths (two layers each) of actor and critics, one table block per width"""
    steps: int = 60
    """timed steps per configuration (after the warm-up steps)"""
    warmup: int = 6
    """untimed steps first (torch.compile compiles here, CUDA graphs are captured here)"""
    batch_size: int = 256
    """minibatch size per context"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default, one per core)"""
    compile: bool = True
    """also time td3.py's TD3 with --compile (and, on CUDA, --cudagraphs)"""
    skip_independent_above: int = 16
    """do not time the independent learners for K above this (their cost is K x the K = 1 cost)"""
    modes: tuple[str, ...] = ("update", "env+update")
    """what one timed step is: 'update' (a TD3 update alone) and/or 'env+update' (td3.py's loop: an env step too)"""
    check_only: bool = False
    """only check that the compiled (and on CUDA the graphed) update equals the eager one, then exit (1 if not)"""


class Actor(nn.Module):
    def __init__(self, s, a, h):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(s, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, a), nn.Tanh())

    def forward(self, x):
        return self.net(x)


class QNetwork(nn.Module):
    def __init__(self, s, a, h):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(s + a, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, x, a):
        return self.net(torch.cat([x, a], 1))


class Independent:
    """CleanRL td3_continuous_action.py's learner, one context."""

    def __init__(self, s, a, h, device, cap):
        self.actor, self.qf1, self.qf2 = Actor(s, a, h).to(device), QNetwork(s, a, h).to(device), QNetwork(s, a, h).to(device)
        self.targets = [Actor(s, a, h).to(device), QNetwork(s, a, h).to(device), QNetwork(s, a, h).to(device)]
        for t, n in zip(self.targets, (self.actor, self.qf1, self.qf2)):
            t.load_state_dict(n.state_dict())
        self.q_opt = torch.optim.Adam(list(self.qf1.parameters()) + list(self.qf2.parameters()), lr=3e-4)
        self.a_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.buf = {k: np.zeros((cap, d), np.float32) for k, d in (("o", s), ("a", a), ("r", 1), ("n", s), ("d", 1))}
        self.size, self.device = 0, device

    def add(self, o, a, r, n, d):
        for k, x in zip("oarnd", (o, a, r, n, d)):
            self.buf[k][self.size % len(self.buf["o"])] = x
        self.size += 1

    def update(self, bs, it, args):
        idx = np.random.randint(0, min(self.size, len(self.buf["o"])), bs)
        o, a, r, n, d = (torch.as_tensor(self.buf[k][idx], device=self.device) for k in "oarnd")
        with torch.no_grad():
            noise = (torch.randn_like(a) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
            na = (self.targets[0](n) + noise).clamp(-1, 1)
            y = r.flatten() + (1 - d.flatten()) * args.gamma * torch.min(self.targets[1](n, na), self.targets[2](n, na)).view(-1)
        q_loss = ((self.qf1(o, a).view(-1) - y) ** 2).mean() + ((self.qf2(o, a).view(-1) - y) ** 2).mean()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        if it % 2 == 0:
            a_loss = -self.qf1(o, self.actor(o)).mean()
            self.a_opt.zero_grad()
            a_loss.backward()
            self.a_opt.step()
            for net, tgt in zip((self.actor, self.qf1, self.qf2), self.targets):
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.data.copy_(args.tau * p.data + (1 - args.tau) * tp.data)


def envs_for(k):
    ctxs = tasks.parse_contexts("cheetah-vel", [f"{3 * i / max(k, 1):.3f}" for i in range(k)])
    envs = [tasks.make_env("cheetah-vel", c, i) for i, c in enumerate(ctxs)]
    return envs, np.stack([e.reset(seed=i)[0] for i, e in enumerate(envs)])


def step_envs(envs, obs, act):
    res = [e.step(a) for e, a in zip(envs, act)]
    nxt = np.stack([r[0] for r in res])
    for i, r in enumerate(res):
        if r[3]:
            nxt[i] = envs[i].reset()[0]
    return nxt, np.array([r[1] for r in res]), np.zeros(len(envs))


def time_batched(k, h, args, device, with_env: bool, compile=False, cudagraphs=False):
    targs = td3.Args(hidden=(h, h), batch_size=args.batch_size)
    hyper = {"gamma": targs.gamma, "tau": targs.tau, "policy_noise": targs.policy_noise, "noise_clip": targs.noise_clip}
    torch._dynamo.reset()  # compile each configuration afresh (static shapes), as one td3.py run does
    envs, obs = envs_for(k)
    agent = td3.TD3(k, 17, 6, targs.hidden, 3e-4, device, compile=compile, cudagraphs=cudagraphs)
    rb = td3.Replay(k, 2000, 17, 6, device)
    for _ in range(args.batch_size):
        act = np.random.uniform(-1, 1, (k, 6)).astype(np.float32)
        nxt, r, d = step_envs(envs, obs, act)
        rb.add(obs, act, r, nxt, d)
        obs = nxt
    for it in range(args.steps + args.warmup):
        if it == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        if with_env:
            with torch.no_grad():
                a = policy.mlp(agent.actor, torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(1))
                act = (a.squeeze(1).cpu() + 0.1 * torch.randn(k, 6)).clamp(-1, 1).numpy()
            nxt, r, d = step_envs(envs, obs, act)
            rb.add(obs, act, r, nxt, d)
            obs = nxt
        agent.update(rb.sample(args.batch_size), it % 2 == 0, **hyper)
    sync(device)
    return k * args.steps / (time.perf_counter() - t0)


def time_independent(k, h, args, device, with_env: bool):
    targs = td3.Args()
    envs, obs = envs_for(k)
    total = 0.0
    for i in range(k):  # one learner after another, as K separate runs would
        env, o = envs[i], obs[i]
        lr = Independent(17, 6, h, device, 2000)
        for _ in range(args.batch_size):
            a = np.random.uniform(-1, 1, 6).astype(np.float32)
            n, r, *_ = env.step(a)
            lr.add(o, a, r, n, 0.0)
            o = n
        for it in range(args.steps + args.warmup):
            if it == args.warmup:
                sync(device)
                t0 = time.perf_counter()
            if with_env:
                with torch.no_grad():
                    a = lr.actor(torch.as_tensor(o, dtype=torch.float32, device=device)[None])[0].cpu()
                    a = (a + 0.1 * torch.randn(6)).clamp(-1, 1).numpy()
                n, r, _, trunc, _ = env.step(a)
                lr.add(o, a, r, n, 0.0)
                o = env.reset()[0] if trunc else n
            lr.update(args.batch_size, it, targs)
        sync(device)
        total += time.perf_counter() - t0
    return k * args.steps / total


def check_compiled(device, k=8, h=64, updates=20) -> bool:
    """Eager, compiled and (CUDA) graphed TD3 from one initialisation on the same batches and noise: the same losses
    and weights after `updates` updates (actor updates every second one), up to float rounding."""
    kinds = {"compiled": {"compile": True}} | ({"graphed": {"cudagraphs": True}} if device.type == "cuda" else {})
    hyper = {"gamma": 0.99, "tau": 0.005, "policy_noise": 0.2, "noise_clip": 0.5}
    agents = {}
    for name, opts in {"eager": {}, **kinds}.items():
        torch._dynamo.reset()
        torch.manual_seed(0)
        agents[name] = td3.TD3(k, 17, 6, (h, h), 3e-4, device, **opts)
    gen = torch.Generator(device=device).manual_seed(1)
    rand = lambda *shape: torch.randn(*shape, device=device, generator=gen)  # noqa: E731
    ok = True
    for it in range(updates):
        batch = (rand(k, 256, 17), rand(k, 256, 6).tanh(), rand(k, 256), rand(k, 256, 17), torch.zeros(k, 256, device=device))
        noise = rand(k, 256, 6) * 0.2
        losses = {name: a.update(batch, it % 2 == 1, **hyper, noise=noise) for name, a in agents.items()}
        for name in kinds:
            ok &= all(np.isclose(losses[name][n], v, rtol=1e-4, atol=1e-5) for n, v in losses["eager"].items())
    for name in kinds:
        diff = max(
            (x.detach() - y.detach()).abs().max().item()
            for net in ("actor", "critic")
            for x, y in zip(policy.tensors(agents["eager"].networks()[net]), policy.tensors(agents[name].networks()[net]))
        )
        ok &= diff < 1e-4
        print(f"check: {name} update vs eager after {updates} updates (K={k}, hidden {h}): max |weight difference| {diff:.2e}")
    print(f"check: {'PASS' if ok else 'FAIL'} (losses within rtol 1e-4, weights within 1e-4)", flush=True)
    return ok


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(args: Args) -> dict:
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = runio.resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"device: {name}; batch {args.batch_size}; {args.steps} timed steps per configuration; cheetah-vel envs")
    if args.check_only:
        raise SystemExit(0 if check_compiled(device) else 1)
    kinds = ["eager"] + (["compiled"] if args.compile else []) + (["graphed"] if args.compile and device.type == "cuda" else [])
    kinds += ["independent"]
    modes = [(m == "env+update", m) for m in ("update", "env+update") if m in args.modes]
    cols = [f"{mode[:6]}:{kind[:8]}" for _, mode in modes for kind in kinds]
    print(f"{'hidden':>6} {'K':>4} " + " ".join(f"{c:>15}" for c in cols) + f" {'compiled/eager':>15} {'eager/indep':>12}")
    rows = []
    for h in args.hidden:
        for k in args.ks:
            row = {"hidden": h, "k": k}
            for with_env, mode in modes:
                for kind in kinds:
                    if kind == "independent":
                        v = time_independent(k, h, args, device, with_env) if k <= args.skip_independent_above else float("nan")
                    else:
                        v = time_batched(k, h, args, device, with_env, kind != "eager", kind == "graphed")
                    row[f"{mode} {kind}"] = v
            rows.append(row)
            vals = [row[f"{m} {kind}"] for _, m in modes for kind in kinds]
            last = modes[-1][1]
            ratio = row.get(f"{last} compiled", float("nan")) / row[f"{last} eager"]
            indep = row[f"{last} eager"] / row[f"{last} independent"]
            print(f"{h:>6} {k:>4} " + " ".join(f"{v:>15.0f}" for v in vals) + f" {ratio:>15.2f} {indep:>12.2f}", flush=True)
    print("(aggregate expert-steps/s over K contexts: TD3 updates, with an environment step each in env+up)")
    return {"device": name, "rows": rows}


if __name__ == "__main__":
    main(tyro.cli(Args))
