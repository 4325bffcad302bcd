"""Shared by the side methods (Side-Tuning, LST, UniPT, SHERL, MP-ISMoE): the frozen backbone runs
without autograd, so none of its activations are kept for backward. That is the whole memory
argument of METL, so it lives in one place."""
from __future__ import annotations

import copy

import torch
from torch import nn

from benchmark.backbones import Backbone, LayerContext
from benchmark.errors import ConfigError


FROZEN_STATES = "__frozen_states__"  # a batch key: states computed once upstream (MP-ISMoE wraps a base)


def frozen_hidden_states(backbone: Backbone, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], LayerContext]:
    """Embedding output and every layer's output of the frozen backbone; the layers run outside the
    autograd graph. The embedding output keeps its graph where the embedding has trainable parts (the
    vision-language backbone's visual adapter), so a side network that reads it trains them; with a
    frozen text embedding it has no graph and costs nothing."""
    if FROZEN_STATES in batch:
        return batch[FROZEN_STATES]
    embedded = backbone.embed(batch)
    with torch.no_grad():
        states, ctx = backbone.hidden_states(batch, embedded=embedded.detach())
    return [embedded] + [s.detach() for s in states[1:]], ctx


def with_raw_last(states: list[torch.Tensor], ctx: LayerContext) -> list[torch.Tensor]:
    """``states`` with the last layer's raw output (before ``finish``, T5's final LayerNorm) in place of the
    finished one: what LST's and SHERL's code read from the last block. The backbone must have kept it
    (``backbone.keep_raw_last``, set when such a method is built)."""
    if ctx.raw_last is None:
        raise RuntimeError("the backbone did not keep its last layer's raw output: set backbone.keep_raw_last "
                           "when the method is built")
    return states[:-1] + [ctx.raw_last.detach()]


def frozen_decoder_states(backbone, batch: dict[str, torch.Tensor], memory: torch.Tensor,
                          memory_mask: torch.Tensor, raw_last: bool = False) -> list[torch.Tensor]:
    """The seq2seq kind: the frozen decoder's embedding output and every decoder layer's output, cross-attending
    to the frozen encoder's output ``memory``, all without autograd (teacher forcing on
    ``batch["decoder_input_ids"]``); ``raw_last``: the last one before the decoder's final LayerNorm
    (``with_raw_last``)."""
    with torch.no_grad():
        states, ctx = backbone.decoder_hidden_states(batch, memory.detach(), memory_mask)
    if raw_last:
        states = with_raw_last(states, ctx)
    return [s.detach() for s in states]


def fresh_norm_like(layer: nn.Module) -> nn.Module:
    """A new, trainable LayerNorm of the type the layer uses, at identity (weight 1, bias 0): a side network's
    final norm, trained whether ``layer`` is a side layer or a frozen backbone layer (its copy would be frozen)."""
    norms = [m for m in layer.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("LayerNorm")]
    norm = copy.deepcopy(norms[-1])
    with torch.no_grad():
        for name, p in norm.named_parameters(recurse=False):
            p.fill_(0.0 if name == "bias" else 1.0)
    return norm.requires_grad_(True)



def parse_layers(spec: str, default_words: tuple[str, ...] = ("", "all")) -> list[int] | None:
    """A layer list of a side method's config: ``"0,4,8"`` -> [0, 4, 8] (sorted, unique); one of
    ``default_words`` (any case) -> None, the method's default. Anything else raises ValueError."""
    spec = spec.strip()
    if spec.lower() in default_words:
        return None
    return sorted({int(t) for t in spec.split(",") if t.strip()})


def check_layers(config, name: str, why: str, default_words: tuple[str, ...] = ("", "all")) -> None:
    """The config check of a layer-list field: one ConfigError line saying ``why`` when it does not parse."""
    try:
        parse_layers(getattr(config, name), default_words)
    except ValueError:
        config.check(False, name, why)


def taps_within(config, backbone, last: int, last_means: str) -> list[int]:
    """``config.tap_layers`` resolved on ``backbone``: the embeddings and every layer's input by default
    (states 0 .. num_layers - 1), else the listed ones, each in [0, ``last``] (0 = embeddings; ``last`` =
    ``last_means``), or one ConfigError line."""
    taps = parse_layers(config.tap_layers)
    taps = list(range(backbone.num_layers)) if taps is None else taps
    if not taps or taps[0] < 0 or taps[-1] > last:
        raise ConfigError(f"bad config value tap_layers={config.tap_layers!r}: indices must lie in [0, {last}] "
                          f"(0 = embeddings, {last} = {last_means}) for backbone {backbone.name!r}")
    return taps

