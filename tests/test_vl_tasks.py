"""Vision-language tasks: loaders on tiny copies of the OFFICIAL VQAv2, GQA and NLVR2 formats (with 8x8
images), easy_vqa from its package (offline), one-line errors, and the metrics against hand-computed
cases of the official definitions (VQA accuracy, NLVR2 consistency), including their reduction over ranks."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from torchmetrics import MetricCollection

import tasks.vl  # noqa: F401  (registers the VL tasks)
from benchmark.errors import UserError
from tasks.base import TASKS, DataOptions
from tasks.vl import loaders
from tasks.vl.answers import normalize_answer
from tasks.vl.metrics import UNKNOWN, AnswerAccuracy, NLVR2Consistency, VQAAccuracy

VL = ("easy_vqa", "vqa", "gqa", "nlvr2")
ENV = {"vqa": "VQA_DIR", "gqa": "GQA_DIR", "nlvr2": "NLVR2_DIR"}


def write_image(path, suffix_format="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (hash(path.name) % 256, 40, 90)).save(path, format=suffix_format)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


def load(name, data_dir=None):
    return TASKS.get(name).load(DataOptions(data_dir=None if data_dir is None else str(data_dir)))


def load_error(name, data_dir=None) -> str:
    with pytest.raises(UserError) as err:
        load(name, data_dir)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1
    return msg


def test_vl_tasks_are_registered_with_their_specs():
    for name in VL:
        t = TASKS.get(name)
        assert (t.family, t.version, t.higher_is_better) == ("vl", 1, True)
        assert t.images_per_example == (2 if name == "nlvr2" else 1)
    assert TASKS.get("vqa").problem == "soft_multilabel" and TASKS.get("vqa").score_of == ("vqa_acc",)
    assert TASKS.get("gqa").problem == TASKS.get("nlvr2").problem == TASKS.get("easy_vqa").problem == "classification"
    nlvr2 = TASKS.get("nlvr2")
    assert [m.name for m in nlvr2.metrics] == ["acc", "consistency"] and nlvr2.score_of == ("acc",)
    assert TASKS.get("easy_vqa").num_labels == 13 and TASKS.get("nlvr2").num_labels == 2


# ----------------------------------------------------------------------------------------------- VQAv2

# (question id, image id, question, multiple_choice_answer, the annotators' answers)
VQA_TRAIN = [
    (1, 1, "What animal is this?", "dog", ["dog"] * 6 + ["a dog"] * 2 + ["cat"] * 2),
    (2, 1, "How many dogs?", "two", ["two"] * 5 + ["2"] * 3 + ["3"] * 2),
    (3, 2, "Is it sunny?", "yes", ["yes"] * 10),
    (4, 3, "What color is the car?", "red", ["red"] * 4 + ["Red."] * 2 + ["blue"] * 4),
    (5, 4, "Is the light on?", "yes.", ["yes."] * 7 + ["no"] * 3),
    (6, 4, "Is it night?", "yes", ["yes", "yes", "no"]),  # fewer than 10 answers: padded with -1
]
VQA_VAL = [
    (11, 10, "Is it raining?", "no", ["no"] * 10),
    (12, 11, "What animal?", "dog", ["dog"] * 9 + ["wolf"]),
    (13, 12, "How many cats?", "2", ["2"] * 10),
    (14, 13, "Is this a bus?", "yes", ["yes"] * 10),
    (15, 14, "How many people?", "1,000", ["1,000"] * 5 + ["1000"] * 5),
    (16, 10, "Why?", "dont know", ["dont know"] * 10),
]
VQA_CLASSES = ["yes", "2", "dog"]  # multiple-choice answers of >= 2 questions: yes 4, then 2 and dog 2 each


def write_vqa(root, rows, split, image_dir):
    write_json(root / f"v2_OpenEnded_mscoco_{split}_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split, "license": {},
        "questions": [{"image_id": img, "question": q, "question_id": qid} for qid, img, q, _, _ in rows]})
    write_json(root / f"v2_mscoco_{split}_annotations.json", {
        "info": {}, "data_type": "mscoco", "data_subtype": split, "license": {},
        "annotations": [{"question_id": qid, "image_id": img, "question_type": "what", "answer_type": "other",
                         "multiple_choice_answer": mc,
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                     for k, a in enumerate(answers)]}
                        for qid, img, _, mc, answers in rows]})
    for img in {r[1] for r in rows}:
        write_image(image_dir / f"COCO_{split}_{img:012d}.jpg", "JPEG")


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    write_vqa(root, VQA_TRAIN, "train2014", root / "train2014")  # <dir>/<split>/
    write_vqa(root, VQA_VAL, "val2014", root / "images" / "val2014")  # <dir>/images/<split>/
    return root


@pytest.fixture
def vqa_min2(monkeypatch):
    monkeypatch.setattr(loaders, "VQA_MIN_COUNT", 2)


def test_vqa_loader_splits_columns_and_answer_table(vqa_dir, vqa_min2):
    task = TASKS.get("vqa")
    dd = load("vqa", vqa_dir)
    assert list(dd) == ["train", "validation", "test"]
    assert {s: dd[s].column_names for s in dd} == {s: ["text_a", "images", "label"] for s in dd}
    assert task.num_labels == 3 and list(task.label_names) == VQA_CLASSES
    table = task.extra["answers"]
    assert table[:3] == VQA_CLASSES  # classes first, then every other normalised answer, alphabetically
    assert table[3:] == sorted({"cat", "3", "red", "blue", "no", "wolf", "1000", "don't know"})
    assert len(table) == len(set(table))

    train = dd["train"].to_list()
    assert [r["text_a"] for r in train] == [r[2] for r in VQA_TRAIN]
    ids = {a: i for i, a in enumerate(table)}
    assert train[0]["label"] == [ids["dog"]] * 8 + [ids["cat"]] * 2  # "a dog" -> "dog"
    assert train[1]["label"] == [ids["2"]] * 8 + [ids["3"]] * 2  # "two" -> "2"
    assert train[3]["label"] == [ids["red"]] * 6 + [ids["blue"]] * 4  # "Red." -> "red"
    assert train[5]["label"] == [ids["yes"], ids["yes"], ids["no"]] + [-1] * 7
    assert train[0]["images"] == [str(vqa_dir / "train2014" / "COCO_train2014_000000000001.jpg")]

    # val2014 split by image into validation and test: every val question exactly once, no shared image
    val_rows = {r[2]: r for r in VQA_VAL}
    seen = {s: {r["text_a"]: r["images"][0] for r in dd[s].to_list()} for s in ("validation", "test")}
    assert sorted([*seen["validation"], *seen["test"]]) == sorted(val_rows)
    assert not set(seen["validation"].values()) & set(seen["test"].values())
    assert (len(set(seen["validation"].values())), len(set(seen["test"].values()))) == (2, 3)  # 5 images, halves
    assert all(p.startswith(str(vqa_dir / "images" / "val2014")) for s in seen.values() for p in s.values())
    thousand = next(r for s in ("validation", "test") for r in dd[s].to_list() if r["text_a"] == "How many people?")
    assert thousand["label"] == [ids["1000"]] * 10  # "1,000" -> "1000"


def test_vqa_split_is_deterministic_and_pinned_and_env_var_works(vqa_dir, vqa_min2, monkeypatch, tmp_path):
    first = {s: d.to_list() for s, d in load("vqa", vqa_dir).items()}
    monkeypatch.setenv("VQA_DIR", str(vqa_dir))
    (tmp_path / "glue").mkdir()  # a data_dir without the files (make passes GLUE_DIR to every task) is passed over
    for where in (None, tmp_path / "glue"):
        assert {s: d.to_list() for s, d in load("vqa", where).items()} == first
    # version 1: validation = images 12 and 14 of val2014 (seed 0), test = 10, 11, 13
    assert sorted({int(r["images"][0][-8:-4]) for r in first["validation"]}) == [12, 14]


def test_vqa_vocabulary_cap_and_default_min_count(vqa_dir, vqa_min2, monkeypatch):
    monkeypatch.setattr(loaders, "VQA_MAX_ANSWERS", 2)
    load("vqa", vqa_dir)
    task = TASKS.get("vqa")
    assert task.num_labels == 2 and task.extra["answers"][:2] == ["yes", "2"] and "dog" in task.extra["answers"][2:]
    monkeypatch.setattr(loaders, "VQA_MIN_COUNT", 9)  # the default: no answer of these files is frequent enough
    assert "9 or more" in load_error("vqa", vqa_dir)


def test_vqa_metric_through_the_task_reads_the_loaded_table(vqa_dir, vqa_min2):
    dd = load("vqa", vqa_dir)
    task = TASKS.get("vqa")
    metric = task.make_metrics()["vqa_acc"]
    labels = torch.tensor(list(dd["train"]["label"]))
    preds = torch.tensor([2, 1, 0, 2, 0, 0])  # dog (8/10 -> 1), 2 (8/10), yes (10), dog (0), yes (7), yes (2 of 3)
    metric.update(preds, labels)
    want = [1, 1, 1, 0, 1, (2 * (1 / 3) + 1 * (2 / 3)) / 3]
    assert float(metric.compute()) == pytest.approx(sum(want) / 6)


def test_vqa_missing_data_is_one_line(tmp_path, vqa_dir, monkeypatch):
    msg = load_error("vqa")
    for part in ("VQA_DIR", "data_dir=", "DATA_DIR", "TASK=easy_vqa", "v2_OpenEnded_mscoco_", "annotations.json"):
        assert part in msg
    assert str(tmp_path / "nope") in load_error("vqa", tmp_path / "nope")
    monkeypatch.setenv("VQA_DIR", str(tmp_path / "nope2"))
    assert str(tmp_path / "nope2") in load_error("vqa")
    shutil.copytree(vqa_dir, tmp_path / "v")
    (tmp_path / "v" / "v2_mscoco_val2014_annotations.json").unlink()
    assert str(tmp_path / "v" / "v2_mscoco_val2014_annotations.json") in load_error("vqa", tmp_path / "v")


@pytest.mark.parametrize("content", ['{"questions": [', '{"questions": [{"question": "x"}]}', "", "[1, 2]"])
def test_vqa_corrupt_file_is_one_line(tmp_path, vqa_dir, content):
    shutil.copytree(vqa_dir, tmp_path / "v")
    target = tmp_path / "v" / "v2_OpenEnded_mscoco_val2014_questions.json"
    target.write_text(content)
    msg = load_error("vqa", tmp_path / "v")
    assert str(target) in msg and "corrupt" in msg


def test_vqa_annotations_not_matching_questions_is_one_line(tmp_path, vqa_dir):
    shutil.copytree(vqa_dir, tmp_path / "v")
    write_vqa(tmp_path / "v", VQA_VAL[:2], "val2014", tmp_path / "v" / "images" / "val2014")
    questions = tmp_path / "v" / "v2_OpenEnded_mscoco_val2014_questions.json"
    write_json(questions, {"questions": [{"image_id": i, "question": q, "question_id": qid}
                                         for qid, i, q, _, _ in VQA_VAL]})
    msg = load_error("vqa", tmp_path / "v")
    assert "v2_mscoco_val2014_annotations.json" in msg and "question_id 13" in msg


def test_vqa_missing_images_is_one_line(tmp_path, vqa_dir, vqa_min2):
    shutil.copytree(vqa_dir, tmp_path / "v")
    for img in (12, 14):
        (tmp_path / "v" / "images" / "val2014" / f"COCO_val2014_{img:012d}.jpg").unlink()
    msg = load_error("vqa", tmp_path / "v")
    assert str(tmp_path / "v" / "images" / "val2014" / "COCO_val2014_000000000012.jpg") in msg
    assert "2 of 12" in msg  # 12 questions reference an image, 2 of them a missing one


# ----------------------------------------------------------------------------------------------- GQA

GQA_ROWS = {  # split file -> (question id, image id, question, answer)
    "train": [("q1", "n1", "Is the sky blue?", "yes"), ("q2", "n1", "Is it dark?", "no"),
              ("q3", "n2", "Which side is the cup on?", "left"), ("q4", "n2", "Is there a cup?", "yes"),
              ("q5", "n3", "Is the cat white?", "yes"), ("q6", "n3", "Any dogs?", "no")],
    "val": [("v1", "n4", "Is it red?", "yes"), ("v2", "n4", "Which side?", "right")],  # "right": not in train
    "testdev": [("t1", "n5", "Which side is it on?", "left"), ("t2", "n5", "Is it big?", "no"),
                ("t3", "n6", "What is it?", "zebra")],
}
GQA_CLASSES = ["yes", "no", "left", UNKNOWN]


def write_gqa(root, folder="questions1.2"):
    for split, rows in GQA_ROWS.items():
        write_json(root / folder / f"{split}_balanced_questions.json", {
            qid: {"semantic": [], "entailed": [], "equivalent": [qid], "question": q, "imageId": img,
                  "isBalanced": True, "groups": {"global": None, "local": "10q"}, "answer": a, "semanticStr": "",
                  "annotations": {}, "types": {"structural": "verify"}, "fullAnswer": f"{a}."}
            for qid, img, q, a in rows})
        for img in {r[1] for r in rows}:
            write_image(root / "images" / f"{img}.jpg", "JPEG")


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa")
    write_gqa(root)
    return root


def test_gqa_loader_splits_labels_and_unknown_answers(gqa_dir, tmp_path):
    dd = load("gqa", gqa_dir)
    task = TASKS.get("gqa")
    assert {s: dd[s].column_names for s in dd} == {s: ["text_a", "images", "label"] for s in dd}
    assert task.num_labels == 4 and task.extra["answers"] == GQA_CLASSES and list(task.label_names) == GQA_CLASSES
    for split, part in (("train", "train"), ("validation", "val"), ("test", "testdev")):
        rows = dd[split].to_list()
        assert [r["text_a"] for r in rows] == [q for _, _, q, _ in GQA_ROWS[part]]
        answers, images = [a for *_, a in GQA_ROWS[part]], [img for _, img, _, _ in GQA_ROWS[part]]
        assert [r["label"] for r in rows] == [GQA_CLASSES.index(a) if a in GQA_CLASSES else 3 for a in answers]
        assert [r["images"] for r in rows] == [[str(gqa_dir / "images" / f"{img}.jpg")] for img in images]
    assert 3 not in list(dd["train"]["label"])  # <unk> only for answers no train question has
    # the question files may also lie directly in the directory; GQA_DIR works like data_dir
    write_gqa(tmp_path / "flat", folder=".")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GQA_DIR", str(tmp_path / "flat"))
        assert list(load("gqa")["test"]["label"]) == list(dd["test"]["label"])


def test_gqa_accuracy_counts_unknown_answers_as_wrong(gqa_dir):
    load("gqa", gqa_dir)
    metric = TASKS.get("gqa").make_metrics()["acc"]
    metric.update(torch.tensor([0, 2, 3, 1]), torch.tensor([0, 1, 3, 1]))  # right, wrong, <unk> "right", right
    assert float(metric.compute()) == pytest.approx(0.5)
    plain = AnswerAccuracy()  # without a table: plain exact match
    plain.update(torch.tensor([0, 2, 3, 1]), torch.tensor([0, 1, 3, 1]))
    assert float(plain.compute()) == pytest.approx(0.75)


def test_gqa_errors_are_one_line(tmp_path, gqa_dir):
    msg = load_error("gqa")
    for part in ("GQA_DIR", "data_dir=", "TASK=easy_vqa", "{train,val,testdev}_balanced_questions.json", "images/"):
        assert part in msg
    shutil.copytree(gqa_dir, tmp_path / "g")
    target = tmp_path / "g" / "questions1.2" / "val_balanced_questions.json"
    target.write_text('{"v1": {"imageId": "n4", "question": "Is it')
    msg = load_error("gqa", tmp_path / "g")
    assert str(target) in msg and "corrupt" in msg
    target.write_text(json.dumps(["not", "a", "dict"]))
    assert str(target) in load_error("gqa", tmp_path / "g")
    shutil.copy(gqa_dir / "questions1.2" / "val_balanced_questions.json", target)
    (tmp_path / "g" / "questions1.2" / "testdev_balanced_questions.json").unlink()
    assert "testdev_balanced_questions.json" in load_error("gqa", tmp_path / "g")
    shutil.copy(gqa_dir / "questions1.2" / "testdev_balanced_questions.json", tmp_path / "g" / "questions1.2")
    (tmp_path / "g" / "images" / "n5.jpg").unlink()
    msg = load_error("gqa", tmp_path / "g")
    assert str(tmp_path / "g" / "images" / "n5.jpg") in msg and "2 of 11" in msg


# ----------------------------------------------------------------------------------------------- NLVR2

NLVR2_ROWS = {  # file -> (identifier, sentence, label)
    "train": [("train-1-0-0", "There are two dogs.", "True"), ("train-1-1-0", "There are two dogs.", "False"),
              ("train-1-0-1", "One image shows a bird.", "False"), ("train-2-0-0", "Both images are dark.", "True")],
    "dev": [("dev-5-0-0", "A cat sits on a mat.", "True"), ("dev-5-1-0", "A cat sits on a mat.", "True"),
            ("dev-5-2-0", "A cat sits on a mat.", "False"), ("dev-7-0-0", "The left image has a car.", "True")],
    "test1": [("test1-3-0-0", "There is a tree.", "False"), ("test1-3-1-0", "There is a tree.", "True")],
}
# train in a numbered subfolder (as released); both layouts, <dir>/images/<split>/ and <dir>/<split>/
NLVR2_IMAGE_DIRS = {"train": "images/train/7", "dev": "dev", "test1": "images/test1"}


def nlvr2_line(identifier, sentence, label):
    pair = identifier.rsplit("-", 1)[0]
    return json.dumps({"validation": {}, "sentence": sentence, "left_url": f"http://x/{pair}-l.jpg",
                       "writer": "w", "label": label, "right_url": f"http://x/{pair}-r.jpg", "synset": "dog",
                       "query": "dogs", "identifier": identifier, "extra_validations": {}})


def write_nlvr2(root):
    for split, rows in NLVR2_ROWS.items():
        data = root / ("data" if split != "test1" else ".")  # test1.json directly in the dir
        data.mkdir(parents=True, exist_ok=True)
        (data / f"{split}.json").write_text("\n".join(nlvr2_line(*r) for r in rows) + "\n")
        for identifier, _, _ in rows:
            for k in (0, 1):
                write_image(root / NLVR2_IMAGE_DIRS[split] / f"{identifier.rsplit('-', 1)[0]}-img{k}.png")


@pytest.fixture(scope="module")
def nlvr2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlvr2")
    write_nlvr2(root)
    return root


def test_nlvr2_loader_splits_labels_images_and_groups(nlvr2_dir):
    dd = load("nlvr2", nlvr2_dir)
    assert {s: dd[s].column_names for s in dd} == {s: ["text_a", "images", "label", "group"] for s in dd}
    for split, part in (("train", "train"), ("validation", "dev"), ("test", "test1")):
        rows = dd[split].to_list()
        assert [r["text_a"] for r in rows] == [s for _, s, _ in NLVR2_ROWS[part]]
        assert [r["label"] for r in rows] == [int(y == "True") for *_, y in NLVR2_ROWS[part]]
        for r, (identifier, _, _) in zip(rows, NLVR2_ROWS[part]):
            pair = identifier.rsplit("-", 1)[0]
            assert r["images"] == [str(nlvr2_dir / NLVR2_IMAGE_DIRS[part] / f"{pair}-img{k}.png") for k in (0, 1)]
    groups = {s: list(dd[s]["group"]) for s in dd}
    # one id per (split, setid, sentenceid): train-1-*-0 share one, train-1-0-1 and train-2-0-0 have their own
    assert groups["train"][0] == groups["train"][1] and len(set(groups["train"])) == 3
    assert len(set(groups["validation"])) == 2 and len(set(groups["validation"][:3])) == 1
    assert len(set(groups["test"])) == 1
    assert not set(groups["train"]) & set(groups["validation"])  # ids unique over all splits


def test_nlvr2_metrics_through_the_task(nlvr2_dir):
    dd = load("nlvr2", nlvr2_dir)
    metrics = MetricCollection(TASKS.get("nlvr2").make_metrics())
    labels, group = torch.tensor(list(dd["validation"]["label"])), torch.tensor(list(dd["validation"]["group"]))
    preds = torch.tensor([1, 1, 1, 1])  # sentence dev-5-*-0: one pair wrong; dev-7-0-0: right
    metrics.update(preds, labels, group=group)  # Accuracy takes no group: the collection filters it out
    assert {k: float(v) for k, v in metrics.compute().items()} == pytest.approx({"acc": 0.75, "consistency": 0.5})


def test_nlvr2_errors_are_one_line(tmp_path, nlvr2_dir):
    msg = load_error("nlvr2")
    for part in ("NLVR2_DIR", "data_dir=", "TASK=easy_vqa", "train,dev,test1", "img0.png"):
        assert part in msg
    shutil.copytree(nlvr2_dir, tmp_path / "n")
    target = tmp_path / "n" / "data" / "dev.json"
    lines = target.read_text().splitlines()
    target.write_text("\n".join([lines[0], '{"sentence": "broken', *lines[1:]]))
    msg = load_error("nlvr2", tmp_path / "n")
    assert str(target) in msg and "line 2" in msg and "corrupt" in msg
    target.write_text(nlvr2_line("dev-5-0-0", "x", "maybe"))
    assert "maybe" in load_error("nlvr2", tmp_path / "n")
    shutil.copy(nlvr2_dir / "data" / "dev.json", target)
    (tmp_path / "n" / "images" / "train" / "7" / "train-1-1-img1.png").unlink()
    msg = load_error("nlvr2", tmp_path / "n")
    assert str(tmp_path / "n" / "images" / "train" / "train-1-1-img1.png") in msg and "1 of 20" in msg


# ----------------------------------------------------------------------------------------------- easy_vqa


@pytest.fixture(scope="module")
def easy():
    return load("easy_vqa")


def test_easy_vqa_loads_offline_with_the_package_sizes(easy):
    import easy_vqa

    assert {s: easy[s].column_names for s in easy} == {s: ["text_a", "images", "label"] for s in easy}
    assert len(easy["train"]) + len(easy["validation"]) == 38575 and len(easy["test"]) == 9673
    images = {s: {p for ps in list(easy[s]["images"]) for p in ps} for s in easy}
    assert not images["train"] & images["validation"]  # split by image
    assert (len(images["train"]), len(images["validation"]), len(images["test"])) == (3600, 400, 1000)
    assert all(p.startswith("/") and p.endswith(".png") for s in images.values() for p in s)
    task = TASKS.get("easy_vqa")
    assert task.extra["answers"] == easy_vqa.get_answers() and task.num_labels == 13
    assert set(easy["test"]["label"]) == set(range(13))
    texts, answers, _ = easy_vqa.get_test_questions()
    assert list(easy["test"]["text_a"]) == texts
    assert [task.extra["answers"][y] for y in list(easy["test"]["label"])] == answers


def test_easy_vqa_split_is_deterministic(easy):
    again = load("easy_vqa")
    assert list(again["validation"]["text_a"]) == list(easy["validation"]["text_a"])
    assert list(again["validation"]["images"]) == list(easy["validation"]["images"])


def test_easy_vqa_without_the_package_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import fails
    assert "pip install easy-vqa" in load_error("easy_vqa")


# ----------------------------------------------------------------------------------------------- VQA accuracy


def official_vqa_accuracy(pred: str, answers: list[str]) -> float:
    """The official loop, written out: for each annotator, min(1, matches among the others / 3)."""
    pred = normalize_answer(pred)
    answers = [normalize_answer(a) for a in answers]
    accs = [min(1.0, sum(o == pred for o in answers[:i] + answers[i + 1:]) / 3) for i in range(len(answers))]
    return sum(accs) / len(accs)


def vqa_acc(pred: str, answers: list[str]) -> float:
    m = VQAAccuracy()
    m.update([pred], [answers])
    return float(m.compute())


@pytest.mark.parametrize("matches,want", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_vqa_accuracy_by_number_of_matching_annotators(matches, want):
    answers = ["cat"] * matches + ["dog", "cow", "pig", "hen", "fox", "owl", "elk", "bee", "ant", "yak"][:10 - matches]
    assert vqa_acc("cat", answers) == pytest.approx(want)


@pytest.mark.parametrize("pred,answers,want", [
    ("two", ["2"] * 3 + ["3"] * 7, 0.9),  # number words -> digits
    ("2", ["two"] * 2 + ["3"] * 8, 0.6),
    ("a dog", ["dog"] * 4 + ["cat"] * 6, 1.0),  # articles dropped
    ("dog", ["the dog", "a dog", "an dog"] + ["cat"] * 7, 0.9),
    ("yes.", ["yes!"] * 10, 1.0),  # punctuation: "!" becomes a space, a final period goes
    ("Yes", ["yes"] * 10, 1.0),  # case
    ("dont", ["don't"] * 10, 1.0),  # contractions restored
    ("whats up", ["what's up"] * 10, 1.0),
    ("1,000", ["1000"] * 10, 1.0),  # a comma between digits: every mark removed
    ("red,blue", ["red blue"] * 10, 1.0),  # another comma: a space
    ("red, blue", ["red blue"] * 10, 1.0),  # a mark next to a space: removed
    ("2.5", ["25"] * 10, 0.0),  # a period before a digit stays
    ("2.5", ["2.5"] * 10, 1.0),
    ("ten-year", ["10 year"] * 10, 1.0),
    ("none", ["0"] * 10, 1.0),
    ("cat", ["dog"] * 10, 0.0),
])
def test_vqa_accuracy_normalisation(pred, answers, want):
    assert vqa_acc(pred, answers) == pytest.approx(want)
    assert official_vqa_accuracy(pred, answers) == pytest.approx(want)


def test_vqa_accuracy_leave_one_out_differs_from_naive_scoring():
    # 3 answers, all "cat": every annotator sees 2 matches among the others -> 2/3 (naive min(3/3, 1) = 1)
    assert vqa_acc("cat", ["cat"] * 3) == pytest.approx(2 / 3)
    # 4 answers, 3 "cat": (3 * 2/3 + 1 * 1) / 4 = 0.75 (naive 1); 10 answers, 3 "cat": 0.9 (naive 1)
    assert vqa_acc("cat", ["cat"] * 3 + ["dog"]) == pytest.approx(0.75)
    assert vqa_acc("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    gen = torch.Generator().manual_seed(0)
    words = ["yes", "no", "two", "2", "a dog", "dog", "red"]
    for _ in range(50):  # random cases agree with the official loop
        n = int(torch.randint(1, 11, (1,), generator=gen))
        answers = [words[int(i)] for i in torch.randint(0, len(words), (n,), generator=gen)]
        pred = words[int(torch.randint(0, len(words), (1,), generator=gen))]
        assert vqa_acc(pred, answers) == pytest.approx(official_vqa_accuracy(pred, answers))


def test_vqa_accuracy_string_and_id_apis_agree_and_states_merge():
    table = ["yes", "no", "2", "dog", "cat", "red"]
    preds = [0, 2, 3, 1, 5]
    targets = [[0] * 10, [2] * 2 + [1] * 8, [3] * 3 + [4] * 7, [0, 0, 1, -1, -1, -1, -1, -1, -1, -1], [4] * 10]
    want = [1.0, 0.6, 0.9, (1 * 0 + 2 * (1 / 3)) / 3, 0.0]

    by_id = VQAAccuracy(answers=lambda: table)
    by_id.update(torch.tensor(preds), torch.tensor(targets))
    by_str = VQAAccuracy()
    by_str.update([table[p] for p in preds], [[table[i] for i in t if i >= 0] for t in targets])
    assert float(by_id.compute()) == pytest.approx(float(by_str.compute())) == pytest.approx(sum(want) / 5)

    # two "ranks": sum states merge to the value over all questions
    rank0, rank1 = VQAAccuracy(answers=table), VQAAccuracy(answers=table)
    rank0.update(torch.tensor(preds[:2]), torch.tensor(targets[:2]))
    rank1.update(torch.tensor(preds[2:]), torch.tensor(targets[2:]))
    assert {rank0._reductions[k].__name__ for k in ("total", "count")} == {"dim_zero_sum"}
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(sum(want) / 5)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(VQAAccuracy().compute()) == 0.0  # nothing seen


# ----------------------------------------------------------------------------------------------- consistency


def two_rank_sync(metric, other):
    """Reduce ``metric`` with ``other`` as torchmetrics does over two ranks (gathering every state)."""
    gathered = []
    other.sync(dist_sync_fn=lambda t, group=None: gathered.append(t) or [t], distributed_available=lambda: True)
    it = iter(gathered)
    metric.sync(dist_sync_fn=lambda t, group=None: [t, next(it)], distributed_available=lambda: True)
    return float(type(metric).compute(metric))


def test_nlvr2_consistency_hand_example_and_reduction_over_ranks():
    group = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    target = torch.tensor([1, 0, 1, 1, 0, 1, 0])
    preds = torch.tensor([1, 0, 1, 1, 1, 1, 1])  # sentence 0 all right, 1 one wrong, 2 right, 3 wrong
    m = NLVR2Consistency()
    m.update(preds, target, group)
    assert float(m.compute()) == pytest.approx(2 / 4)

    # sentence 1 split over two ranks: its wrong example on rank 1 must still make it inconsistent
    for cut in (1, 3, 4, 6):
        a, b = NLVR2Consistency(), NLVR2Consistency()
        a.update(preds[:cut], target[:cut], group[:cut])
        b.update(preds[cut:], target[cut:], group[cut:])
        assert two_rank_sync(a, b) == pytest.approx(0.5)
        a, b = NLVR2Consistency(), NLVR2Consistency()
        a.update(preds[:cut], target[:cut], group[:cut])
        b.update(preds[cut:], target[cut:], group[cut:])
        a.merge_state(b)
        assert float(a.compute()) == pytest.approx(0.5)
    # a rank that saw nothing (it sends empty float states)
    a, b = NLVR2Consistency(), NLVR2Consistency()
    a.update(preds, target, group)
    assert two_rank_sync(a, b) == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(NLVR2Consistency().compute()) == 0.0


def test_vqa_accuracy_reduction_over_ranks():
    a, b = VQAAccuracy(), VQAAccuracy()
    a.update(["cat"], [["cat"] * 10])
    b.update(["cat", "dog"], [["cat"] + ["x"] * 9, ["cat"] * 10])
    assert two_rank_sync(a, b) == pytest.approx((1 + 0.3 + 0) / 3)
