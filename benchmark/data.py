"""One LightningDataModule for every task: load the task's splits, tokenize, batch.

Vision-language tasks: every distinct image is encoded once (``image_features``, which reads and fills
the on-disk feature cache) into one table; an example keeps row indices into it, and a batch gets
``visual_feats`` [B, images, tokens, dim] with the attention mask extended over the visual tokens, which
the vision-language backbone appends after the text tokens.
"""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler

from tasks.base import METRIC_COLUMNS, DataOptions, Task


# the run settings (``RunConfig``) the data module takes, under the same names
RUN_KEYS = ("max_length", "batch_size", "eval_batch_size", "pad_to_max_length", "data_dir", "limit_train_samples",
            "limit_eval_samples", "limit_test_samples", "seed", "num_workers")


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, tokenizer, *, max_length: int, batch_size: int, eval_batch_size: int,
                 pad_to_max_length: bool = False, data_dir: str = "", limit_train_samples: int = 0,
                 limit_eval_samples: int = 0, limit_test_samples: int = -1, seed: int = 0, num_workers: int = 0,
                 image_features: Callable[[list[str]], torch.Tensor] | None = None, text_to_text: bool = False):
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.pad_to_max_length, self.data_dir, self.seed = pad_to_max_length, data_dir, seed
        self.limits = {"train": limit_train_samples, "validation": limit_eval_samples, 
                       "test": limit_eval_samples if limit_test_samples < 0 else limit_test_samples}
        self.num_workers = num_workers
        self.image_features = image_features
        # the seq2seq kind: each example's texts become the task's one input string (``Task.text_to_text``)
        self.text_to_text = task.text_to_text if text_to_text else None
        if text_to_text and self.text_to_text is None:
            from benchmark.errors import UserError

            raise UserError(f"task {task.name!r} has no text-to-text format for head=seq2seq; "
                            f"run it with head=classifier")
        self.visual_table: torch.Tensor | None = None  # [distinct images, tokens, dim]
        self.splits = None

    @classmethod
    def from_run(cls, task: Task, tokenizer, run, **kw) -> "TaskDataModule":
        """The data module of a run's settings."""
        return cls(task, tokenizer, **{k: getattr(run, k) for k in RUN_KEYS}, **kw)

    def load_raw(self):
        """The task's splits, subset when asked (a fixed seeded subset, the same for every method)."""
        raw = self.task.load(DataOptions(data_dir=self.data_dir or None))
        for split, limit in self.limits.items():
            if limit and len(raw[split]) > limit:
                raw[split] = raw[split].shuffle(seed=1234).select(range(limit))
        least = self.task.min_eval_examples
        for split in ("validation", "test"):
            n = len(raw[split]) if split in raw else 0
            if n < least:
                from benchmark.errors import UserError

                where = f" in {self.data_dir}" if self.data_dir else ""
                raise UserError(f"task {self.task.name!r}: its {split} split has {n} example{'s' * (n != 1)}{where}; "
                                f"a score needs at least {least}: check the data, or raise limit_eval_samples / "
                                f"limit_test_samples")
        return raw

    def setup(self, stage: str | None = None):
        if self.splits is not None:
            return
        raw = self.load_raw()
        columns = raw["train"].column_names
        has_pair = "text_b" in columns
        row_of: dict[str, int] = {}
        if self.task.images_per_example:
            if self.image_features is None:
                raise ValueError(f"task {self.task.name} needs images: give the data module an image_features function")
            paths = sorted({p for ds in raw.values() for ps in ds["images"] for p in ps})
            row_of = {p: i for i, p in enumerate(paths)}
            self.visual_table = self.image_features(paths)

        def encode(rows):
            if self.text_to_text is not None:
                b = rows["text_b"] if has_pair else [None] * len(rows["text_a"])
                pair = ([self.text_to_text.source(x, y) for x, y in zip(rows["text_a"], b)],)
            else:
                pair = (rows["text_a"], rows["text_b"]) if has_pair else (rows["text_a"],)
            enc = self.tokenizer(*pair, truncation=True, max_length=self.max_length)
            enc["labels"] = rows["label"]
            for c in METRIC_COLUMNS:
                if c in rows:
                    enc[c] = rows[c]
            if row_of:
                enc["image_rows"] = [[row_of[p] for p in ps] for ps in rows["images"]]
            return enc

        self.splits = {
            split: ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {split}")
            for split, ds in raw.items()
        }

    def collate(self, rows):
        padding = "max_length" if self.pad_to_max_length else "longest"
        image_rows = [r.pop("image_rows") for r in rows] if self.visual_table is not None else None
        batch = self.tokenizer.pad(rows, padding=padding, max_length=self.max_length, return_tensors="pt")
        if image_rows is not None:
            feats = self.visual_table[torch.tensor(image_rows)]  # [B, images, tokens, dim]
            batch["visual_feats"] = feats
            visual_mask = batch["attention_mask"].new_ones(len(rows), feats.shape[1] * feats.shape[2])
            batch["attention_mask"] = torch.cat([batch["attention_mask"], visual_mask], dim=1)
        return batch

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = None
        trainer = getattr(self, "trainer", None)
        if split != "train" and trainer is not None and trainer.world_size > 1:
            # every example evaluated exactly once over the ranks (Lightning's default sampler pads the
            # last ranks with repeated examples, which would count them twice in the metrics)
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(self.splits[split], num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return DataLoader(self.splits[split], batch_size=batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size > 1:  # several ranks: Lightning's distributed sampler
            return self._loader("train", self.batch_size, shuffle=True)
        loop = trainer.fit_loop.epoch_loop
        return ResumableLoader(self.splits["train"], batch_size=self.batch_size,
                               sampler=ResumableSampler(self.splits["train"]), collate_fn=self.collate,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               batches_done=lambda: loop.batch_progress.current.ready)

    def val_dataloader(self):
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size, shuffle=False)


class ResumableSampler(RandomSampler):
    """``RandomSampler``'s order exactly (each epoch one permutation, seeded by one draw from torch's global
    RNG when the epoch's iteration starts), and what a resumed run needs to continue it: the epoch's seed,
    and how many examples to skip. A resumed epoch draws nothing, so the global RNG stays where it was."""

    def __init__(self, data_source):
        super().__init__(data_source)
        self.seed: int | None = None
        self.resume: tuple[int, int] | None = None  # (seed, examples to skip) for the next epoch's iteration

    def __iter__(self):
        if self.resume is not None:
            (seed, skip), self.resume = self.resume, None
        else:
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()[skip:]


class ResumableLoader(DataLoader):
    """The training loader, resumable mid-epoch: Lightning saves its ``state_dict`` in every checkpoint
    (the epoch's seed and the batches the loop has taken) and hands it back on resume."""

    def __init__(self, *args, batches_done, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed, "batches": int(self.batches_done())}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") is not None:
            self.sampler.resume = (int(state["seed"]), int(state["batches"]) * self.batch_size)
