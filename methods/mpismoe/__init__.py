"""MP-ISMoE: GNP-IQ quantizer (quant.py, qlinear.py, noisy.py), ISMoE (ismoe.py), the method (method.py).

This file is the card, read without importing torch: the default method, "ours", the quantizer the figures
highlight, and the paper's Tables 3 and 4 (the paper's setting, UniPT base) with our extension of them on a
SHERL base (``ext-sherl-*``), whose rows are the named experiments (``experiments.py``)."""
from methods import MethodCard, PaperTable
from methods.mpismoe.experiments import EXPERIMENTS, TABLE4_FIRST_ABOUT, TABLE_CHAINS


def _table(label: str, title: str, prefix: str, chain: tuple[str, ...], first_about: str = "") -> PaperTable:
    """A table's rows are its chain; ``first_about`` describes a first row borrowed from another table."""
    rows = tuple((name, first_about if i == 0 and first_about else EXPERIMENTS[name].about)
                 for i, name in enumerate(chain))
    return PaperTable(label, title, prefix, rows)


_T3, _T4, _EXT3, _EXT4 = TABLE_CHAINS
CARDS = [MethodCard(
    "mpismoe", "methods.mpismoe.method:MPISMoE", role="ours", order=7, display="MP-ISMoE", default=True,
    about="MP-ISMoE: GNP-IQ quantized backbone + interactive side MoE (base: lst | unipt | sherl)",
    tools=(("quant-report", "methods.mpismoe.quant_report:cli",
            "GNP-IQ against round-to-nearest on a real backbone -> results/quantization.csv"),),
    quantizer="gnpiq", quantizer_display="GNP-IQ", tables_heading="MP-ISMoE ablations (paper Tables 3 and 4)",
    tables=(_table("Table 3", "ISMoE ablation, full-precision backbone, UniPT base", "table3-", _T3),
            _table("Table 4", "GNP-IQ ablation without ISMoE, UniPT base", "table4-", _T4, TABLE4_FIRST_ABOUT),
            _table("Table 3, ours", "ISMoE ablation on a SHERL base (our extension)", "ext-sherl-table3-", _EXT3),
            _table("Table 4, ours", "GNP-IQ ablation with ISMoE on and SHERL's late layer trained (our extension)",
                   "ext-sherl-table4-", _EXT4[1:])))]
