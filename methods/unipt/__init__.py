"""UniPT: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("unipt", "methods.unipt.method:UniPT", role="baseline", order=5, display="UniPT",
                    about="UniPT: parallel per-layer interaction + confidence aggregation (CVPR 2024)")]
