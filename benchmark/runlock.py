"""One run per results file. While a run trains it holds ``<results file>.lock`` (host, PID, start time), so
two runs of one plan never both train and silently overwrite each other: the second exits 2 in one line
naming the first, and ``make paper`` does not plan a run whose lock is held. A lock whose process is gone
(this host, PID no longer running) is taken over with a note; a lock from another host is respected (its
process cannot be checked from here). Creating the lock is also the first write of a run, so a results
directory that cannot be written fails here, before any training."""
from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from benchmark.errors import UserError


def lock_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.name + ".lock")


def read_lock(lock: Path) -> dict | None:
    """The holder written in ``lock``, or None (no lock, or not one this module wrote)."""
    try:
        info = json.loads(lock.read_text())
        return info if isinstance(info, dict) and {"host", "pid"} <= set(info) else None
    except (OSError, ValueError):
        return None


def alive(info: dict) -> bool:
    """Whether the holder may still run: its PID exists on this host, or it is on another host."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError):
        return False
    return True


def describe(info: dict) -> str:
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started', '?')}"


def holder(results_path: Path) -> dict | None:
    """The live run holding ``results_path``'s lock, or None."""
    info = read_lock(lock_path(results_path))
    return info if info is not None and alive(info) else None


def _create(lock: Path, info: dict) -> None:
    """Create ``lock`` with ``info`` in one step (a hard link of a written file: never seen half written);
    FileExistsError when it exists."""
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    try:
        os.link(tmp, lock)
    finally:
        tmp.unlink(missing_ok=True)


class Held:
    """A lock this process holds: ``previous`` is what the lock of a run that is gone said (its ``run_dir``:
    where a killed run left its resume checkpoint), ``note`` adds to what this one says."""

    def __init__(self, lock: Path, info: dict, previous: dict | None):
        self.lock, self.info, self.previous = lock, info, previous
        self.kept = False

    def keep(self) -> None:
        """Leave the lock behind when this process ends (an interrupted run): the next run of the plan finds
        it stale and resumes from the run directory it names."""
        self.kept = True

    def note(self, **values) -> None:
        self.info.update(values)
        tmp = self.lock.with_name(f".{self.lock.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.info, default=str))
        os.replace(tmp, self.lock)


@contextmanager
def hold(results_path: Path):
    """Hold ``results_path``'s lock for the block (see the module docstring), as a ``Held``; UserError when
    another run holds it or the results directory cannot be written."""
    lock = lock_path(results_path)
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    previous = None
    created = [d for d in (lock.parent, *lock.parent.parents) if not d.exists()]  # removed again if left empty
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                _create(lock, info)
                break
            except FileExistsError:
                other = read_lock(lock)
                if other is not None and alive(other):
                    raise UserError(f"another run of this plan is running ({describe(other)}) and will write "
                                    f"{results_path}; wait for it or stop it (its lock: {lock})") from None
                print(f"note: taking over the lock of a run that is no longer running "
                      f"({describe(other) if other else 'unreadable lock'}): {lock}", file=sys.stderr)
                previous = other
                lock.unlink(missing_ok=True)
        else:
            raise UserError(f"could not take the lock {lock}: other runs keep taking it; try again")
    except OSError as e:
        raise UserError(f"cannot write the results directory {lock.parent} ({e.strerror or e}); "
                        f"make it writable or set results_dir= to one that is") from None
    held = Held(lock, info, previous)
    try:
        yield held
    finally:
        mine = read_lock(lock)
        if not held.kept and mine is not None and mine.get("pid") == info["pid"] and mine.get("host") == info["host"]:
            lock.unlink(missing_ok=True)
            for d in created:  # a run that wrote nothing (bad input found late) leaves no empty folders either
                try:
                    d.rmdir()
                except OSError:
                    break
