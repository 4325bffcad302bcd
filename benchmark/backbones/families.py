"""BERT-like encoders (BERT, RoBERTa, MiniLM, ELECTRA), MPNet (BERT-like, with T5-like relative position
bias) and T5 (its encoder, and its decoder for the seq2seq kind)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from benchmark.backbones.base import AttrSlot, Family, FFNSlot, LayerContext



def narrowed(config, reduction: int, *widths: str):
    """A copy of ``config`` with each of ``widths`` divided by ``reduction`` (a side network's narrow layer)."""
    cfg = copy.deepcopy(config)
    for name in widths:
        setattr(cfg, name, getattr(config, name) // reduction)
    return cfg

class BertFFNSlot(FFNSlot):
    """A BERT-like layer's FFN is split over two submodules: ``intermediate`` (dense + activation) and
    ``output.dense``; ``output`` then applies dropout, the residual and the LayerNorm. The expert is
    ``nn.Sequential(intermediate, output.dense)``; installed as ``intermediate = m`` and
    ``output.dense = Identity``, ``output`` computes LayerNorm(dropout(m(x)) + x), the original layer
    when ``m`` is the original FFN."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def get(self) -> nn.Module:
        if isinstance(self.layer.output.dense, nn.Identity):
            raise RuntimeError("this layer's FFN slot holds an installed module; restore it first")
        return nn.Sequential(self.layer.intermediate, self.layer.output.dense)

    def install(self, module: nn.Module) -> None:
        self.get()  # refuses a second install over the first
        self.layer.intermediate = module
        self.layer.output.dense = nn.Identity()

    def restore(self, ffn: nn.Module) -> None:
        intermediate, dense = ffn
        self.layer.intermediate = intermediate
        self.layer.output.dense = dense

    def __repr__(self) -> str:
        return f"BertFFNSlot({type(self.layer).__name__})"


class BertFamily(Family):
    name = "bert"
    lora_targets = ("query", "value")

    def max_length(self, config) -> int | None:
        # learned absolute positions; RoBERTa's start after its padding index (514 -> 512 tokens)
        offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
        return config.max_position_embeddings - offset

    def encoder_of(self, model):
        return model

    def layers(self, model):
        return model.encoder.layer

    def embed(self, model, batch):
        if "inputs_embeds" in batch:
            return model.embeddings(inputs_embeds=batch["inputs_embeds"], token_type_ids=batch.get("token_type_ids"))
        return model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))

    def run_layer(self, layer, hidden, ctx: LayerContext):
        out = layer(hidden, attention_mask=ctx.additive_mask.to(hidden.dtype))
        return out[0] if isinstance(out, tuple) else out

    def hidden_size(self, config):
        return config.hidden_size

    def narrow_layer(self, model, reduction, layer_index):
        config = model.config
        cfg = narrowed(config, reduction, "hidden_size", "intermediate_size")
        # LST's side network keeps the head count and divides the head size by r (as T5's d_kv / r
        # below); where the narrow width is not divisible by the head count, the largest count that is
        heads = config.num_attention_heads
        while cfg.hidden_size % heads:
            heads -= 1
        cfg.num_attention_heads = heads
        return type(self.layers(model)[0])(cfg)

    def ffn_slot(self, layer):
        return BertFFNSlot(layer)


class MPNetFamily(BertFamily):
    """MPNet: a BERT-like layer (``intermediate``/``output`` FFN, LayerNorm after each block) whose attention
    (``attn.q``, ``attn.k``, ``attn.v``, ``attn.o``) adds a relative position bias. The encoder, not a layer,
    owns the bias table (``MPNetEncoder.relative_attention_bias``) and computes the bias once per stack
    (``compute_position_bias``); here it is computed once per stack too, by the first layer that needs it,
    and kept in the layer context. A side stack's first narrow layer owns a table of its own (a layerless
    ``MPNetEncoder`` at the narrow head count, ``relative_position``), as T5's narrow first block does."""

    name = "mpnet"
    lora_targets = ("q", "v")
    default_pooling = "mean"  # the sentence-transformers MPNets are read by their mean token
    OWNER = "mpnet_position_bias_owner"  # ctx.extra: the module that computes the stack's bias (the encoder)

    def max_length(self, config) -> int | None:
        return config.max_position_embeddings - (config.pad_token_id + 1)  # positions start after padding (as RoBERTa)

    def stack_context(self, model, ctx: LayerContext) -> None:
        ctx.extra[self.OWNER] = model.encoder

    def stack_parameters(self, model) -> dict[str, torch.Tensor]:
        return {"relative_position.relative_attention_bias.weight": model.encoder.relative_attention_bias.weight}

    def embed(self, model, batch):
        if "inputs_embeds" in batch:
            return model.embeddings(inputs_embeds=batch["inputs_embeds"])
        return model.embeddings(input_ids=batch["input_ids"])

    def _position_bias(self, layer, hidden, ctx: LayerContext) -> torch.Tensor:
        # keyed by head count: a stack whose layers have another head count (a narrow side stack) keeps its own
        heads = layer.attention.attn.num_attention_heads
        key = ("mpnet_position_bias", heads)
        bias = ctx.extra.get(key)
        if bias is None:
            owner = getattr(layer, "relative_position", None)
            owner = ctx.extra.get(self.OWNER) if owner is None else owner
            if owner is None or owner.n_heads != heads:
                raise RuntimeError(f"an MPNet layer of {heads} heads has no position bias in its stack: build its "
                                   f"stack's first layer with narrow_layer(.., layer_index=0)")
            # one example's bias, broadcast over the batch: the values MPNetEncoder expands to every example
            bias = owner.compute_position_bias(hidden[:1])
            ctx.extra[key] = bias
        return bias

    def prepare_layer(self, layer, hidden, ctx: LayerContext) -> None:
        self._position_bias(layer, hidden, ctx)

    def run_layer(self, layer, hidden, ctx: LayerContext):
        bias = self._position_bias(layer, hidden, ctx).to(hidden.dtype)
        out = layer(hidden, attention_mask=ctx.additive_mask.to(hidden.dtype), position_bias=bias)
        return out[0] if isinstance(out, tuple) else out

    def narrow_layer(self, model, reduction, layer_index):
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        layer = super().narrow_layer(model, reduction, layer_index)
        if layer_index == 0:
            cfg = layer.attention.attn
            table_cfg = copy.deepcopy(model.config)
            table_cfg.num_hidden_layers, table_cfg.num_attention_heads = 0, cfg.num_attention_heads
            layer.relative_position = MPNetEncoder(table_cfg)
        return layer


class T5Family(Family):
    name = "t5"
    lora_targets = ("q", "v")  # peft matches them in encoder and decoder self-attention and in cross-attention
    model_class_name = "T5EncoderModel"  # the classifier kind: the encoder only, a task head on its states
    seq2seq_class_name = "T5ForConditionalGeneration"  # the seq2seq kind: encoder, decoder and LM head
    default_pooling = "mean"

    def new_model(self, config, seq2seq: bool = False) -> nn.Module:
        return self.model_class(seq2seq)(config)  # a concrete model class: no from_config

    def encoder_of(self, model):
        return model.encoder

    def layers(self, model):
        return model.encoder.block

    def embed(self, model, batch):
        if "inputs_embeds" in batch:
            return batch["inputs_embeds"]
        return model.encoder.embed_tokens(batch["input_ids"])

    @staticmethod
    def _position_bias(layer, hidden, ctx: LayerContext, name: str) -> torch.Tensor:
        # The first block of a stack owns the relative position bias; the rest reuse it. A side stack
        # with a different head count keeps its own, keyed by head count.
        attn = layer.layer[0].SelfAttention
        key = (name, attn.n_heads)
        bias = ctx.extra.get(key)
        T = hidden.shape[1]
        if bias is None and attn.has_relative_attention_bias:
            bias = attn.compute_bias(T, T, device=hidden.device)
        if bias is None:
            bias = torch.zeros(1, attn.n_heads, T, T, device=hidden.device)
        ctx.extra[key] = bias
        return bias

    def prepare_layer(self, layer, hidden, ctx: LayerContext) -> None:
        self._position_bias(layer, hidden, ctx, "t5_position_bias")

    def run_layer(self, layer, hidden, ctx: LayerContext):
        bias = self._position_bias(layer, hidden, ctx, "t5_position_bias")
        out = layer(hidden, attention_mask=ctx.additive_mask.to(hidden.dtype), position_bias=bias.to(hidden.dtype))
        return out[0] if isinstance(out, tuple) else out

    def finish(self, model, hidden):
        return model.encoder.final_layer_norm(hidden)

    def hidden_size(self, config):
        return config.d_model

    def narrow_layer(self, model, reduction, layer_index):
        from transformers.models.t5.modeling_t5 import T5Block

        config = model.config
        cfg = narrowed(config, reduction, "d_model", "d_ff")
        cfg.d_kv = max(1, config.d_kv // reduction)
        cfg.is_decoder = False
        return T5Block(cfg, has_relative_attention_bias=(layer_index == 0))

    # --- the decoder (seq2seq kind) ---------------------------------------------------------
    def decoder_layers(self, model):
        return model.decoder.block

    def embed_decoder(self, model, batch):
        return model.decoder.embed_tokens(batch["decoder_input_ids"])

    def run_decoder_layer(self, layer, hidden, ctx: LayerContext):
        """A decoder block: causal self-attention with the decoder's own (one-directional) relative position
        bias, shared from the first block of its stack as in the encoder, then cross-attention to
        ``ctx.extra["memory"]`` (zero position bias, as T5) under ``ctx.extra["memory_mask"]``, then the FFN."""
        bias = self._position_bias(layer, hidden, ctx, "t5_decoder_position_bias")
        memory = ctx.extra["memory"]
        out = layer(hidden, attention_mask=ctx.additive_mask.to(hidden.dtype), position_bias=bias.to(hidden.dtype),
                    encoder_hidden_states=memory.to(hidden.dtype),
                    encoder_attention_mask=ctx.extra["memory_mask"].to(hidden.dtype))
        return out[0] if isinstance(out, tuple) else out

    def prepare_decoder_layer(self, layer, hidden, ctx: LayerContext) -> None:
        self._position_bias(layer, hidden, ctx, "t5_decoder_position_bias")

    def finish_decoder(self, model, hidden):
        return model.decoder.final_layer_norm(hidden)

    def narrow_decoder_layer(self, model, reduction, layer_index):
        """A decoder block with every width / r (LST's side decoder): its cross-attention reads a memory of
        the narrow width (the side encoder's output)."""
        from transformers.models.t5.modeling_t5 import T5Block

        config = model.config
        cfg = narrowed(config, reduction, "d_model", "d_ff")
        cfg.d_kv = max(1, config.d_kv // reduction)
        cfg.is_decoder = True
        return T5Block(cfg, has_relative_attention_bias=(layer_index == 0))

    def lm_logits(self, model, hidden):
        """The frozen LM head; T5 v1.0 (tied embeddings) scales the decoder output by d_model ** -0.5 first."""
        config = model.config
        if getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", False)):
            hidden = hidden * (config.d_model ** -0.5)
        return model.lm_head(hidden)

    def ffn_slot(self, layer):
        # T5LayerFF: x + dropout(DenseReluDense(layer_norm(x))); the dense block maps d -> d on its own
        return AttrSlot(layer.layer[-1], "DenseReluDense")


FAMILIES: dict[str, Family] = {
    "bert": BertFamily(),
    "roberta": BertFamily(),
    "xlm-roberta": BertFamily(),
    "electra": BertFamily(),
    "mpnet": MPNetFamily(),
    "t5": T5Family(),
    "mt5": T5Family(),
}
