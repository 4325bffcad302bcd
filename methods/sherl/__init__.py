"""SHERL: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("sherl", "methods.sherl.method:SHERL", role="baseline", order=6, display="SHERL",
                    about="SHERL: anti-redundancy early route + the backbone's last layer as late route (ECCV 2024)")]
