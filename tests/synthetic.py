"""A synthetic collect.py rollout set shared by the HyperZero and meta-learning tests: task cheetah-vel, context
'goal', expert actions a* = tanh((M0 + goal M1) s), so the policy is linear in the context before the tanh."""

import json
from pathlib import Path

import numpy as np

import runio

S, A = 4, 2
M0 = np.array([[1.0, -0.5, 0.3, 0.0], [0.2, 0.8, -0.6, 0.4]], np.float32)  # [A, S]
M1 = np.array([[-0.6, 0.4, 0.0, 0.5], [0.5, -0.3, 0.7, -0.4]], np.float32)


def write_linear_rollouts(root, goals, rows, seed, reward, terminal: bool) -> tuple[Path, dict]:
    """rows transitions per goal; reward(obs [N,S], goal [N]) -> [N]; Q* = sum(s); every row terminal or none."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    n = rows * len(goals)
    obs = rng.normal(size=(n, S)).astype(np.float32)
    g = np.repeat(np.asarray(goals, np.float32), rows)
    arrays = {
        "obs": obs,
        "action": np.tanh(np.einsum("nas,ns->na", M0[None] + g[:, None, None] * M1[None], obs)).astype(np.float32),
        "reward": reward(obs, g).astype(np.float32),
        "next_obs": rng.normal(size=(n, S)).astype(np.float32),
        "terminated": np.full(n, float(terminal), np.float32),
        "q": obs.sum(1),
        "context": g[:, None],
        "context_id": np.repeat(np.arange(len(goals)), rows).astype(np.int64),
        "episode": np.repeat(np.arange(len(goals)), rows).astype(np.int64),
    }
    for k, v in arrays.items():
        runio.atomic_save(v, root / f"{k}.npy")
    man = {"format": "cleanhyper-rollouts-v1", "task": "cheetah-vel", "context_names": ["goal"], "obs_dim": S, "act_dim": A}
    man |= {"contexts": [{"goal": float(x)} for x in goals], "gamma": 0.99, "counts": {"rows": n, "contexts": len(goals)}}
    (root / "manifest.json").write_text(json.dumps(man))
    return root, arrays
