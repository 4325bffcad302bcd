"""Visual features on disk: each image is encoded once per encoder and read back in milliseconds.

Layout: ``<root>/<encoder.key>/<sha1[:2]>/<sha1>.npy``, one ``[num_tokens, feature_dim]`` array per
image, where sha1 is of the image file's bytes. Keying by content, not path, means an edited image
misses (and is re-encoded) while a moved or duplicated one hits; keying by ``encoder.key`` (name +
weights + preprocessing hash) keeps every encoder's entries apart. ``<root>/<encoder.key>/encoder.json``
records which encoder wrote the folder, for humans. ``.npy`` rather than ``torch.save``: one small
header and a raw buffer, several times faster to read back for thousands of entries.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UserError
from benchmark.results import atomic_write
from benchmark.vision.encoders import VisualEncoder

__all__ = ["FeatureCache", "default_cache_root"]

_NP_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


def default_cache_root() -> Path:
    """``$METL_CACHE`` if set, else ``~/.cache/metl-bench/features``."""
    env = os.environ.get("METL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metl-bench" / "features"


def _sha1_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha1").hexdigest()
    except OSError as e:
        raise UserError(f"cannot read image {path!r}: {e.strerror or e}; check the dataset's image directory") from None


@functools.lru_cache(maxsize=None)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """The .npy (version 1.0) header of a C-ordered array of this shape and dtype."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _write_npy(f, arr: np.ndarray) -> None:
    """A plain .npy file (``np.load`` reads it), written with exactly the header ``_read_into`` expects."""
    arr = np.ascontiguousarray(arr)
    f.write(_npy_header(arr.shape, arr.dtype.str))
    f.write(memoryview(arr).cast("B"))


def _atomic_write(path: Path, write) -> None:
    atomic_write(path, write)  # cache entries: no fsync, a lost entry is recomputed


class FeatureCache:
    """Frozen-encoder features of image files, computed only for images not cached yet.

    ``dtype`` is both the storage and the returned dtype (float16 by default: half the disk and RAM;
    EfficientNet's ReLU6 features and CLIP's hidden states fit it). ``computed`` counts the images
    encoded by the last ``features`` call, ``computed_total`` those over this object's life, and
    ``reused`` the entries the last call read back from disk.
    """

    def __init__(self, root: str | Path | None = None, dtype: torch.dtype = torch.float16):
        if dtype not in _NP_DTYPES:
            raise UserError(f"feature cache dtype must be float16 or float32, got {dtype}")
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.dtype = dtype
        self.computed = 0
        self.computed_total = 0
        self.reused = 0

    def folder(self, encoder: VisualEncoder) -> Path:
        return self.root / encoder.key

    def entry_path(self, encoder: VisualEncoder, digest: str) -> Path:
        return self.folder(encoder) / digest[:2] / f"{digest}.npy"

    def features(self, encoder: VisualEncoder, paths: list[str], batch_size: int = 64,
                 progress: bool = True) -> torch.Tensor:
        """[len(paths), num_tokens, feature_dim] in ``self.dtype``, row i for ``paths[i]``.

        Rows are filled through numpy, not torch: a per-row torch copy runs on the intra-op thread pool
        and on a busy CPU costs milliseconds each (measured 4 ms vs 0.03 ms), minutes for a dataset."""
        paths, batch_size = [os.fspath(p) for p in paths], max(1, int(batch_size))
        shape = (encoder.num_tokens, encoder.feature_dim)
        out = np.empty((len(paths), *shape), dtype=_NP_DTYPES[self.dtype])
        digests = [_sha1_file(p) for p in paths]
        rows: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            rows.setdefault(d, []).append(i)

        missing: list[str] = []
        for d, idx in rows.items():
            if self._read_into(self.entry_path(encoder, d), out[idx[0]]):
                out[idx[1:]] = out[idx[0]]
            else:
                missing.append(d)
        self.reused = len(rows) - len(missing)
        self.computed = 0
        if missing:
            self._write_manifest(encoder)
            self._compute(encoder, [(d, paths[rows[d][0]]) for d in missing], rows, out, batch_size, progress)
        return torch.from_numpy(out)

    def _read_into(self, path: Path, dest: np.ndarray) -> bool:
        """Read a cached entry straight into ``dest``; False when absent or unusable (truncated, garbage,
        other shape or dtype), which the caller treats as a miss and recomputes. The header must equal the
        one we write, byte for byte: cheaper than ``np.load``'s header parsing, which dominated reads."""
        header = _npy_header(dest.shape, dest.dtype.str)
        try:
            with open(path, "rb", buffering=0) as f:
                if f.read(len(header)) != header:
                    return False
                view, filled = memoryview(dest).cast("B"), 0
                while filled < dest.nbytes:
                    n = f.readinto(view[filled:])
                    if not n:
                        return False
                    filled += n
                return True
        except FileNotFoundError:
            return False
        except Exception:  # a corrupt entry is only a cache miss: recompute and overwrite it
            return False

    def _write_manifest(self, encoder: VisualEncoder) -> None:
        path = self.folder(encoder) / "encoder.json"
        if path.exists():
            return
        info = {"name": encoder.name, "key": encoder.key, "class": type(encoder).__name__,
                "num_tokens": encoder.num_tokens, "feature_dim": encoder.feature_dim,
                "image_size": list(encoder.image_size), "dtype": str(self.dtype).removeprefix("torch."),
                "layout": "<sha1[:2]>/<sha1 of image bytes>.npy, one [num_tokens, feature_dim] array"}
        _atomic_write(path, lambda f: f.write(json.dumps(info, indent=1).encode()))

    def _compute(self, encoder: VisualEncoder, todo: list[tuple[str, str]], rows: dict[str, list[int]],
                 out: np.ndarray, batch_size: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=len(todo), desc=f"encoding images ({encoder.name})", unit="img", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                images = [_open_image(path) for _, path in chunk]
                pixels = torch.stack([encoder.preprocess(im) for im, _ in images])
                feats = encoder.encode(pixels).to(self.dtype).cpu().numpy()
                for (digest, _), (_, read_digest), arr in zip(chunk, images, feats):
                    # file it under the bytes actually encoded, in case the file changed since it was hashed
                    _atomic_write(self.entry_path(encoder, read_digest), lambda fh, a=arr: _write_npy(fh, a))
                    out[rows[digest]] = arr
                self.computed += len(chunk)
                self.computed_total += len(chunk)
                bar.update(len(chunk))


def _open_image(path: str):
    """(image, sha1 of the bytes decoded). Decoded fully now, so a truncated or non-image file is one
    clear error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
        im = Image.open(io.BytesIO(data))
        im.load()
        return im, hashlib.sha1(data).hexdigest()
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot decode image {path!r}: {first}; replace or remove the file") from None
