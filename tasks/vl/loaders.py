"""Loaders of the vision-language tasks: easy_vqa (offline, from the easy-vqa package) and local copies
of the official VQAv2, GQA and NLVR2 files (formats: docs/datasets.md).

Every loader returns a DatasetDict train / validation / test with the columns ``text_a`` (question or
sentence), ``images`` (absolute image paths: one, or NLVR2's img0 and img1) and ``label`` (NLVR2 adds
``group``). The answer vocabularies of VQAv2 and GQA depend on the files, so their loaders also set the
task's ``num_labels``, ``label_names`` and ``extra["answers"]`` (the run builds the head after loading).
Every split below is part of its task's version: change one only together with the version.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.errors import UserError
from tasks.vl.answers import answer_table, frequent_answers, normalize_answer
from tasks.vl.metrics import UNKNOWN

SPLIT_SEED = 0
EASY_VQA_VALIDATION_SHARE = 10  # 1 / 10 of the train images (and all their questions) make validation
VQA_MIN_COUNT = 9  # an answer is a class if it is the answer of at least this many train+val questions...
VQA_MAX_ANSWERS = 3129  # ...and among the this many most frequent ones (the usual 3,129-answer head)
VQA_ANSWERS_PER_QUESTION = 10  # label length; shorter lists are padded with -1
OFFLINE = "or run TASK=easy_vqa, which works offline"
SPLITS = ("train", "validation", "test")


def _one_line(text: object, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


# ----------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Layout:
    """Where a task's files are under its data directory, for finding them and for the error lines."""

    task: str
    env_var: str
    files: dict  # part -> relative paths it may have (the official place first)
    expected: str  # the files and images, in words
    images: str  # where the images go, in words

    def how_to_point(self) -> str:
        return f"set {self.env_var}=<dir> or data_dir=<dir> (make DATA_DIR=<dir>) to a copy, {OFFLINE}"


def data_root(layout: Layout, options) -> Path:
    """``data_dir`` if it holds the task's first file, else the env var's directory if it does. A data_dir
    without it (e.g. a GLUE_DIR given to every task) is passed over, like rotten_tomatoes does."""
    given = []
    if options.data_dir:
        given.append((Path(options.data_dir).expanduser(), "data_dir="))
    if os.environ.get(layout.env_var):
        given.append((Path(os.environ[layout.env_var]).expanduser(), f"{layout.env_var}="))
    marker = next(iter(layout.files.values()))
    for root, _ in given:
        if any((root / rel).is_file() for rel in marker):
            return root
    where = " nor in ".join(f"{root} ({how})" for root, how in given) if given else \
        f"neither {layout.env_var} nor data_dir= is set"
    where = f"not in {where}" if given else where
    raise UserError(f"{layout.task} data not found ({where}): expected {layout.expected}; {layout.how_to_point()}")


def find_file(layout: Layout, root: Path, part: str) -> Path:
    for rel in layout.files[part]:
        if (root / rel).is_file():
            return root / rel
    raise UserError(f"{layout.task} file {root / layout.files[part][0]} not found (the copy in {root} is incomplete); "
                    f"expected {layout.expected}; {layout.how_to_point()}")


def corrupt(layout: Layout, path: Path, reason: object) -> UserError:
    return UserError(f"{layout.task} file {path} is corrupt or not in the official format ({_one_line(reason)}); "
                     f"replace it with an intact copy of the official file")


def read_json(layout: Layout, path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise corrupt(layout, path, f"{type(e).__name__}: {e}") from None


def read_json_lines(layout: Layout, path: Path) -> list:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError as e:
                        raise corrupt(layout, path, f"line {number}: {type(e).__name__}: {e}") from None
    except (OSError, ValueError) as e:
        raise corrupt(layout, path, f"{type(e).__name__}: {e}") from None
    if not out:
        raise corrupt(layout, path, "no examples")
    return out


class Images:
    """Image files looked up by name in candidate folders (the first holding a name wins), listed once:
    a directory listing is much cheaper than a stat per image. ``recursive`` also searches subfolders
    (NLVR2's train images come in numbered folders). Missing names are collected for one error line."""

    def __init__(self, folders: list[Path], recursive: bool = False):
        self.folders, self.recursive = folders, recursive
        self.index: dict[str, str] | None = None
        self.missing: list[str] = []
        self.referenced = 0

    def _build(self) -> dict[str, str]:
        self.expected = next((f for f in self.folders if f.is_dir()), self.folders[0])  # where missing ones go
        index: dict[str, str] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            walk = os.walk(folder) if self.recursive else [(str(folder), [], os.listdir(folder))]
            for where, _, names in walk:
                for name in names:
                    index.setdefault(name, os.path.abspath(os.path.join(where, name)))
        return index

    def path(self, name: str) -> str:
        if self.index is None:
            self.index = self._build()
        self.referenced += 1
        found = self.index.get(name)
        if found is None:
            found = os.path.abspath(self.expected / name)
            self.missing.append(found)
        return found


def check_images(layout: Layout, images: list[Images]) -> None:
    missing = [p for i in images for p in i.missing]
    if missing:
        total = sum(i.referenced for i in images)
        raise UserError(f"{layout.task} image {missing[0]} not found ({len(missing)} of {total} referenced images "
                        f"are missing); put the images {layout.images}")


def to_dataset_dict(splits: dict, label_feature, group: bool = False):
    """{split: {column: values}} -> DatasetDict with the VL columns in a fixed order."""
    from datasets import Dataset, DatasetDict, Features, List, Value

    columns = {"text_a": Value("string"), "images": List(Value("string")), "label": label_feature}
    if group:
        columns["group"] = Value("int64")
    features = Features(columns)
    return DatasetDict({s: Dataset.from_dict({c: splits[s][c] for c in columns}, features=features) for s in SPLITS})


def set_answers(task, classes: list[str], table: list[str]) -> None:
    """The label space read from the files: the head has ``len(classes)`` outputs."""
    task.num_labels = len(classes)
    task.label_names = tuple(classes)
    task.extra["answers"] = list(table)


def _examples(rows: list[tuple]) -> dict:
    """(text, image paths, label[, group]) rows -> columns."""
    names = ("text_a", "images", "label", "group")
    return {n: [r[i] for r in rows] for i, n in enumerate(names[:len(rows[0])] if rows else names)}


# ----------------------------------------------------------------------------------------------- easy_vqa


def load_easy_vqa(task, options):
    """easy-vqa 1.0: train = the package's train questions except those of a fixed seeded 1/10 of its train
    images, which make validation (no image in both); test = the package's test split. Version 1."""
    try:
        import easy_vqa
    except ImportError:
        raise UserError("easy_vqa needs the easy-vqa package, which is not installed; install it with "
                        "`pip install easy-vqa`") from None
    fix = "reinstall it with `pip install --force-reinstall easy-vqa`"
    try:
        answers = list(easy_vqa.get_answers())
        train_q, test_q = easy_vqa.get_train_questions(), easy_vqa.get_test_questions()
        train_img, test_img = easy_vqa.get_train_image_paths(), easy_vqa.get_test_image_paths()
    except (OSError, ValueError, IndexError) as e:
        reason = f"{type(e).__name__}: {_one_line(e)}"
        raise UserError(f"the data of the easy-vqa package is damaged ({reason}); {fix}") from None
    if len(answers) != task.num_labels:
        raise UserError(f"the easy-vqa package has {len(answers)} answers, not {task.num_labels} (another version?); "
                        f"{fix}")
    label_of = {a: i for i, a in enumerate(answers)}

    def rows(questions, paths):
        out, present = [], {i for i, p in paths.items() if os.path.isfile(p)}
        for text, answer, image in zip(*questions):
            if answer not in label_of or image not in present:
                raise UserError(f"the data of the easy-vqa package is damaged (question {text!r}: answer {answer!r}, "
                                f"image {image}); {fix}")
            out.append((text, [os.path.abspath(paths[image])], label_of[answer], image))
        return out

    train, test = rows(train_q, train_img), rows(test_q, test_img)
    images = sorted({r[3] for r in train})
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    held_out = {images[i] for i in perm[:len(images) // EASY_VQA_VALIDATION_SHARE]}
    splits = {"train": [r[:3] for r in train if r[3] not in held_out],
              "validation": [r[:3] for r in train if r[3] in held_out],
              "test": [r[:3] for r in test]}
    task.label_names = tuple(answers)
    task.extra["answers"] = answers
    from datasets import Value

    return to_dataset_dict({s: _examples(r) for s, r in splits.items()}, Value("int64"))


# ----------------------------------------------------------------------------------------------- VQAv2

VQA = Layout(
    "vqa", "VQA_DIR",
    {f"{kind}_{split}": (f"v2_OpenEnded_mscoco_{split}_questions.json" if kind == "questions"
                         else f"v2_mscoco_{split}_annotations.json",)
     for split in ("train2014", "val2014") for kind in ("questions", "annotations")},
    "<dir>/v2_OpenEnded_mscoco_{train2014,val2014}_questions.json, "
    "<dir>/v2_mscoco_{train2014,val2014}_annotations.json "
    "and the COCO images <dir>/{train2014,val2014}/COCO_<split>_<12-digit id>.jpg",
    "under <dir>/<split>/ or <dir>/images/<split>/ named COCO_<split>_<12-digit image id>.jpg")


def _vqa_part(root: Path, split: str, normal: dict) -> list[tuple]:
    """(question, image id, normalised multiple-choice answer, normalised annotator answers) per question."""
    def norm(answer) -> str:
        if answer not in normal:
            normal[answer] = normalize_answer(str(answer))
        return normal[answer]

    qpath, apath = find_file(VQA, root, f"questions_{split}"), find_file(VQA, root, f"annotations_{split}")
    questions, annotations = read_json(VQA, qpath), read_json(VQA, apath)
    try:
        qs = [(int(q["question_id"]), int(q["image_id"]), str(q["question"])) for q in questions["questions"]]
    except (KeyError, TypeError, ValueError) as e:
        raise corrupt(VQA, qpath, f"{type(e).__name__}: {e}") from None
    if not qs:
        raise corrupt(VQA, qpath, "no questions")
    try:
        ann = {int(a["question_id"]): (norm(a["multiple_choice_answer"]), [norm(x["answer"]) for x in a["answers"]])
               for a in annotations["annotations"]}
    except (KeyError, TypeError, ValueError) as e:
        raise corrupt(VQA, apath, f"{type(e).__name__}: {e}") from None
    lacking = [qid for qid, _, _ in qs if qid not in ann]
    if lacking:
        raise corrupt(VQA, apath, f"no annotation for {len(lacking)} questions of {qpath.name}, "
                                  f"e.g. question_id {lacking[0]}")
    return [(text, image, *ann[qid]) for qid, image, text in qs]


def load_vqa(task, options):
    """VQAv2, version 1: train = train2014; val2014 is split BY IMAGE into validation (a fixed seeded half
    of its images) and test (the other half, the larger one when odd); test-dev needs the evaluation
    server, so it is not used. Classes: the normalised answers that are the multiple-choice answer of at
    least VQA_MIN_COUNT train+val questions, the VQA_MAX_ANSWERS most frequent (3,129 on the full data,
    as in the bottom-up-attention / LXMERT heads). Label: the ids of the 10 annotators' normalised answers
    in the answer table (classes first, then every other answer of the files)."""
    from datasets import List, Value

    root = data_root(VQA, options)
    normal: dict = {}
    parts = {split: _vqa_part(root, split, normal) for split in ("train2014", "val2014")}
    everything = parts["train2014"] + parts["val2014"]
    classes = frequent_answers((r[2] for r in everything), VQA_MIN_COUNT, VQA_MAX_ANSWERS)
    if not classes:
        raise UserError(f"vqa: no answer is the answer of {VQA_MIN_COUNT} or more questions in {root} (incomplete "
                        f"files?); {VQA.how_to_point()}")
    table = answer_table(classes, (a for r in everything for a in r[3]))
    id_of = {a: i for i, a in enumerate(table)}
    k = VQA_ANSWERS_PER_QUESTION

    image_sets, rows = [], {}
    for split, part in parts.items():
        images = Images([root / split, root / "images" / split])
        image_sets.append(images)
        rows[split] = [(text, [images.path(f"COCO_{split}_{image:012d}.jpg")],
                        ([id_of[a] for a in answers[:k]] + [-1] * k)[:k], image)
                       for text, image, _, answers in part]
    check_images(VQA, image_sets)

    val_images = sorted({r[3] for r in rows["val2014"]})
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(val_images))
    validation_images = {val_images[i] for i in perm[:len(val_images) // 2]}
    splits = {"train": rows["train2014"],
              "validation": [r for r in rows["val2014"] if r[3] in validation_images],
              "test": [r for r in rows["val2014"] if r[3] not in validation_images]}
    set_answers(task, classes, table)
    return to_dataset_dict({s: _examples([r[:3] for r in part]) for s, part in splits.items()},
                           List(Value("int64"), length=k))


# ----------------------------------------------------------------------------------------------- GQA

GQA_PARTS = {"train": "train", "validation": "val", "test": "testdev"}
GQA = Layout(
    "gqa", "GQA_DIR",
    {split: (f"questions1.2/{name}_balanced_questions.json", f"{name}_balanced_questions.json")
     for split, name in GQA_PARTS.items()},
    "<dir>/questions1.2/{train,val,testdev}_balanced_questions.json (or directly in <dir>) and the images "
    "<dir>/images/<imageId>.jpg",
    "under <dir>/images/ named <imageId>.jpg")


def load_gqa(task, options):
    """GQA balanced, version 1: train -> train, val -> validation, testdev -> test. Classes: every train
    answer (most frequent first) plus a last class "<unk>" for answers that no train question has; such
    examples keep that label (so the loss and the metric see them) and the accuracy counts them as wrong,
    as the official numbers do (a classifier cannot produce an answer it has no class for)."""
    from datasets import Value

    root = data_root(GQA, options)
    images = Images([root / "images"])
    parts = {}
    for split in SPLITS:
        path = find_file(GQA, root, split)
        data = read_json(GQA, path)
        try:
            parts[split] = [(str(q["question"]), str(q["imageId"]), str(q["answer"]).strip()) for q in data.values()]
        except (AttributeError, KeyError, TypeError) as e:
            raise corrupt(GQA, path, f"{type(e).__name__}: {e}") from None
        if not parts[split]:
            raise corrupt(GQA, path, "no questions")
    classes = frequent_answers((r[2] for r in parts["train"]), 1) + [UNKNOWN]
    id_of = {a: i for i, a in enumerate(classes)}
    unknown = id_of[UNKNOWN]
    rows = {split: [(text, [images.path(f"{image}.jpg")], id_of.get(answer, unknown)) for text, image, answer in part]
            for split, part in parts.items()}
    check_images(GQA, [images])
    set_answers(task, classes, classes)
    return to_dataset_dict({s: _examples(r) for s, r in rows.items()}, Value("int64"))


# ----------------------------------------------------------------------------------------------- NLVR2

NLVR2_PARTS = {"train": "train", "validation": "dev", "test": "test1"}
NLVR2 = Layout(
    "nlvr2", "NLVR2_DIR",
    {split: (f"data/{name}.json", f"{name}.json") for split, name in NLVR2_PARTS.items()},
    "<dir>/data/{train,dev,test1}.json (JSON lines; or directly in <dir>) and the images "
    "<dir>/images/<split>/<split>-<setid>-<pairid>-img0.png and -img1.png",
    "under <dir>/images/<split>/ or <dir>/<split>/ (subfolders allowed) named "
    "<split>-<setid>-<pairid>-img0.png / -img1.png")
NLVR2_LABELS = ("False", "True")


def load_nlvr2(task, options):
    """NLVR2, version 1: train -> train, dev -> validation, test1 -> test. Label 1 = "True". ``group`` is one
    id per sentence, i.e. per (split, setid, sentenceid) of the identifier split-setid-pairid-sentenceid:
    the sentences' image pairs are judged together by the consistency metric."""
    from datasets import Value

    root = data_root(NLVR2, options)
    groups: dict[tuple, int] = {}
    rows, image_sets = {}, []
    for split, name in NLVR2_PARTS.items():
        path = find_file(NLVR2, root, split)
        images = Images([root / "images" / name, root / name], recursive=True)
        image_sets.append(images)
        rows[split] = []
        for number, ex in enumerate(read_json_lines(NLVR2, path), 1):
            try:
                label = str(ex["label"]).strip().capitalize()
                if label not in NLVR2_LABELS:
                    raise ValueError(f"label {ex['label']!r} is not True or False")
                label = NLVR2_LABELS.index(label)
                parts = str(ex["identifier"]).split("-")
                if len(parts) != 4:
                    raise ValueError(f"identifier {ex['identifier']!r} is not split-setid-pairid-sentenceid")
                text = str(ex["sentence"])
            except (KeyError, TypeError, ValueError) as e:
                raise corrupt(NLVR2, path, f"line {number}: {type(e).__name__}: {e}") from None
            pair = "-".join(parts[:3])
            group = groups.setdefault((parts[0], parts[1], parts[3]), len(groups))
            rows[split].append((text, [images.path(f"{pair}-img0.png"), images.path(f"{pair}-img1.png")], label, group))
    check_images(NLVR2, image_sets)
    return to_dataset_dict({s: _examples(r) for s, r in rows.items()}, Value("int64"), group=True)
