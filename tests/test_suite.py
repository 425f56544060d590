"""suite/: the HyperZero benchmark's families (contexts valid, held-out contexts inside the training range) and
suite/table.py's tables from evaluate.py's outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import policy  # noqa: E402
import runio  # noqa: E402
import stats
import tasks

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "suite"))
import table  # noqa: E402


def families(split="paper") -> dict:
    env = {"PYTHON": sys.executable, "SPLIT": split}
    out = subprocess.run(["bash", "suite/hyperzero.sh", "--list"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.strip().splitlines()]
    return {name: (task, int(steps), ctx.split(), held.split()) for name, task, steps, ctx, held in rows}


def test_families_are_the_papers_and_hold_out_inside_the_range():
    fams = families()
    assert list(fams) == list(table.FAMILIES)
    for name, (task, steps, ctx, held) in fams.items():
        contexts, test = tasks.parse_contexts(task, ctx), tasks.parse_contexts(task, held)
        labels = [tasks.context_label(c) for c in contexts]
        assert len(set(labels)) == len(labels) and steps > 0
        assert {tasks.context_label(c) for c in test} < set(labels), name  # held out: some, not all, of the contexts
        for var in evaluate.varying([{"context": c} for c in contexts]):  # strictly inside the range of each variable
            lo, hi = min(c[var] for c in contexts), max(c[var] for c in contexts)
            assert all(lo < c[var] < hi for c in test), (name, var)
    # what varies is what the family's name says
    assert {n: evaluate.varying([{"context": c} for c in tasks.parse_contexts(t, x)]) for n, (t, _, x, _) in fams.items()} == {
        "cheetah-speed": ["speed"], "cheetah-length": ["length"], "cheetah-both": ["speed", "length"],
        "walker-speed": ["speed"], "walker-length": ["length"],
    }  # fmt: skip
    assert fams["cheetah-speed"][2][0] == "0.5" and fams["cheetah-length"][2][-1] == "speed=10,length=0.7"


def test_hard_split_holds_out_most_contexts_inside_the_trained_ones():
    paper = families()
    for name, (task, _, ctx, held) in families("hard").items():
        assert ctx == paper[name][2]  # the same experts
        contexts, test = tasks.parse_contexts(task, ctx), tasks.parse_contexts(task, held)
        labels = {tasks.context_label(c) for c in test}
        train = [c for c in contexts if tasks.context_label(c) not in labels]
        assert (
            0.7 <= len(test) / len(contexts) <= 0.8
            and len(labels) == len(test)
            and labels < {tasks.context_label(c) for c in contexts}
        )
        for var in evaluate.varying([{"context": c} for c in contexts]):  # inside the box of the trained contexts
            assert all(min(c[var] for c in train) <= t[var] <= max(c[var] for c in train) for t in test), (name, var)


def test_unknown_family_refused_before_any_work(tmp_path):
    out = subprocess.run(
        ["bash", "suite/hyperzero.sh", "cheetah-speed", "nosuch"],
        cwd=ROOT, capture_output=True, text=True, env={"PYTHON": sys.executable, "OUT": str(tmp_path / "o"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 2 and "unknown family 'nosuch'; valid: cheetah-speed" in out.stderr
    assert not (tmp_path / "o").exists()


def test_missing_shared_start_refused_before_any_work(tmp_path):
    env = {"PYTHON": sys.executable, "OUT": str(tmp_path / "o"), "PATH": "/usr/bin:/bin", "INIT_FROM": str(tmp_path / "no.pt")}
    out = subprocess.run(["bash", "suite/hyperzero.sh", "walker-length"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 2 and f"INIT_FROM={tmp_path / 'no.pt'}: no such file" in out.stderr
    assert not (tmp_path / "o").exists()


def fake_eval(d: Path, scores: dict, expert=(500.0, 400.0, 300.0), rnd=100.0, reference=(500.0, 400.0, 340.0)):
    """evaluate.py's outputs for a family of 3 contexts (the last held out) from {method: {run: score}}; the best
    expert on context c (340) is 1.2x its own (300) in R - random."""
    rows = []
    for i, lab in enumerate(("a", "b", "c")):
        held = i == 2
        rows += [{"method": "random", "run": None, "label": lab, "heldout": held, "return_mean": rnd, "normalized": 0.0}]
        ret = expert[i]
        rows += [{"method": "expert", "run": None, "label": lab, "heldout": held, "return_mean": ret, "normalized": 1.0}]
        for m, runs in scores.items():
            for run, s in runs.items():
                r = {"method": m, "run": run, "label": lab, "heldout": held, "normalized": s + 0.1 * i}
                rows.append({**r, "return_mean": rnd + r["normalized"] * (ret - rnd)})
    for r in rows:
        r["success_rate"], r["reference_return"] = None, reference["abc".index(r["label"])]
    (d / "eval").mkdir(parents=True)
    (d / "eval" / "results.json").write_text(json.dumps(rows))
    (d / "eval" / "summary.json").write_text(json.dumps({"summary": stats.summarize(rows, reps=200)}))


def test_table_reads_every_evaluated_family(tmp_path):
    fake_eval(tmp_path / "cheetah-speed", {"hyperzero": {"s1": 0.5, "s2": 0.7}, "mlp": {"s1": 0.1, "s2": 0.1}})
    fake_eval(tmp_path / "walker-length", {"hyperzero": {"s1": 0.2, "s2": 0.2}, "nearest-expert": {None: 0.6}})
    text = table.main(table.Args(out=str(tmp_path)))
    assert (tmp_path / "table.md").read_text() == text + "\n"
    # expert returns, random, and the contexts whose reference is > 10 % above their own expert (c: 240 / 200)
    assert "| cheetah-speed | 3 (1) | 450 (400-500) | 300 (300-300) | 100 | 1 of 3 (max 1.20) |" in text
    assert "| nearest-expert | - | 0.80 [0.80, 0.80] |" in text  # the yardstick's row, where it was evaluated
    assert "| method | cheetah-speed | walker-length |" in text  # the families that were evaluated, in order
    assert "| hyperzero | 0.80 [0.70, 0.90] | 0.40 [0.40, 0.40] |" in text  # held out (context c): 0.5/0.7 + 0.2
    assert "| mlp | 0.30 [0.30, 0.30] | - |" in text
    # the published metric: held-out return / expert return = (100 + 0.8 * 200) / 300 on cheetah-speed
    assert "| hyperzero: return / expert return | 0.87 | 0.60 |" in text
    assert "| HyperZero, published (HyPoGen's re-run, DMC) | 0.80 | 0.72 |" in text
    fake_eval(tmp_path / "cheetah-speed" / "hard", {"hyperzero": {"s1": 0.0, "s2": 0.2}})
    hard = table.main(table.Args(out=str(tmp_path), split="hard"))
    assert "| hyperzero | 0.30 [0.20, 0.40] |" in hard and (tmp_path / "table_hard.md").is_file()


def test_table_errors(tmp_path):
    with pytest.raises(runio.UserError, match="no such directory"):
        table.main(table.Args(out=str(tmp_path / "none")))
    with pytest.raises(runio.UserError, match="no family evaluated yet"):
        table.main(table.Args(out=str(tmp_path)))
    with pytest.raises(runio.UserError, match="unknown --split 'easy'; valid: paper, hard"):
        table.main(table.Args(out=str(tmp_path), split="easy"))
    (tmp_path / "cheetah-both" / "eval").mkdir(parents=True)
    for f in ("summary.json", "results.json"):
        (tmp_path / "cheetah-both" / "eval" / f).write_text("{truncated")
    with pytest.raises(runio.UserError, match="cannot read .*cheetah-both/eval"):
        table.main(table.Args(out=str(tmp_path)))


def genhyprl_split() -> tuple[list[str], list[str]]:
    out = subprocess.run(["bash", "suite/genhyprl.sh", "--list"], cwd=ROOT, capture_output=True, text=True)
    split = dict(line.split("|") for line in out.stdout.strip().splitlines())
    return split["seen"].split(), split["unseen"].split()


def test_genhyprl_split_is_the_papers_8_seen_and_8_unseen_metaworld_tasks():
    seen, unseen = genhyprl_split()
    assert len(set(seen)) == len(set(unseen)) == 8 and not set(seen) & set(unseen)
    assert {"window-open-v3", "faucet-close-v3"} <= set(seen) and {"drawer-close-v3", "faucet-open-v3"} <= set(unseen)
    assert set(seen + unseen) <= set(tasks.metaworld_names())
    submit = (ROOT / "slurm" / "submit.sh").read_text()  # the cluster run holds out the same tasks
    assert f'SEEN="{" ".join(seen)}"' in submit and f'UNSEEN="{" ".join(unseen)}"' in submit


def test_genhyprl_refuses_an_unknown_stage_before_any_work(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}
    out = subprocess.run(["bash", "suite/genhyprl.sh", "experts", "all"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "experts seen|unseen" in out.stderr and not (tmp_path / "out").exists()


def test_genhyprl_table_splits_seen_unseen_and_failed_experts(tmp_path):
    """Known answer: 2 seeds x (2 seen + 2 unseen tasks); one seen and one unseen expert fail. The succeeding tasks'
    cells are the mean over seeds of each task's success, the failing ones are reported apart."""
    import genhyprl_table

    rows = []
    expert = {"a-v3": 1.0, "b-v3": 0.0, "c-v3": 0.9, "d-v3": 0.2}
    held = {"a-v3": False, "b-v3": False, "c-v3": True, "d-v3": True}
    for lab, s in expert.items():
        rows.append({"method": "expert", "run": None, "label": lab, "heldout": held[lab], "success_rate": s})
    got = {("hyplatent", 1): [0.6, 0.0, 0.2, 0.0], ("hyplatent", 2): [0.8, 0.1, 0.0, 0.0]}
    got |= {("hypformer", 1): [1.0, 0.0, 0.4, 0.5], ("hypformer", 2): [1.0, 0.0, 0.6, 0.5]}
    for (m, run), sr in got.items():
        for lab, s in zip(expert, sr):
            rows.append({"method": m, "run": str(run), "label": lab, "heldout": held[lab], "success_rate": s,
                         "top5_success": min(1.0, 2 * s), "top10_success": s})  # fmt: skip
    for run in (1, 2):  # evaluate.py's yardstick: one policy per HypLatent run on each unseen task (no top-k keys)
        rows += [{"method": "nearest-expert", "run": str(run), "label": lab, "heldout": True, "success_rate": s}
                 for lab, s in (("c-v3", 1.0), ("d-v3", 0.0))]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(rows))
    text = genhyprl_table.main(genhyprl_table.Args(eval=str(tmp_path)))
    assert "| hyplatent | seen | 1 of 2 | 70.0 [60.0, 80.0] | 100.0 | 70.0 | 51 | 100 | 100 |" in text
    assert "| hypformer | unseen | 1 of 2 | 50.0 [40.0, 60.0] | 90.0 | 50.0 | 19.8 | 87.5 | 80.63 |" in text
    assert "| hypformer | unseen | 1 | 50.0 [50.0, 50.0] | 100.0 | 50.0 |" in text  # d-v3, its expert failed
    assert "| nearest-expert | unseen | 1 of 2 | 100.0 [100.0, 100.0] | 100.0 | 100.0 | - | - | - |" in text
    assert "nearest-expert | seen" not in text and "| `a-v3` | seen | 1.00 | 0.70 | 1.00 | - |" in text
    assert (
        "| `c-v3` | unseen | 0.90 | 0.10 | 0.50 | 1.00 |" in text and (tmp_path / "genhyprl_table.md").read_text() == text + "\n"
    )
    # an evaluation of HypLatent runs alone: no HypFormer column or rows
    (tmp_path / "results.json").write_text(json.dumps([r for r in rows if r["method"] != "hypformer"]))
    text = genhyprl_table.main(genhyprl_table.Args(eval=str(tmp_path)))
    assert "hypformer" not in text and "| task | split | expert | hyplatent | nearest-expert |" in text
    with pytest.raises(runio.UserError, match="results.json is missing"):
        genhyprl_table.main(genhyprl_table.Args(eval=str(tmp_path / "none")))
    for bad in ("{not json", '{"method": "expert"}', "[1, 2]"):  # damaged, not a list, not rows
        (tmp_path / "results.json").write_text(bad)
        with pytest.raises(runio.UserError, match="not a results.json written by evaluate.py"):
            genhyprl_table.main(genhyprl_table.Args(eval=str(tmp_path)))


def test_genhyprl_generators_take_a_retry_expert_where_one_exists_and_refuse_a_seen_task_with_none(tmp_path):
    seen, unseen = genhyprl_split()
    for d, names in (("experts_seen", seen), ("experts_unseen", unseen), ("experts_retry_1", [seen[2], unseen[5]])):
        (tmp_path / d).mkdir()
        for t in names:
            (tmp_path / d / f"expert_{t}.pt").touch()
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}
    out = subprocess.run(["bash", "suite/genhyprl.sh", "--experts"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    chosen = [Path(p) for p in out.stdout.split()]
    assert [p.name for p in chosen] == [f"expert_{t}.pt" for t in seen + unseen]  # one file a task, in the split's order
    assert [p.parent.name for p in chosen] == [
        "experts_retry_1" if t in (seen[2], unseen[5]) else "experts_seen" if t in seen else "experts_unseen"
        for t in seen + unseen
    ]
    (tmp_path / "experts_unseen" / f"expert_{unseen[0]}.pt").unlink()  # an unseen task gives no data, only its demo:
    out = subprocess.run(["bash", "suite/genhyprl.sh", "--experts"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.stdout.split()[len(seen)] == f"experts/metaworld/expert_{unseen[0]}.pt"  # the committed expert
    (tmp_path / "experts_seen" / f"expert_{seen[0]}.pt").unlink()  # a seen task with no expert (no data): refused, by name
    for stage in (["--experts"], ["generators"]):
        out = subprocess.run(["bash", "suite/genhyprl.sh", *stage], cwd=ROOT, capture_output=True, text=True, env=env)
        assert out.returncode == 2 and f"no expert of {seen[0]}" in out.stderr, stage
    assert not (tmp_path / "rollouts").exists()


PUBLISHED = ROOT / "experts" / "metaworld"


def test_published_metaworld_experts_are_the_16_tasks_and_replay_their_evaluation():
    """The committed experts (docs/results_experts.md): one per task of the paper's split, one architecture, and each
    one's deterministic evaluation, replayed from its file, gives the success and return recorded in it."""
    seen, unseen = genhyprl_split()
    experts = policy.load_experts(PUBLISHED)
    assert sorted(e["label"] for e in experts) == sorted(seen + unseen)
    assert all(e["hidden"] == [64, 64] and e["step"] > 0 for e in experts)
    for e in experts:
        r = policy.evaluate_policy("metaworld", e["context"], policy.expert_layers(e), 1, e["eval_seed"])
        assert r["success_rate"] == e["eval_success"], e["label"]
        assert r["return_mean"] == pytest.approx(e["eval_return"], rel=1e-4), e["label"]


def test_genhyprl_retry_before_the_first_expert_runs_is_refused_before_any_work(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}
    out = subprocess.run(
        ["bash", "suite/genhyprl.sh", "experts", "retry", "0/2"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert out.returncode == 2 and "run 'experts seen' and 'experts unseen' first" in out.stderr
    assert not (tmp_path / "out").exists()
