"""Training steps/s of HyperZero: weights generated once per context (hyperzero.py) vs once per sample (as the released
code, SAIC-MONTREAL/hyperzero: models/hypenet_core.py, does).

Same model, same batch, same loss (BC + value + TD, hyperzero.compute_losses); only where the weights are generated
differs. Random data shaped like Cheetah (S=17, A=6).

    python benchmarks/hyperzero_step.py --batch-size 512 --contexts 8 --steps 20
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hyperzero  # noqa: E402
import policy  # noqa: E402
import runio  # noqa: E402


@dataclass
class Args:
    batch_size: int = 512
    """rows per step"""
    contexts: int = 8
    """contexts per batch (rows per context = batch_size / contexts)"""
    obs_dim: int = 17
    """state size (Cheetah 17)"""
    act_dim: int = 6
    """action size"""
    embed_dim: int = 256
    """context embedding size (the released code: 256)"""
    policy_hidden: tuple[int, ...] = (256,)
    """generated net hidden sizes (the released code: one layer of 256)"""
    steps: int = 20
    """timed steps per mode (after 3 warm-up steps)"""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'"""
    torch_threads: int = 1
    """CPU threads for torch"""


def time_steps(args: Args, per_sample: bool, device) -> float:
    torch.manual_seed(0)
    S, A, cb = args.obs_dim, args.act_dim, args.contexts
    n = args.batch_size // cb
    pi_sizes = policy.layer_sizes(S, list(args.policy_hidden), A)
    q_sizes = policy.layer_sizes(S + A, list(args.policy_hidden), 1)
    model = hyperzero.build_model("hyperzero", 1, args.embed_dim, pi_sizes, q_sizes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as hyperzero.main
    r = lambda *shape: torch.randn(*shape, device=device)
    batch = (r(cb, 1), r(cb, n, S), r(cb, n, A).tanh(), r(cb, n), r(cb, n, S), torch.zeros(cb, n, device=device), r(cb, n))
    for i in range(args.steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        parts = hyperzero.compute_losses(model, batch, 0.99, use_td=True, per_sample=per_sample)
        loss = parts["bc"] + 0.01 * parts["value"] + 0.01 * parts["td"]
        runio.descend(opt, loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps / (time.perf_counter() - t0)


def main(args: Args) -> dict:
    torch.set_num_threads(args.torch_threads)
    device = runio.resolve_device(args.device)
    ctx = time_steps(args, False, device)
    per = time_steps(args, True, device)
    print(f"hyperzero train step, B={args.batch_size}, {args.contexts} contexts, S={args.obs_dim}, A={args.act_dim}, ", end="")
    print(f"embed {args.embed_dim}, policy hidden {list(args.policy_hidden)}, {device}, {args.torch_threads} thread(s)")
    print(f"| generation  | steps/s |\n|-------------|---------|\n| per context | {ctx:7.1f} |\n| per sample  | {per:7.1f} |")
    print(f"speed-up: {ctx / per:.1f}x")
    return {"per_context": ctx, "per_sample": per, "ratio": ctx / per}


if __name__ == "__main__":
    main(tyro.cli(Args))
