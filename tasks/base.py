"""What a task is: a spec (name, version, label space, metrics with direction, reported score) plus
the loading of its train / validation / test splits. The orchestrator only ever talks to this.

Every task yields Hugging Face ``datasets.Dataset`` splits with the columns ``text_a``, optionally
``text_b``, and ``label`` (int class id, or float for regression). The reported number of a task is
``score``: the mean of the metrics named in ``score_of`` (e.g. MRPC = mean of accuracy and F1).

Vision-language tasks (``images_per_example`` > 0) add ``images`` (a list of image paths per example);
the data module turns them into cached visual features. A column ``group`` (NLVR2's sentence id) is
passed to the metrics as the keyword ``group`` (a MetricCollection gives each metric only the keywords
its ``update`` takes). Problems:

- ``classification``: ``label`` is a class id; cross-entropy.
- ``regression``: ``label`` is a float; MSE.
- ``soft_multilabel`` (VQA): ``label`` is the ids of the annotators' answers (-1 = none) in the task's
  answer table, whose first ``num_labels`` entries are the classes; the target of class a is the official
  VQA accuracy of answering a (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >= 4 annotators), the loss binary
  cross-entropy summed over classes (the VQA heads of LXMERT / VL-T5 / LST).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from tasks import TASKS  # noqa: F401  (the registry lives in the light package)

SPLITS = ("train", "validation", "test")
PROBLEMS = ("classification", "regression", "soft_multilabel")
METRIC_COLUMNS = ("group",)  # example columns handed to the metrics as keywords, never to the model


@dataclass(frozen=True)
class MetricSpec:
    name: str  # logged as <stage>/<name>
    factory: Callable[[], Metric]  # a fresh torchmetrics Metric per stage
    higher_is_better: bool = True


@dataclass(frozen=True)
class DataOptions:
    """Where a task's files are and how much of them to use; filled from the run config."""

    data_dir: str | None = None  # a task-specific local directory (GLUE_DIR for GLUE)
    cache_dir: str | None = None


@dataclass(frozen=True)
class TextToText:
    """How the seq2seq kind reads a task (T5's convention, which LST, UniPT, SHERL and MP-ISMoE train with):
    the input is one string, ``"<prefix> <field_a>: <text_a> <field_b>: <text_b>"`` (``b_first`` puts the
    second text first, as T5 does for MNLI's hypothesis), and each class is a label word the decoder learns
    to write (teacher forcing). Evaluation scores every label word's likelihood (rank classification), so a
    malformed generation can never score. A regression task (STS-B) is a classification over the rounded
    values ``values``: label word i stands for ``values[i]``, a target rounds to the nearest value."""

    prefix: str
    fields: tuple[str, ...]  # the name written before text_a (and text_b)
    label_words: tuple[str, ...] = ()  # class id -> word (regression: value i -> word i); () = the task's label_names
    values: tuple[float, ...] = ()  # regression only
    b_first: bool = False

    def source(self, text_a: str, text_b: str | None = None) -> str:
        parts = [(self.fields[0], text_a)]
        if text_b is not None:
            parts.append((self.fields[1], text_b))
            if self.b_first:
                parts.reverse()
        return " ".join([self.prefix] + [f"{name}: {text}" for name, text in parts])

    def words(self, task: "Task") -> tuple[str, ...]:
        """The label words: given, or the task's class names (an answer table its loader fills: easy_vqa)."""
        return tuple(self.label_words) or tuple(task.label_names[:task.num_labels])

    def target_class(self, labels: torch.Tensor) -> torch.Tensor:
        """The class whose label word a target is: the label itself, or the nearest value (regression)."""
        if not self.values:
            return labels.long()
        values = torch.tensor(self.values, device=labels.device)
        return (labels.float()[:, None] - values[None, :]).abs().argmin(-1)


def rounded_values(low: float, high: float, step: float) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """A regression range as label words: T5 writes STS-B scores rounded to the nearest 0.2 ("3.8")."""
    n = int(round((high - low) / step))
    values = tuple(round(low + i * step, 6) for i in range(n + 1))
    return values, tuple(f"{v:.1f}" for v in values)


@dataclass
class Task:
    name: str
    version: int
    family: str  # leaderboard grouping: "glue", "sentiment", "vl", ...
    problem: str  # "classification" | "regression"
    num_labels: int  # 1 for regression
    metrics: tuple[MetricSpec, ...]
    score_of: tuple[str, ...]  # metric names averaged into the reported score
    loader: Callable[["Task", DataOptions], "datasets.DatasetDict"]  # noqa: F821
    label_names: tuple[str, ...] = ()
    about: str = ""
    extra: dict = field(default_factory=dict)
    images_per_example: int = 0  # > 0: a vision-language task; the run adds a frozen image encoder
    text_to_text: TextToText | None = None  # how a seq2seq backbone reads it; None: classifier backbones only
    # the fewest validation / test examples a score may come from: fewer is a data problem, refused before training
    min_eval_examples: int = 2  # correlations and MCC need two; one is the degenerate dev set of a bad copy

    primary = "score"

    def __post_init__(self):
        names = {m.name for m in self.metrics}
        missing = set(self.score_of) - names
        if missing:
            raise ValueError(f"task {self.name}: score_of names unknown metrics {sorted(missing)}")
        if self.problem not in PROBLEMS:
            raise ValueError(f"task {self.name}: unknown problem {self.problem!r}")

    @property
    def higher_is_better(self) -> bool:
        """Direction of the reported score (all its parts must agree)."""
        dirs = {m.higher_is_better for m in self.metrics if m.name in self.score_of}
        if len(dirs) != 1:
            raise ValueError(f"task {self.name}: score mixes metric directions")
        return dirs.pop()

    def load(self, options: DataOptions):
        return self.loader(self, options)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.problem == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float())
        if self.problem == "soft_multilabel":
            target = soft_scores(labels, logits.shape[-1])
            return F.binary_cross_entropy_with_logits(logits, target, reduction="mean") * logits.shape[-1]
        return F.cross_entropy(logits, labels.long())

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics compare with the labels: class ids, or the regressed value."""
        if self.problem == "regression":
            return logits.squeeze(-1).float()
        return logits.argmax(-1)

    def make_metrics(self) -> dict[str, Metric]:
        return {m.name: m.factory() for m in self.metrics}

    def score(self, values: dict[str, float | torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(values[n], dtype=torch.float32) for n in self.score_of]).mean()


def soft_scores(answer_ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, K] annotator answer ids (-1 = none; ids >= num_classes are answers outside the vocabulary)
    -> [B, num_classes] official VQA accuracy of each class: with c of the 10 annotators giving it, the
    mean over annotators of min(1, matches among the other nine / 3), i.e. 0.3, 0.6, 0.9, 1.0."""
    ids = answer_ids.long()
    valid = (ids >= 0) & (ids < num_classes)
    counts = torch.zeros(ids.shape[0], num_classes + 1, device=ids.device)
    counts.scatter_add_(1, torch.where(valid, ids, num_classes), valid.float())
    c = counts[:, :num_classes]
    n = (ids >= 0).sum(1, keepdim=True).clamp_min(1).float()  # annotators of the question (10 in VQAv2)
    return (c * ((c - 1) / 3).clamp(max=1) + (n - c) * (c / 3).clamp(max=1)) / n
