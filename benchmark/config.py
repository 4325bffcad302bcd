"""The run configuration and ``key=value`` overrides, validated before anything trains."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from benchmark.errors import ConfigError  # noqa: F401  (re-exported: ``from benchmark.config import ConfigError``)
from methods import default_method
from tasks import default_task


# strategies a run may name without Lightning being imported to check (plan() stays light)
COMMON_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed",
                     "single_device")


@dataclass
class RunConfig:
    """Everything a run needs that is not a method hyperparameter. Same budget for every method."""

    method: str = default_method().name  # the method card marked default=True
    task: str = default_task().name  # the task card marked default=True (an offline task)
    backbone: str = "minilm"
    vision: str = "efficientnet-lite0"  # image encoder of vision-language tasks (a CLIP hub id works too)
    feature_cache: str = ""  # "" = $METL_CACHE or ~/.cache/metl-bench/features
    seed: int = 0
    variant: str = ""  # a named configuration of the method (its ``variants``), e.g. an ablation row
    pooling: str = ""  # "" = the backbone's default ("cls" or "mean")
    # classifier: the backbone's encoder read by a new task head; seq2seq: an encoder-decoder (T5) trained
    # text-to-text as the METL papers ran it (the task's label words through the frozen LM head); results
    # are filed under "<backbone>:seq2seq". "" = the backbone's default (seq2seq for T5 names, make list)
    head: str = ""
    target_length: int = 8  # seq2seq: decoder positions of a padded (memory) run, the papers' 8; else the longest label word
    # budget
    epochs: int = 1
    max_steps: int = -1  # -1 = run the epochs
    # > 0: the until-plateau budget: stop once val/score has not improved for this many validations in a
    # row (Lightning's EarlyStopping); ``epochs`` (or ``max_steps``) is then the cap. 0: a fixed budget.
    patience: int = 0
    # paper: each method's own hyperparameters (its paper's values); tuned: those ``make tune`` chose for this
    # (task, backbone, method), read from results/tuning/ (the command line still wins)
    hparams: str = "paper"
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 64
    pad_to_max_length: bool = False  # True for memory runs so every method sees the same shape
    warmup_steps: int = 50
    grad_clip: float = 1.0
    limit_train_samples: int = 0  # 0 = all
    limit_eval_samples: int = 0  # validation (and, by default, test) subset
    # the test split: -1 = the same subset as limit_eval_samples, 0 = the whole split, n = a fixed subset of n.
    # A test subset adds sampling error that the seed spread does not show (512 questions: about +-2 points).
    limit_test_samples: int = -1
    val_check_interval: float = 1.0
    # trainer pass-through
    accelerator: str = "auto"
    devices: str = "1"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    num_workers: int = 0
    # data and outputs
    data_dir: str = ""  # task data directory (GLUE_DIR for GLUE)
    results_dir: str = "results"
    run_dir: str = "runs"
    official: bool = True  # False (QUICK runs) writes under results/tmp, outside the leaderboard
    wandb: str = "offline"  # offline | online | disabled
    wandb_project: str = "metl-bench"
    track_memory: bool = True
    progress: bool = True
    # resume: every this many optimizer steps a run saves its whole training state (model, optimizer, scheduler,
    # loop and data position, random streams, memory peak so far) to <run dir>/checkpoints/resume.ckpt; a run
    # of the same plan started after a kill continues from it (0: never saved). fresh=true starts over instead.
    checkpoint_every: int = 100
    fresh: bool = False

    def __post_init__(self):
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"bad config value {name}={getattr(self, name)!r}: {why}")

        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.max_steps == -1 or self.max_steps >= 1, "max_steps", "must be -1 (use epochs) or >= 1")
        need(self.patience >= 0, "patience", "must be >= 0 (0 = a fixed budget)")
        need(self.hparams in ("paper", "tuned"), "hparams", "must be paper or tuned")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        need(8 <= self.max_length <= 4096, "max_length", "must be in [8, 4096]")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)")
        need(self.limit_train_samples >= 0, "limit_train_samples", "must be >= 0")
        need(self.limit_eval_samples >= 0, "limit_eval_samples", "must be >= 0")
        need(self.limit_test_samples >= -1, "limit_test_samples",
             "must be -1 (as limit_eval_samples), 0 (the whole test split) or a number of examples")
        need(self.num_nodes >= 1, "num_nodes", "must be >= 1")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = no resume checkpoints)")
        need(self.pooling in ("", "cls", "mean"), "pooling", "must be cls or mean")
        need(self.head in ("", "classifier", "seq2seq"), "head", "must be classifier or seq2seq")
        need(1 <= self.target_length <= 512, "target_length", "must be in [1, 512]")
        need(self.wandb in ("offline", "online", "disabled"), "wandb", "must be offline, online or disabled")
        need(self.precision in ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"),
             "precision", "must be a Lightning precision such as 32-true, bf16-mixed or 16-mixed")
        need(0 < self.val_check_interval <= 1.0 or float(self.val_check_interval).is_integer(),
             "val_check_interval", "must be a fraction of an epoch in (0, 1] or a whole number of steps")
        need(self.num_workers >= 0, "num_workers", "must be >= 0 (0 = load in the training process)")
        need(0 <= self.seed < 2**32, "seed", "must be in [0, 2^32): numpy and the data loaders take 32-bit seeds")
        need(self.devices == "auto" or all(t.strip().isdigit() for t in self.devices.split(",")) and
             (not self.devices.isdigit() or int(self.devices) >= 1),
             "devices", "must be auto, a number of devices >= 1, or comma-separated device indices such as 0,1")

    def check_trainer(self) -> None:
        """The Lightning settings, against what Lightning and this machine have: one line each, before anything
        loads (``accelerator=gpu`` on a machine without one, an unknown ``strategy``)."""
        accelerators = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's AcceleratorRegistry, and its aliases
        if self.accelerator not in accelerators:
            raise ConfigError(f"bad config value accelerator={self.accelerator!r}: must be one of "
                              f"{', '.join(accelerators)}")
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"accelerator={self.accelerator} but this machine has no CUDA GPU that torch "
                                  f"can use: use accelerator=cpu (or auto)")
        if self.strategy not in COMMON_STRATEGIES:  # only then is Lightning imported to read its registry
            from lightning.pytorch.strategies import StrategyRegistry

            strategies = StrategyRegistry.available_strategies()
        if self.strategy not in COMMON_STRATEGIES and self.strategy not in strategies:
            raise ConfigError(f"bad config value strategy={self.strategy!r}: must be auto or a Lightning strategy "
                              f"such as ddp, fsdp or deepspeed (see lightning's StrategyRegistry)")

    @property
    def label(self) -> str:
        """``method`` or ``method@variant``, the name a run's results and logs go under."""
        return f"{self.method}@{self.variant}" if self.variant else self.method

    def devices_value(self) -> int | str:
        return int(self.devices) if self.devices.isdigit() else self.devices


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(owner: str, name: str, raw: str, typ: Any) -> Any:
    """Turn the string ``raw`` into the field's type, or a one-line ConfigError."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        typ = args[0]
    try:
        if typ is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
    except ValueError:
        raise ConfigError(f"bad config value {name}={raw!r}: expected {typ.__name__} ({owner})") from None
    raise ConfigError(f"config key {name!r} ({owner}) cannot be set from the command line")


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: write key=value (e.g. ARGS=\"lr=1e-3 epochs=2\")")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


NESTED_SUFFIX = "_overrides"


def _nested_field(key: str) -> str | None:
    """``base.reduction`` -> ``base_overrides``: a dotted key goes, as a string, into the dict field named
    after its prefix (a method's settings for a component it builds, e.g. MP-ISMoE's base method)."""
    return key.split(".", 1)[0] + NESTED_SUFFIX if "." in key else None


def current_names(cls, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old names of renamed keys (``cls.renamed``, old -> new, e.g. ``{"r": "reduction"}``)
    replaced by the current ones, so old commands and variants keep working and records carry the new name."""
    renamed = getattr(cls, "renamed", {})
    for old, new in renamed.items():
        if old in values and new in values:
            raise ConfigError(f"{old!r} is the old name of config key {new!r}: give only {new}=")
    return {renamed.get(k, k): v for k, v in values.items()}


def build(cls, values: dict[str, str], owner: str, base: Any = None):
    """Instantiate dataclass ``cls`` from string values (type-checked, validated in __post_init__).
    Dotted keys (``base.reduction=16``) are collected into their ``<prefix>_overrides`` dict field; an old
    key name (``cls.renamed``) sets its new one."""
    values = current_names(cls, values)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    if base is not None:
        kwargs = {f.name: getattr(base, f.name) for f in fields(cls) if f.init}
    for k, v in values.items():
        nested = _nested_field(k)
        if nested is not None:
            kwargs[nested] = {**kwargs.get(nested, {}), k.split(".", 1)[1]: str(v)}
        else:
            kwargs[k] = _coerce(owner, k, v, hints[k])
    return cls(**kwargs)


def split_overrides(values: dict[str, str], *dataclasses_: type) -> list[dict[str, str]]:
    """Route each key to the first dataclass that has it; unknown keys fail listing the valid ones."""
    routed: list[dict[str, str]] = [{} for _ in dataclasses_]
    for k, v in values.items():
        for i, cls in enumerate(dataclasses_):
            if (_nested_field(k) or k) in {f.name for f in fields(cls)} | set(getattr(cls, "renamed", {})):
                routed[i][k] = v
                break
        else:
            valid = sorted({f.name if not f.name.endswith(NESTED_SUFFIX) else f.name[: -len(NESTED_SUFFIX)] + ".<key>"
                            for cls in dataclasses_ for f in fields(cls)})
            raise ConfigError(f"unknown config key {k!r}; valid keys: {', '.join(valid)}")
    return routed


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
