"""Named MP-ISMoE configurations: the ablation rows of the paper's Tables 3 and 4, plus a few of ours.

Each entry maps a name to ``key=value`` overrides of ``MPISMoEConfig`` (strings, as on the command line)
and a one-line description. ``MPISMoE.variants`` is derived from this dict, so ``variant=<name>`` runs a row
and ``make memory`` measures every row. A row sets every switch its table varies, explicitly, so a change of a default
does not silently change what a row means. Everything not listed keeps the defaults (base SHERL,
8-bit GNP-IQ with group 64, 4 experts, top-2, softmax prior, p = 10 %, M = 1 epoch).

Table 3 of the paper ablates ISMoE on the full-precision backbone ("memory +8 GB on the
full-precision backbone"); Table 4 ablates GNP-IQ. The paper does not say whether the Table 4 rows
keep the ISMoE; we keep it on (with the prior), so Table 4 varies the quantizer only.

| name                          | quantize_backbone | quantize_layernorm | noise | moe   | prior | other          |
| ----------------------------- | ----------------- | ------------------ | ----- | ----- | ----- | -------------- |
| table3-base                   | false             | -                  | -     | false | -     |                |
| table3-moe-no-prior           | false             | -                  | -     | true  | false |                |
| table3-moe-prior              | false             | -                  | -     | true  | true  |                |
| table4-full-precision         | false             | -                  | -     | true  | true  |                |
| table4-unified-low-precision  | true              | true               | false | true  | true  |                |
| table4-mixed-precision        | true              | false              | false | true  | true  |                |
| table4-mixed-noise            | true              | false              | true  | true  | true  | (= defaults)   |
| mpismoe-4bit                  | true              | false              | true  | true  | true  | bits=4         |
| mpismoe-no-requant            | true              | false              | true  | true  | true  | requantize=false |
| mpismoe-base-lst              |                   |                    |       |       |       | base=lst       |
| mpismoe-base-unipt            |                   |                    |       |       |       | base=unipt     |
| mpismoe-bf16                  |                   |                    |       |       |       | side_precision=bf16 |

("-": has no effect in that row, e.g. noise without a quantized backbone.) Paper's reading of the
Table 4 rows: "unified low precision" quantizes every frozen backbone weight, LayerNorms included,
to n bits (the side network still trains in 16 bits, as in every row); "mixed precision" keeps the
LayerNorms in fp32; "+ noise" adds the learnable Gaussian perturbation before each periodic
re-quantization of the weights the base trains. The re-quantization itself (p %, every M) stays on in
the mixed rows; ``mpismoe-no-requant`` switches it off (our addition, not a paper row).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Experiment:
    overrides: dict[str, str] = field(default_factory=dict)
    about: str = ""


EXPERIMENTS: dict[str, Experiment] = {
    # Table 3: ISMoE ablation, full-precision backbone
    "table3-base": Experiment(
        {"quantize_backbone": "false", "moe": "false"},
        "Table 3 row 1: the base side network's plain FFNs on the full-precision backbone"),
    "table3-moe-no-prior": Experiment(
        {"quantize_backbone": "false", "moe": "true", "prior": "false"},
        "Table 3 row 2: side FFNs become top-k experts, router without the interaction prior"),
    "table3-moe-prior": Experiment(
        {"quantize_backbone": "false", "moe": "true", "prior": "true"},
        "Table 3 row 3: ISMoE, routing refined by the backbone's salient token (the full ISMoE)"),
    # Table 4: GNP-IQ ablation (ISMoE on)
    "table4-full-precision": Experiment(
        {"quantize_backbone": "false", "moe": "true", "prior": "true"},
        "Table 4 row 1: fp32 backbone, no quantization"),
    "table4-unified-low-precision": Experiment(
        {"quantize_backbone": "true", "quantize_layernorm": "true", "noise": "false", "moe": "true", "prior": "true"},
        "Table 4 row 2: every frozen backbone weight n-bit, LayerNorms included; no noise"),
    "table4-mixed-precision": Experiment(
        {"quantize_backbone": "true", "quantize_layernorm": "false", "noise": "false", "moe": "true", "prior": "true"},
        "Table 4 row 3: n-bit backbone, fp32 LayerNorms, 16-bit side; re-quantization without noise"),
    "table4-mixed-noise": Experiment(
        {"quantize_backbone": "true", "quantize_layernorm": "false", "noise": "true", "moe": "true", "prior": "true"},
        "Table 4 row 4: mixed precision + learnable Gaussian noise before re-quantization (the full method)"),
    # ours
    "mpismoe-4bit": Experiment(
        {"quantize_backbone": "true", "bits": "4"},
        "the full method with a 4-bit backbone (the paper uses 8)"),
    "mpismoe-no-requant": Experiment(
        {"quantize_backbone": "true", "requantize": "false"},
        "GNP-IQ without the periodic re-quantization of the trained backbone weights"),
    "mpismoe-base-lst": Experiment({"base": "lst"}, "the full method on LST's ladder side network"),
    "mpismoe-base-unipt": Experiment({"base": "unipt"}, "the full method on UniPT (the paper's Ours-dagger)"),
    "mpismoe-bf16": Experiment({"side_precision": "bf16"}, "side network forced to bf16 autocast on any device"),
}

# The rows ``make paper`` runs on top of the default ``mpismoe`` (3 seeds each): the ablation rows with a
# configuration of their own. table4-full-precision is table3-moe-prior's configuration and
# table4-mixed-noise the defaults' (tests/test_mpismoe.py checks both), so their runs are reused, not repeated.
PAPER_ROWS = ("table3-base", "table3-moe-no-prior", "table3-moe-prior", "table4-unified-low-precision",
              "table4-mixed-precision")


def experiment_overrides(name: str) -> dict[str, str]:
    """The overrides of a named experiment (a copy); unknown names list the known ones."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown MP-ISMoE experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return dict(EXPERIMENTS[name].overrides)
