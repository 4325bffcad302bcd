"""The one interface every method sees: a frozen Hugging Face encoder, layer by layer.

Side methods (LST, UniPT, SHERL, MP-ISMoE) need the embeddings, every layer's output, the salient
token, a way to run one layer (SHERL's late route) and a way to build a narrow copy of a layer (LST's
side network). PETL methods need the names of the linear layers. Families (BERT-like, T5) differ
only in how a layer is called, so that difference lives in a small ``Family`` object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerContext:
    """Per-stack state passed from layer to layer: the attention mask, and T5's or MPNet's shared position bias."""

    attention_mask: torch.Tensor  # [B, L] of 0/1
    additive_mask: torch.Tensor  # [B, 1, 1, L], 0 where attended, dtype-min where masked
    extra: dict[str, Any] = field(default_factory=dict)
    # the last layer's output before ``finish`` (T5's final LayerNorm), kept by a stack run with
    # ``keep_raw_last`` (``run_stack``); the same tensor as the finished one where ``finish`` is the identity
    raw_last: torch.Tensor | None = None


class FFNSlot:
    """Where a layer's feed-forward block sits, so a method can swap it for something else (MP-ISMoE's
    mixture of experts) and put it back.

    ``get()`` returns the FFN as ONE module mapping [.., d] -> [.., d] (built from the layer's own
    submodules, no copy); ``install(m)`` puts a module of that signature in its place; ``restore(ffn)``
    puts back a module of the form ``get()`` returns (the original, or a trained copy of it). The
    layer computes exactly what it computed before when ``m`` computes what ``get()`` does.
    """

    def get(self) -> nn.Module:
        raise NotImplementedError

    def install(self, module: nn.Module) -> None:
        raise NotImplementedError

    def restore(self, ffn: nn.Module) -> None:
        raise NotImplementedError


class AttrSlot(FFNSlot):
    """The FFN is one attribute of a parent module (UniPT's and SHERL's ``ffn``, T5's ``DenseReluDense``)."""

    def __init__(self, parent: nn.Module, attr: str):
        self.parent, self.attr = parent, attr

    def get(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    def install(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)

    def restore(self, ffn: nn.Module) -> None:
        setattr(self.parent, self.attr, ffn)

    def __repr__(self) -> str:
        return f"AttrSlot({type(self.parent).__name__}.{self.attr})"


def as_slot(slot) -> FFNSlot:
    """An ``FFNSlot``, or a ``(parent, attr)`` pair made into one."""
    if isinstance(slot, FFNSlot):
        return slot
    parent, attr = slot
    return AttrSlot(parent, attr)


class Family:
    """How one model family embeds, masks and runs a layer. Subclasses are stateless."""

    name = "base"
    lora_targets: tuple[str, ...] = ()
    model_class_name = "AutoModel"  # the transformers class that loads a model of this family
    # the class of the whole encoder-decoder with its LM head (the seq2seq kind); None: an encoder-only family
    seq2seq_class_name: str | None = None
    default_pooling = "cls"  # how a named hub backbone of this family pools, unless its spec says otherwise

    def max_length(self, config) -> int | None:
        """The longest input a model of this config takes (learned absolute positions end somewhere);
        None: no limit from the architecture (relative positions)."""
        return None

    def model_class(self, seq2seq: bool = False):
        import transformers

        return getattr(transformers, self.seq2seq_class_name if seq2seq else self.model_class_name)

    def new_model(self, config, seq2seq: bool = False) -> nn.Module:
        """A randomly initialised model of this family from a transformers ``config``."""
        return self.model_class(seq2seq).from_config(config)

    def encoder_of(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layers(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        raise NotImplementedError

    def stack_context(self, model: nn.Module, ctx: LayerContext) -> None:
        """Put in a new stack's ``ctx`` what the model, not a layer, owns for every layer of a stack (MPNet's
        position bias table). Nothing by default."""

    def stack_parameters(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a stack shares that the model, not a layer, owns, by the name a narrow first layer gives its
        own copy (MPNet's position bias table): LST's pruning copies it. None by default."""
        return {}

    def prepare_layer(self, layer: nn.Module, hidden: torch.Tensor, ctx: LayerContext) -> None:
        """Put in ``ctx`` what the stack shares between its layers (T5's position bias) before ``run_layer``,
        so a checkpointed layer recomputes exactly what it computed. Nothing by default."""

    def finish(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """What the family applies after its last layer (T5's final LayerNorm); identity by default."""
        return hidden

    def hidden_size(self, config) -> int:
        raise NotImplementedError

    def narrow_layer(self, model: nn.Module, reduction: int, layer_index: int) -> nn.Module:
        """A fresh layer of the same type with every width divided by ``reduction`` (LST)."""
        raise NotImplementedError

    def ffn_slot(self, layer: nn.Module) -> FFNSlot:
        """The feed-forward block of one layer of this family (backbone or narrow), as an ``FFNSlot``."""
        raise NotImplementedError(f"family {self.name!r} does not expose its layers' FFN")


def checkpoint_call(fn, *args):
    """``fn(*args)`` under activation checkpointing (non-reentrant: only the inputs are kept, the rest
    recomputed in backward with the same RNG state). Torch-function modes active in the forward (a memory
    prediction's CUDA kernel choices, ``benchmark.memory.fake``) are entered again for the recomputation:
    backward does not keep them, and the recomputation must save what the forward did."""
    from contextlib import ExitStack, contextmanager, nullcontext

    from torch.overrides import _get_current_function_mode_stack
    from torch.utils.checkpoint import checkpoint, noop_context_fn

    modes = list(_get_current_function_mode_stack())

    @contextmanager
    def again():
        with ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            yield

    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=(lambda: (nullcontext(), again())) if modes else noop_context_fn)


def checkpointed(prepare, run, layer: nn.Module, hidden: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
    """``run(layer, hidden, ctx)`` under activation checkpointing; the stack's shared state is prepared
    first, outside, so the recomputation runs the same operations."""
    prepare(layer, hidden, ctx)
    return checkpoint_call(run, layer, hidden, ctx)


def run_stack(hidden: torch.Tensor, layers, ctx: LayerContext, run, finish,
              keep_raw_last: bool = False) -> list[torch.Tensor]:
    """``hidden`` followed by every layer's output (``run(layer, hidden, ctx)``), the last after ``finish``;
    ``keep_raw_last``: the last layer's output before ``finish`` is also kept, in ``ctx.raw_last``."""
    states = [hidden]
    for i, layer in enumerate(layers):
        hidden = run(layer, hidden, ctx)
        if i == len(layers) - 1:
            if keep_raw_last:
                ctx.raw_last = hidden
            hidden = finish(hidden)
        states.append(hidden)
    return states


class Backbone(nn.Module):
    """A frozen-by-default HF encoder behind the family-independent interface (the classifier kind: a
    method's features are one vector per example, read by a task head)."""

    seq2seq = False  # the seq2seq kind (``Seq2SeqBackbone``): features are decoder states, read by the LM head
    checkpointing = False  # set by a method's ``checkpointing=true``: ``run_layer`` recomputes in backward
    # set by a method that reads the last layer's raw output (LST, SHERL: their code taps the last block before
    # the stack's final LayerNorm): every stack run keeps it in ``ctx.raw_last``. Off, nothing more is held.
    keep_raw_last = False

    def __init__(self, name: str, model: nn.Module, tokenizer, family: Family, pooling: str = "cls"):
        super().__init__()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.pooling = pooling
        self.config = model.config
        # the pretrained model's own parameters, counted before any method adds (LoRA, a side network) or
        # quantizes anything: the denominator of the papers' trainable percentage (``benchmark.run``)
        self.own_parameter_count = sum(p.numel() for p in model.parameters())

    # --- shape facts -----------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.family.hidden_size(self.config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def lora_targets(self) -> list[str]:
        return list(self.family.lora_targets)

    # --- running ---------------------------------------------------------------------------
    def layer_context(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> LayerContext:
        m = attention_mask.to(dtype)[:, None, None, :]
        additive = (1.0 - m) * torch.finfo(dtype).min
        ctx = LayerContext(attention_mask=attention_mask, additive_mask=additive)
        self.family.stack_context(self.model, ctx)
        return ctx

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.family.embed(self.model, batch)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpointed(self.family.prepare_layer, self.family.run_layer, layer, hidden, ctx)
        return self.family.run_layer(layer, hidden, ctx)

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.family.finish(self.model, hidden)

    def hidden_states(self, batch: dict[str, torch.Tensor],
                      embedded: torch.Tensor | None = None) -> tuple[list[torch.Tensor], LayerContext]:
        """Embedding output (``embedded`` if given) followed by every layer's output (the last one after
        ``finish``; before it in ``ctx.raw_last`` where ``keep_raw_last`` is set)."""
        hidden = self.embed(batch) if embedded is None else embedded
        ctx = self.layer_context(batch["attention_mask"], hidden.dtype)
        return run_stack(hidden, self.layers, ctx, self.run_layer, self.finish, self.keep_raw_last), ctx

    def salient(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The per-sample summary token: [CLS] (first token) or the masked mean (config ``pooling``)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def readout(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A method's output from the last states of its stream: the salient token here (one vector per
        example for the task head); the seq2seq kind keeps every decoder position for the LM head."""
        return self.salient(hidden, batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states, _ = self.hidden_states(batch)
        return states[-1]

    # --- what methods may wrap or quantize -------------------------------------------------
    def linear_modules(self) -> dict[str, nn.Linear]:
        """Every nn.Linear inside the encoder, by qualified name within ``self.model``."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}

    def layer_norms(self) -> dict[str, nn.Module]:
        return {
            n: m
            for n, m in self.model.named_modules()
            if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("LayerNorm")
        }

    def narrow_layer(self, reduction: int, layer_index: int = 0) -> nn.Module:
        return self.family.narrow_layer(self.model, reduction, layer_index)

    def stack_parameters(self) -> dict[str, torch.Tensor]:
        return self.family.stack_parameters(self.model)

    def ffn_slot(self, layer: nn.Module) -> FFNSlot:
        """The FFN of ``layer`` (one of ``layers`` or a ``narrow_layer``) as a swappable slot."""
        return self.family.ffn_slot(layer)

    def freeze(self) -> "Backbone":
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self
