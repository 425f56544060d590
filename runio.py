"""runio.py — what every stage does around its work: bad input as one line, checked flags, the output directory,
atomic writes, loads without pickle, the device and the TensorBoard / W&B tracker.

    from runio import UserError, cli, prepare_out_dir, atomic_save, safe_load

Bad input raises `UserError`; `cli` prints it as one line on stderr and exits 2. Every file a stage writes goes
through `atomic_save` (a temp file, then a rename), so a crash never leaves a truncated file; every file it reads goes
through `safe_load` (`torch.load(weights_only=True)`: no pickle). torch is imported inside the functions that need it,
so that tasks.py, which raises UserError, imports without torch.
"""

from __future__ import annotations

import atexit
import csv
import errno
import fcntl
import io
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tyro


class UserError(Exception):
    """Bad input: printed as one line by `cli`, exit code 2."""


def cli(main, args_cls) -> None:
    """Every stage's entry point: parse the flags (tyro turns Args' docstrings into --help), run main, and turn bad
    input into one line on stderr and exit code 2."""
    args = tyro.cli(args_cls)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as Ctrl-C: finally blocks and the --out-dir undo run
    try:
        main(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:  # RuntimeError: torch's CPU allocator and torch.OutOfMemoryError (CUDA)
        if not isinstance(e, MemoryError) and type(e).__name__ != "OutOfMemoryError" and "can't allocate memory" not in str(e):
            raise
        sizes = [f"--{f.replace('_', '-')}" for f in vars(args) if re.search("hidden|dim|size|heads|ffn|embed|latent|reps", f)]
        print(f"error: out of memory; lower the sizes ({', '.join(sizes)}) or use a machine with more memory", file=sys.stderr)
        sys.exit(2)


def check_flags(args, positive=(), nonnegative=(), fraction=()) -> None:
    """Refuse a bad flag before any work, in one line naming it, what was given and what is valid. Each name is an
    Args field (a number or a tuple of numbers): `positive` must be finite and > 0, `nonnegative` finite and >= 0,
    `fraction` in [0, 1]."""
    rules = [
        (positive, "> 0", lambda v: v > 0),
        (nonnegative, ">= 0", lambda v: v >= 0),
        (fraction, "in [0, 1]", lambda v: 0 <= v <= 1),
    ]
    for names, valid, ok in rules:
        for name in names:
            value = getattr(args, name)
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                    raise UserError(f"--{name.replace('_', '-')} must be a finite number {valid}, got {value}")


def shard(spec: str, n: int) -> list[int]:
    """--shard I/N of n contexts: their indices I, I+N, I+2N, ... (one command line for every task of a job array)."""
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or int(m[1]) >= int(m[2]):
        raise UserError(f"--shard must be I/N with 0 <= I < N (this process trains contexts I, I+N, ...), got {spec!r}")
    ids = list(range(n))[int(m[1]) :: int(m[2])]
    if not ids:
        raise UserError(f"--shard {spec}: no context falls to shard {m[1]} of {n} contexts; use at most {n} shards")
    return ids


# --out-dir: one writer at a time, and an earlier run kept until the new one has succeeded
_OPEN: dict[str, dict] = {}  # resolved --out-dir -> this process's claim on it (lock, what it set aside)
ASIDE = ".previous"  # where --overwrite keeps the earlier run until finish_out_dir


def prepare_out_dir(path, outputs: tuple[str, ...], resume: bool = False, overwrite: bool = False) -> Path:
    """Check --out-dir before any work, create it and claim it. It must not be a file, must take a new file, must not
    be written by another run at the same time (a lock, released when the process ends however it ends), and must not
    hold an earlier run's outputs (glob patterns) unless --resume continues that run or --overwrite replaces it. The
    earlier outputs are not deleted yet: they move to out/.previous, and finish_out_dir, at the end of a run that
    succeeded, removes them; a run that fails (an error, Ctrl-C, SIGTERM) puts them back, byte for byte, and leaves
    nothing of its own unless it wrote a checkpoint to resume from."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file; give a directory (new or from an earlier run of this stage)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # the real test of writability (os.access says yes to root)
    except OSError as e:
        raise UserError(f"--out-dir {out} is not writable: {e.strerror}") from None
    key = str(out.resolve())
    if key in _OPEN:  # an earlier run of this process into it failed without finishing: undo it first
        _undo(key)
    fd = os.open(out, os.O_RDONLY)
    try:  # flock on the directory itself: no lock file to go stale, the kernel drops it when the process dies
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"--out-dir {out} is being written by another run right now; wait for it or choose another --out-dir"
        ) from None
    claim = {"fd": fd, "out": out, "outputs": outputs, "moved": [], "created": created, "resume": resume}
    _OPEN[key] = claim
    try:
        if (out / ASIDE).exists():
            raise UserError(
                f"--out-dir {out} holds {out / ASIDE}, an earlier run that an interrupted --overwrite set aside: "
                f"move its files back into {out} (or delete it), then run again"
            )
        found = _outputs(out, outputs)
        if found and not resume:
            if not overwrite:
                names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
                raise UserError(
                    f"--out-dir {out} already holds an earlier run ({names}); pass --overwrite to replace it"
                    + (", --resume to continue it" if "checkpoint.pt" in outputs else "")
                    + ", or choose another --out-dir"
                )
            (out / ASIDE).mkdir()
            for p in found:
                p.rename(out / ASIDE / p.name)
                claim["moved"].append(p.name)
            print(f"--overwrite: {len(found)} files of the earlier run set aside in {out / ASIDE} until this run succeeds")
    except BaseException:
        _OPEN.pop(key)
        os.close(fd)
        raise
    return out


def _outputs(out: Path, patterns) -> list[Path]:
    """What of a stage's outputs (glob patterns) --out-dir holds."""
    return sorted({p for pattern in patterns for p in out.glob(pattern)})


def finish_out_dir(out) -> None:
    """The run succeeded: remove the earlier run that --overwrite set aside, and release --out-dir."""
    claim = _OPEN.pop(str(Path(out).resolve()), None)
    if claim is not None:
        if claim["moved"]:
            shutil.rmtree(claim["out"] / ASIDE)
        os.close(claim["fd"])


def _undo(key: str) -> None:
    """A run that claimed --out-dir did not finish: put back what --overwrite set aside (after removing the new
    outputs), or else remove the failed run's outputs, unless it resumed or left a checkpoint to resume from."""
    claim = _OPEN.pop(key)
    out = claim["out"]
    try:
        if claim["moved"] or not (claim["resume"] or (out / "checkpoint.pt").exists()):
            for p in _outputs(out, claim["outputs"]):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for name in claim["moved"]:
            (out / ASIDE / name).rename(out / name)
        if claim["moved"]:
            (out / ASIDE).rmdir()
        if claim["created"] and not any(out.iterdir()):
            out.rmdir()
    except OSError as e:  # at exit: say what is left rather than hide it
        print(f"warning: could not restore {out} after a failed run ({e}); the earlier run is in {out / ASIDE}", file=sys.stderr)
    finally:
        os.close(claim["fd"])


@atexit.register
def _undo_unfinished() -> None:
    for key in list(_OPEN):
        _undo(key)


def atomic_save(obj, path) -> None:
    """torch.save / np.save / text or bytes to a temp file, then rename: a crash never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(obj, np.ndarray):
                np.save(f, obj, allow_pickle=False)
            elif isinstance(obj, (str, bytes)):
                f.write(obj.encode() if isinstance(obj, str) else obj)
            else:
                import torch

                torch.save(obj, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "requested and" in str(e)):
            raise UserError(f"disk full writing {path} (no space left, or a file-size limit); nothing was half-written") from None
        raise


def save_figure(fig, path, dpi: int = 100) -> None:
    """A matplotlib figure to path (its suffix names the format), written atomically, then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix[1:], dpi=dpi)
    plt.close(fig)
    atomic_save(buf.getvalue(), path)


def safe_load(path) -> dict:
    """torch.load without pickle; a missing or corrupt file, or a NaN or infinity in any of its tensors, becomes one
    clear UserError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickled objects, ...
        raise UserError(f"cannot load {path}: not a valid weights_only checkpoint ({type(e).__name__})") from None
    stack = [("", obj)]  # every tensor inside, weights and optimiser states included, must be finite
    while stack:
        where, x = stack.pop()
        if isinstance(x, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in x.items()]
        elif isinstance(x, (list, tuple)):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(x)]
        elif isinstance(x, torch.Tensor) and x.is_floating_point() and not x.isfinite().all():
            raise UserError(f"bad data in {path}: {where} holds NaN or infinite values")
    return obj


def write_csv(path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_save(buf.getvalue(), path)


def descend(opt, loss):
    """One gradient step of the optimiser opt on loss (a scalar tensor); returns the loss."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def resolve_device(name: str):
    """--device: 'auto' is cuda when present, else cpu; asking for cuda where there is none is bad input."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise UserError(f"--device {name!r} is not a device; valid: auto, cpu, cuda, cuda:N")
    if name != "cpu" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device on this machine; use --device auto or cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return torch.device(name)


class Tracker:
    """Scalars to TensorBoard event files in out_dir/tb (`tensorboard --logdir runs`), and with --track also to
    Weights & Biases (an optional install: pip install wandb), as CleanRL logs them. metrics.csv stays the record."""

    def __init__(self, out_dir, args, track: bool = False, project: str = "cleanhyper", entity: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        config = asdict(args)
        if track:
            try:
                import wandb
            except ImportError:
                raise UserError("--track logs to Weights & Biases, which is not installed: pip install wandb") from None
            wandb.init(
                project=project, entity=entity, config=config, name=Path(out_dir).name, dir=str(out_dir), sync_tensorboard=True
            )
        self.writer = SummaryWriter(str(Path(out_dir) / "tb"))
        self.writer.add_text("args", "|flag|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in config.items()))
        self.track = track

    def log(self, step: int, **scalars) -> None:
        """log(step, **{"losses/qf_loss": 0.3, "charts/SPS": 812}); None values are skipped."""
        for name, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        self.writer.close()
        if self.track:
            import wandb

            wandb.finish()
