"""BitFit (Ben Zaken et al., ACL 2022): only the backbone's bias terms train (plus the task head).

Every parameter of the backbone model named ``*.bias`` trains: the biases of the attention and FFN
projections and of the LayerNorms, as in the paper. lr 3e-4 is LST's BitFit setting (docs/methods.md).

T5 has no bias terms at all, so BitFit would train nothing in the backbone. What happens then is
explicit, set by ``if_no_biases``:

- ``layernorm`` (default): train the LayerNorm scales instead, the usual T5 BitFit variant, with a
  one-line warning saying so (the result's config records the choice);
- ``error``: refuse with a one-line UserError.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from benchmark.errors import UserError
from methods.base import NO_BACKBONE_DROPOUT, Method, MethodConfig

NO_BIAS_CHOICES = ("layernorm", "error")


@dataclass
class BitFitConfig(MethodConfig):
    lr_range = (3e-5, 3e-3)  # make tune's search, around LST's 3e-4
    lr: float = 3e-4  # LST's BitFit setting (docs/methods.md)
    if_no_biases: str = "layernorm"  # layernorm | error: what to train on a backbone without biases (T5)

    def __post_init__(self):
        super().__post_init__()
        self.check(self.if_no_biases in NO_BIAS_CHOICES, "if_no_biases", "must be layernorm or error")


class BitFit(Method):
    # 2: the backbone's dropout follows train/eval (``backbone_dropout``), as the reference code trains
    version = 2
    variants = dict(NO_BACKBONE_DROPOUT)
    runs_on_seq2seq = True  # the whole model runs, encoder and decoder (the seq2seq backbone's forward)
    config_class = BitFitConfig

    def __init__(self, backbone, config: BitFitConfig):
        super().__init__(backbone, config)
        biases = [p for n, p in backbone.model.named_parameters() if n.endswith(".bias")]
        if not biases:
            if config.if_no_biases == "error":
                raise UserError(f"bitfit: backbone {backbone.name!r} has no bias terms (T5 uses none); "
                                f"pass if_no_biases=layernorm to train its LayerNorm scales instead")
            biases = [p for ln in backbone.layer_norms().values() for p in ln.parameters()]
            warnings.warn(f"bitfit: backbone {backbone.name!r} has no bias terms; training its "
                          f"{len(biases)} LayerNorm scales instead (if_no_biases=layernorm)", stacklevel=2)
        backbone.freeze()
        for p in biases:
            p.requires_grad_(True)

    def forward(self, batch):
        return self.backbone.readout(self.backbone(batch), batch)
