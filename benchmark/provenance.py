"""Where a result came from: the package versions, the device, the commit the run started with."""
from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("benchmark", "methods", "tasks", "pyproject.toml")  # what a result depends on; not results/ or docs
# Code under CODE_PATHS that only reads finished results (tables, figures, the page, budget comparisons):
# changing it changes no run, so it neither makes a run dirty nor starts a new code version.
PUBLISH_PATHS = ("benchmark/publish",)
PACKAGES = ("torch", "lightning", "transformers", "peft", "datasets", "torchmetrics", "bitsandbytes")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _device_name() -> str | None:
    """The CUDA device's name, else the CPU model; best effort, never fails a finished run."""
    try:
        import torch

        from benchmark.memory import device_name

        return device_name("cuda" if torch.cuda.is_available() else "cpu")
    except Exception:
        return None


def env_info() -> dict:
    """Interpreter, platform, package versions (None when not installed) and the accelerator's name."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    info.update({p: _version(p) for p in PACKAGES})
    info["device_name"] = _device_name()
    info["cpu_threads"] = _cpu_threads()
    return info


def _cpu_threads() -> int | None:
    """torch's intra-op threads: a CPU matmul's summation order follows them, so the same seed run with 1
    and with 2 threads (``make paper`` gives each of its parallel runs one) differs in the last bits, and
    a short, noisy run can end far apart (easy_vqa, one epoch: 0.51 vs 0.67)."""
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:
        return None


def git_info(repo_dir: str | os.PathLike) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at ``repo_dir``; (None, None) outside a repository or without git.

    Dirty means a tracked file of the code (``CODE_PATHS``) differs from the commit: results, docs, the
    leaderboard that ``make paper`` rewrites between its parts and the code that publishes results
    (``PUBLISH_PATHS``) don't count, nor do untracked files.
    Read-only: ``--no-optional-locks`` keeps ``git status`` from touching the index.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=repo_dir, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None, None
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS,
                         *(f":(exclude){p}" for p in PUBLISH_PATHS)))
    except (OSError, subprocess.SubprocessError, ValueError):
        dirty = None
    return commit or None, dirty


def code_versions(commits: Iterable[str | None], repo_dir: str | os.PathLike = ROOT) -> dict:
    """Each commit's code version: the git ids of what ``CODE_PATHS`` hold at that commit, less
    ``PUBLISH_PATHS``.

    Seeds run on commits that differ only in results, docs or the publishing code then count as one
    version, so the leaderboard flags only rows whose seeds ran on different code. A commit this checkout
    lacks (a shallow clone, another fork) or no git at all: the commit stands for itself.
    """
    known = sorted({c for c in commits if isinstance(c, str) and c})
    versions: dict = {c: c for c in known}
    # a folder's entries (one level down where a publishing folder sits inside it), a file's own id
    paths = [f"{p}/" if any(q.startswith(f"{p}/") for q in PUBLISH_PATHS) else p for p in CODE_PATHS]
    for c in known:
        try:
            out = subprocess.run(["git", "--no-optional-locks", "ls-tree", c, "--", *paths], cwd=repo_dir,
                                 capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError, ValueError):
            continue
        entries = [line.split(None, 3) for line in out.splitlines()]
        ids = sorted(f"{path}:{oid}" for _, _, oid, path in entries if path not in PUBLISH_PATHS)
        if ids:
            versions[c] = "+".join(ids)
    return versions
