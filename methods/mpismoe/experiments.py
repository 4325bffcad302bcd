"""Named MP-ISMoE configurations: the ablation rows of the paper's Tables 3 and 4 in the paper's setting,
the same chain on a SHERL base as our extension, plus a few of ours.

Each entry maps a name to ``key=value`` overrides of ``MPISMoEConfig`` (strings, as on the command line)
and a one-line description. ``MPISMoE.variants`` is derived from this dict, so ``variant=<name>`` runs a row
and ``make memory`` measures every row. A row sets every switch its table varies, explicitly, so a change of
a default does not silently change what a row means. Everything not listed keeps the defaults (8-bit GNP-IQ
with group 64, 4 experts, top-2, softmax prior in Eq. 8's form, p = 10 %, M = 1 epoch).

The paper's setting, read from its numbers: Table 4's "mixed precision + noise" row (12.5 M parameters,
18.4 GB, Rsum 534.8) is Table 3's "GNP-IQ on, ISMoE off" row, and Table 4's "full precision" row (12.4 M,
24.4 GB) is Table 3's baseline, UniPT. So both tables are run on a **UniPT** base; Table 3 ablates ISMoE on
the full-precision backbone, Table 4 ablates GNP-IQ **without** ISMoE, and Table 4's first row is Table 3's
first row (one configuration, one set of runs: ``table3-base`` heads both chains).

Table 4's middle rows, as we read them: "unified low precision" quantizes every frozen backbone weight,
LayerNorms included (frozen, n-bit); "mixed precision" keeps the LayerNorms fp32 **and trainable**
(``train_layernorm``), the paper's own definition of its mixed precision. The numbers agree: storing ~40 k
LayerNorm weights in fp32 instead of 8 bits costs kilobytes, yet mixed precision costs 0.6 GB more than
unified (15.4 against 14.8 GB): the activations that backprop into the backbone's LayerNorms keeps (frozen
quantized linears keep no input). "+ noise" then adds learnable noise per output channel on every quantized
backbone linear, trained through the forward pass (``noise_on=backbone``): +0.1 M parameters and +3 GB, the
inputs every such linear keeps; its samples feed the periodic re-quantization (p %, every M).

| name                         | base  | quantize_backbone | quantize_layernorm | train_layernorm | noise (noise_on)  | moe   | prior | switch (vs the row before)              |
| ---------------------------- | ----- | ----------------- | ------------------ | --------------- | ----------------- | ----- | ----- | --------------------------------------- |
| table3-base                  | unipt | false             | false              | false           | false (trained)   | false | false | (= unipt exactly; Table 4's row 1 too)  |
| table3-moe-no-prior          | unipt | false             | false              | false           | false (trained)   | true  | false | moe                                     |
| table3-moe-prior             | unipt | false             | false              | false           | false (trained)   | true  | true  | prior                                   |
| table4-unified-low-precision | unipt | true              | true               | false           | false (trained)   | false | false | quantize_backbone, quantize_layernorm   |
| table4-mixed-precision       | unipt | true              | false              | true            | false (trained)   | false | false | quantize_layernorm, train_layernorm     |
| table4-mixed-noise           | unipt | true              | false              | true            | true (backbone)   | false | false | noise, noise_on                         |

Our extension, ``ext-sherl-*``: the same ablations on a SHERL base, Table 4 with ISMoE and the prior on and
SHERL's late layer trained (``base.train_late_layer=true``: backbone weights that change during training,
the paper's motivation for the noise and the re-quantization), the noise on those trained weights
(``noise_on=trained``) and frozen LayerNorms. It measures quantization in the presence of MoE and a trained
late layer, which is not the paper's ablation:

| name                                  | quantize_backbone | quantize_layernorm | noise | moe  | prior | base.train_late_layer | switch |
| ------------------------------------- | ----- | ----- | ----- | ----- | ----- | ----- | ------------------------------------- |
| ext-sherl-table3-base                 | false | false | false | false | false | false | (= sherl exactly)                     |
| ext-sherl-table3-moe-no-prior         | false | false | false | true  | false | false | moe                                   |
| ext-sherl-table3-moe-prior            | false | false | false | true  | true  | false | prior                                 |
| ext-sherl-table4-full-precision       | false | false | false | true  | true  | true  | base.train_late_layer                 |
| ext-sherl-table4-unified-low-precision| true  | true  | false | true  | true  | true  | quantize_backbone, quantize_layernorm |
| ext-sherl-table4-mixed-precision      | true  | false | false | true  | true  | true  | quantize_layernorm                    |
| ext-sherl-table4-mixed-noise          | true  | false | true  | true  | true  | true  | noise                                 |

The default ``mpismoe`` is ext-sherl-table3-moe-prior with the 8-bit GNP-IQ backbone (faithful SHERL base,
no backbone weight trains, so ``noise`` has nothing to act on and the backbone runs without autograd, as
the paper's GLUE memory requires). Ours, not paper rows: ``mpismoe-4bit``, ``mpismoe-no-requant``
(ext-sherl-table4-mixed-noise without the periodic re-quantization), ``mpismoe-base-lst``,
``mpismoe-base-unipt`` (the paper's Ours-dagger), ``mpismoe-prior-logit`` (the router's prior in logit
space instead of Eq. 8). A 16-bit side network is not a variant: it is a ``precision=bf16-mixed`` run,
which every method gets alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Experiment:
    overrides: dict[str, str] = field(default_factory=dict)
    about: str = ""
    switch: tuple[str, ...] = ()  # the keys this row changes from the row before it in its table chain


# every switch a table row sets, explicitly, so that a change of a default cannot change what a row means
_SWITCHES = {"quantize_backbone": "false", "quantize_layernorm": "false", "train_layernorm": "false",
             "noise": "false", "noise_on": "trained", "moe": "false", "prior": "false"}
_PAPER = {**_SWITCHES, "base": "unipt"}
_EXT = {**_SWITCHES, "base": "sherl", "base.train_late_layer": "false"}


def _row(off: dict[str, str], about: str, switch: tuple[str, ...] = (), **on: str) -> Experiment:
    return Experiment({**off, **{k.replace("__", "."): v for k, v in on.items()}}, about, switch)


def _paper(about: str, switch: tuple[str, ...] = (), **on: str) -> Experiment:
    return _row(_PAPER, about, switch, **on)


def _ext(about: str, switch: tuple[str, ...] = (), **on: str) -> Experiment:
    return _row(_EXT, about, switch, **on)


_MIXED = dict(quantize_backbone="true", train_layernorm="true")
_LATE = dict(moe="true", prior="true", base__train_late_layer="true")

EXPERIMENTS: dict[str, Experiment] = {
    # Table 3 (paper setting): ISMoE ablation on the full-precision backbone, UniPT base
    "table3-base": _paper("Table 3 row 1: UniPT exactly, fp32 backbone, plain side FFNs (the paper's "
                          "baseline; Table 4 row 1, full precision, is the same configuration)"),
    "table3-moe-no-prior": _paper("Table 3 row 2: side FFNs become top-k experts, router without the "
                                  "interaction prior", ("moe",), moe="true"),
    "table3-moe-prior": _paper("Table 3 row 3: ISMoE, routing refined by the backbone's salient token "
                               "(Eq. 8)", ("prior",), moe="true", prior="true"),
    # Table 4 (paper setting): GNP-IQ ablation without ISMoE, UniPT base; row 1 is table3-base
    "table4-unified-low-precision": _paper("Table 4 row 2: every frozen backbone weight n-bit, LayerNorms "
                                           "included; no noise, no ISMoE",
                                           ("quantize_backbone", "quantize_layernorm"),
                                           quantize_backbone="true", quantize_layernorm="true"),
    "table4-mixed-precision": _paper("Table 4 row 3: n-bit backbone, LayerNorms fp32 and trainable; no "
                                     "noise, no ISMoE", ("quantize_layernorm", "train_layernorm"), **_MIXED),
    "table4-mixed-noise": _paper("Table 4 row 4: mixed precision + learnable noise per output channel of "
                                 "every quantized backbone linear, trained through the forward pass, feeding "
                                 "the re-quantization", ("noise", "noise_on"), **_MIXED, noise="true",
                                 noise_on="backbone"),
    # our extension: the same chain on a SHERL base, Table 4 with ISMoE on and SHERL's late layer trained
    "ext-sherl-table3-base": _ext("ours, Table 3 on SHERL, row 1: SHERL exactly, fp32 backbone, plain side FFNs"),
    "ext-sherl-table3-moe-no-prior": _ext("ours, Table 3 on SHERL, row 2: top-k experts, router without the "
                                          "prior", ("moe",), moe="true"),
    "ext-sherl-table3-moe-prior": _ext("ours, Table 3 on SHERL, row 3: ISMoE with the prior", ("prior",),
                                       moe="true", prior="true"),
    "ext-sherl-table4-full-precision": _ext("ours, Table 4 on SHERL with ISMoE, row 1: fp32 backbone; SHERL's "
                                            "late layer trains", ("base.train_late_layer",), **_LATE),
    "ext-sherl-table4-unified-low-precision": _ext("ours, Table 4 on SHERL with ISMoE, row 2: every frozen "
                                                   "backbone weight n-bit, LayerNorms included; no noise",
                                                   ("quantize_backbone", "quantize_layernorm"), **_LATE,
                                                   quantize_backbone="true", quantize_layernorm="true"),
    "ext-sherl-table4-mixed-precision": _ext("ours, Table 4 on SHERL with ISMoE, row 3: n-bit backbone, fp32 "
                                             "frozen LayerNorms; re-quantization without noise",
                                             ("quantize_layernorm",), **_LATE, quantize_backbone="true"),
    "ext-sherl-table4-mixed-noise": _ext("ours, Table 4 on SHERL with ISMoE, row 4: + learnable noise on the "
                                         "trained late layer before re-quantization", ("noise",), **_LATE,
                                         quantize_backbone="true", noise="true"),
    # ours
    "mpismoe-4bit": Experiment({"quantize_backbone": "true", "bits": "4"},
                               "the default method with a 4-bit backbone (the paper uses 8)"),
    "mpismoe-no-requant": Experiment(
        {"quantize_backbone": "true", "noise": "true", "requantize": "false",
         "base.train_late_layer": "true"},
        "ext-sherl-table4-mixed-noise without the periodic re-quantization of the trained backbone weights"),
    "mpismoe-base-lst": Experiment({"base": "lst"}, "the default method on LST's ladder side network"),
    "mpismoe-base-unipt": Experiment({"base": "unipt"}, "the default method on UniPT (the paper's Ours-dagger)"),
    "mpismoe-prior-logit": Experiment({"prior_form": "logit"},
                                      "the default method with the router's prior in logit space (g + log c) "
                                      "instead of Eq. 8's (softmax(g) + c) / 2"),
    "no-backbone-dropout": Experiment({"backbone_dropout": "false"},
                                      "the default method with the frozen backbone in eval mode (no dropout)"),
}

# Each table's rows in order; each row differs from the one before it by exactly its ``switch`` (a test
# checks the resolved configs). Table 4's first row is Table 3's, as in the paper.
TABLE_CHAINS = (("table3-base", "table3-moe-no-prior", "table3-moe-prior"),
                ("table3-base", "table4-unified-low-precision", "table4-mixed-precision", "table4-mixed-noise"),
                ("ext-sherl-table3-base", "ext-sherl-table3-moe-no-prior", "ext-sherl-table3-moe-prior"),
                ("ext-sherl-table3-moe-prior", "ext-sherl-table4-full-precision",
                 "ext-sherl-table4-unified-low-precision", "ext-sherl-table4-mixed-precision",
                 "ext-sherl-table4-mixed-noise"))
# The rows ``make paper`` runs on top of the default ``mpismoe`` (3 seeds each): every row of every chain,
# once (each resolves to a configuration of its own, so no row's runs stand in for another's).
PAPER_ROWS = tuple(dict.fromkeys(r for chain in TABLE_CHAINS for r in chain))
# Table 4's first row, shown under its paper name: the row and its runs are Table 3's first
TABLE4_FIRST_ABOUT = ("Table 4 row 1: full precision, fp32 backbone, no ISMoE: UniPT, the configuration "
                      "and runs of Table 3 row 1")


def experiment_overrides(name: str) -> dict[str, str]:
    """The overrides of a named experiment (a copy); unknown names list the known ones."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown MP-ISMoE experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return dict(EXPERIMENTS[name].overrides)
