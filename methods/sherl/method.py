"""SHERL (Diao et al., ECCV 2024): an early anti-redundancy route on frozen features, then a late route
through the backbone's own last layer.

Read from the public reference code (github.com/Paranioar/SHERL: ``Guidance``/``Sherl_Block`` in
CLIP-ViL ``src/lxrt/modeling.py``, ``sherl_for_transformer`` and the BERT text encoder in VSE-infty
``lib/adapter_for_transformer.py`` / ``lib/encoders.py``, ``MTSAdapter`` in the LST/T5 code),
re-implemented on the backbone interface:

Early route (frozen backbone, no autograd):
- Taps: by default the embedding output and every layer output but the last, i.e. every input of a
  backbone layer (VSE-infty and CLIP-ViL feed [embeddings, out_1 .. out_{N-1}]). The deepest tap
  guides; the others are "shallow".
- Per tap a small gated adapter (the reference ``Downsample``/``Adapter``): ``h = relu(Linear(d, d/r) x)``
  then ``ffn(h) = (proj(h) + h) * sigmoid(gate(h))``, ``proj, gate: Linear(d/r, d/r)``. ``ffn`` is the
  named [B, L, d/r] -> [B, L, d/r] submodule MP-ISMoE may replace by experts (``side_ffn_slots``).
- Guidance, per token, over layers: redundancy_j = sum_k relu(cos(s_j, s_k)) over the shallow
  features (self included); attention a_j = relu(Linear(d/r, 1)(s_j * deep)) / redundancy_j, then
  L1-normalised over j (eps 1e-6); aggregate = sum_j a_j s_j + deep.
- ``fc_out``: ``Linear(d/r, d)`` on ``relu(aggregate)`` (CLIP-ViL / T5 versions).

Late route (autograd through exactly one backbone layer):
- ``gate_position="before_late"`` (default, the reference code's order): the late layer's input is
  ``fc_out(...) + tanh(g / 0.1) * h_{N-1}``, where ``h_{N-1}`` is the frozen backbone's input to its
  last layer; ``g`` starts at 0, so training starts from the side path alone and learns how much
  of the backbone's own feature to mix back in. Then ``late_layer`` (= ``backbone.layers[-1]``),
  then ``backbone.finish`` (T5's final LayerNorm; frozen, gradient passes through it).
- ``gate_position="after_late"``: the reading in docs/methods.md (layer first, then the gated residual):
  ``finish(late_layer(fc_out(...))) + tanh(g / 0.1) * h_N`` with ``h_N`` the backbone's final output.
- Pooling: ``backbone.salient``.

As published, the late layer's weights stay frozen: the public code only backpropagates *through* that
layer (``CLIP-ViL/src/tasks/trainer_base.py`` unfreezes only modules named ``side``), and the paper's
0.85 % trainable share on T5-base leaves no room for a trained T5 layer (~3 % on its own). The variant
``sherl@late-layer`` (``train_late_layer=true``) trains it too, at the side modules' lr: the reading
under which MP-ISMoE's GNP-IQ re-quantizes backbone weights that change (its Table 4 rows). The
reference's T5/GLUE code (``MTSAdapter`` in ``modeling_side_t5.py``) hands the aggregate to the
decoder rather than to a late encoder layer; we follow the BERT/CLIP-ViL versions, which have the
late route. One deviation: ``Guidance.fc_attn``'s bias starts at 0 (see there).

On the seq2seq kind SHERL takes the form of its T5 code (``T5StackEnc`` / ``T5StackDec`` in SHERL's
``modeling_side_t5.py``): the route above runs once per stack.
- Encoder: adapters on the embedding output and every encoder layer output (default taps 0 .. N: the
  last one guides), ``fc_out(relu(aggregate)) + tanh(g / 0.1) * guide``, then a trainable final LayerNorm
  of width d: the side encoder's output. Tap N is the last block's raw output, before the encoder's final
  LayerNorm, as the T5 code reads ``layer_outputs[0]`` (``with_raw_last``).
- Decoder: adapters on the frozen decoder's embedding output and layer outputs up to its last layer's
  input (default taps 0 .. N_dec - 1), the late route through the backbone's *last decoder block*, which
  cross-attends to the side encoder's output (so the encoder's side modules learn through it) under the
  stack's relative position bias (computed as the frozen decoder's block 0 computes it, which the T5 code
  passes on), then a trainable final LayerNorm; the result goes to the frozen LM head. ``gate_position``
  and ``train_late_layer`` apply to that decoder block. ``tap_layers`` sets the encoder taps; the decoder
  taps are ``decoder_tap_layers`` (a field of ours: the T5 code uses the same layer list for both stacks).
- Both final side LayerNorms train: the T5 code trains every module named "side" (``final_side_layer_norm``).

The published layer list (``sherl@paper-layers``, spelling ``paper``): SHERL's T5-base GLUE script sets
``encoder_side_layers = decoder_side_layers = [1,2,3,5,6,7,9,10,11]``, 0-based T5 blocks whose outputs
feed an adapter, after the embedding output, which always does. Our tap i is the output of block i - 1, so
the encoder taps 0,2,3,4,6,7,8,10,11,12 (12: block 11's raw output guides) and the decoder, whose code
drops the blocks from the late one on (``T5StackDec``: ``i < num_layers - 1``), taps 0,2,3,4,6,7,8,10,11
(11: the late block's input guides). On another depth ``paper`` keeps the listed blocks the stack has, by
the same rule (the classifier kind's taps stop at the late layer's input, like the decoder's).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import NO_BACKBONE_DROPOUT, ConfigError, Method, MethodConfig
from methods.side import (check_layers, fresh_norm_like, frozen_decoder_states, frozen_hidden_states,
                          parse_layers, with_raw_last)

GATE_POSITIONS = ("before_late", "after_late")
PAPER = "paper"  # a tap-list spelling: the T5-base script's side layers (module doc)
PAPER_SIDE_LAYERS = (1, 2, 3, 5, 6, 7, 9, 10, 11)  # SHERL's ladder_side_tuning_base.sh, both stacks


@dataclass
class SherlConfig(MethodConfig):
    # lr: SHERL's GLUE script (Ladder-Side-Tuning/seq2seq/scripts/ladder_side_tuning_base.sh) sets
    # lr=3e-3, LST's GLUE value. The late layer trains at the same lr (one optimizer group).
    lr_range = (3e-4, 3e-2)  # make tune's search, around 3e-3
    lr: float = 3e-3
    # reduction: side width d/r. The SHERL GLUE script takes r on the command line; r = 8 (LST's GLUE
    # setting) puts SHERL near its reported 0.85 % of T5-base (encoder + decoder modules).
    reduction: int = 8
    # tap_layers: indices into the hidden-state list (0 = embedding output, i = output of layer i), at
    # most num_layers-1 (the late layer's input); the deepest one guides. "" / "all" = 0 .. num_layers-1;
    # "paper": the published T5-base list (module doc).
    tap_layers: str = ""
    gate_temperature: float = 0.1  # reference code: self.gate_T = 0.1
    gate_init: float = 0.0  # reference code: gate_params initialised to 0
    gate_position: str = "before_late"  # before_late (reference code) | after_late (see module docstring)
    train_late_layer: bool = False  # the public code: gradient through the layer, weights frozen
    eps: float = 1e-6  # L1/L2-normalisation epsilon of the reference Guidance
    # seq2seq only: the decoder's taps (0 = its embedding output, at most the last decoder layer's input)
    decoder_tap_layers: str = ""

    def __post_init__(self):
        super().__post_init__()
        self.check(self.reduction >= 1, "reduction", "must be >= 1")
        self.check(self.gate_temperature > 0, "gate_temperature", "must be > 0")
        self.check(self.gate_position in GATE_POSITIONS, "gate_position", f"must be one of {', '.join(GATE_POSITIONS)}")
        self.check(self.eps > 0, "eps", "must be > 0")
        for name in ("tap_layers", "decoder_tap_layers"):
            if getattr(self, name).strip().lower() != PAPER:
                check_layers(self, name, 'must be "all", "paper" or comma-separated layer indices')


class GatedFFN(nn.Module):
    """[B, L, d_side] -> [B, L, d_side]: ``(proj(h) + h) * sigmoid(gate(h))``, the adapter's MLP."""

    def __init__(self, d_side: int):
        super().__init__()
        self.proj = nn.Linear(d_side, d_side)
        self.gate = nn.Linear(d_side, d_side)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.proj(h) + h) * torch.sigmoid(self.gate(h))


class TapAdapter(nn.Module):
    """One tapped layer's small gated adapter: down-projection + ReLU, then the gated ``ffn``."""

    def __init__(self, d: int, d_side: int):
        super().__init__()
        self.down = nn.Linear(d, d_side)
        self.ffn = GatedFFN(d_side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(torch.relu(self.down(x)))


class Guidance(nn.Module):
    """Anti-redundancy aggregation of the shallow features into the deepest one, token by token."""

    def __init__(self, d_side: int, eps: float = 1e-6):
        super().__init__()
        self.fc_attn = nn.Linear(d_side, 1)
        # Deviation from PyTorch's default init (which the reference keeps): a zero bias, so that on a
        # narrow side width a negative bias cannot switch the ReLU'd attention off for every token at
        # start (then the shallow adapters would never receive a gradient).
        nn.init.zeros_(self.fc_attn.bias)
        self.eps = eps

    def redundancy(self, shallow: torch.Tensor) -> torch.Tensor:
        """[N, K, D] -> [N, K, 1]: for each layer j, sum_k relu(cos(s_j, s_k)) (k = j included)."""
        unit = shallow / (shallow.pow(2).sum(-1, keepdim=True).sqrt() + self.eps)
        return torch.relu(unit @ unit.transpose(1, 2)).sum(-1, keepdim=True)

    def weights(self, guide: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        """guide [N, 1, D], shallow [N, K, D] -> [N, K, 1]: L1-normalised relu(cross-attention) / redundancy."""
        attn = torch.relu(self.fc_attn(shallow * guide)) / self.redundancy(shallow)
        return attn / (attn.abs().sum(1, keepdim=True) + self.eps)

    def forward(self, guide: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        return (self.weights(guide, shallow) * shallow).sum(1, keepdim=True) + guide


class SHERL(Method):
    config_class = SherlConfig
    runs_on_seq2seq = True
    # 2: the late layer is frozen by default, as in the public code (1 trained it)
    # 3: seq2seq as the T5 code: the late decoder block gets the stack's position bias (2: zero), both final side
    # LayerNorms train (2: frozen), the encoder's last tap is the last block's raw output (2: after the final norm);
    # and the backbone's dropout follows train/eval (``backbone_dropout``), as the reference code trains
    version = 3
    variants = {"late-layer": {"train_late_layer": "true"},
                "paper-layers": {"tap_layers": PAPER, "decoder_tap_layers": PAPER},  # the T5-base script's taps
                **NO_BACKBONE_DROPOUT}
    paper_variants = ("late-layer",)  # the previous default, and the base setting of MP-ISMoE's Table 4 rows

    def __init__(self, backbone, config: SherlConfig):
        super().__init__(backbone, config)
        d, n = backbone.hidden_size, backbone.num_layers
        self.d_side = max(1, d // config.reduction)
        if backbone.seq2seq:  # the encoder's route has no late layer: every state, the last one guides
            taps = self._taps(config.tap_layers, "tap_layers", n, list(range(n + 1)), "the last encoder layer's output")
            backbone.keep_raw_last = True  # the last tap is the last block's raw output (module doc)
        else:
            taps = self._taps(config.tap_layers, "tap_layers", n - 1, list(range(n)), "the late layer's input")
        self.taps = taps
        self.adapters = nn.ModuleList([TapAdapter(d, self.d_side) for _ in taps])
        self.guidance = Guidance(self.d_side, eps=config.eps)
        self.fc_out = nn.Linear(self.d_side, d)
        self.gate_param = nn.Parameter(torch.full((1,), float(config.gate_init)))
        if backbone.seq2seq:  # the decoder's route and both stacks' final LayerNorms (module doc)
            nd = backbone.num_decoder_layers
            self.decoder_taps = self._taps(config.decoder_tap_layers, "decoder_tap_layers", nd - 1,
                                           list(range(nd)), "the last decoder layer's input")
            self.dec_adapters = nn.ModuleList([TapAdapter(d, self.d_side) for _ in self.decoder_taps])
            self.dec_guidance = Guidance(self.d_side, eps=config.eps)
            self.dec_fc_out = nn.Linear(self.d_side, d)
            self.dec_gate_param = nn.Parameter(torch.full((1,), float(config.gate_init)))
            self.enc_norm = fresh_norm_like(backbone.layers[-1])
            self.dec_norm = fresh_norm_like(backbone.decoder_layers[-1])
        for p in self.late_layer.parameters():
            p.requires_grad_(config.train_late_layer)

    def _taps(self, spec: str, name: str, last: int, default: list[int], last_means: str) -> list[int]:
        if spec.strip().lower() == PAPER:  # the embedding output, then each listed block's output the stack has
            return [0] + [b + 1 for b in PAPER_SIDE_LAYERS if b + 1 <= last]
        taps = parse_layers(spec)
        taps = default if taps is None else taps
        if not taps or taps[0] < 0 or taps[-1] > last:
            raise ConfigError(f"bad config value {name}={spec!r}: indices must lie in [0, {last}] "
                              f"(0 = embeddings, {last} = {last_means}) for backbone {self.backbone.name!r}")
        return taps

    # --- what MP-ISMoE needs ------------------------------------------------------------------
    @property
    def late_layer(self) -> nn.Module:
        """The backbone's last pre-trained layer (the decoder's on the seq2seq kind), the late route. A
        property (not a registered submodule) so it always names the module currently in the backbone,
        even after a wrapper replaces its linears, and so its parameters are listed once, under ``backbone.``."""
        return self.backbone.decoder_layers[-1] if self.backbone.seq2seq else self.backbone.layers[-1]

    def late_parameters(self) -> list[str]:
        """Names, within ``backbone.model``, of the late layer's parameters (trained by SHERL; GNP-IQ
        keeps a full-precision master of exactly these)."""
        ids = {id(p) for p in self.late_layer.parameters()}
        return [name for name, p in self.backbone.model.named_parameters() if id(p) in ids]

    def side_ffn_slots(self) -> list[tuple[nn.Module, str]]:
        adapters = list(self.adapters) + list(getattr(self, "dec_adapters", []))
        return [(adapter, "ffn") for adapter in adapters]

    # --- forward ------------------------------------------------------------------------------
    def gate(self) -> torch.Tensor:
        return torch.tanh(self.gate_param / self.config.gate_temperature)

    def early_route(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Frozen states -> the side feature fed to the late route, [B, L, d]."""
        return self.route(states, self.adapters, self.guidance, self.fc_out, self.taps)

    def route(self, states, adapters, guidance, fc_out, taps) -> torch.Tensor:
        """One stack's early route: adapters on the tapped states, guidance into the deepest, ``fc_out``."""
        dtype = fc_out.weight.dtype
        feats = [adapter(states[i].to(dtype)) for adapter, i in zip(adapters, taps)]
        B, L, D = feats[-1].shape
        deep = feats[-1].reshape(B * L, 1, D)
        if len(feats) > 1:
            shallow = torch.stack(feats[:-1], dim=2).reshape(B * L, len(feats) - 1, D)
            agg = guidance(deep, shallow)
        else:
            agg = deep
        return fc_out(torch.relu(agg.reshape(B, L, D)))

    def forward_seq2seq(self, batch, states, ctx):
        bb, T = self.backbone, self.config.gate_temperature
        mask = ctx.attention_mask
        taps = with_raw_last(states, ctx)  # the last block's output before the encoder's final LayerNorm
        side = self.early_route(taps)
        memory = self.enc_norm(side + self.gate() * taps[self.taps[-1]].to(side.dtype))  # the side encoder's output
        dec = frozen_decoder_states(bb, batch, states[-1], mask)  # the frozen decoder reads the finished encoder
        side = self.route(dec, self.dec_adapters, self.dec_guidance, self.dec_fc_out, self.decoder_taps)
        gate = torch.tanh(self.dec_gate_param / T)
        dec_ctx = bb.decoder_context(side.shape[1], memory, mask, side.dtype, batch.get("decoder_attention_mask"))
        bb.share_decoder_stack_state(side, dec_ctx)  # the late block's position bias: the stack's, from block 0
        if self.config.gate_position == "before_late":  # dec[-2]: the frozen input to the last decoder block
            return self.dec_norm(bb.run_decoder_layer(self.late_layer, side + gate * dec[-2].to(side.dtype), dec_ctx))
        return self.dec_norm(bb.run_decoder_layer(self.late_layer, side, dec_ctx)) + gate * dec[-1].to(side.dtype)

    def forward(self, batch):
        states, ctx = frozen_hidden_states(self.backbone, batch)
        if self.backbone.seq2seq:
            return self.forward_seq2seq(batch, states, ctx)
        side = self.early_route(states)
        gate = self.gate()
        if self.config.gate_position == "before_late":
            # states[-2] is the frozen backbone's input to its last layer
            late_in = side + gate * states[-2].to(side.dtype)
            hidden = self.backbone.finish(self.backbone.run_layer(self.late_layer, late_in.to(states[-2].dtype), ctx))
        else:
            late_out = self.backbone.finish(self.backbone.run_layer(self.late_layer, side.to(states[-2].dtype), ctx))
            hidden = late_out + gate * states[-1].to(late_out.dtype)
        return self.backbone.salient(hidden, ctx.attention_mask)
