"""collect.py — roll TD3 experts (and their training snapshots) out into plain .npy datasets.

HyperZero's dataset (as SAIC-MONTREAL/hyperzero's eval.py in sl_data mode; docs/reference_code.md#hyperzero-dataset):
every expert is rolled out deterministically and each step stores (s, a* = pi(s), r, s', terminated, Q*(s, a*), c).
Gen-HypRL's behaviour data: every actor snapshot td3.py saved is rolled out too and stored as (flat params,
Make-An-Agent trajectory feature, post-success states); docs/reference_code.md#gen-hyprl-policy-and-data.

    python collect.py --experts runs/vel/experts --episodes 10 --seed 1 --out-dir runs/vel/rollouts
    python collect.py --experts runs/mw/shard_* --out-dir runs/mw/rollouts     # the shards of a sweep, merged

Writes into --out-dir (float32 unless noted, rows context-major, load with np.load(allow_pickle=False)):
  obs [N,S]  action [N,A]  reward [N]  next_obs [N,S]  terminated [N]  q [N]  context [N,C]
  context_id [N] int64 (index into manifest["contexts"])  episode [N] int64  manifest.json
  behaviour/  params [M,P]  param_context_id [M] int64  param_context [M,C]  param_step [M] int64
              param_return [M]  param_success [M]  traj [M,20*(S+3A)]  post_success [M,3S]
              post_success_step [M] int64  manifest.json
Episode e of expert i resets with seed + 10000*i + e, so policy.evaluate_policy(task, ctx, actor, E, seed + 10000*i)
replays exactly the episodes stored here. manifest.json is written last: a set without it is incomplete.
The readers of both sets live here too, beside the writer: load_rollouts (hyperzero.py, meta.py) and load_behaviour
(hyplatent.py, hypformer.py), each checking every file and naming what is wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import policy
import runio
import tasks
from policy import rollout  # noqa: F401  (collect.rollout: the one episode loop, in policy.py)
from runio import UserError

FORMAT = "cleanhyper-rollouts-v1"
BEHAVIOUR_FORMAT = "cleanhyper-behaviour-v1"
ROLLOUT_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "q", "context", "context_id")
# the manifest entries the training stages read (load_rollouts), and their JSON types
ROLLOUT_MANIFEST = {"task": str, "context_names": list, "contexts": list, "obs_dim": int, "act_dim": int, "gamma": (int, float)}
TRAJ_STEPS = list(range(0, 60, 3))  # Make-An-Agent's trajectory feature: t = 0, 3, ..., 57 (20 blocks)
POST_SUCCESS_RULE = (
    "s_m, s_{m+1}, s_{m+2} of the first episode, where s_m is the first state reached by a step whose info['success'] "
    "is true (m >= 1; indices past the last state s_T are clamped to T); when the episode never succeeds, or the task "
    "has no success signal (cheetah-*, walker-*), the last 3 states s_{T-2}, s_{T-1}, s_T; post_success_step is m or -1"
)


@dataclass
class Args:
    experts: tuple[str, ...] = ("runs/td3",)
    """directories (or files) of expert_*.pt written by td3.py; several shards of one sweep merge (--experts
    runs/mw/shard_*), their contexts ordered by label, each expert's snapshots read from its own directory"""
    episodes: int = 10
    """deterministic episodes per expert (the HyperZero code: 10)"""
    seed: int = 1
    """episode e of expert i resets with seed + 10000*i + e"""
    out_dir: str = "runs/rollouts"
    """everything this run writes goes here"""
    overwrite: bool = False
    """replace an earlier run's outputs in --out-dir (they are removed before this run starts)"""
    snapshots: bool = True
    """also roll out snapshots_<label>.npy (and each final actor) into out_dir/behaviour for Gen-HypRL"""
    snapshot_episodes: int = 1
    """episodes per snapshot; traj and post_success come from the first one"""
    device: str = "auto"
    """'auto' (cuda when present), 'cpu' or 'cuda'"""
    torch_threads: int = 0
    """CPU threads for torch (0: torch's default, one per core: fastest for one run alone; give 1 to each of several
    runs sharing the cores)"""


# ---------------------------------------------------------------------------------------------
# Reading files: every file a stage reads is checked for what it needs; what is wrong is one UserError naming the file
# ---------------------------------------------------------------------------------------------
KINDS = {"f": "floating-point", "iu": "integer"}


def load_array(path, kind: str = "f", ndim: int | None = None, finite: bool = True) -> np.ndarray:
    """One .npy, loaded without pickle. A missing, truncated or object-dtype file, values of another kind (`kind`: 'f'
    float, 'iu' integer), another rank, or (float, `finite`) a NaN or inf becomes a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated (EOFError, ValueError), object dtype (needs pickle: refused), not an .npy at all
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read {path}: not a complete .npy array of numbers ({why})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in kind:
        raise UserError(f"{path} holds {getattr(a, 'dtype', type(a).__name__)} values; expected {KINDS[kind]} values")
    if ndim is not None and a.ndim != ndim:
        raise UserError(f"{path} has shape {a.shape}; expected an array of {ndim} dimension{'s' * (ndim != 1)}")
    if finite and kind == "f" and not np.isfinite(a).all():
        raise UserError(f"bad data in {path}: {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return a


def read_manifest(path, fields: dict) -> dict:
    """A JSON object written by collect.py, with `fields` (name -> type or tuple of types) present and of their type."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        man = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON (truncated or damaged: {e}); rerun collect.py") from None
    if not isinstance(man, dict):
        raise UserError(f"{path} holds a JSON {type(man).__name__}, not the object collect.py writes")
    for key, types in fields.items():
        if key not in man:
            raise UserError(f"{path} has no {key!r} entry; it was not written by this collect.py (rerun it)")
        if not isinstance(man[key], types) or isinstance(man[key], bool):
            want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise UserError(f"{path}: {key!r} is {man[key]!r:.60}; expected a {want}")
        if isinstance(man[key], float) and not math.isfinite(man[key]):
            raise UserError(f"bad data in {path}: {key!r} is {man[key]}")
    return man


def load_rollouts(path) -> tuple[dict, dict[str, np.ndarray]]:
    """manifest.json + the arrays main wrote (hyperzero.py's and meta.py's data), checked for what training needs:
    the manifest's entries and their types, every array's dtype (float, context_id integer), shape (the manifest's
    rows and sizes) and finiteness. Anything else is one UserError naming the file and what is wrong."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise UserError(f"no rollouts at {path} (manifest.json missing: run collect.py, or it was interrupted)")
    man = read_manifest(mf, {"format": str, **ROLLOUT_MANIFEST, "counts": dict})
    if man["format"] != FORMAT:
        raise UserError(f"{mf} is not a collect.py rollout set (format {man['format']!r}, want {FORMAT!r})")
    n = man.get("counts", {}).get("rows") if isinstance(man.get("counts"), dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserError(f"{mf}: counts.rows is {n!r}; expected the number of rows (rerun collect.py)")
    names = man["context_names"]
    for i, ctx in enumerate(man["contexts"]):
        if not isinstance(ctx, dict) or not all(
            isinstance(ctx.get(k), (int, float)) and not isinstance(ctx.get(k), bool) and math.isfinite(ctx[k]) for k in names
        ):
            raise UserError(f"bad data in {mf}: context {i} is {ctx!r}; expected finite values of {names}")
    S, A, C = man["obs_dim"], man["act_dim"], len(names)
    want = {"obs": (n, S), "action": (n, A), "reward": (n,), "next_obs": (n, S), "terminated": (n,), "q": (n,), "context": (n, C)}
    want["context_id"] = (n,)
    arrays = {}
    for f in ROLLOUT_FIELDS:  # loaded without pickle, of their kind, finite (load_array), then their shapes
        file = path / f"{f}.npy"
        a = load_array(file, kind="iu" if f == "context_id" else "f")
        if a.shape != want[f]:
            raise UserError(
                f"{file} has shape {a.shape} but the manifest says {want[f]}: rollouts at {path} are inconsistent with"
                " their manifest (mixed sets? rerun collect.py)"
            )
        arrays[f] = a
    if n == 0 or arrays["context_id"].min() < 0 or arrays["context_id"].max() >= len(man["contexts"]):
        raise UserError(f"rollouts at {path}: context_id outside the manifest's {len(man['contexts'])} contexts")
    if C == 0:
        raise UserError(f"task '{man['task']}' has no numeric context (MetaWorld): HyperZero needs one")
    return man, arrays


def load_behaviour(path) -> dict:
    """ROLLOUTS/manifest.json + ROLLOUTS/behaviour/*.npy -> dict of tensors (hyplatent.py's data). Every file is
    checked for what the Gen-HypRL stages need (keys, dtypes, shapes, finite values, against each other): what is
    wrong is one UserError naming the file."""
    root = Path(path)
    root = root.parent if root.is_file() else root
    bdir = root / "behaviour"
    if not (root / "manifest.json").is_file() or not (bdir / "manifest.json").is_file():
        raise UserError(f"no behaviour data at {root} (expected manifest.json and behaviour/ written by collect.py)")
    mf, bmf = root / "manifest.json", bdir / "manifest.json"
    man = read_manifest(mf, ROLLOUT_MANIFEST)
    sizes = read_manifest(bmf, {"policy_sizes": list})["policy_sizes"]
    task, names, contexts, s, a = man["task"], man["context_names"], man["contexts"], man["obs_dim"], man["act_dim"]
    if task not in tasks.TASKS:
        raise UserError(f"{mf}: unknown task {task!r}; collect.py writes one of {', '.join(tasks.TASKS)}")
    if not contexts or not all(isinstance(c, dict) for c in contexts):
        raise UserError(f"{mf}: 'contexts' must be a non-empty list of context objects (name: value)")
    if any(n not in tasks.TASKS[task]["vars"] for n in names):
        raise UserError(f"{mf}: context_names {names} are not variables of {task} ({', '.join(tasks.TASKS[task]['vars'])})")
    if len(sizes) < 2 or not all(type(n) is int and n > 0 for n in sizes) or (sizes[0], sizes[-1]) != (s, a):
        raise UserError(f"{bmf}: policy_sizes {sizes} must be positive layer sizes from obs_dim {s} to act_dim {a}")
    kinds = {"params": "f", "param_context_id": "iu", "param_context": "f", "traj": "f", "post_success": "f"}  # float, int
    arr = {f: load_array(bdir / f"{f}.npy", kind, ndim=1 if kind == "iu" else 2) for f, kind in kinds.items()}
    m = len(arr["params"])
    shapes = {"params": (m, policy.n_params(sizes)), "param_context_id": (m,), "param_context": (m, len(names))}
    shapes |= {"traj": (m, 20 * (s + 3 * a)), "post_success": (m, 3 * s)}
    for f, shape in shapes.items():
        if arr[f].shape != shape:
            why = f"{m} rows as params.npy" if len(arr[f]) != m else f"obs_dim {s}, act_dim {a}, policy sizes {sizes}"
            raise UserError(f"{bdir / f}.npy has shape {arr[f].shape}; expected {shape} ({why})")
    ids = torch.from_numpy(arr["param_context_id"].astype(np.int64))
    if m == 0 or ids.min() < 0 or ids.max() >= len(contexts):
        raise UserError(f"{bdir}/param_context_id.npy must index the {len(contexts)} contexts of {mf} (and M > 0)")
    arr = {f: torch.from_numpy(v) for f, v in arr.items()}
    out = {"task": task, "context_names": list(names), "contexts": contexts, "context_id": ids}
    out.update(obs_dim=s, act_dim=a, policy_sizes=sizes, params=arr["params"].float(), traj=arr["traj"].float())
    return {**out, "context": arr["param_context"].float().reshape(m, -1), "post": arr["post_success"].float()}


def episode_seed(seed: int, i: int, e: int) -> int:
    return seed + 10_000 * i + e


# what collect.py reads from an expert file beyond what policy.load_experts checks (task, sizes, gamma, weights), with its type
EXPERT_KEYS = {"context_names": list, "context_vector": list, "step": int, "eval_return": (int, float)}


def check_experts(experts: list[dict], files: list[Path]) -> None:
    """Each expert (already checked by policy.load_experts, which also made task, sizes and gamma agree) holds the keys
    collect.py reads too, and all share one set of context variables."""
    for e, f in zip(experts, files):
        policy.require_keys(e, EXPERT_KEYS, f)
        try:  # the context it was trained on must still be a valid one, before any rollout
            tasks.validated_context(e["task"], e["context"].items()) if e["task"] != "metaworld" else None
        except UserError as err:
            raise UserError(f"{f}: {err}") from None
    seen = {json.dumps(e["context_names"]) for e in experts}
    if len(seen) > 1:
        raise UserError(f"experts differ in context_names ({', '.join(sorted(seen))}): put one task's experts in one directory")


def behaviour_features(states: np.ndarray, actions: np.ndarray, success_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Make-An-Agent features of one episode: traj [20*(S+3A)] = (s_t, a_t, a_{t+1}, a_{t+2}) for t in 0,3,..,57
    (zeros past the episode end) and post_success [3S] (POST_SUCCESS_RULE)."""
    T, S = actions.shape[0], states.shape[1]
    s = np.zeros((60, S), np.float32)
    a = np.zeros((62, actions.shape[1]), np.float32)
    s[: min(T + 1, 60)] = states[:60]  # s_0..s_T are real states; zeros past the end
    a[: min(T, 62)] = actions[:62]
    traj = np.concatenate([np.concatenate([s[t], a[t], a[t + 1], a[t + 2]]) for t in TRAJ_STEPS])
    idx = [min(success_step + k, T) for k in range(3)] if success_step >= 0 else [max(T - 2 + k, 0) for k in range(3)]
    return traj, states[idx].reshape(-1)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of k of n snapshots, evenly spaced over training, first and last included (all n where k is 0 or >= n)."""
    return np.arange(n) if k == 0 or k >= n else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def load_snapshots(experts: list[dict], dirs: list[Path]) -> list | None:
    """Per expert, (flat actors [N, P] float32, their steps [N]) from snapshots_<label>.npy and snapshot_steps.npy in
    the expert's own directory (N = 0 where it has none); None when no expert has any. Checked against the expert's
    layer sizes before any rollout."""
    files = [d / f"snapshots_{e['label']}.npy" for e, d in zip(experts, dirs)]
    if not any(f.is_file() for f in files):
        return None
    if len({json.dumps(e["hidden"]) for e in experts}) > 1:
        raise UserError("experts differ in hidden sizes: their flat parameter vectors cannot be stacked")
    sizes = policy.layer_sizes(experts[0]["obs_dim"], experts[0]["hidden"], experts[0]["act_dim"])
    snaps = []
    for e, f in zip(experts, files):
        if not f.is_file():
            print(f"  note: no {f.name}; context {e['label']} contributes only its final actor")
            snaps.append((np.zeros((0, policy.n_params(sizes)), np.float32), []))
            continue
        flat = load_array(f, "f", ndim=2).astype(np.float32)
        steps = load_array(f.parent / "snapshot_steps.npy", "iu", ndim=1)
        if flat.shape != (len(steps), policy.n_params(sizes)):
            raise UserError(
                f"{f} has shape {flat.shape}; expected ({len(steps)}, {policy.n_params(sizes)}): one row per step of "
                f"{f.parent / 'snapshot_steps.npy'}, of the expert's layer sizes {sizes}"
            )
        snaps.append((flat, steps.tolist()))
    return snaps


def collect_behaviour(args: Args, experts: list[dict], envs: list, snaps: list, device) -> dict:
    """Roll every snapshot (then the final actor) of every context out."""
    sizes = policy.layer_sizes(experts[0]["obs_dim"], experts[0]["hidden"], experts[0]["act_dim"])
    rows = {k: [] for k in ("params", "cid", "step", "ret", "succ", "traj", "post", "post_step")}
    for i, (e, (flat, steps), env) in enumerate(zip(experts, snaps, envs)):
        final = policy.flatten_layers(policy.expert_layers(e)).numpy()  # [1, P], appended last
        flat = np.concatenate([flat, final])
        step_i = [*steps, int(e["step"])]
        for j, p in enumerate(flat):
            layers = policy.unflatten_layers(torch.from_numpy(p).to(device)[None], sizes)
            eps = [rollout(env, layers, episode_seed(args.seed, i, k), device) for k in range(args.snapshot_episodes)]
            traj, post = behaviour_features(eps[0]["states"], eps[0]["actions"], eps[0]["success_step"])
            rows["params"].append(p)
            rows["cid"].append(i)
            rows["step"].append(step_i[j])
            rows["ret"].append(np.mean([ep["return"] for ep in eps]))
            rows["succ"].append(np.mean([ep["success_step"] >= 0 for ep in eps]) if experts[0]["task"] == "metaworld" else np.nan)
            rows["traj"].append(traj)
            rows["post"].append(post)
            rows["post_step"].append(eps[0]["success_step"])
        print(f"  behaviour {e['label']:>24}: {len(flat)} policies, mean return {np.mean(rows['ret'][-len(flat) :]):9.2f}")
    cvec = np.array([tasks.context_vector(e["context"]) for e in experts], np.float32).reshape(len(experts), -1)
    cid = np.asarray(rows["cid"], np.int64)
    return {
        "params": np.stack(rows["params"]).astype(np.float32),
        "param_context_id": cid,
        "param_context": cvec[cid],
        "param_step": np.asarray(rows["step"], np.int64),
        "param_return": np.asarray(rows["ret"], np.float32),
        "param_success": np.asarray(rows["succ"], np.float32),
        "traj": np.stack(rows["traj"]).astype(np.float32),
        "post_success": np.stack(rows["post"]).astype(np.float32),
        "post_success_step": np.asarray(rows["post_step"], np.int64),
    }


FIELDS = (*ROLLOUT_FIELDS, "episode")  # the arrays main writes; the training stages read ROLLOUT_FIELDS
OUTPUTS = (*(f"{k}.npy" for k in FIELDS), "manifest.json", "behaviour")  # what a run writes into --out-dir


def expert_dirs(paths, experts: list[dict]) -> list[Path]:
    """The directory each expert came from (its snapshots lie beside it): the one of --experts holding expert_<label>.pt."""
    dirs = [p if p.is_dir() else p.parent for p in map(Path, paths)]
    return [next((d for d in dirs if (d / f"expert_{e['label']}.pt").is_file()), dirs[0]) for e in experts]


def main(args: Args) -> dict:
    # Every flag and every input file is checked before any work; nothing is written until they pass.
    runio.check_flags(args, positive=("episodes", "snapshot_episodes"), nonnegative=("seed", "torch_threads"))
    device = runio.resolve_device(args.device)
    paths = (args.experts,) if isinstance(args.experts, (str, Path)) else tuple(args.experts)
    experts = policy.load_experts(paths)  # shards merged, sorted by label: that order is context_id
    dirs = expert_dirs(paths, experts)
    check_experts(experts, [d / f"expert_{e['label']}.pt" for e, d in zip(experts, dirs)])
    snaps = load_snapshots(experts, dirs) if args.snapshots else None
    out = runio.prepare_out_dir(args.out_dir, OUTPUTS, overwrite=args.overwrite)
    if args.torch_threads:  # 0: torch's default
        torch.set_num_threads(args.torch_threads)
    task, S, A = experts[0]["task"], experts[0]["obs_dim"], experts[0]["act_dim"]

    # ALGO LOGIC: HyperZero's dataset — deterministic expert rollouts; q = Q1(s, pi(s)) of the expert's own action.
    data = {k: [] for k in FIELDS}
    envs, infos = [], []
    for i, e in enumerate(experts):
        env = tasks.make_env(task, e["context"], episode_seed(args.seed, i, 0))
        envs.append(env)
        layers = policy.expert_layers(e, "actor", device)
        eps = [rollout(env, layers, episode_seed(args.seed, i, k), device) for k in range(args.episodes)]
        obs = np.concatenate([ep["states"][:-1] for ep in eps])
        act = np.concatenate([ep["actions"] for ep in eps])
        with torch.no_grad():  # one batched critic pass over all of this expert's rows: [1, N_i, S+A] -> [N_i]
            sa = torch.as_tensor(np.concatenate([obs, act], 1), device=device)[None]
            critic = policy.expert_layers(e, "critic1", device)
            q = policy.mlp(critic, sa, None, e.get("critic_layer_norm", False))[0, :, 0].cpu().numpy()
        n = len(obs)
        data["obs"].append(obs)
        data["action"].append(act)
        data["reward"].append(np.concatenate([ep["rewards"] for ep in eps]))
        data["next_obs"].append(np.concatenate([ep["states"][1:] for ep in eps]))
        data["terminated"].append(np.concatenate([ep["terminated"] for ep in eps]))
        data["q"].append(q.astype(np.float32))
        data["context"].append(np.tile(np.asarray(e["context_vector"], np.float32), (n, 1)).reshape(n, -1))
        data["context_id"].append(np.full(n, i, np.int64))
        data["episode"].append(
            np.concatenate([np.full(len(ep["actions"]), i * args.episodes + k, np.int64) for k, ep in enumerate(eps)])
        )
        rets = [ep["return"] for ep in eps]
        succ = float(np.mean([ep["success_step"] >= 0 for ep in eps])) if task == "metaworld" else None
        infos.append(
            {
                "label": e["label"],
                "context": e["context"],
                "context_vector": e["context_vector"],
                "expert_eval_return": e["eval_return"],
                "expert_step": int(e["step"]),
                "return_mean": float(np.mean(rets)),
                "return_std": float(np.std(rets)),
                "success_rate": succ,
                "rows": n,
            }
        )
        print(
            f"expert {e['label']:>24}: {args.episodes} episodes, mean return {np.mean(rets):9.2f} (expert eval {e['eval_return']:.2f})"
        )
    arrays = {k: np.concatenate(v) for k, v in data.items()}

    behaviour = collect_behaviour(args, experts, envs, snaps, device) if snaps is not None else None
    for env in envs:
        env.close()
    for k, v in arrays.items():
        runio.atomic_save(v, out / f"{k}.npy")
    shapes = lambda d: {k: list(v.shape) for k, v in d.items()}
    if behaviour is not None:
        for k, v in behaviour.items():
            runio.atomic_save(v, out / "behaviour" / f"{k}.npy")
        bman = {
            "format": BEHAVIOUR_FORMAT,
            "task": task,
            "context_names": experts[0]["context_names"],
            "contexts": [e["context"] for e in experts],
            "obs_dim": S,
            "act_dim": A,
            "hidden": list(experts[0]["hidden"]),
            "policy_sizes": policy.layer_sizes(S, experts[0]["hidden"], A),
            "n_params": int(behaviour["params"].shape[1]),
            "flatten_order": "policy.flatten_layers: per layer W [in,out] row-major, then b",
            "count": int(len(behaviour["params"])),
            "snapshot_episodes": args.snapshot_episodes,
            "traj_steps": TRAJ_STEPS,
            "traj_layout": "for t in traj_steps: s_t, a_t, a_{t+1}, a_{t+2} (first episode; zeros past its end)",
            "post_success_rule": POST_SUCCESS_RULE,
            "episode_seeds": "snapshot episode k of context i resets with seed + 10000*i + k",
            "seed": args.seed,
            "shapes": shapes(behaviour),
        }
        runio.atomic_save(json.dumps(bman, indent=2), out / "behaviour" / "manifest.json")
    manifest = {
        "format": FORMAT,
        "task": task,
        "context_names": experts[0]["context_names"],
        "contexts": [e["context"] for e in experts],  # context_id order
        "experts": infos,  # same order: label, expert eval_return, return measured here, rows
        "obs_dim": S,
        "act_dim": A,
        "gamma": float(experts[0]["gamma"]),
        "counts": {"rows": int(len(arrays["obs"])), "contexts": len(experts), "episodes_per_context": args.episodes},
        "seed": args.seed,
        "episodes": args.episodes,
        "episode_seeds": "episode e of context i resets with seed + 10000*i + e",
        "shapes": shapes(arrays),
        "behaviour": "behaviour" if behaviour is not None else None,
        "args": asdict(args),
    }
    runio.atomic_save(json.dumps(manifest, indent=2), out / "manifest.json")  # last: marks the set complete
    runio.finish_out_dir(out)
    n_beh = 0 if behaviour is None else len(behaviour["params"])
    print(f"wrote {manifest['counts']['rows']} rows and {n_beh} behaviour policies to {out}")
    return {"out_dir": str(out), "manifest": manifest, "behaviour_count": n_beh}


if __name__ == "__main__":
    runio.cli(main, Args)
