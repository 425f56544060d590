"""Shared tiny fixtures (each builds its data in a temporary directory in a few seconds)."""

import pytest
import torch

import td3

torch.set_num_threads(1)  # the small nets here are fastest on one thread, and a loaded 2-core machine stays usable


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory):
    """Two cheetah-vel experts (goal 0.5, 2.0) from a real 400-step td3.py run: hidden 16 16, 3 snapshots each."""
    out = tmp_path_factory.mktemp("experts")
    args = td3.Args(
        task="cheetah-vel",
        contexts=("0.5", "2.0"),
        total_timesteps=400,
        learning_starts=300,
        batch_size=32,
        hidden=(16, 16),
        eval_interval=0,
        eval_episodes=1,
        snapshot_interval=100,
        snapshot_start=200,
        checkpoint_interval=0,
        log_interval=10_000,
        out_dir=str(out),
    )
    td3.main(args)
    return out
