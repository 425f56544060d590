"""Nothing lost when a run fails: --overwrite keeps the earlier run until the new one has succeeded, one writer per
--out-dir, NaN in loaded weights caught, and bad settings refused in one line before any work (the probe of issue 22,
its commands turned into tests, one table per class)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import collect
import hyperzero
import runio
import tasks
from conftest import ROOT

T = ["--learning-starts", "256", "--eval-interval", "0", "--eval-episodes", "1", "--torch-threads", "1"]


def files(d) -> dict:
    """Every file under d with its bytes: a run left byte-identical compares equal."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def cli(script, *argv, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, script, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def one_line(r, rc=2) -> str:
    assert r.returncode == rc and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


@pytest.fixture(scope="module")
def chain(tiny_experts, tmp_path_factory):
    """A finished chain: the tiny experts, their rollouts, a hyperzero.pt and an evaluation of it."""
    root = tmp_path_factory.mktemp("chain")
    shutil.copytree(tiny_experts, root / "experts")
    collect.main(collect.Args(experts=(str(root / "experts"),), episodes=1, out_dir=str(root / "rollouts"), device="cpu"))
    hz = dict(rollouts=str(root / "rollouts"), test_fraction=0.0, steps=10, embed_dim=8, policy_hidden=(8,), device="cpu")
    hyperzero.main(hyperzero.Args(**hz, out_dir=str(root / "hz"), batch_size=16, log_interval=10))
    r = cli(
        "evaluate.py", "--experts", root / "experts", "--policies", root / "hz", "--episodes", "1", "--out-dir", root / "eval"
    )
    assert r.returncode == 0, r.stderr
    return root


# ---------------------------------------------------------------------------------------------- data lost (1-3)
FAILING = {  # a stage that fails after it has claimed --out-dir, run with --overwrite into a finished run
    "td3, an allocation error": ("td3.py", "experts", ["--contexts", "0.5", "--hidden", "200000", "200000", *T], "out of memory"),
    "hyperzero, an allocation error": (
        "hyperzero.py",
        "hz",
        ["--rollouts", "{rollouts}", "--embed-dim", "2000000"],
        "out of memory",
    ),
    "evaluate, after all rollouts": (
        "evaluate.py",
        "eval",
        ["--experts", "{experts}", "--policies", "{hz}", "--episodes", "1", "--bootstrap-reps", "1000000000000"],
        "out of memory",
    ),
}


@pytest.mark.parametrize("script, run, argv, msg", FAILING.values(), ids=FAILING.keys())
def test_a_failed_overwrite_leaves_the_earlier_run_byte_identical(chain, tmp_path, script, run, argv, msg):
    shutil.copytree(chain / run, tmp_path / run)
    before = files(tmp_path / run)
    argv = [a.format(rollouts=chain / "rollouts", experts=chain / "experts", hz=chain / "hz") for a in argv]
    assert msg in one_line(cli(script, *argv, "--out-dir", tmp_path / run, "--overwrite"))
    assert files(tmp_path / run) == before
    assert msg in one_line(cli(script, *argv, "--out-dir", tmp_path / "new"))  # a new directory: no debris left
    assert not (tmp_path / "new").exists()


def test_sigterm_during_an_overwrite_puts_the_earlier_run_back(chain, tmp_path):
    shutil.copytree(chain / "experts", tmp_path / "run")
    before = files(tmp_path / "run")
    argv = ["td3.py", "--contexts", "0.5", "--total-timesteps", "100000", "--log-interval", "300", *T]
    p = subprocess.Popen([sys.executable, *argv, "--out-dir", tmp_path / "run", "--overwrite"], cwd=ROOT, stdout=subprocess.PIPE)
    while b"step" not in p.stdout.readline():  # it is training, into the directory it claimed
        assert p.poll() is None
    assert (tmp_path / "run" / ".previous").is_dir()
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 143 and files(tmp_path / "run") == before


def test_a_run_killed_mid_overwrite_is_named_not_overwritten(tmp_path):
    """kill -9 runs no clean-up: the earlier run stays set aside in .previous, and the next run says so."""
    (tmp_path / ".previous").mkdir()
    (tmp_path / ".previous" / "model.pt").write_text("the earlier run")
    with pytest.raises(runio.UserError, match=r"holds .*\.previous, an earlier run that an interrupted --overwrite set aside"):
        runio.prepare_out_dir(tmp_path, ("model.pt",), overwrite=True)
    assert (tmp_path / ".previous" / "model.pt").read_text() == "the earlier run"


def test_a_failure_in_process_is_undone_by_the_next_claim(tmp_path):
    out = tmp_path / "o"
    runio.prepare_out_dir(out, ("model.pt",))
    (out / "model.pt").write_text("old")
    runio.finish_out_dir(out)
    runio.prepare_out_dir(out, ("model.pt",), overwrite=True)
    (out / "model.pt").write_text("half")  # then the run raised: no finish_out_dir
    runio.prepare_out_dir(out, ("model.pt",), resume=True)  # the next claim puts the earlier run back first
    assert (out / "model.pt").read_text() == "old" and not (out / ".previous").exists()
    runio.finish_out_dir(out)


def test_one_writer_per_out_dir(chain, tmp_path):
    runio.prepare_out_dir(tmp_path / "busy", ("expert_*.pt",))  # this process writes there
    r = cli("td3.py", "--contexts", "0.5", "--total-timesteps", "300", *T, "--out-dir", tmp_path / "busy")
    assert "is being written by another run right now" in one_line(r)
    runio.finish_out_dir(tmp_path / "busy")
    # two runs started at once into one directory: exactly one writes it
    cmd = [sys.executable, "td3.py", "--total-timesteps", "300", *T, "--out-dir", tmp_path / "both"]
    ps = [
        subprocess.Popen([*cmd, "--contexts", c, "--seed", s], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for c, s in (("0.5", "1"), ("2.5", "2"))
    ]
    out = [(p.wait(120), p.stderr.read()) for p in ps]
    assert sorted(rc for rc, _ in out) == [0, 2], out
    assert any("being written by another run" in e or "already holds an earlier run" in e for _, e in out)
    assert len(list((tmp_path / "both").glob("expert_*.pt"))) == 1


# ---------------------------------------------------------------------------------------------- silent wrong results (4-6)
def test_nan_in_any_loaded_tensor_is_bad_data(chain, tmp_path):
    ck = runio.safe_load(chain / "hz" / "hyperzero.pt")
    name = next(k for k, v in ck["state_dict"].items() if v.is_floating_point())
    ck["state_dict"][name] = ck["state_dict"][name].clone().fill_(math.nan)
    shutil.copytree(chain / "hz", tmp_path / "hz")
    runio.atomic_save(ck, tmp_path / "hz" / "hyperzero.pt")
    line = one_line(
        cli("evaluate.py", "--experts", chain / "experts", "--policies", tmp_path / "hz", "--out-dir", tmp_path / "e")
    )
    assert f"bad data in {tmp_path / 'hz' / 'hyperzero.pt'}: state_dict.{name} holds NaN" in line
    assert not (tmp_path / "e").exists()


def test_nan_in_a_checkpoint_is_bad_data_on_resume(tiny_args, tmp_path):
    import td3

    td3.main(tiny_args(tmp_path / "run", total_timesteps=400))
    ck = runio.safe_load(tmp_path / "run" / "checkpoint.pt")
    ck["replay"]["rew"][0, 3] = math.nan
    runio.atomic_save(ck, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(runio.UserError, match=r"bad data in .*checkpoint.pt: replay.rew holds NaN"):
        td3.main(tiny_args(tmp_path / "run", total_timesteps=600, resume=True))


@pytest.mark.parametrize(
    "gym_id, kw",
    [("cleanhyper/cheetah-vel", {"task": "walker-walk", "goal": 2.0}), ("cleanhyper/cheetah-run", {"task": "metaworld"})],
)
def test_a_registered_id_fixes_its_task(gym_id, kw):
    with pytest.raises(runio.UserError, match="has no context 'task'"):
        gym.make(gym_id, **kw)


REPEATED = {
    "hyperzero --test-contexts": (
        "hyperzero.py",
        ["--rollouts", "{rollouts}", "--test-contexts", "2", "2.0"],
        "duplicate contexts: goal_2",
    ),
    "evaluate --contexts": (
        "evaluate.py",
        ["--experts", "{experts}", "--contexts", "0.5", "0.5"],
        "duplicate contexts: goal_0.5",
    ),
    "labels round": ("td3.py", ["--contexts", "1.0000001", "1.0000002"], "labels keep 6 significant digits"),
    "no update": (
        "td3.py",
        ["--total-timesteps", "200", "--learning-starts", "256"],
        "must be >= --batch-size 256 and < --total-timesteps 200",
    ),
}


@pytest.mark.parametrize("script, argv, msg", REPEATED.values(), ids=REPEATED.keys())
def test_repeated_contexts_and_empty_runs_are_refused(chain, tmp_path, script, argv, msg):
    argv = [a.format(rollouts=chain / "rollouts", experts=chain / "experts") for a in argv]
    assert msg in one_line(cli(script, *argv, "--out-dir", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


SETTINGS = {  # every setting of the suite and Slurm scripts, checked before the first stage starts
    "SPLIT=Hard": (["bash", "suite/hyperzero.sh", "walker-length"], {"SPLIT": "Hard"}, "SPLIT=Hard; valid: paper, hard"),
    "FIT=abc": (["bash", "suite/hyperzero.sh", "walker-length"], {"FIT": "abc"}, "FIT=abc must be a positive integer"),
    "APPROXIMATORS=hyperzer0": (["bash", "slurm/submit.sh"], {"APPROXIMATORS": "hyperzer0"}, "unknown approximator 'hyperzer0'"),
    "SHARDS=abc": (["bash", "slurm/submit.sh"], {"SHARDS": "abc"}, "SHARDS=abc must be a non-negative integer"),
    "--expert-success nan": (
        [sys.executable, "suite/genhyprl_table.py", "--expert-success", "nan"],
        {},
        "--expert-success must be",
    ),
    "--expert-success -5": ([sys.executable, "suite/genhyprl_table.py", "--expert-success", "-5"], {}, "in [0, 1], got -5"),
}


@pytest.mark.parametrize("cmd, env, msg", SETTINGS.values(), ids=SETTINGS.keys())
def test_suite_and_slurm_settings_are_checked_first(tmp_path, cmd, env, msg):
    env = os.environ | {"OUT": str(tmp_path / "suite"), "RUN": str(tmp_path / "run"), "PYTHON": sys.executable} | env
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert msg in one_line(r) and not (tmp_path / "suite").exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- messages and tracebacks (8-15)
def test_messages_name_the_file_or_flag_at_fault(chain, tmp_path):
    shutil.copytree(chain / "rollouts", tmp_path / "r")
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(man | {"gamma": math.nan}))
    line = one_line(cli("hyperzero.py", "--rollouts", tmp_path / "r", "--out-dir", tmp_path / "o"))
    assert f"bad data in {tmp_path / 'r' / 'manifest.json'}: 'gamma' is nan" in line
    line = one_line(cli("meta.py", "--rollouts", chain / "rollouts", "--model", "maml", "--inner-lr", "1e30", "--steps", "5",
                        "--test-fraction", "0", "--out-dir", tmp_path / "m"))  # fmt: skip
    assert "lower --learning-rate or --inner-lr" in line
    e = runio.safe_load(chain / "experts" / "expert_goal_2.pt")
    runio.atomic_save(e | {"context": {"goal": 4.0}}, tmp_path / "x" / "expert_goal_2.pt")
    line = one_line(cli("collect.py", "--experts", tmp_path / "x", "--out-dir", tmp_path / "c"))
    assert str(tmp_path / "x" / "expert_goal_2.pt") in line and "out of range" in line and not (tmp_path / "c").exists()


def test_one_line_instead_of_a_traceback(chain, tmp_path):
    assert "--gan-batch-size must be >= 2" in one_line(cli("hyplatent.py", "--data", chain / "rollouts", "--gan-batch-size", "1"))
    (tmp_path / "t" / "cheetah-speed" / "eval").mkdir(parents=True)
    (tmp_path / "t" / "cheetah-speed" / "eval" / "results.json").write_text("[{}]")
    (tmp_path / "t" / "cheetah-speed" / "eval" / "summary.json").write_text('{"summary": []}')
    assert "is not evaluate.py's results.json" in one_line(cli("suite/table.py", "--out", tmp_path / "t"))
    rows = [
        r | {"method": "hyplatent"} if r["method"] == "hyperzero" else r
        for r in json.loads((chain / "eval" / "results.json").read_text())
    ]
    (tmp_path / "vel").mkdir()
    (tmp_path / "vel" / "results.json").write_text(json.dumps(rows))  # a Cheetah-Vel evaluation of a generator
    assert "not a MetaWorld evaluation" in one_line(cli("suite/genhyprl_table.py", "--eval", tmp_path / "vel"))
    r = subprocess.run(f"ulimit -f 30; {sys.executable} collect.py --experts {chain / 'experts'} --out-dir {tmp_path / 'c'}",
                       shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "disk full writing" in one_line(r) and not (tmp_path / "c").exists()


@pytest.mark.skipif(bool(__import__("ctypes.util").util.find_library("OSMesa")), reason="libOSMesa is installed here")
def test_capture_video_without_osmesa_is_one_line(chain, tmp_path):
    r = cli("evaluate.py", "--experts", chain / "experts", "--capture-video", "--out-dir", tmp_path / "v")
    assert "libOSMesa is not installed" in one_line(r)


def test_safe_load_names_the_tensor(tmp_path):
    runio.atomic_save({"a": [torch.zeros(2), {"b": torch.tensor([1.0, math.inf])}]}, tmp_path / "x.pt")
    with pytest.raises(runio.UserError, match=r"bad data in .*x.pt: a\[1\].b holds NaN or infinite values"):
        runio.safe_load(tmp_path / "x.pt")
    runio.atomic_save({"a": torch.arange(3), "n": np.float64(1.0).item(), "t": time.time()}, tmp_path / "ok.pt")
    assert runio.safe_load(tmp_path / "ok.pt")["a"].tolist() == [0, 1, 2]
    assert tasks.parse_contexts("cheetah-vel", ["1.5", "2"])  # distinct contexts pass
