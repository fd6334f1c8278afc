"""One writer per output folder: the advisory lock on ``OUT/.lock`` that ``finetune`` and ``extract`` take at start.

The lock is ``fcntl.flock`` on ``OUT/.lock``. The kernel releases it when the process that holds
it ends, however it ends (SIGKILL included), so a dead run's lock is free to the next run with no
clean-up; the file's content (pid, host, command, start time) only names the holder in the
refusal. A run that ends removes the file, so a finished folder holds only what the run wrote.

Under ``torchrun`` a job is one writer: rank 0 takes the lock for the whole group and tells the
others whether it got it, so every process of a second job stops at start with the same line
(rather than rank 0 stopping alone and the others waiting for it until the group's timeout).
Ranks on other machines share rank 0's lock: ``flock`` is per machine, and on a network file
system it is as good as that system's locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from backbones.apps.parallel import DistributedContext
from backbones.core.files import check_writable_folder

__all__ = ["LOCK_NAME", "OutputInUseError", "output_lock"]

LOCK_NAME = ".lock"
# How often to retry when the holder removed the file between our open and our lock (each retry opens the new one).
_ATTEMPTS = 5


class OutputInUseError(OSError):
    """Another running process holds the output folder's lock; the message names it."""


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py":  # python -m PACKAGE
        return " ".join(["python", "-m", Path(argv[0]).parent.name, shlex.join(argv[1:])]).strip()
    return shlex.join(argv)


def _holder(fd: int) -> dict[str, object]:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return {}


def _running(pid: object, host: object) -> bool:
    if host != socket.gethostname() or not isinstance(pid, int):
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _refusal(folder: Path, holder: dict[str, object]) -> str:
    if not holder:  # taken this instant, not yet described
        who = "another process (it has just taken the lock)"
    else:
        pid, host, started = holder.get("pid"), holder.get("host"), holder.get("started")
        who = f"pid {pid} on {host}, started {started}: {holder.get('command')}"
        if not _running(pid, host):
            who += " (that process has ended; one it started, such as a data-loading worker, still holds the lock)"
    return f"out='{folder}' is being written by another run, {who}; wait for it to end, or choose another output folder"


class _Held:
    """The open, locked ``.lock`` file of a folder, and whether this run made the folder."""

    def __init__(self, fd: int, path: Path, created: bool) -> None:
        self.fd, self.path, self.created = fd, path, created

    def release(self) -> None:
        # Removed while still held: a process that opened the file meanwhile finds, once it has the
        # lock, that the name is no longer its file, and takes a new one.
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path):
                os.unlink(self.path)
        # Unlocked explicitly: forked children (DataLoader workers) share the descriptor and its lock.
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        if self.created:  # a run that wrote nothing leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, named = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _acquire(folder: Path, command: str | None) -> _Held:
    """Take ``folder``'s lock, or refuse naming who holds it."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise NotADirectoryError(f"out='{folder}' is a file, not a folder; give a folder to write to")
    check_writable_folder(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as err:
            raise OSError(f"cannot open the lock file {path} ({err.strerror}); move it away") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"the lock file {path} is not a regular file; move it away")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputInUseError(_refusal(folder, holder)) from None
        if not _same_file(fd, path):  # the holder we waited behind removed it: lock the file now there
            os.close(fd)
            continue
        # Written in place, not by a rename: the lock lives on this very file, and a renamed-in
        # copy would be a fresh file that the next run could lock. Only the refusal reads it.
        described = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or _command_line(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(described) + "\n").encode(), 0)
        return _Held(fd, path, created)
    raise OutputInUseError(
        f"out='{folder}': the lock file {path} was replaced {_ATTEMPTS} times while taking it (other runs starting "
        f"and ending); run again"
    )


def _agree(error: BaseException | None, context: DistributedContext) -> BaseException | None:
    """Rank 0's outcome, on every process (collective under torch.distributed)."""
    if not context.distributed:
        return error
    shared = [error if context.is_main else None]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


@contextlib.contextmanager
def output_lock(
    folder: str | Path, context: DistributedContext | None = None, *, command: str | None = None
) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block, so that no other run writes into it meanwhile.

    Collective under torch.distributed (every process calls it; rank 0 takes the lock). The folder
    is made if need be, and removed again on the way out if the run wrote nothing into it.

    Args:
        folder: The output folder (``--out``).
        context: This process (default: alone).
        command: The command that runs, named in a refusal (default: this process's command line).

    Yields:
        The folder.

    Raises:
        OutputInUseError: Another process holds the lock (named: pid, host, start time, command).
        NotADirectoryError: ``folder``, or one above it, is a file.
        PermissionError: ``folder`` is read-only.

    Example:
        >>> with output_lock("runs/digits"):
        ...     train()
    """
    folder = Path(folder).expanduser()
    context = context or DistributedContext()
    held, error = None, None
    if context.is_main:
        try:
            held = _acquire(folder, command)
        except OSError as err:
            error = err
    error = _agree(error, context)
    if error is not None:
        raise error
    try:
        yield folder
    finally:
        if held is not None:
            held.release()
