"""The vision-language tasks (family "vl"): easy_vqa (offline default), VQAv2, GQA and NLVR2.

Examples carry ``images`` (absolute paths; the run encodes them with a frozen image encoder). Loaders,
splits and the files they expect: ``tasks.vl.loaders``; metrics: ``tasks.vl.metrics``.

Accuracy: torchmetrics' multiclass Accuracy where the classes are fixed (easy_vqa: 13, NLVR2: 2); GQA's
classes are only known after loading, and its "<unk>" class must always count as wrong, so it uses
``AnswerAccuracy``, which reads the answer table when it first updates. VQA and GQA start with
``num_labels=0``: their loader sets it (and ``extra["answers"]``) from the files, before the head is built.

The seq2seq kind reads easy_vqa (13 answers) and NLVR2 (2 labels) text-to-text, by rank classification over
their answer words. VQAv2 (3,129 answers) and GQA (about 1,800) are not offered there: rank classification
would take one decoder pass per answer; VL-T5 generates instead, which this suite does not (yet) score.
"""
from __future__ import annotations

from functools import partial

from torchmetrics import Accuracy

from tasks.base import MetricSpec, Task, TextToText
from tasks.vl.loaders import NLVR2_LABELS, load_easy_vqa, load_gqa, load_nlvr2, load_vqa
from tasks.vl.metrics import AnswerAccuracy, NLVR2Consistency, TaskAnswers, VQAAccuracy

EASY_VQA_ANSWERS = 13


def _accuracy(num_classes: int) -> Accuracy:
    return Accuracy(task="multiclass", num_classes=num_classes)


EASY_VQA = Task(
    name="easy_vqa", version=1, family="vl", problem="classification", num_labels=EASY_VQA_ANSWERS,
    metrics=(MetricSpec("acc", partial(_accuracy, EASY_VQA_ANSWERS)),), score_of=("acc",), loader=load_easy_vqa,
    images_per_example=1,
    # seq2seq (VL-T5's arrangement: the visual tokens follow the question in the encoder input): the decoder
    # writes the answer; the 13 answers (the package's, set by the loader) are the label words
    text_to_text=TextToText("vqa", ("question",)),
    about="easy-vqa shapes and colours (offline), 13 answers, accuracy; val = 1/10 of train images (seeded)")

VQA = Task(
    name="vqa", version=1, family="vl", problem="soft_multilabel", num_labels=0,
    metrics=(MetricSpec("vqa_acc", partial(VQAAccuracy, answers=TaskAnswers("vqa"))),), score_of=("vqa_acc",),
    loader=load_vqa, images_per_example=1,
    about="VQAv2 (VQA_DIR), official VQA accuracy, 3,129 answers; train = train2014, val/test = seeded halves "
          "of val2014 by image")

GQA = Task(
    name="gqa", version=1, family="vl", problem="classification", num_labels=0,
    metrics=(MetricSpec("acc", partial(AnswerAccuracy, answers=TaskAnswers("gqa"))),), score_of=("acc",),
    loader=load_gqa, images_per_example=1,
    about="GQA balanced (GQA_DIR), exact-match accuracy, train answers; val = val, test = testdev")

NLVR2 = Task(
    name="nlvr2", version=1, family="vl", problem="classification", num_labels=2,
    metrics=(MetricSpec("acc", partial(_accuracy, 2)), MetricSpec("consistency", NLVR2Consistency)),
    score_of=("acc",), loader=load_nlvr2, label_names=NLVR2_LABELS, images_per_example=2,
    text_to_text=TextToText("nlvr2", ("sentence",)),  # seq2seq: its two labels as words
    about="NLVR2 (NLVR2_DIR), two images per sentence, accuracy (and consistency); val = dev, test = test1")

__all__ = ["EASY_VQA", "GQA", "NLVR2", "VQA", "AnswerAccuracy", "NLVR2Consistency", "VQAAccuracy"]
