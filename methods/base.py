"""What a method is: a config dataclass (validated in ``__post_init__``, holding the method's own
hyperparameters from its paper) and a module built from (frozen backbone, config) that maps a batch
to one feature vector per example. The orchestrator adds the task head and never looks at names.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from types import CodeType
from typing import Callable, ClassVar

import torch
from torch import nn

from benchmark.backbones import Backbone
from benchmark.errors import ConfigError  # noqa: F401  (re-exported to the methods)
from benchmark.memory.storage import unique_storage_bytes
from methods import METHODS  # noqa: F401  (the registry lives in the light package)


from methods import GENERIC_VARIANTS  # noqa: E402,F401  (declared in the light package: the publishers read it)

# the variant of a method whose backbone has dropout to switch off (``MethodConfig.backbone_dropout``)
NO_BACKBONE_DROPOUT = {"no-backbone-dropout": {"backbone_dropout": "false"}}
# variant names that several methods declare: a row label says whose (``<method>@<variant>``)
SHARED_VARIANT_NAMES = frozenset({"paper-layers", *NO_BACKBONE_DROPOUT})

OPTIMIZERS = ("adamw", "adamw8bit")  # torch's AdamW; bitsandbytes' AdamW8bit (blockwise 8-bit moments)


@dataclass
class MethodConfig:
    """Hyperparameters every method has. Subclasses change defaults and add their own fields."""

    # Old key name -> new one, for a key renamed after results were recorded: the old name still works on
    # the command line, in variants and as ``base.<old>`` (benchmark.config.current_names), records carry
    # the new one, and ``make paper`` reads an old record's key under its new name (not stale).
    renamed: ClassVar[dict[str, str]] = {}

    # ``make tune``'s search (benchmark/tune.py), the same kind for every method: the learning rate
    # log-uniform over ``lr_range``, a range around the method's paper value (``lr``'s default; None = that
    # value / 10 to x 10), and AdamW's weight decay log-uniform over ``weight_decay_range`` (None: not searched).
    lr_range: ClassVar[tuple[float, float] | None] = None
    weight_decay_range: ClassVar[tuple[float, float] | None] = (1e-4, 1e-1)

    lr: float = 3e-4
    weight_decay: float = 0.0
    head_dropout: float = 0.1
    # activation (gradient) checkpointing: every layer that runs with autograd (the backbone's under full,
    # LoRA and BitFit; the side network's, and SHERL's late layer, under side methods) keeps only its input
    # and recomputes the rest in backward (torch.utils.checkpoint); results go under ``<method>@checkpointing``
    checkpointing: bool = False
    # adamw: torch's AdamW, fp32 moments; adamw8bit: bitsandbytes' AdamW8bit, both moments kept in 8 bits (blocks
    # of 256 with an fp32 absmax each; tensors under 4096 elements keep fp32 moments, as bitsandbytes does).
    # Results go under ``<method>@adamw8bit``, beside the method's other rows, like checkpointing.
    optimizer: str = "adamw"
    # the backbone's dropout follows train/eval, frozen or not, as the reference code of every method trains
    # (LST's T5 code and SHERL's/UniPT's CLIP-ViL code call ``model.train()`` on the whole model). On a
    # frozen backbone that runs without autograd it costs no memory (no mask is kept); where autograd runs
    # through the backbone (BitFit, LoRA, full, SHERL's late layer) the masks are kept for backward.
    # False: the backbone stays in eval mode, a fixed feature extractor (variant ``no-backbone-dropout``).
    backbone_dropout: bool = True

    def __post_init__(self):
        self.check(self.lr > 0, "lr", "must be > 0")
        self.check(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        self.check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.check(0 <= self.head_dropout < 1, "head_dropout", "must be in [0, 1)")

    def check(self, ok: bool, name: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"bad config value {name}={getattr(self, name)!r}: {why}")

    @classmethod
    def search_space(cls) -> dict[str, tuple[float, float]]:
        """Name -> (low, high) of each hyperparameter ``make tune`` searches, every one log-uniform."""
        paper = cls.__dataclass_fields__["lr"].default
        space = {"lr": tuple(cls.lr_range) if cls.lr_range else (paper / 10, paper * 10)}
        if cls.weight_decay_range:
            space["weight_decay"] = tuple(cls.weight_decay_range)
        return space

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class Method(nn.Module):
    """Base class. ``forward(batch)`` returns [B, feature_dim]; trainable = ``requires_grad``.

    The backbone arrives frozen; a method unfreezes or wraps what its paper trains.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # The version of the method's behaviour, recorded with every result. Bump it whenever a change of the
    # code changes what a run of the method computes (a default, an init, a forward): results of another
    # version are stale for ``make paper`` and are never averaged with the new ones. A method built on
    # another (MP-ISMoE on SHERL) bumps its own version when its base's changes.
    version: ClassVar[int] = 1
    # Named configurations (e.g. a paper's ablation rows): name -> method overrides as ``key=value``
    # strings. ``variant=<name>`` on a run applies one (command-line keys still win), the results are
    # kept apart as ``<method>@<name>``, and ``make memory`` measures every variant as its own row.
    variants: ClassVar[dict[str, dict[str, str]]] = {}
    # The variants ``make paper`` runs (3 seeds each, on the sentiment task) besides the defaults: those
    # a paper table needs that no other row already measures.
    paper_variants: ClassVar[tuple[str, ...]] = ()
    # Generic variants (``GENERIC_VARIANTS``) ``make paper`` runs as memory alternatives on every offline task
    # at its fixed budget, 3 seeds: what a user would switch on instead of changing method (e.g. checkpointing).
    paper_alternatives: ClassVar[tuple[str, ...]] = ()
    # True where a step may leave trainable parameters without a gradient (sparse expert dispatch: an
    # expert no token chose). DDP must then look for them each step, so ``strategy=ddp`` becomes
    # Lightning's ``ddp_find_unused_parameters_true`` for this method.
    may_skip_parameters: ClassVar[bool] = False
    # True where the method runs on the seq2seq kind (an encoder-decoder read through its LM head,
    # ``benchmark.backbones.seq2seq``): its forward then returns the decoder's states at every target position.
    runs_on_seq2seq: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, config: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        if config.checkpointing:
            backbone.checkpointing = True  # Backbone.run_layer: every layer it runs with autograd

    @classmethod
    def all_variants(cls) -> dict[str, dict[str, str]]:
        """The method's own variants and those every method has (``checkpointing``)."""
        return {**cls.variants, **GENERIC_VARIANTS}

    @classmethod
    def row_label(cls, name: str, variant: str) -> str:
        """A memory-table row's label: the method, its own variant's name, or ``<method>@<variant>`` for a
        variant several methods have (its bare name would not say whose row it is)."""
        if not variant:
            return name
        shared = variant in SHARED_VARIANT_NAMES or (variant in GENERIC_VARIANTS and variant not in cls.variants)
        return f"{name}@{variant}" if shared else variant

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.config.backbone_dropout:
            self.backbone.eval()
        return self

    @property
    def feature_dim(self) -> int:
        return self.backbone.hidden_size

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, train_loader, task) -> None:
        """Called once after construction, before training, with the task's training loader and
        task spec: for initialisations that need data (LST's Fisher-ranked pruning). No-op by default."""

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (e.g. GNP-IQ's periodic re-quantization). No-op by default."""

    def after_epoch(self, epoch: int) -> None:
        """Called at the end of every training epoch. No-op by default."""

    def training_stats(self) -> dict[str, float]:
        """Numbers worth logging during training (e.g. expert usage); none by default."""
        return {}

    def extra_loss(self) -> torch.Tensor | None:
        """An auxiliary loss added to the task loss (e.g. a MoE load-balance term); none by default."""
        return None

    def extra_state_prefixes(self) -> list[str]:
        """Buffers (by module prefix) that training changes and checkpoints must keep; none by default."""
        return []

    @classmethod
    def fake_tensor_hints(cls) -> "FakeHints":
        """What the memory predictor (``benchmark.memory``, fake tensors: shapes, no values) needs to know
        to run this method's data-dependent steps; see ``FakeHints``. Nothing by default."""
        return FakeHints()

    def extra_weight_tensors(self) -> list[torch.Tensor]:
        """Stored model tensors that are neither parameters nor buffers (a quantized weight's constants kept
        as attributes, as bitsandbytes keeps NF4's absmax): memory meters count them as weights. None by default."""
        return []

    def backbone_storage_bytes(self) -> int:
        """Real bytes of the stored backbone tensors (parameters, buffers and ``extra_weight_tensors``)."""
        return unique_storage_bytes(list(self.backbone.parameters()) + list(self.backbone.buffers())
                                    + self.extra_weight_tensors())

    def logical_parameter_count(self) -> int:
        return logical_parameter_count(self)


def logical_parameter_count(module: nn.Module) -> int:
    """Logical number of weights: a packed quantized module reports its weights through
    ``logical_numel()`` (a 4-bit weight counts as one weight, not as half a byte of storage)."""
    total, seen = 0, set()
    for m in module.modules():
        if hasattr(m, "logical_numel") and callable(m.logical_numel):
            total += m.logical_numel()  # stands for its own parameters (e.g. a frozen bias) too
            seen.update(id(p) for p in m.parameters(recurse=False))
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


@dataclass(frozen=True)
class FakeHints:
    """A method's answers for a prediction under ``FakeTensorMode``, where no op may read a value.

    The predictor knows no method: each field is a generic way to answer a data-dependent step whose
    *shape* does not depend on the data, so the predicted memory stays the real one.

    - ``build_contexts``: context managers (factories) entered while the method is constructed under
      fake tensors, e.g. to make a quantizer keep its packed layout but skip its value-reading fit;
    - ``placeholder_scalars``: code objects (``f.__code__``) that may read a scalar from data while
      they run (it sets a value, never a shape): the read answers 1, with the note ``placeholder
      scalar (<why>)``;
    - ``balanced_dispatch``: ``module -> [(submodule, n_groups), ...]``: submodules whose ``nonzero``
      calls during forward pick the rows routed to group 0, 1, ... in turn (sparse expert dispatch);
      each is answered as a balanced split of the rows over ``n_groups``, with the note
      ``dispatch_note``.
    """

    build_contexts: tuple[Callable[[], AbstractContextManager], ...] = ()
    placeholder_scalars: dict[CodeType, str] = field(default_factory=dict)
    balanced_dispatch: Callable[[nn.Module], list[tuple[nn.Module, int]]] | None = None
    dispatch_note: str = "balanced routing"
