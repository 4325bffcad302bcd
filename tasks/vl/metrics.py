"""Metrics of the vision-language tasks, as torchmetrics Metrics (states reduce over ranks).

``answers`` arguments are the task's answer table (class ids and label ids index it), or a zero-argument
callable returning it: the table of VQA and GQA is only known once the data is loaded, after the metric
factories are declared, so they pass ``TaskAnswers(name)`` and the table is read at the first update.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from tasks.vl.answers import normalize_answer

Answers = Sequence[str] | Callable[[], Sequence[str]] | None
UNKNOWN = "<unk>"  # GQA's class for answers never seen in train: its examples always count as wrong


class TaskAnswers:
    """The answer table of a registered task, read when called (picklable, unlike a lambda)."""

    def __init__(self, task_name: str):
        self.task_name = task_name

    def __call__(self) -> Sequence[str]:
        from tasks.base import TASKS

        answers = TASKS.get(self.task_name).extra.get("answers")
        if answers is None:
            raise RuntimeError(f"task {self.task_name}: its answer table is set when its data is loaded; load it first")
        return answers


def _resolve(answers: Answers) -> Sequence[str] | None:
    return answers() if callable(answers) else answers


class VQAAccuracy(Metric):
    """The official VQA accuracy. For each of the (up to 10) annotators' answers, the prediction scores
    min(1, matches among the OTHER annotators / 3); the question's accuracy is the mean over annotators
    (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / >= 4 matches of 10), and the result the mean over questions.

    ``update(preds, target)``: preds = class ids [B] or strings; target = answer ids [B, K] (-1 = none) or
    lists of strings. Ids map to strings through ``answers``. Both sides are normalised as the official
    script does (it skips that when all 10 answers are verbatim equal; the answers of our labels and
    vocabularies are normalised anyway). Questions with no answer are not counted.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, answers: Answers = None, **kwargs):
        super().__init__(**kwargs)
        self.answers = answers
        # float64: the sum stays exact to reporting precision over hundreds of thousands of questions
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _table(self) -> Sequence[str]:
        table = _resolve(self.answers)
        if table is None:
            raise ValueError("VQAAccuracy got answer ids but no answers table to map them to strings")
        return table

    def update(self, preds: torch.Tensor | Sequence[str], target: torch.Tensor | Sequence[Sequence[str]]) -> None:
        if isinstance(preds, torch.Tensor):
            table = self._table()
            preds = [table[i] for i in preds.reshape(-1).tolist()]
        if isinstance(target, torch.Tensor):
            table = self._table()
            target = [[table[i] for i in row if i >= 0] for row in target.reshape(len(target), -1).tolist()]
        if len(preds) != len(target):
            raise ValueError(f"VQAAccuracy: {len(preds)} predictions for {len(target)} questions")
        total, count = 0.0, 0
        for pred, gts in zip(preds, target):
            if not gts:
                continue
            pred = normalize_answer(pred)
            n = len(gts)
            m = sum(normalize_answer(g) == pred for g in gts)
            # an annotator who gave the prediction sees m - 1 matches among the others, any other one m
            total += (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n
            count += 1
        self.total += total
        self.count += count

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class NLVR2Consistency(Metric):
    """The fraction of sentences (``group``: one id per sentence) whose every example is right.

    Kept as concatenated (group, correct) states, so the groups are formed after the ranks' examples are
    gathered: a sentence whose examples were seen by different ranks is still judged as a whole.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("groups", default=[], dist_reduce_fx="cat")
        self.add_state("correct", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> None:
        preds, target, group = (torch.as_tensor(x).reshape(-1) for x in (preds, target, group))
        if not len(preds) == len(target) == len(group):
            raise ValueError("NLVR2Consistency: preds, target and group differ in length")
        self.groups.append(group.long())
        self.correct.append((preds == target).long())

    def compute(self) -> torch.Tensor:
        if isinstance(self.groups, list) and not self.groups:
            return torch.tensor(0.0)
        # long again: a rank without examples contributes float empties to the gathered states
        groups, correct = dim_zero_cat(self.groups).long(), dim_zero_cat(self.correct).long()
        if not len(groups):
            return torch.tensor(0.0, device=groups.device)
        ids, index = torch.unique(groups, return_inverse=True)
        wrong = torch.zeros(len(ids), dtype=torch.long, device=groups.device).index_add_(0, index, 1 - correct)
        return (wrong == 0).float().mean()


class AnswerAccuracy(Metric):
    """Exact-match accuracy of class ids, where a target whose answer is ``unknown`` (an answer that no
    training example has, so no class of its own) always counts as wrong, as in the official GQA numbers."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, answers: Answers = None, unknown: str = UNKNOWN, **kwargs):
        super().__init__(**kwargs)
        self.answers, self.unknown = answers, unknown
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = preds.reshape(-1), target.reshape(-1)
        right = preds == target
        table = _resolve(self.answers)
        if table is not None and self.unknown in table:
            right &= target != list(table).index(self.unknown)
        self.correct += right.sum()
        self.total += len(target)

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp_min(1)
