"""tasks.py — the contextual tasks: contexts, their rewards and model edits, one environment per context (no torch).

A context is a dict of named values. Reward contexts change only the reward (`speed`, the target speed of
cheetah-run and walker-walk; `goal`, the target velocity of cheetah-vel); the dynamics context `length` edits the
MuJoCo model before it is compiled. The families, as HyperZero's contextual suite and Cheetah-Vel define them
(docs/reference_code.md#tasks-and-contexts):

    cheetah-run   HalfCheetah, reward dm_control's run term with bounds [speed, inf)      1000 steps
    walker-walk   Walker2d, stand * (5 move + 1) / 6, never terminated early               1000 steps
    cheetah-vel   HalfCheetah, -|v - goal| - 0.05 |a|^2 (MACAW, Prompt-DT)                  200 steps
    metaworld     MetaWorld v3 tasks by name, the goal fixed by the seed, info["success"]   500 steps

Importing this module registers the first three with Gymnasium, so that any library that takes a Gymnasium id can
train on our contexts (keyword arguments are the context, checked as on the command line):

    import gymnasium as gym, tasks
    env = gym.make("cleanhyper/cheetah-run", speed=2.5, length=0.42)

They pass gymnasium.utils.env_checker.check_env (with warnings: unbounded observation spaces, a wrapped env; its
render check needs a GL library) and env.spec.make() rebuilds them, as vector environments need. MetaWorld's own
environments do not pass check_env upstream: the first observation of reset is outside MetaWorld's declared
observation space (MetaWorld 3.1.1, e.g. gym.make("Meta-World/MT1", env_name="reach-v3")); tests/test_tasks.py
documents it. We use MetaWorld as it is and do not register it.

`make_env` is what every stage calls. Bad input raises runio.UserError (one line, exit code 2).
"""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.registration import load_env_creator

from runio import UserError

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


# ---------------------------------------------------------------------------------------------
# Contexts: parsing, validation, labels
# ---------------------------------------------------------------------------------------------
def metaworld_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; valid tasks: {', '.join(TASKS)}")


def valid_values(task: str) -> str:
    """'speed in [0.1, 12.0], length in [0.2, 1.0]': the task's context variables and their ranges, for messages."""
    return ", ".join(f"{name} in [{lo}, {hi}]" for name, (_, lo, hi) in TASKS[task]["vars"].items())


def validated_context(task: str, items) -> dict:
    """(name, value) pairs -> a context with every variable of the task (defaults filled in), each value checked to
    be a known variable, set once, a number and inside its range."""
    vars_, items = TASKS[task]["vars"], list(items)
    ctx = {k: v[0] for k, v in vars_.items()}
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        given = ",".join(f"{n}={v}" for n, v in items)
        raise UserError(f"context '{given}' of '{task}' sets {', '.join(twice)} more than once; give each variable once")
    for name, value in items:
        if name not in vars_:
            raise UserError(f"task '{task}' has no context '{name}'; its contexts: {', '.join(vars_)}")
        lo, hi = vars_[name][1:]
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise UserError(f"context {name}='{value}' is not a number; valid: {name} in [{lo}, {hi}]") from None
        if not (lo <= x <= hi) or not math.isfinite(x):
            raise UserError(f"context {name}={x} of '{task}' is out of range; valid: [{lo}, {hi}]")
        ctx[name] = x
    return ctx


def parse_contexts(task: str, specs, seed: int = 0) -> list[dict]:
    """CLI strings ('2.5', 'speed=2,length=0.4', 'reach-v3') -> context dicts with every variable of the task.

    MetaWorld contexts are {"env_name": name, "goal_seed": seed}: the goal is fixed by the seed."""
    check_task(task)
    out = []
    for spec in specs:
        spec = str(spec).strip()
        if task == "metaworld":
            if spec not in metaworld_names():
                raise UserError(f"unknown MetaWorld task '{spec}'; valid: {' '.join(metaworld_names())}")
            out.append({"env_name": spec, "goal_seed": int(seed)})
            continue
        items = spec.split(",")
        if "=" not in spec and len(items) > 1:  # a bare vector: which number is which variable is not said
            raise UserError(
                f"context '{spec}' of '{task}' is {len(items)} numbers: give one number (its {next(iter(TASKS[task]['vars']))}) "
                f"or name=value pairs ({valid_values(task)}), one context per argument"
            )
        items = items if "=" in spec else [f"{next(iter(TASKS[task]['vars']))}={spec}"]
        for item in items:
            if "=" not in item:
                raise UserError(f"context '{spec}' of '{task}': '{item}' is not name=value ({valid_values(task)})")
        pairs = [(name.strip(), value) for name, _, value in (item.partition("=") for item in items)]
        out.append(validated_context(task, pairs))
    labels = [context_label(c) for c in out]
    if twice := sorted({lab for lab in labels if labels.count(lab) > 1}):
        raise UserError(
            f"duplicate contexts: {', '.join(twice)} given more than once (labels keep 6 significant digits, so 1.0000001 "
            "is goal_1); give each context once"
        )
    return out


def context_label(ctx: dict) -> str:
    """File-name-safe label: 'goal_1.5', 'speed_2_length_0.4', 'reach-v3'."""
    if "env_name" in ctx:
        return ctx["env_name"]
    return "_".join(f"{k}_{v:g}" for k, v in ctx.items())


def nearest(task: str, ctx: dict, pool: list[dict]) -> list[int]:
    """Indices of the contexts of pool nearest to ctx, every variable scaled by its valid range (ties all kept)."""
    span = {name: hi - lo for name, (_, lo, hi) in TASKS[task]["vars"].items()}
    d = [math.sqrt(sum(((c[n] - ctx[n]) / span[n]) ** 2 for n in span)) for c in pool]
    return [i for i, x in enumerate(d) if x <= min(d) + 1e-9]


def context_vector(ctx: dict) -> list[float]:
    """The numeric context an approximator sees (MetaWorld: none, the task name is the condition)."""
    return [float(v) for k, v in ctx.items() if k not in ("env_name", "goal_seed")]


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------
def tolerance(x, bounds=(0.0, 0.0), margin=0.0, sigmoid="gaussian", value_at_margin=0.1):
    """1 inside bounds, decaying outside to value_at_margin at distance margin: a numpy re-implementation of
    google-deepmind/dm_control: dm_control/utils/rewards.py tolerance (which this project does not depend on)."""
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
    """Equals 1 at x = 0 and v at x = 1 (dm_control/utils/rewards.py _sigmoids)."""
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


class ContextReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces the environment's reward with the context's. Recording its arguments lets env.spec.make() (vector
    environments, check_env) rebuild it."""

    def __init__(self, env, task: str, ctx: dict):
        gym.utils.RecordConstructorArgs.__init__(self, task=task, ctx=ctx)
        gym.Wrapper.__init__(self, env)
        self.task, self.ctx = task, ctx

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        v = info["x_velocity"]
        if self.task == "cheetah-vel":  # MACAW / Prompt-DT: -|v - goal| - 0.05 |a|^2
            reward = -abs(v - self.ctx["goal"]) - 0.05 * float(np.sum(np.square(action)))
        elif self.task == "cheetah-run":  # contextual-control-suite suite/cheetah.py: run with bounds [speed, inf)
            s = self.ctx["speed"]
            reward = tolerance(v, (s, np.inf), margin=s, sigmoid="linear", value_at_margin=0.1)
        else:  # walker-walk, contextual-control-suite suite/walker.py: stand * (5 move + 1) / 6
            qpos = self.env.unwrapped.data.qpos
            standing = tolerance(qpos[1], (1.2, np.inf), margin=0.6)  # torso height, gaussian
            upright = (1 + np.cos(qpos[2])) / 2  # torso zz: cosine of the pitch
            stand = (3 * standing + upright) / 4
            s = self.ctx["speed"]
            move = tolerance(v, (s, np.inf), margin=s, sigmoid="linear", value_at_margin=0.1)
            reward = stand * (5 * move + 1) / 6
        return obs, float(reward), terminated, truncated, info


# ---------------------------------------------------------------------------------------------
# Dynamics: the length context
# ---------------------------------------------------------------------------------------------
def edited_model(task: str, length: float) -> mujoco.MjModel:
    """Compiled model with the length context applied through MjSpec, as SAIC-MONTREAL/contextual-control-suite:
    contextual_control_suite/suite/cheetah.py and walker.py do with lxml. Cheetah: torso half-length L, head at
    L+0.1, thighs at +-L; the XML's settotalmass=14 holds, so total mass is 14 kg for every L, redistributed towards
    the torso. Walker: torso capsule half-length L, hips not moved (as that suite); no settotalmass, so the torso
    gets heavier. The spec is compiled directly: MjSpec.to_xml() in MuJoCo 3.3.0 drops settotalmass."""
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


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------
def family_env(_family: str, render_mode: str | None = None, **context) -> gym.Env:
    """Entry point of gym.make("cleanhyper/<task>", **context): the MuJoCo env of the context, its reward replaced.
    gym.make adds the time limit of the family. The id fixes the family (its registered _family; a task= keyword is
    refused as a context variable the family does not have)."""
    task = _family
    ctx = validated_context(task, context.items())
    env_cls = load_env_creator(gym.spec(TASKS[task]["gym_id"]).entry_point)
    kw = {"render_mode": render_mode}
    if task == "walker-walk":
        kw["terminate_when_unhealthy"] = False  # dm_control's walker never terminates early
    if "length" in ctx:
        env_cls = _with_model(env_cls, edited_model(task, ctx["length"]))
    return ContextReward(env_cls(**kw), task, ctx)


FAMILIES = ("cheetah-run", "walker-walk", "cheetah-vel")
for _task in FAMILIES:
    if f"cleanhyper/{_task}" not in gym.registry:
        gym.register(
            f"cleanhyper/{_task}",
            entry_point=f"{__name__}:family_env",
            kwargs={"_family": _task},
            max_episode_steps=TASKS[_task]["steps"],
        )


def make_env(task: str, ctx: dict, seed: int = 0, render_mode: str | None = None) -> gym.Env:
    """One environment of `task` in context `ctx` (a dict from parse_contexts); its action space seeded by `seed`
    (uniform-random actions). Call reset(seed=...)."""
    check_task(task)
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
    else:
        env = gym.make(f"cleanhyper/{task}", render_mode=render_mode, disable_env_checker=True, **ctx)
    env.action_space.seed(seed)
    return env
