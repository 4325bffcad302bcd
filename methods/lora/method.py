"""LoRA through peft (not re-implemented): low-rank updates on the backbone's attention projections."""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method, MethodConfig


@dataclass
class LoraMethodConfig(MethodConfig):
    lr_range = (3e-5, 3e-3)  # make tune's search, around LST's 3e-4
    lr: float = 3e-4  # LST's LoRA setting
    r: int = 32  # LST's rank on T5 attention
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = ""  # comma-separated module names; "" = the backbone family's query/value

    def __post_init__(self):
        super().__post_init__()
        self.check(self.r >= 1, "r", "must be >= 1")
        self.check(self.alpha > 0, "alpha", "must be > 0")
        self.check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")


class LoRA(Method):
    runs_on_seq2seq = True  # the whole model runs, encoder and decoder (the seq2seq backbone's forward)
    config_class = LoraMethodConfig
    paper_alternatives = ("checkpointing",)  # the memory tool a user of this method would switch on

    def __init__(self, backbone, config: LoraMethodConfig):
        super().__init__(backbone, config)
        import benchmark.bnb_preload  # noqa: F401  (before peft, which imports bitsandbytes: benchmark/bnb.py)
        from peft import LoraConfig, inject_adapter_in_model

        targets = [t for t in config.target_modules.split(",") if t] or backbone.lora_targets
        self.peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                      target_modules=targets, bias="none")
        # In place, so the backbone interface (layers, embeddings) keeps working on the same model.
        inject_adapter_in_model(self.peft_config, backbone.model)
        for name, p in backbone.model.named_parameters():
            p.requires_grad_("lora_" in name)

    def forward(self, batch):
        return self.backbone.readout(self.backbone(batch), batch)
