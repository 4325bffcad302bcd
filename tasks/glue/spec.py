"""The per-task facts of the eight GLUE tasks, in one table: where the files are, which columns hold
the texts and the label, the label ids (hub order, so a local copy and the hub agree), the metrics
and the split rule. Everything else in ``tasks.glue`` is shared code driven by this table."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchmetrics import Metric


def _quiet(metric_class) -> Metric:
    """Build a metric without its "saves all targets in a buffer" warning (a GLUE dev set is small)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all targets and predictions.*")
        return metric_class()


# The metrics a GLUE task may report, by the name they are logged under (<stage>/<name>), built from the
# torchmetrics module: it is imported only when a metric is built, so the cards read this table without torch.
METRICS = {
    "acc": lambda tm, num_labels: tm.Accuracy(task="multiclass", num_classes=num_labels),
    "f1": lambda tm, num_labels: tm.F1Score(task="binary"),
    "mcc": lambda tm, num_labels: tm.MatthewsCorrCoef(task="binary"),
    "pearson": lambda tm, num_labels: tm.PearsonCorrCoef(),
    "spearman": lambda tm, num_labels: _quiet(tm.SpearmanCorrCoef),
}


# Intermediate part -> (file in the task's GLUE folder, split of nyu-mll/glue). MNLI adds its mismatched dev.
DEFAULT_PARTS = {"train": ("train.tsv", "train"), "dev": ("dev.tsv", "validation")}
MNLI_PARTS = {"train": ("train.tsv", "train"), "dev": ("dev_matched.tsv", "validation_matched"),
              "dev_mismatched": ("dev_mismatched.tsv", "validation_mismatched")}


@dataclass(frozen=True)
class GlueSpec:
    name: str  # registry name and nyu-mll/glue config
    folder: str  # folder of the original GLUE release
    tsv: tuple[str, str | None, str]  # TSV columns of (text_a, text_b, label)
    hub: tuple[str, str | None]  # hub columns of (text_a, text_b); the hub label column is always "label"
    label_names: tuple[str, ...]  # class names in id order (hub order); () for regression
    metrics: tuple[str, ...]  # keys of METRICS; the reported score is their mean
    split: str  # a key of tasks.glue.data.SPLIT_RULES
    about: str
    header: tuple[str, ...] | None = None  # column names of a header-less TSV (CoLA)
    # the seq2seq kind's input (T5's GLUE convention): "<name> <hub column a>: ... <hub column b>: ...",
    # the second text first where T5 writes it so (MNLI: "mnli hypothesis: ... premise: ..."); the label
    # words are ``label_names`` (T5's), STS-B's the scores rounded to 0.2
    t5_b_first: bool = False
    parts: dict = field(default_factory=lambda: dict(DEFAULT_PARTS))

    @property
    def regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    def make_metric(self, name: str) -> Metric:
        import torchmetrics

        return METRICS[name](torchmetrics, self.num_labels)


SPECS = {s.name: s for s in (
    GlueSpec("cola", "CoLA", ("sentence", None, "label"), ("sentence", None), ("unacceptable", "acceptable"),
             ("mcc",), "halve_dev", "CoLA acceptability, Matthews corr.; val/test = halves of dev",
             header=("source", "label", "original_mark", "sentence")),
    GlueSpec("sst2", "SST-2", ("sentence", None, "label"), ("sentence", None), ("negative", "positive"),
             ("acc",), "holdout_train", "SST-2 sentiment, accuracy; val = 1k held out of train, test = dev"),
    GlueSpec("mrpc", "MRPC", ("#1 String", "#2 String", "Quality"), ("sentence1", "sentence2"),
             ("not_equivalent", "equivalent"), ("acc", "f1"), "halve_dev",
             "MRPC paraphrase, mean(acc, F1); val/test = halves of dev"),
    GlueSpec("qqp", "QQP", ("question1", "question2", "is_duplicate"), ("question1", "question2"),
             ("not_duplicate", "duplicate"), ("acc", "f1"), "holdout_train",
             "QQP duplicate questions, mean(acc, F1); val = 1k held out of train, test = dev"),
    GlueSpec("mnli", "MNLI", ("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis"),
             ("entailment", "neutral", "contradiction"), ("acc",), "mismatched",
             "MNLI inference, accuracy; val = dev_mismatched, test = dev_matched", parts=dict(MNLI_PARTS),
             t5_b_first=True),
    GlueSpec("qnli", "QNLI", ("question", "sentence", "label"), ("question", "sentence"),
             ("entailment", "not_entailment"), ("acc",), "holdout_train",
             "QNLI question answering, accuracy; val = 1k held out of train, test = dev"),
    GlueSpec("rte", "RTE", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2"),
             ("entailment", "not_entailment"), ("acc",), "halve_dev",
             "RTE entailment, accuracy; val/test = halves of dev"),
    GlueSpec("stsb", "STS-B", ("sentence1", "sentence2", "score"), ("sentence1", "sentence2"), (),
             ("pearson", "spearman"), "halve_dev", "STS-B similarity, mean(Pearson, Spearman); val/test = halves of dev"),
)}
