"""UniPT (Diao et al., CVPR 2024): universal parallel tuning, a memory-efficient side method.

The frozen backbone runs once without autograd. Every tapped layer output is processed
*independently* by a light parallel interaction module (no sequential side chain, so nothing depends
on how the backbone is built); a confidence aggregation fuses the per-layer results; the fused
feature is up-projected and added to the backbone's last output.

Read from the public reference code (github.com/Paranioar/UniPT; VSE-infty
``lib/adapter_for_transformer.py``, CLIP-ViL ``src/lxrt/modeling.py``, CLIP4Clip
``modules/module_adapter.py``), re-implemented here:

- Down-projection: one ``Linear(d, d/r) + LayerNorm`` per tapped layer, and one for the anchor (the
  backbone's last output), as in the VSE-infty and CLIP-ViL versions.
- Token interaction: the anchor's tokens (last layer) query the tapped layer's tokens. Weights are
  ``relu(anchor @ tapped^T)`` with padded keys zeroed, L1-normalised over the keys, plus the identity
  (so every token keeps its own tapped feature: VSE-infty and CLIP-ViL add ``eye``).
- Confidence: ``c_i = Linear(d/r, 1)(pool(anchor) * pool(tapped_i))`` with masked mean pooling, a
  softmax over the tapped layers, one weight per sample and layer; the interacted features are
  summed with these weights.
- Projection: ``anchor + ffn(fused)`` with ``ffn = Linear(d/r, d) -> ReLU -> Linear(d, d/r) ->
  LayerNorm`` (CLIP-ViL's ``side_projection``). It is the side network's one MLP, kept as the named
  submodule ``ffn`` ([B, L, d/r] -> [B, L, d/r]) so MP-ISMoE can turn it into a mixture of experts.
- Output: ``Linear(d/r, d)`` up-projection added to the backbone's last output (CLIP4Clip's
  ``raw_anchor_features + upsample(...)``), then the backbone's salient pooling.

Which layers are tapped: by default the embedding output and every layer output but the last (the
last is the anchor), as in VSE-infty (13 BERT states: anchor = state 12, interactions with 0..11).

On the seq2seq kind (our choice: UniPT publishes no T5 code, and its paper names no decoder form): the
same module runs on the frozen *decoder's* states, anchor = the decoder's last output, taps = its
embedding output and every other layer output; the residual is added per target position and read by
the frozen LM head. The source reaches it through the frozen decoder's cross-attention to the frozen
encoder. Adding modules on the encoder would need a path back into the decoder with autograd (SHERL's T5
form reruns the last decoder block for that); plain UniPT has none, so they would never receive a
gradient. ``tap_layers`` indexes the decoder's states there. A decoder position must not see later
ones (teacher forcing would leak the gold word), so there the token interaction is causal and the
confidence pools each position's prefix (one weight per sample, position and layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.backbones.base import checkpoint_call
from methods.base import NO_BACKBONE_DROPOUT, ConfigError, Method, MethodConfig
from methods.side import check_layers, frozen_decoder_states, frozen_hidden_states, parse_layers, taps_within


@dataclass
class UniPTConfig(MethodConfig):
    # lr: UniPT's README names LST as its language-only base but the repository ships no GLUE script;
    # LST's GLUE side-network lr is 3e-3 (also SHERL's scripts/ladder_side_tuning_base.sh). Its VL
    # scripts (CLIP-ViL VQA) use 5e-4 with r = 2.
    lr_range = (3e-4, 3e-2)  # make tune's search, around 3e-3
    lr: float = 3e-3
    # reduction: side width d/r. LST's GLUE setting r = 8; with r = 8 UniPT's trainable share on T5-base
    # lands near the paper's 1.36 % (encoder + decoder modules), r = 4 would double it.
    reduction: int = 8
    # tap_layers: indices into the hidden-state list (0 = embedding output, i = output of layer i).
    # "" / "all" = 0 .. num_layers-1 (every state but the anchor), the reference code's choice.
    tap_layers: str = ""
    eps: float = 1e-8  # the L1-normalisation epsilon of the reference code (lib/utils.py)

    def __post_init__(self):
        super().__post_init__()
        self.check(self.reduction >= 1, "reduction", "must be >= 1")
        self.check(self.eps > 0, "eps", "must be > 0")
        check_layers(self, "tap_layers", 'must be "all" or comma-separated layer indices')


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], [B, L] -> [B, D]: mean over the real tokens."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def prefix_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], [B, L] -> [B, L, D]: at each position the mean over the real tokens up to it (causal pooling)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).cumsum(1) / m.cumsum(1).clamp_min(1.0)


def token_interaction(query: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """UniPT's linear cross-attention: relu(q k^T) on real keys, L1-normalised per query, plus identity.

    query, context: [B, L, D]; mask: [B, L] (1 = real token), or [B, L, L] per query (causal). Returns [B, L, D].
    """
    keys = mask.to(query.dtype)
    weights = torch.relu(query @ context.transpose(1, 2)) * (keys if keys.dim() == 3 else keys.unsqueeze(1))
    weights = weights / (weights.abs().sum(-1, keepdim=True) + eps)
    return weights @ context + context  # "+ eye": each token keeps its own tapped feature


class SideFFN(nn.Module):
    """The side network's MLP, [B, L, d_side] -> [B, L, d_side]: the slot MP-ISMoE turns into experts."""

    def __init__(self, d_side: int, d_hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(d_side, d_hidden)
        self.act = nn.ReLU()
        self.fc_out = nn.Linear(d_hidden, d_side)
        self.norm = nn.LayerNorm(d_side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc_out(self.act(self.fc_in(x))))


def down_projection(d: int, d_side: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d_side), nn.LayerNorm(d_side))


class UniPT(Method):
    # 2: the backbone's dropout follows train/eval (``backbone_dropout``), as the reference code trains
    version = 2
    variants = dict(NO_BACKBONE_DROPOUT)
    config_class = UniPTConfig
    runs_on_seq2seq = True

    def __init__(self, backbone, config: UniPTConfig):
        super().__init__(backbone, config)
        d, n = backbone.hidden_size, backbone.num_layers
        self.d_side = max(1, d // config.reduction)
        if backbone.seq2seq:  # the decoder's states (module doc)
            n = backbone.num_decoder_layers
            taps = parse_layers(config.tap_layers)
            taps = list(range(n)) if taps is None else taps
            if not taps or taps[0] < 0 or taps[-1] > n:
                raise ConfigError(f"bad config value tap_layers={config.tap_layers!r}: indices must lie in [0, {n}] "
                                  f"(0 = the decoder's embeddings, {n} = its last layer) for backbone {backbone.name!r}")
        else:
            taps = taps_within(config, backbone, n, "last layer")
        self.taps = taps
        # one independent light module per tapped layer: the "parallel" in UniPT
        self.down = nn.ModuleList([down_projection(d, self.d_side) for _ in taps])
        self.anchor_down = down_projection(d, self.d_side)
        self.confidence_gate = nn.Linear(self.d_side, 1)
        self.ffn = SideFFN(self.d_side, d)
        self.up = nn.Linear(self.d_side, d)
        self.last_confidence: torch.Tensor | None = None  # [B, len(taps)], detached, for logging and tests

    def side_ffn_slots(self) -> list[tuple[nn.Module, str]]:
        return [(self, "ffn")]

    def aggregate(self, states: list[torch.Tensor], mask: torch.Tensor,
                  causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Side network on the frozen states: returns (residual [B, L, d], confidence [B, n_taps], or
        [B, L, n_taps] with ``causal``: each position reads only itself and earlier positions)."""
        dtype = self.up.weight.dtype
        anchor_tokens = self.anchor_down(states[-1].to(dtype))
        pool = prefix_mean if causal else masked_mean
        keys = mask
        if causal:
            L = mask.shape[1]
            keys = mask[:, None, :].bool() & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
        anchor = pool(anchor_tokens, mask)

        def branch(down, state, anchor_tokens, anchor):  # one tapped layer: its merged tokens and its score
            tapped = down(state.to(dtype))
            return (token_interaction(anchor_tokens, tapped, keys, self.config.eps),
                    self.confidence_gate(anchor * pool(tapped, mask)))

        # checkpointing: each branch keeps only its inputs (the frozen state is held anyway) and recomputes
        # its projection and token-interaction scores in backward, the bulk of UniPT's activations
        run = (lambda *a: checkpoint_call(branch, *a)) if self.config.checkpointing and torch.is_grad_enabled() else branch
        merged, scores = [], []
        for down, i in zip(self.down, self.taps):
            m, score = run(down, states[i], anchor_tokens, anchor)
            merged.append(m)
            scores.append(score)
        confidence = torch.softmax(torch.cat(scores, dim=-1), dim=-1)  # sums to 1 over the taps
        stacked = torch.stack(merged, dim=1)
        fused = (torch.einsum("bln,bnld->bld", confidence, stacked) if causal
                 else torch.einsum("bn,bnld->bld", confidence, stacked))
        return self.up(anchor_tokens + self.ffn(fused)), confidence

    def forward(self, batch):
        states, ctx = frozen_hidden_states(self.backbone, batch)
        mask = ctx.attention_mask
        if self.backbone.seq2seq:
            states = frozen_decoder_states(self.backbone, batch, states[-1], mask)
            target = batch.get("decoder_attention_mask")
            mask = torch.ones(states[0].shape[:2], dtype=mask.dtype, device=mask.device) if target is None else target
        residual, confidence = self.aggregate(states, mask, causal=self.backbone.seq2seq)
        self.last_confidence = confidence.detach()
        hidden = states[-1].to(residual.dtype) + residual
        return self.backbone.readout(hidden, {"attention_mask": mask})
