"""Shared by the side methods (Side-Tuning, LST, UniPT, SHERL, MP-ISMoE): the frozen backbone runs
without autograd, so none of its activations are kept for backward. That is the whole memory
argument of METL, so it lives in one place."""
from __future__ import annotations

import torch

from benchmark.backbones import Backbone, LayerContext


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
