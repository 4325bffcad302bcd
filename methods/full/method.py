"""Full fine-tuning: the reference row; every backbone weight trains."""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method, MethodConfig


@dataclass
class FullConfig(MethodConfig):
    lr_range = (1e-5, 3e-4)  # make tune's search, around 5e-5; above 3e-4 BERT-family encoders diverge
    lr: float = 5e-5  # LST trains T5 at 3e-4; BERT-family encoders diverge there, 5e-5 is their standard


class FullFineTuning(Method):
    runs_on_seq2seq = True  # the whole model runs, encoder and decoder (the seq2seq backbone's forward)
    config_class = FullConfig
    paper_alternatives = ("checkpointing",)  # the memory tool a user of this method would switch on

    def __init__(self, backbone, config: FullConfig):
        super().__init__(backbone, config)
        for p in backbone.model.parameters():
            p.requires_grad_(True)

    def forward(self, batch):
        return self.backbone.readout(self.backbone(batch), batch)
