"""MP-ISMoE's config: GNP-IQ's and ISMoE's switches and the base method it builds on (docs/methods.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

from methods.base import METHODS, ConfigError, MethodConfig
from methods.mpismoe.ismoe import NORMS, PRIOR_FORMS
from methods.mpismoe.quant import SUPPORTED_BITS

BASES = ("lst", "unipt", "sherl")
NOISE_TARGETS = ("trained", "backbone")


@dataclass
class MPISMoEConfig(MethodConfig):
    lr_range = (3e-4, 3e-2)  # make tune's search, around its base methods' 3e-3
    lr: float = 3e-3  # the base methods' (LST/SHERL) GLUE learning rate; the paper gives none
    base: str = "sherl"
    # the base's own config keys, set as ``base.<key>=<value>`` (e.g. base.reduction=16); the rest keep
    # the base method's defaults
    base_overrides: dict = field(default_factory=dict)
    # GNP-IQ
    quantize_backbone: bool = True  # False: the full-precision-backbone ablation
    bits: int = 8  # the paper's n
    group_size: int = 64
    quantize_layernorm: bool = False  # True: the "unified low precision" ablation
    quantize_embeddings: bool = True  # False: embedding tables stay fp32 (not a paper row; for measuring)
    noise: bool = True  # learnable Gaussian perturbation (where: ``noise_on``)
    # trained: the backbone weights the base trains (fp32 masters, one mu and sigma per layer), none on a
    # faithful base, so the backbone runs without autograd (the paper's GLUE memory); backbone: also every
    # frozen quantized linear of the backbone's layers, mu and sigma per output channel, trained through the
    # forward pass, so the backbone runs with autograd (the paper's Table 4: +0.1 M parameters, +3 GB)
    noise_on: str = "trained"
    # the backbone's LayerNorms (those MP-ISMoE's own forward runs: not a seq2seq decoder's) fp32 and trainable,
    # the paper's mixed precision; off by default: training them needs autograd through the frozen backbone
    train_layernorm: bool = False
    requantize: bool = True  # False: never refit the trained weights' (s, z) (not a paper row)
    requant_fraction: float = 0.10  # p
    requant_every_steps: int = 0  # M in steps; 0 = once per epoch (the paper's M = 1 epoch)
    # ISMoE
    moe: bool = True  # False: the plain-FFN ablation
    num_experts: int = 4
    top_k: int = 2
    prior: bool = True  # False: MoE without the correlation prior
    prior_norm: str = "softmax"
    prior_form: str = "eq8"  # eq8: (softmax(g) + c) / 2 as the paper writes it; logit: g + log c (ismoe.py)
    expert_perturb: float = 0.01
    balance_coef: float = 0.0  # Switch-style load balance, off as in the paper

    def __post_init__(self):
        super().__post_init__()
        self.check(self.base in BASES, "base", f"must be one of {', '.join(BASES)}")
        self.check(self.bits in SUPPORTED_BITS, "bits", f"must be one of {SUPPORTED_BITS}")
        self.check(self.group_size >= 1 or self.group_size in (0, -1), "group_size", "must be >= 1, or 0 per channel")
        self.check(0 < self.requant_fraction <= 1, "requant_fraction", "must be in (0, 1]")
        self.check(self.requant_every_steps >= 0, "requant_every_steps", "must be >= 0 (0 = every epoch)")
        self.check(self.num_experts >= 1, "num_experts", "must be >= 1")
        self.check(1 <= self.top_k <= self.num_experts, "top_k", "must be in [1, num_experts]")
        self.check(self.prior_norm in NORMS, "prior_norm", f"must be one of {', '.join(NORMS)}")
        self.check(self.prior_form in PRIOR_FORMS, "prior_form", f"must be one of {', '.join(PRIOR_FORMS)}")
        self.check(self.noise_on in NOISE_TARGETS, "noise_on", f"must be one of {', '.join(NOISE_TARGETS)}")
        self.check(not (self.noise and self.noise_on == "backbone") or self.quantize_backbone, "noise_on",
                   "perturbs the quantized backbone linears: needs quantize_backbone=true (or noise=false)")
        self.check(not (self.train_layernorm and self.quantize_layernorm), "train_layernorm",
                   "a quantized LayerNorm is frozen: needs quantize_layernorm=false")
        self.check(self.expert_perturb >= 0, "expert_perturb", "must be >= 0")
        self.check(self.balance_coef >= 0, "balance_coef", "must be >= 0")
        from benchmark.config import current_names

        self.base_overrides = current_names(METHODS.get(self.base).config_class, self.base_overrides)  # base.r=
        self.base_config()  # a bad base.<key> fails here, as one line

    def base_config(self) -> MethodConfig:
        """The base method's config: its defaults plus ``base_overrides`` (validated like any config)."""
        from benchmark.config import build

        cls = METHODS.get(self.base).config_class
        valid = cls.field_names()
        for k in self.base_overrides:
            if k not in valid:
                raise ConfigError(f"unknown config key 'base.{k}' for base {self.base!r}; valid keys: "
                                  + ", ".join(f"base.{v}" for v in valid))
        return build(cls, {k: str(v) for k, v in self.base_overrides.items()}, f"base {self.base}")
