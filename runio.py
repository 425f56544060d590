"""runio.py — what every stage does around its work: bad input as one line, checked flags, the output directory,
atomic writes, loads without pickle, the device and the TensorBoard / W&B tracker.

    from runio import UserError, cli, prepare_out_dir, atomic_save, safe_load

Bad input raises `UserError`; `cli` prints it as one line on stderr and exits 2. Every file a stage writes goes
through `atomic_save` (a temp file, then a rename), so a crash never leaves a truncated file; every file it reads goes
through `safe_load` (`torch.load(weights_only=True)`: no pickle). torch is imported inside the functions that need it,
so that tasks.py, which raises UserError, imports without torch.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
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
    try:
        main(tyro.cli(args_cls))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
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


def prepare_out_dir(path, outputs: tuple[str, ...], resume: bool = False, overwrite: bool = False) -> Path:
    """Check --out-dir before any work and create it. It must not be a file, must take a new file, and must not hold
    an earlier run's outputs (glob patterns) unless --resume continues that run or --overwrite replaces it: then the
    earlier outputs are removed first, so one directory never mixes two runs' files."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out} is a file; give a directory (new or from an earlier run of this stage)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # the real test of writability (os.access says yes to root)
    except OSError as e:
        raise UserError(f"--out-dir {out} is not writable: {e.strerror}") from None
    found = sorted({p for pattern in outputs for p in out.glob(pattern)})
    if found and not resume:
        if not overwrite:
            names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
            raise UserError(
                f"--out-dir {out} already holds an earlier run ({names}); pass --overwrite to replace it"
                + (", --resume to continue it" if "checkpoint.pt" in outputs else "")
                + ", or choose another --out-dir"
            )
        for p in found:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        print(f"--overwrite: removed {len(found)} files of the earlier run in {out}")
    return out


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
    except BaseException:
        os.unlink(tmp)
        raise


def save_figure(fig, path, dpi: int = 100) -> None:
    """A matplotlib figure to path (its suffix names the format), written atomically, then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix[1:], dpi=dpi)
    plt.close(fig)
    atomic_save(buf.getvalue(), path)


def safe_load(path) -> dict:
    """torch.load without pickle; a missing or corrupt file becomes one clear UserError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickled objects, ...
        raise UserError(f"cannot load {path}: not a valid weights_only checkpoint ({type(e).__name__})") from None


def write_csv(path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_save(buf.getvalue(), path)


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
