"""The vision-language backbone: cached features of a frozen image encoder, projected to the text
backbone's width and appended to the text embeddings, then run through the frozen text backbone
(the VL-T5 / CLIP-T5 arrangement that LST, UniPT, SHERL and MP-ISMoE use for VQA, GQA and NLVR2).

It *is* a ``Backbone`` over the same text model (layers, family, tokenizer, quantizable linears), so
every method taps it exactly as it taps a text backbone; only ``embed`` differs. The visual input
adapter (Linear + LayerNorm, plus learned embeddings of the visual token's position and of which image
it belongs to, for NLVR2's two images) is new, so it trains under every method, as VL-T5 and LST
train their visual projection. Side methods reach it through the side network's input (the embedding
output is the one backbone state they keep in the autograd graph, ``methods.side``); no method
backpropagates through a frozen backbone layer for it.

The image encoder itself never runs in the training loop: its features come from the on-disk cache
(``benchmark.vision``), so neither its weights nor its activations are part of training memory, as
with LST's pre-extracted CLIP features.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.backbones.base import Backbone


class VisualAdapter(nn.Module):
    """[B, images, tokens, feature_dim] -> [B, images * tokens, hidden]."""

    def __init__(self, feature_dim: int, hidden: int, tokens: int, images: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.position = nn.Embedding(tokens, hidden)
        self.image = nn.Embedding(images, hidden)
        for emb in (self.position, self.image):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, t, _ = feats.shape
        x = self.norm(self.proj(feats.to(self.proj.weight.dtype)))
        x = x + self.position.weight[:t] + self.image.weight[:n, None, :]
        return x.reshape(b, n * t, -1)


class VisionLanguageBackbone(Backbone):
    def __init__(self, text: Backbone, *, encoder_name: str, feature_dim: int, tokens: int, images: int = 1):
        super().__init__(f"{text.name}+{encoder_name}", text.model, text.tokenizer, text.family, pooling=text.pooling)
        self.text_name, self.encoder_name = text.name, encoder_name
        self.visual = VisualAdapter(feature_dim, text.hidden_size, tokens, images)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        text = super().embed(batch)
        visual = self.visual(batch["visual_feats"]).to(text.dtype)
        return torch.cat([text, visual], dim=1)  # the batch's attention mask already covers both

    @staticmethod
    def over(text: Backbone) -> type:
        """The class that wraps ``text``: this one, or its seq2seq form (visual tokens in the encoder input,
        the decoder cross-attending to both, as VL-T5 / CLIP-T5)."""
        if not text.seq2seq:
            return VisionLanguageBackbone
        from benchmark.backbones.seq2seq import Seq2SeqBackbone

        return type("VisionLanguageSeq2SeqBackbone", (VisionLanguageBackbone, Seq2SeqBackbone), {})

    def freeze(self) -> "VisionLanguageBackbone":
        super().freeze()
        for p in self.visual.parameters():
            p.requires_grad_(True)
        return self
