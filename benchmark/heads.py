"""How a method's output becomes a task's loss and predictions: the one difference between the two backbone
kinds, kept out of the training loop.

- ``ClassifierHead`` (classifier kind): dropout + a new Linear over the method's one vector per example,
  the task's own loss (cross-entropy, MSE, VQA's soft BCE).
- ``LabelWordHead`` (seq2seq kind, the METL papers' T5 setting): the decoder writes the task's label word
  (``Task.text_to_text``) through the backbone's frozen LM head. Training is teacher forcing on the gold
  word (token cross-entropy averaged over target tokens, as T5); evaluation is rank classification: every
  label word's log-likelihood (summed over its tokens and the end-of-sequence token, so a word that is a
  prefix of another cannot win by stopping early), the prediction the most likely word. A malformed
  generation can never score, and the task's torchmetrics metrics read the chosen class as with a
  classifier. Nothing in it trains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UserError
from tasks.base import Task

IGNORE = -100  # the target id cross-entropy skips (padding after a label word)


class ClassifierHead(nn.Sequential):
    """Dropout + Linear(feature_dim -> num_labels); its parameters are ``head.0`` / ``head.1`` as always."""

    def __init__(self, feature_dim: int, task: Task, dropout: float):
        super().__init__(nn.Dropout(dropout), nn.Linear(feature_dim, task.num_labels))
        self.task = task

    def scores(self, method: nn.Module, inputs: dict, batch: dict) -> torch.Tensor:
        return self(method(inputs)).float()

    def loss(self, method: nn.Module, inputs: dict, batch: dict) -> torch.Tensor:
        return self.task.loss(self.scores(method, inputs, batch), batch["labels"])

    def predictions(self, scores: torch.Tensor) -> torch.Tensor:
        return self.task.predictions(scores)


class LabelWordHead(nn.Module):
    """The task's label words, tokenized once: ``word_ids`` [C, T] (the word's tokens, then EOS, then padding
    to the longest word, or to ``target_length`` with ``pad_targets``, as a memory run pads every shape)."""

    def __init__(self, backbone, task: Task, target_length: int, pad_targets: bool = False):
        super().__init__()
        t2t = task.text_to_text
        if t2t is None:
            raise UserError(f"task {task.name!r} has no text-to-text format for head=seq2seq; run it with head=classifier")
        self.task, self.t2t = task, t2t
        self.lm_logits = backbone.lm_logits
        tok = backbone.tokenizer
        label_words = t2t.words(task)
        if not label_words:
            raise UserError(f"task {task.name!r} has no label words yet (its answers come from its data); "
                            f"load the task before building the head")
        self.label_words = label_words
        if tok is None:  # a memory prediction builds the architecture alone: shapes only, placeholder ids
            words = [[2 + i, 1] for i in range(len(label_words))]
        else:
            eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
            words = [tok(w, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
                     for w in label_words]
        longest = max(len(w) for w in words)
        if longest > target_length:
            word = label_words[max(range(len(words)), key=lambda i: len(words[i]))]
            raise UserError(f"bad config value target_length={target_length}: task {task.name!r}'s label word "
                            f"{word!r} takes {longest} tokens with its end token; use target_length={longest} or more")
        T = target_length if pad_targets else longest
        ids = torch.full((len(words), T), IGNORE, dtype=torch.long)
        for i, w in enumerate(words):
            ids[i, :len(w)] = torch.tensor(w)
        config = backbone.config
        start = getattr(config, "decoder_start_token_id", None)
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.start_id = start if start is not None else self.pad_id
        self.register_buffer("word_ids", ids, persistent=False)
        if t2t.values:
            self.register_buffer("values", torch.tensor(t2t.values, dtype=torch.float32), persistent=False)

    def decoder_inputs(self, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the targets shifted right behind the start token, padding where they are ignored."""
        shifted = torch.full_like(targets, self.pad_id)
        shifted[:, 0] = self.start_id
        shifted[:, 1:] = targets[:, :-1]
        return shifted.masked_fill(shifted == IGNORE, self.pad_id)

    def _logits(self, method: nn.Module, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
        hidden = method({**inputs, "decoder_input_ids": self.decoder_inputs(targets)})
        return self.lm_logits(hidden).float()  # [B, T, vocab]

    def loss(self, method: nn.Module, inputs: dict, batch: dict) -> torch.Tensor:
        targets = self.word_ids[self.t2t.target_class(batch["labels"])]
        logits = self._logits(method, inputs, targets)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

    def scores(self, method: nn.Module, inputs: dict, batch: dict) -> torch.Tensor:
        """[B, C]: the log-likelihood of every label word, one decoder pass per word over the whole batch."""
        B = batch["input_ids"].shape[0]
        out = []
        for word in self.word_ids:
            targets = word.expand(B, -1)
            logp = self._logits(method, inputs, targets).log_softmax(-1)
            keep = targets != IGNORE
            token = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            out.append((token * keep).sum(-1))
        return torch.stack(out, dim=-1)

    def predictions(self, scores: torch.Tensor) -> torch.Tensor:
        best = scores.argmax(-1)
        return self.values[best] if self.t2t.values else best


def make_head(backbone, method: nn.Module, task: Task, *, dropout: float, target_length: int,
              pad_targets: bool) -> nn.Module:
    """The head the backbone's kind reads a method through."""
    if backbone.seq2seq:
        return LabelWordHead(backbone, task, target_length, pad_targets)
    return ClassifierHead(method.feature_dim, task, dropout)
