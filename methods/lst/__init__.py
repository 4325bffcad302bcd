"""LST: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("lst", "methods.lst.method:LST", role="baseline", order=4, display="LST",
                    about="LST: ladder side network of narrow backbone layers, Fisher-pruned init (NeurIPS 2022)")]
