"""LST, Ladder Side-Tuning (Sung, Cho, Bansal, NeurIPS 2022): a narrow side network fed by ladders.

The frozen backbone runs once without autograd (``frozen_hidden_states``): none of its activations
are kept for backward, and gradients flow only through the side network and the ladders.

- Side network: the backbone's own layer type with every width divided by r = ``reduction`` (d_model,
  d_ff and the head size; the head count is kept, as LST's code does with T5's d_kv;
  ``backbone.narrow_layer``), one side layer per kept backbone layer. Side layers are
  Hugging Face layers, so each one's FFN is a named submodule (BERT ``intermediate``/``output``,
  T5 ``layer[-1]``), the slot MP-ISMoE turns into experts.
- Side input: a down-projection Linear(d -> d/r) of the backbone's input embeddings.
- Ladders: before side layer i (fed by backbone layer i),
  ``h_side = mu_i * h_side + (1 - mu_i) * Down_i(h_backbone_i)``, with h_backbone_i the output of
  backbone layer i, Down_i a Linear(d -> d/r) with bias, mu_i = sigmoid(alpha_i / T), T = 0.1,
  alpha_i = 0 at init (every gate starts at 0.5). As in LST's code.
- Layer dropping: ``drop_layers`` names backbone layers that get no side layer and no ladder (LST
  keeps 9 of T5-base's 12: drops 0, 4, 8; ``lst@paper-layers``, spelling ``paper``: those of 0, 4, 8 the
  backbone has, in both stacks on seq2seq). Default: none, the 6-layer MiniLM keeps all six.
- Ladder sources are raw block outputs: the last layer's ladder reads its output before the stack's final
  LayerNorm (T5), as LST's code reads the block's output (``with_raw_last``); the identity on BERT-like ones.
- Output: a final LayerNorm of the side layers' own type (T5: RMS norm), the backbone's salient
  pooling of the side tokens ([CLS] or masked mean), then the up-projection Linear(d/r -> d) to the
  feature the task head reads. Pooling before the up-projection equals pooling after it (affine map,
  convex token weights) and is cheaper; the LayerNorm stays per token, before the pooling.
- Side stack context: the side layers get their own layer context (same attention mask), so on T5 the
  first side layer computes its own relative position bias, as in LST's code.
- Initialisation (``init``): ``fisher`` (default, the paper's) copies Fisher-ranked structured
  prunings of the backbone's layers into the side layers in ``prepare`` (see ``pruning.py``);
  ``random`` keeps the narrow layers' fresh init and makes ``prepare`` a no-op. Ladders, the input
  down-projection, the final LayerNorm and the up-projection start from their default init either
  way (LST's code initialises them so too).
- Hyperparameters: lr 3e-3, r = 8 (T5-base GLUE), 1,024 Fisher samples (docs/methods.md).

On the seq2seq kind (an encoder-decoder read through its LM head), as LST's T5 code does: the side network
above is the side *encoder*; a side *decoder* of narrow decoder blocks is built the same way beside the
backbone's decoder (its own input down-projection of the decoder's token embeddings, one ladder and gate per
kept decoder layer from that layer's output, the same ``drop_layers``, its own final LayerNorm). The side
decoder's self-attention is causal with its own relative position bias; its cross-attention reads the side
encoder's output (after the side encoder's final LayerNorm, at the side width) under the source padding
mask. The up-projection maps the side decoder's states, every position, into the frozen LM head (scaled by
d ** -0.5 where T5 ties its embeddings): the side output *replaces* the backbone's decoder output, as in
LST's code (its ``merge_last`` is off). The backbone's encoder and decoder both run without autograd.
``init=fisher`` prunes both side stacks from one Fisher pass of the seq2seq loss, with one hidden channel
set for both (``pruning.py``: the side decoder's cross-attention reads the side encoder's channels).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import NO_BACKBONE_DROPOUT, ConfigError, Method, MethodConfig
from methods.lst.pruning import PrunePlan, fisher_prune_init, fisher_prune_init_seq2seq
from methods.side import (check_layers, fresh_norm_like, frozen_decoder_states, frozen_hidden_states, parse_layers,
                          with_raw_last)

INIT_CHOICES = ("fisher", "random")
NO_LAYERS = ("", "none")  # drop_layers spellings of "drop none"
PAPER = "paper"  # the drop_layers spelling of LST's T5-base list, PAPER_DROPPED
PAPER_DROPPED = (0, 4, 8)  # LST's T5-base GLUE layer dropping (docs/methods.md)


@dataclass
class LSTConfig(MethodConfig):
    renamed = {"r": "reduction"}  # LST's own name for it; ``reduction`` is the name every side method uses

    lr_range = (3e-4, 3e-2)  # make tune's search, around LST's 3e-3
    lr: float = 3e-3  # LST's GLUE setting (docs/methods.md)
    reduction: int = 8  # r: every side width is d / r; 8 for T5-base GLUE (docs/methods.md)
    drop_layers: str = ""  # backbone layers with no side layer, e.g. "0,4,8" (LST on T5-base); "" = none; "paper"
    init: str = "fisher"  # fisher | random: side weights from Fisher-ranked pruning of the backbone, or fresh
    fisher_samples: int = 1024  # training samples for the Fisher ranking (docs/methods.md)
    gate_temperature: float = 0.1  # T in mu_i = sigmoid(alpha_i / T) (docs/methods.md)

    def __post_init__(self):
        super().__post_init__()
        self.check(self.reduction >= 1, "reduction", "must be >= 1")
        self.check(self.init in INIT_CHOICES, "init", "must be fisher or random")
        self.check(self.fisher_samples >= 1, "fisher_samples", "must be >= 1")
        self.check(self.gate_temperature > 0, "gate_temperature", "must be > 0")
        if self.drop_layers.strip().lower() != PAPER:
            check_layers(self, "drop_layers", 'must be comma-separated layer indices such as "0,4,8", "paper", or ""',
                         NO_LAYERS)


class LST(Method):
    config_class = LSTConfig
    runs_on_seq2seq = True
    # 2: the last layer's ladders read its raw output, before T5's final LayerNorm (1: after it); the backbone's
    # dropout follows train/eval (``backbone_dropout``), as the reference code trains
    version = 2
    variants = {"paper-layers": {"drop_layers": PAPER}, **NO_BACKBONE_DROPOUT}  # paper-layers: LST's T5-base dropping

    def __init__(self, backbone, config: LSTConfig):
        super().__init__(backbone, config)
        d, n = backbone.hidden_size, backbone.num_layers
        backbone.keep_raw_last = True  # the last ladder reads the last block's raw output (module doc)
        paper = config.drop_layers.strip().lower() == PAPER
        depth = min(n, backbone.num_decoder_layers) if backbone.seq2seq else n
        dropped = [i for i in PAPER_DROPPED if i < depth] if paper else parse_layers(config.drop_layers, NO_LAYERS) or []
        if any(i < 0 or i >= n for i in dropped) or len(dropped) >= n:
            raise ConfigError(f"bad config value drop_layers={config.drop_layers!r}: indices must lie in "
                              f"[0, {n - 1}] and keep at least one layer of backbone {backbone.name!r}")
        # side layer j (and its ladder) is fed by backbone layer source_layers[j]
        self.source_layers = [i for i in range(n) if i not in dropped]
        self.d_side = max(1, d // config.reduction)
        self.embed_down = nn.Linear(d, self.d_side)
        self.ladders = nn.ModuleList([nn.Linear(d, self.d_side) for _ in self.source_layers])
        # side layer j is the j-th of its own stack (T5: the first one owns the relative position bias)
        self.side_layers = nn.ModuleList([backbone.narrow_layer(config.reduction, j)
                                          for j in range(len(self.source_layers))])
        self.gate_alpha = nn.Parameter(torch.zeros(len(self.source_layers)))
        self.final_norm = fresh_norm_like(self.side_layers[-1])
        self.up = nn.Linear(self.d_side, d)
        self.prune_plan: PrunePlan | None = None
        if backbone.seq2seq:  # the side decoder (module doc)
            nd = backbone.num_decoder_layers
            if any(i >= nd for i in dropped) or len(dropped) >= nd:
                raise ConfigError(f"bad config value drop_layers={config.drop_layers!r}: indices must lie in "
                                  f"[0, {nd - 1}] and keep at least one decoder layer of backbone {backbone.name!r}")
            self.decoder_source_layers = [i for i in range(nd) if i not in dropped]
            self.dec_embed_down = nn.Linear(d, self.d_side)
            self.dec_ladders = nn.ModuleList([nn.Linear(d, self.d_side) for _ in self.decoder_source_layers])
            self.dec_side_layers = nn.ModuleList([backbone.narrow_decoder_layer(config.reduction, j)
                                                  for j in range(len(self.decoder_source_layers))])
            self.dec_gate_alpha = nn.Parameter(torch.zeros(len(self.decoder_source_layers)))
            self.dec_final_norm = fresh_norm_like(self.dec_side_layers[-1])

    def gates(self) -> torch.Tensor:
        """mu_i = sigmoid(alpha_i / T): the weight each ladder leaves to the side stream."""
        return torch.sigmoid(self.gate_alpha / self.config.gate_temperature)

    def side_ffn_slots(self) -> list:
        """The FFN of every side layer (the backbone's own layer type, narrow; the side decoder's too on the
        seq2seq kind), as ``FFNSlot`` objects with install/restore (``backbone.ffn_slot``), for MP-ISMoE's experts."""
        layers = list(self.side_layers) + list(getattr(self, "dec_side_layers", []))
        return [self.backbone.ffn_slot(layer) for layer in layers]

    def prepare(self, train_loader, task) -> None:
        """Fisher-ranked structured pruning of the backbone into the side layers (init=fisher only)."""
        if self.config.init != "fisher":
            return
        if self.backbone.seq2seq:
            plan, self.decoder_prune_plan = fisher_prune_init_seq2seq(
                self.backbone, self.side_layers, self.source_layers, self.dec_side_layers,
                self.decoder_source_layers, train_loader, task, self.config.fisher_samples)
            self.prune_plan = plan
            print(f"lst: side encoder and decoder initialised from Fisher-ranked pruning ({plan.samples} samples, "
                  f"{plan.seconds:.1f} s)", file=sys.stderr)
            return
        plan = fisher_prune_init(self.backbone, self.side_layers, self.source_layers, train_loader, task,
                                 self.config.fisher_samples)
        self.prune_plan = plan
        print(f"lst: side layers initialised from Fisher-ranked pruning ({plan.samples} samples, "
              f"{plan.seconds:.1f} s)", file=sys.stderr)

    def ladder_stack(self, states, down, ladders, layers, alpha, sources, ctx, run) -> torch.Tensor:
        """One side stack: the down-projected input, then before each side layer j the gated ladder from
        backbone layer ``sources[j]``'s output."""
        dtype = self.up.weight.dtype
        h = down(states[0].to(dtype))
        mu = torch.sigmoid(alpha / self.config.gate_temperature).to(dtype)
        for j, k in enumerate(sources):
            h = mu[j] * h + (1 - mu[j]) * ladders[j](states[k + 1].to(dtype))
            h = run(layers[j], h, ctx)
        return h

    def forward(self, batch):
        bb = self.backbone
        states, ctx = frozen_hidden_states(bb, batch)
        mask = ctx.attention_mask
        side_ctx = bb.layer_context(mask, self.up.weight.dtype)  # the side stack's own (T5 position bias)
        h = self.ladder_stack(with_raw_last(states, ctx), self.embed_down, self.ladders, self.side_layers,
                              self.gate_alpha, self.source_layers, side_ctx, bb.run_layer)
        if not bb.seq2seq:
            return self.up(bb.salient(self.final_norm(h), mask))
        memory = self.final_norm(h)  # what the side decoder cross-attends to
        dec_states = frozen_decoder_states(bb, batch, states[-1], mask, raw_last=True)  # reads the finished encoder
        dec_ctx = bb.decoder_context(dec_states[0].shape[1], memory, mask, memory.dtype,
                                     batch.get("decoder_attention_mask"))
        hd = self.ladder_stack(dec_states, self.dec_embed_down, self.dec_ladders, self.dec_side_layers,
                               self.dec_gate_alpha, self.decoder_source_layers, dec_ctx, bb.run_decoder_layer)
        return self.up(self.dec_final_norm(hd))
