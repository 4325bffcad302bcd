"""The seq2seq kind: an encoder-decoder (T5) as the METL papers ran it, text-to-text.

Everything a method reads from the classifier kind still means the encoder (``layers``,
``hidden_states``, ``embed``, ``narrow_layer``), so a method written for encoders taps the encoder
unchanged; the decoder is exposed beside it the same way (``decoder_layers``,
``decoder_hidden_states``, ``embed_decoder``, ``narrow_decoder_layer``), with the memory its
cross-attention reads carried in the layer context. A method's output is the decoder's states at every
target position (``readout`` keeps them), which the frozen LM head (``lm_logits``) turns into scores of
the task's label words (``benchmark.heads.LabelWordHead``).
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.backbones.base import Backbone, LayerContext, checkpointed, run_stack


class Seq2SeqBackbone(Backbone):
    seq2seq = True

    # --- the decoder, layer by layer -------------------------------------------------------
    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.family.decoder_layers(self.model)

    @property
    def num_decoder_layers(self) -> int:
        return len(self.decoder_layers)

    def embed_decoder(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.family.embed_decoder(self.model, batch)

    def decoder_context(self, target_len: int, memory: torch.Tensor, memory_mask: torch.Tensor,
                        dtype: torch.dtype, decoder_mask: torch.Tensor | None = None) -> LayerContext:
        """A decoder stack's context: causal self-attention (and the decoder padding, if given) and the
        ``memory`` [B, S, d_memory] its cross-attention reads, masked by ``memory_mask`` [B, S] of 0/1."""
        B = memory.shape[0]
        device = memory.device
        mask = torch.ones(B, target_len, dtype=torch.long, device=device) if decoder_mask is None else decoder_mask
        causal = torch.ones(target_len, target_len, dtype=torch.bool, device=device).tril()
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        minimum = torch.finfo(dtype).min
        additive = torch.zeros(B, 1, target_len, target_len, dtype=dtype, device=device).masked_fill(~allowed, minimum)
        cross = (1.0 - memory_mask.to(dtype)[:, None, None, :]) * minimum
        return LayerContext(attention_mask=mask, additive_mask=additive,
                            extra={"memory": memory, "memory_mask": cross})

    def run_decoder_layer(self, layer: nn.Module, hidden: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpointed(self.family.prepare_decoder_layer, self.family.run_decoder_layer, layer, hidden, ctx)
        return self.family.run_decoder_layer(layer, hidden, ctx)

    def finish_decoder(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.family.finish_decoder(self.model, hidden)

    def decoder_hidden_states(self, batch: dict[str, torch.Tensor], memory: torch.Tensor, memory_mask: torch.Tensor,
                              embedded: torch.Tensor | None = None) -> tuple[list[torch.Tensor], LayerContext]:
        """The decoder's embedding output followed by every decoder layer's output (the last after the
        decoder's final LayerNorm; before it in ``ctx.raw_last`` where ``keep_raw_last`` is set), cross-attending
        to ``memory``."""
        hidden = self.embed_decoder(batch) if embedded is None else embedded
        ctx = self.decoder_context(hidden.shape[1], memory, memory_mask, hidden.dtype,
                                   batch.get("decoder_attention_mask"))
        return run_stack(hidden, self.decoder_layers, ctx, self.run_decoder_layer, self.finish_decoder,
                         self.keep_raw_last), ctx

    def share_decoder_stack_state(self, hidden: torch.Tensor, ctx: LayerContext) -> None:
        """Put in ``ctx`` what the decoder's first block shares with the rest of its stack (T5's relative
        position bias), computed as that frozen block computes it, so that a later block run alone in a
        context of its own (SHERL's late route) sees what it sees inside the stack, not a zero bias."""
        self.family.prepare_decoder_layer(self.decoder_layers[0], hidden, ctx)

    def narrow_decoder_layer(self, reduction: int, layer_index: int = 0) -> nn.Module:
        return self.family.narrow_decoder_layer(self.model, reduction, layer_index)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[.., d] decoder states -> [.., vocab] scores through the frozen LM head."""
        return self.family.lm_logits(self.model, hidden)

    # --- the whole model -------------------------------------------------------------------
    def readout(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return hidden  # every target position: the LM head scores each one

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder, then decoder over ``batch["decoder_input_ids"]``: [B, T, d] final decoder states."""
        encoded, _ = self.hidden_states(batch)
        states, _ = self.decoder_hidden_states(batch, encoded[-1], batch["attention_mask"])
        return states[-1]
