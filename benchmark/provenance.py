"""Where a result came from: the package versions, the device, the commit the run started with."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

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
    return info


def git_info(repo_dir: str | os.PathLike) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at ``repo_dir``; (None, None) outside a repository or without git.

    Dirty means a tracked file differs from the commit (untracked files, e.g. fresh results, don't count).
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
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        dirty = None
    return commit or None, dirty
