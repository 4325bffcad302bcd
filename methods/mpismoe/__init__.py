"""MP-ISMoE: GNP-IQ quantizer (quant.py, qlinear.py, noisy.py), ISMoE (ismoe.py), the method (method.py).

This file is the card, read without importing torch: the default method, "ours", the quantizer the figures
highlight, and the paper's Tables 3 and 4, whose rows are the named experiments (``experiments.py``)."""
from methods import MethodCard, PaperTable
from methods.mpismoe.experiments import EXPERIMENTS


def _table(label: str, title: str, prefix: str) -> PaperTable:
    rows = tuple((name, e.about) for name, e in EXPERIMENTS.items() if name.startswith(prefix))
    return PaperTable(label, title, prefix, rows)


CARDS = [MethodCard(
    "mpismoe", "methods.mpismoe.method:MPISMoE", role="ours", order=7, display="MP-ISMoE", default=True,
    about="MP-ISMoE: GNP-IQ quantized backbone + interactive side MoE (base: lst | unipt | sherl)",
    tools=(("quant-report", "methods.mpismoe.quant_report:cli",
            "GNP-IQ against round-to-nearest on a real backbone -> results/quantization.csv"),),
    quantizer="gnpiq", quantizer_display="GNP-IQ", tables_heading="MP-ISMoE ablations (paper Tables 3 and 4)",
    tables=(_table("Table 3", "ISMoE ablation, full-precision backbone", "table3-"),
            _table("Table 4", "GNP-IQ ablation (ISMoE on)", "table4-")))]
