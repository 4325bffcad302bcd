"""Named MP-ISMoE configurations: the ablation rows of the paper's Tables 3 and 4, plus a few of ours.

Each entry maps a name to ``key=value`` overrides of ``MPISMoEConfig`` (strings, as on the command line)
and a one-line description. ``MPISMoE.variants`` is derived from this dict, so ``variant=<name>`` runs a row
and ``make memory`` measures every row. A row sets every switch its table varies, explicitly, so a change of a default
does not silently change what a row means. Everything not listed keeps the defaults (base SHERL,
8-bit GNP-IQ with group 64, 4 experts, top-2, softmax prior, p = 10 %, M = 1 epoch).

Table 3 of the paper ablates ISMoE on the full-precision backbone ("memory +8 GB on the
full-precision backbone"); Table 4 ablates GNP-IQ. The paper does not say whether the Table 4 rows
keep the ISMoE; we keep it on (with the prior), so Table 4 varies the quantizer only. Table 4 also needs
backbone weights that change during training (the paper's motivation for the noise and the periodic
re-quantization: "weights updated by the base method, e.g. SHERL's late layer"); SHERL as published
trains none, so every Table 4 row trains SHERL's late layer (``base.train_late_layer=true``). The rows
form a chain: each differs from the row before it by exactly its ``switch`` keys (a test checks the
resolved configs), so a row's difference to the previous row measures that switch and nothing else.

| name                          | quantize_backbone | quantize_layernorm | noise | moe   | prior | base.train_late_layer | switch (vs the row before) |
| ----------------------------- | ----------------- | ------------------ | ----- | ----- | ----- | --------------------- | -------------------------- |
| table3-base                   | false             | false              | false | false | false | false                 | (= sherl exactly)          |
| table3-moe-no-prior           | false             | false              | false | true  | false | false                 | moe                        |
| table3-moe-prior              | false             | false              | false | true  | true  | false                 | prior                      |
| table4-full-precision         | false             | false              | false | true  | true  | true                  | base.train_late_layer      |
| table4-unified-low-precision  | true              | true               | false | true  | true  | true                  | quantize_backbone, quantize_layernorm |
| table4-mixed-precision        | true              | false              | false | true  | true  | true                  | quantize_layernorm         |
| table4-mixed-noise            | true              | false              | true  | true  | true  | true                  | noise                      |

The default ``mpismoe`` is table3-moe-prior with the 8-bit GNP-IQ backbone (faithful SHERL base, so no
backbone weight trains and ``noise`` has nothing to act on). Ours, not paper rows: ``mpismoe-4bit``,
``mpismoe-no-requant`` (Table 4's last row without the periodic re-quantization), ``mpismoe-base-lst``,
``mpismoe-base-unipt`` (the paper's Ours-dagger). A 16-bit side network is not a variant: it is a
``precision=bf16-mixed`` run, which every method gets alike.

Paper's reading of the Table 4 rows: "unified low precision" quantizes every frozen backbone weight,
LayerNorms included, to n bits; "mixed precision" keeps the LayerNorms in fp32; "+ noise" adds the
learnable Gaussian perturbation before each periodic re-quantization of the weights the base trains.
The re-quantization itself (p %, every M) stays on in the quantized rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Experiment:
    overrides: dict[str, str] = field(default_factory=dict)
    about: str = ""
    switch: tuple[str, ...] = ()  # the keys this row changes from the row before it in its table chain


# every switch a paper row sets, explicitly, so that a change of a default cannot change what a row means
_OFF = {"quantize_backbone": "false", "quantize_layernorm": "false", "noise": "false", "moe": "false",
        "prior": "false", "base.train_late_layer": "false"}


def _row(about: str, switch: tuple[str, ...] = (), **on: str) -> Experiment:
    return Experiment({**_OFF, **{k.replace("__", "."): v for k, v in on.items()}}, about, switch)


EXPERIMENTS: dict[str, Experiment] = {
    # Table 3: ISMoE ablation, full-precision backbone, SHERL as published
    "table3-base": _row("Table 3 row 1: the base side network's plain FFNs on the full-precision backbone "
                        "(SHERL exactly)"),
    "table3-moe-no-prior": _row("Table 3 row 2: side FFNs become top-k experts, router without the "
                                "interaction prior", ("moe",), moe="true"),
    "table3-moe-prior": _row("Table 3 row 3: ISMoE, routing refined by the backbone's salient token "
                             "(the full ISMoE)", ("prior",), moe="true", prior="true"),
    # Table 4: GNP-IQ ablation (ISMoE on; SHERL's late layer trains, so backbone weights change)
    "table4-full-precision": _row("Table 4 row 1: fp32 backbone, no quantization; SHERL's late layer "
                                  "trains", ("base.train_late_layer",), moe="true", prior="true",
                                  base__train_late_layer="true"),
    "table4-unified-low-precision": _row("Table 4 row 2: every frozen backbone weight n-bit, LayerNorms "
                                         "included; no noise", ("quantize_backbone", "quantize_layernorm"),
                                         moe="true", prior="true", base__train_late_layer="true",
                                         quantize_backbone="true", quantize_layernorm="true"),
    "table4-mixed-precision": _row("Table 4 row 3: n-bit backbone, fp32 LayerNorms; re-quantization "
                                   "without noise", ("quantize_layernorm",), moe="true", prior="true",
                                   base__train_late_layer="true", quantize_backbone="true"),
    "table4-mixed-noise": _row("Table 4 row 4: mixed precision + learnable Gaussian noise before "
                               "re-quantization", ("noise",), moe="true", prior="true",
                               base__train_late_layer="true", quantize_backbone="true", noise="true"),
    # ours
    "mpismoe-4bit": Experiment({"quantize_backbone": "true", "bits": "4"},
                               "the default method with a 4-bit backbone (the paper uses 8)"),
    "mpismoe-no-requant": Experiment(
        {"quantize_backbone": "true", "noise": "true", "requantize": "false",
         "base.train_late_layer": "true"},
        "Table 4 row 4 without the periodic re-quantization of the trained backbone weights"),
    "mpismoe-base-lst": Experiment({"base": "lst"}, "the default method on LST's ladder side network"),
    "mpismoe-base-unipt": Experiment({"base": "unipt"}, "the default method on UniPT (the paper's Ours-dagger)"),
}

# The rows ``make paper`` runs on top of the default ``mpismoe`` (3 seeds each): every ablation row (each
# resolves to a configuration of its own, so no row's runs stand in for another's).
TABLE_CHAINS = (("table3-base", "table3-moe-no-prior", "table3-moe-prior"),
                ("table3-moe-prior", "table4-full-precision", "table4-unified-low-precision",
                 "table4-mixed-precision", "table4-mixed-noise"))
PAPER_ROWS = ("table3-base", "table3-moe-no-prior", "table3-moe-prior", "table4-full-precision",
              "table4-unified-low-precision", "table4-mixed-precision", "table4-mixed-noise")


def experiment_overrides(name: str) -> dict[str, str]:
    """The overrides of a named experiment (a copy); unknown names list the known ones."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown MP-ISMoE experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return dict(EXPERIMENTS[name].overrides)
