"""slurm/: the expert job array and its dependent pipeline, on a real single-node Slurm started by
slurm/local_cluster.sh (skipped, with the reason, where Slurm is not installed or cannot start), and the same command
lines as plain bash with SLURM_ARRAY_TASK_ID set, which needs no Slurm."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
CONTEXTS = ("0.5", "1.5", "2.5")
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE", "BOOT_FAIL"}


def tiny_env(run: Path, **kw) -> dict:
    """The variables of slurm/submit.sh for a toy run: 2 shards of 3 cheetah-vel goals, 300 steps, hidden 16 16."""
    env = dict(
        os.environ,
        RUN=str(run),
        TASK="cheetah-vel",
        CONTEXTS=" ".join(CONTEXTS),
        TEST_CONTEXTS="1.5",
        STEPS="300",
        SHARDS="2",
        TD3_ARGS="--learning-starts 200 --batch-size 32 --hidden 16 16 --eval-interval 0 --eval-episodes 1 "
        "--checkpoint-interval 0 --log-interval 10000",
        COLLECT_ARGS="--episodes 1",
        APPROXIMATORS="hyperzero",
        HYPERZERO_ARGS="--steps 30",
        EVAL_ARGS="--episodes 1",
        PYTHON=sys.executable,
        TIME="00:10:00",
        CPUS="1",
        GPUS="0",
        PIPELINE_TIME="00:10:00",
        PIPELINE_CPUS="1",
        PIPELINE_GPUS="0",
    )
    env.update(kw)
    return env


def check_outputs(run: Path) -> None:
    """Each shard wrote its own experts, the shards' contexts are disjoint and cover the list, and evaluate.py scored
    every context."""
    shards = {}
    for i in range(2):
        files = sorted((run / "experts" / f"shard_{i}").glob("expert_*.pt"))
        assert files, f"shard {i} wrote no experts"
        shards[i] = {torch.load(f, weights_only=True)["context"]["goal"] for f in files}
    assert not shards[0] & shards[1], f"shards overlap: {shards}"
    assert shards[0] | shards[1] == {float(c) for c in CONTEXTS}
    rows = json.loads((run / "eval" / "results.json").read_text())
    for method in ("expert", "hyperzero"):
        assert {r["context"]["goal"] for r in rows if r["method"] == method} == {float(c) for c in CONTEXTS}, method
    assert {r["context"]["goal"] for r in rows if r["heldout"]} == {1.5}


def logs(run: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((run / "logs").glob("*.out")))


# ------------------------------------------------------------------------------------- without Slurm
def test_submit_refuses_more_shards_than_contexts(tmp_path):
    r = subprocess.run(
        ["bash", str(SLURM / "submit.sh")], env=tiny_env(tmp_path, SHARDS="4"), capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0 and "SHARDS=4 must be between 1 and the number of contexts (3)" in r.stderr


def test_local_cluster_says_what_is_missing(tmp_path):
    # an empty PATH: no Slurm, no munge
    r = subprocess.run(
        ["/bin/bash", str(SLURM / "local_cluster.sh"), "start", str(tmp_path)],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "apt-get install -y slurm-wlm munge" in r.stderr and "missing: munged" in r.stderr


def test_pipeline_rejects_unknown_approximator(tmp_path):
    r = subprocess.run(
        ["bash", str(SLURM / "pipeline.sbatch")],
        env=tiny_env(tmp_path, APPROXIMATORS="hyperzero hypformer"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "list hyplatent before it" in r.stderr
    r = subprocess.run(
        ["bash", str(SLURM / "pipeline.sbatch")], env=tiny_env(tmp_path, APPROXIMATORS="nope"), capture_output=True, text=True
    )
    assert r.returncode == 2 and "unknown approximator 'nope'" in r.stderr


def test_templates_as_plain_bash(tmp_path):
    """The array's command line for shard 0 and 1, then the dependent job's, run by bash as Slurm would run them."""
    run = tmp_path / "run"
    env = {k: v for k, v in tiny_env(run).items() if not k.startswith("SLURM_")}
    for i in range(2):
        r = subprocess.run(
            ["bash", str(SLURM / "experts.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, capture_output=True, text=True
        )
        assert r.returncode == 0, f"shard {i}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    r = subprocess.run(["bash", str(SLURM / "pipeline.sbatch")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"pipeline:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    check_outputs(run)


# ---------------------------------------------------------------------------------- on a real Slurm
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node cluster from slurm/local_cluster.sh in a temporary directory, on free ports; stopped afterwards."""
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (no sbatch on PATH; Debian: apt-get install -y slurm-wlm munge)")
    # not under pytest's tmp_path: munged wants every directory above its socket searchable by all, and those are 0700
    d = Path(tempfile.mkdtemp(prefix="cleanhyper-slurm-"))
    ctld_port = free_port()
    slurmd_port = next(p for p in iter(free_port, None) if p != ctld_port)
    env = dict(os.environ, SLURMCTLD_PORT=str(ctld_port), SLURMD_PORT=str(slurmd_port))
    r = subprocess.run(["bash", str(SLURM / "local_cluster.sh"), "start", str(d)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["bash", str(SLURM / "local_cluster.sh"), "stop", str(d)], env=env, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
        why = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        pytest.skip(f"slurm/local_cluster.sh could not start a cluster here: {why}")
    yield dict(env, SLURM_CONF=str(d / "slurm.conf"))
    subprocess.run(["bash", str(SLURM / "local_cluster.sh"), "stop", str(d)], env=env, capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def job_records(job: str, env: dict) -> list[dict]:
    """scontrol's records of a job (one per array task), as dicts of its Key=Value fields."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True, check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def wait_for(job: str, env: dict, timeout: float) -> list[dict]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        recs = job_records(job, env)
        if recs and all(r["JobState"] in DONE for r in recs):
            return recs
        time.sleep(1)
    raise AssertionError(f"job {job} not finished after {timeout} s: {[r['JobState'] for r in job_records(job, env)]}")


def test_echo_array_and_afterok_on_slurm(slurm_cluster, tmp_path):
    """The cluster itself: a 2-task array and a job that waits for it (afterok) run, in that order."""
    env = slurm_cluster

    def sbatch(*args):
        return subprocess.run(["sbatch", "--parsable", *args], env=env, capture_output=True, text=True, check=True).stdout.strip()

    array = sbatch("--array=0-1", f"--output={tmp_path}/a_%a.out", "--wrap", "echo task $SLURM_ARRAY_TASK_ID; sleep 1")
    after = sbatch(f"--dependency=afterok:{array}", f"--output={tmp_path}/b.out", "--wrap", "echo after")
    # a failed shard: the dependent job is cancelled (DependencyParameters=kill_invalid_depend), not left pending
    failing = sbatch("--array=0-1", "--output=/dev/null", "--wrap", "exit $SLURM_ARRAY_TASK_ID")
    never = sbatch(f"--dependency=afterok:{failing}", f"--output={tmp_path}/never.out", "--wrap", "echo never")
    recs = wait_for(array, env, 60)
    (b,) = wait_for(after, env, 60)
    assert [r["JobState"] for r in recs] == ["COMPLETED"] * 2 and b["JobState"] == "COMPLETED"
    assert b["StartTime"] >= max(r["EndTime"] for r in recs)  # ISO times compare as strings
    assert sorted((tmp_path / f"a_{i}.out").read_text().strip() for i in range(2)) == ["task 0", "task 1"]
    assert sorted(r["JobState"] for r in wait_for(failing, env, 60)) == ["COMPLETED", "FAILED"]
    (n,) = wait_for(never, env, 60)
    assert n["JobState"] == "CANCELLED" and n["Reason"] == "DependencyNeverSatisfied" and not (tmp_path / "never.out").exists()


def test_expert_array_and_pipeline_on_slurm(slurm_cluster, tmp_path):
    """slurm/submit.sh on the local cluster: 2 shards of tiny td3.py, then collect -> hyperzero -> evaluate."""
    run = tmp_path / "run"
    r = subprocess.run(["bash", str(SLURM / "submit.sh")], env=tiny_env(run, **slurm_cluster), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ids = dict(re.findall(r"(EXPERTS_JOB|PIPELINE_JOB)=(\d+)", r.stdout))
    (waiting,) = job_records(ids["PIPELINE_JOB"], slurm_cluster)  # the shards take seconds: it cannot have started yet
    assert waiting["Dependency"].startswith(f"afterok:{ids['EXPERTS_JOB']}") and waiting["JobState"] == "PENDING", waiting
    experts = wait_for(ids["EXPERTS_JOB"], slurm_cluster, 150)
    (pipeline,) = wait_for(ids["PIPELINE_JOB"], slurm_cluster, 150)
    assert [e["JobState"] for e in experts] == ["COMPLETED"] * 2, logs(run)
    assert pipeline["JobState"] == "COMPLETED", logs(run)
    assert pipeline["StartTime"] >= max(e["EndTime"] for e in experts), "the pipeline started before a shard ended"
    check_outputs(run)
