"""BitFit: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("bitfit", "methods.bitfit.method:BitFit", role="baseline", order=2, display="BitFit",
                    about="BitFit: only the backbone's bias terms (LayerNorm scales on bias-free T5)")]
