"""Shared tiny fixtures (each builds its data in a temporary directory in a few seconds)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import td3

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # the small nets here are fastest on one thread, and a loaded 2-core machine stays usable


def tiny_td3_args(out, **kw) -> td3.Args:
    """td3.Args of a toy run: two cheetah-vel goals, 600 steps (200 random), hidden 16 16, a checkpoint every 200."""
    base = dict(
        task="cheetah-vel",
        contexts=("0.5", "2.0"),
        total_timesteps=600,
        learning_starts=200,
        batch_size=32,
        hidden=(16, 16),
        eval_interval=0,
        eval_episodes=2,
        checkpoint_interval=200,
        log_interval=10_000,
        out_dir=str(out),
    )
    return td3.Args(**(base | kw))


@pytest.fixture
def tiny_args():
    """tiny_td3_args(out, **overrides)"""
    return tiny_td3_args


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory):
    """Two cheetah-vel experts (goal 0.5, 2.0) from a real 400-step td3.py run: hidden 16 16, 3 snapshots each."""
    out = tmp_path_factory.mktemp("experts")
    kw = dict(total_timesteps=400, learning_starts=300, eval_episodes=1, checkpoint_interval=0)
    td3.main(tiny_td3_args(out, **kw, snapshot_interval=100, snapshot_start=200))
    return out


def refused_cli(script: str, *argv) -> str:
    """Run `python SCRIPT ARGV...` in the repository as a user would: bad input must exit 2 with one line on stderr and
    no traceback. Returns that line."""
    p = subprocess.run([sys.executable, script, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr.strip()


@pytest.fixture
def refused():
    """refused_cli(script, *argv) -> the one line of a refused command"""
    return refused_cli
