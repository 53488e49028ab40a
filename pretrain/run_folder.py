"""Where a run writes, and the rules that keep two runs (or a run and its predecessor) from mixing files.

A run writes its checkpoint ``-o FILE.pt`` and a run folder ``<stem>_run/`` next to it (log,
progress.png, last.pt, the report-embedding cache). Before any work, :func:`check_output` refuses an
``-o`` that is a folder or lies in a folder this process cannot write to. Right before the first
write, :meth:`RunFolder.claim` locks the run folder (a second run with the same ``-o`` is refused
while the first lives; a lock left by a killed run is removed), refuses to start over an earlier
run's ``last.pt`` or checkpoint unless told ``--resume`` or ``--overwrite``, and removes the temp
files that a kill in the middle of a save leaves behind. :meth:`RunFolder.save` turns a failed
write (disk full, folder gone) into one sentence.
"""
from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

from nnunet_mosmos.checkpoint import atomic_torch_save
from nnunet_mosmos.io_checks import OutputError, check_output_file
from pretrain.config import PretrainConfig, PretrainError
from pretrain.plans import default_output

LOCK_NAME = ".mosmos-pretrain.lock"
#: files of a run folder that --overwrite removes (the checkpoint itself is replaced when the new run ends)
RUN_FILES = ("last.pt", "training_log.txt", "progress.png")


def resolve_output(cfg: PretrainConfig, spec) -> Path:
    if cfg.output:
        return Path(cfg.output)
    if spec.target:
        return default_output(spec.target)
    raise PretrainError("no output file: pass -o/--output FILE.pt, or -d/-c to write to the dataset's "
                        "$nnUNet_preprocessed/DatasetXXX_Name/mosmos_pretrained/ folder")


def run_folder(output: Path) -> Path:
    return output.parent / f"{output.stem}_run"


def check_output(output: Path) -> None:
    """PretrainError unless ``output`` can be written: not a folder, inside a folder this process can write.

    The writability probe is :func:`nnunet_mosmos.io_checks.check_output_file` (a real temp file in the
    nearest existing folder, removed again): a refused run leaves nothing behind.
    """
    output = Path(output)
    if output.is_dir():
        raise PretrainError(f"-o {output} is a folder; give the checkpoint's file name, e.g. -o {output / 'pretrained.pt'}")
    for path in (output, run_folder(output)):
        if path.exists() and not (path.is_file() if path == output else path.is_dir()):
            raise PretrainError(f"{path} exists and is not a {'file' if path == output else 'folder'}; pick another -o")
    try:
        check_output_file(output)
    except OutputError as e:
        raise PretrainError(f"{e} (the checkpoint and its run folder go there)") from None


# --------------------------------------------------------------------------- the lock
def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    started = holder.get("started")
    return started is None or _start_time(pid) in (None, started)


class RunFolder:
    """The run folder of one ``-o``: claimed by rank 0 before the first write, released at the end."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = run_folder(self.output)
        self.lock = self.path / LOCK_NAME
        self.owned = False

    def claim(self, resume: bool, overwrite: bool) -> list[str]:
        """Lock, refuse to overwrite an earlier run, clear stale temp files; returns lines for the log."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            notes = self._lock()  # first: while another run lives, nothing else here is ours to judge
            earlier = [p for p in (self.path / "last.pt", self.output) if p.is_file()]
            if earlier and not resume and not overwrite:
                raise PretrainError(f"an earlier run wrote {' and '.join(map(str, earlier))}: add --resume to continue "
                                    "it, --overwrite to start over (its last.pt, log and plot are removed, the "
                                    "checkpoint is replaced at the end), or pick another -o")
        except PretrainError:
            self.release()
            if created:
                self.path.rmdir()
            raise
        if overwrite and not resume:
            removed = [name for name in RUN_FILES if (self.path / name).is_file()]
            for name in removed:
                (self.path / name).unlink()
            for cache in sorted(self.path.glob("report_embeddings*.pt")):
                cache.unlink()
                removed.append(cache.name)
            if removed:
                notes.append(f"--overwrite: removed {', '.join(removed)} of the earlier run in {self.path}")
        stale = sorted(self.path.glob(".*.tmp")) + sorted(self.path.glob(".*.tmp.png")) + \
            sorted(self.output.parent.glob(f".{self.output.name}.*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            notes.append(f"Removed {len(stale)} temporary file(s) an interrupted save left behind: "
                         + ", ".join(p.name for p in stale))
        return notes

    def _lock(self) -> list[str]:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}
        notes = []
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.lock.read_text())
                except (OSError, ValueError):
                    holder = {}
                if holder.get("host", me["host"]) != me["host"]:
                    raise PretrainError(f"{self.path} is locked by pid {holder.get('pid')} on host {holder['host']} "
                                        f"(another mosmos-pretrain with this -o); wait for it, or delete {self.lock} "
                                        "if no run is active there") from None
                if _alive(holder):
                    raise PretrainError(f"another mosmos-pretrain (pid {holder['pid']}) is writing to {self.path}; "
                                        "wait for it to finish, or pick another -o") from None
                self.lock.unlink(missing_ok=True)  # left by a run that was killed
                notes.append(f"Removed the lock of a run that ended without releasing it (pid {holder.get('pid')})")
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            return notes
        raise PretrainError(f"could not lock {self.lock}; another run keeps taking it")

    def release(self) -> None:
        if self.owned:
            self.owned = False
            try:
                if json.loads(self.lock.read_text()).get("pid") == os.getpid():
                    self.lock.unlink()
            except (OSError, ValueError):
                pass

    @staticmethod
    def save(obj, path: Path, writer=atomic_torch_save) -> None:
        """``writer(obj, path)``; a failed write becomes one PretrainError sentence (the old file stays intact)."""
        try:
            writer(obj, path)
        except OSError as e:
            hint = " (the disk is full: free space or write elsewhere with -o)" if e.errno in (errno.ENOSPC,
                                                                                          errno.EDQUOT) else ""
            kept = f"; the previous {Path(path).name} is intact" if Path(path).is_file() else ""
            raise PretrainError(f"could not write {path}: {e.strerror or e}{hint}{kept}") from None


__all__ = ["LOCK_NAME", "RunFolder", "check_output", "resolve_output", "run_folder"]
