"""Loading GLUE: a local directory in the original release layout, or the hub dataset nyu-mll/glue.

Both sources are first mapped to the same intermediate, ``{"train", "dev"[, "dev_mismatched"]}`` ->
a DataFrame with ``text_a``, ``text_b`` (pair tasks) and ``label``; then ONE split rule per task makes
the train / validation / test splits (there is no labelled GLUE test set; see docs/datasets.md).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from benchmark import hub
from benchmark.errors import UserError
from tasks.glue.spec import SPECS, GlueSpec

HUB_ID = "nyu-mll/glue"
SPLIT_SEED = 0  # the split is part of the task version: never change it without bumping the version
HOLDOUT = 1000  # validation examples held out of train for SST-2, QNLI, QQP
MAX_BAD_FRACTION = 0.01  # more malformed rows than this (and than 10) means the file is not a GLUE file
LOCAL_FIX = "point GLUE_DIR=<dir> (or data_dir=<dir>) at a copy in the original GLUE layout"
FIX = f"{LOCAL_FIX}, or leave both unset to download {HUB_ID} from the hub"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def glue_dir(options) -> Path | None:
    """The local GLUE directory: ``options.data_dir`` if set, else the env var GLUE_DIR, else None (hub)."""
    where = options.data_dir or os.environ.get("GLUE_DIR") or ""
    return Path(where).expanduser() if where else None


def _corrupt(path: Path, reason: str) -> UserError:
    return UserError(f"GLUE file {path} is corrupt or not in the original GLUE format ({_one_line(reason)}); "
                     f"replace it with an intact copy, or {FIX}")


class _BadRows(Exception):
    pass


def _frame(spec: GlueSpec, raw, text_cols: tuple[str, str | None], label_col: str):
    """Keep the rows with a non-empty first text and a valid label, as (text_a[, text_b], label)."""
    import pandas as pd

    a, b = text_cols
    label = raw[label_col].astype(str).str.strip()
    out = pd.DataFrame({"text_a": raw[a].astype(str).str.strip()})
    if b is not None:
        out["text_b"] = raw[b].astype(str).str.strip()
    if spec.regression:
        value = pd.to_numeric(label, errors="coerce")
        ok = value.notna() & np.isfinite(value.astype(float))
    else:
        ids = {n: i for i, n in enumerate(spec.label_names)} | {str(i): i for i in range(spec.num_labels)}
        value = label.map(ids)
        ok = value.notna()
    ok &= out["text_a"] != ""
    bad = int((~ok).sum())
    if not ok.any() or bad > max(10, MAX_BAD_FRACTION * len(out)):
        raise _BadRows(f"{bad} of {len(out)} rows have no text or an unknown label")
    out = out[ok].reset_index(drop=True)
    out["label"] = value[ok].to_numpy().astype("float32" if spec.regression else "int64")
    return out


def read_tsv(spec: GlueSpec, path: Path):
    """One file of the original release. Quoting is disabled (some rows contain a lone ``"``); rows with
    too many fields are skipped, rows with too few (an empty text or label) are dropped."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"GLUE file {path} not found; {FIX}")
    try:
        raw = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                          header=None if spec.header else "infer", names=spec.header, on_bad_lines="skip",
                          lineterminator="\n", encoding="utf-8")
    except (ValueError, OSError, pd.errors.ParserError) as e:  # UnicodeDecodeError, EmptyDataError are ValueErrors
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    a, b, label = spec.tsv
    missing = [c for c in (a, b, label) if c is not None and c not in raw.columns]
    if missing:
        raise _corrupt(path, f"missing columns {missing}")
    try:
        return _frame(spec, raw, (a, b), label)
    except _BadRows as e:
        raise _corrupt(path, str(e)) from None


def parts_from_dir(spec: GlueSpec, root: Path) -> dict:
    if not root.is_dir():
        raise UserError(f"GLUE directory {root} not found (expected {root / spec.folder / 'train.tsv'}); {FIX}")
    return {part: read_tsv(spec, root / spec.folder / file) for part, (file, _) in spec.parts.items()}


def parts_from_hub(spec: GlueSpec, cache_dir: str | None = None) -> dict:
    hub.require_hub(f"{HUB_ID} ({spec.name})", LOCAL_FIX)
    from datasets import load_dataset

    try:
        ds = load_dataset(HUB_ID, spec.name, cache_dir=cache_dir)
    except Exception as e:  # network drop, missing config, disk full...: one line, never a traceback
        raise UserError(f"could not load {HUB_ID} ({spec.name}) from the hub ({type(e).__name__}: "
                        f"{_one_line(e)[:200]}); retry, or {LOCAL_FIX}") from None
    parts = {}
    for part, (_, split) in spec.parts.items():
        try:
            parts[part] = _frame(spec, ds[split].to_pandas(), spec.hub, "label")
        except (_BadRows, KeyError) as e:
            raise UserError(f"{HUB_ID} ({spec.name}) split {split} is not as expected ({_one_line(e)}); "
                            f"clear the datasets cache and retry, or {LOCAL_FIX}") from None
    return parts


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(n)


def _take(frame, index: np.ndarray):
    """The rows ``index`` in file order: which rows are in a split is random, their order is not."""
    return frame.iloc[np.sort(index)].reset_index(drop=True)


def _halve_dev(spec: GlueSpec, parts: dict) -> dict:
    """validation = half of dev, test = the other half (the larger one when dev has an odd size)."""
    dev = parts["dev"]
    perm = _permutation(len(dev))
    half = len(dev) // 2
    return {"train": parts["train"], "validation": _take(dev, perm[:half]), "test": _take(dev, perm[half:])}


def _holdout_train(spec: GlueSpec, parts: dict) -> dict:
    """validation = HOLDOUT rows of train, train = the rest, test = the official dev set."""
    train = parts["train"]
    if len(train) <= HOLDOUT:
        raise UserError(f"GLUE {spec.name}: train has only {len(train)} rows, not enough to hold out {HOLDOUT} "
                        f"for validation (incomplete data); {FIX}")
    perm = _permutation(len(train))
    return {"train": _take(train, perm[HOLDOUT:]), "validation": _take(train, perm[:HOLDOUT]), "test": parts["dev"]}


def _mismatched(spec: GlueSpec, parts: dict) -> dict:
    """MNLI: validation = dev_mismatched, test = dev_matched."""
    return {"train": parts["train"], "validation": parts["dev_mismatched"], "test": parts["dev"]}


SPLIT_RULES = {"halve_dev": _halve_dev, "holdout_train": _holdout_train, "mismatched": _mismatched}


def make_splits(spec: GlueSpec, parts: dict):
    """The task's split rule applied to the intermediate parts, as a ``datasets.DatasetDict``."""
    from datasets import Dataset, DatasetDict, Features, Value

    columns = {"text_a": Value("string")}
    if spec.hub[1] is not None:
        columns["text_b"] = Value("string")
    columns["label"] = Value("float32" if spec.regression else "int64")
    features = Features(columns)
    splits = SPLIT_RULES[spec.split](spec, parts)
    return DatasetDict({name: Dataset.from_pandas(splits[name], features=features, preserve_index=False)
                        for name in ("train", "validation", "test")})


def load_glue(task, options):
    """The loader of every GLUE task (``Task.loader``)."""
    spec = SPECS[task.name]
    root = glue_dir(options)
    parts = parts_from_dir(spec, root) if root is not None else parts_from_hub(spec, options.cache_dir)
    return make_splits(spec, parts)
