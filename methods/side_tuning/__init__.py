"""Side-Tuning: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("side_tuning", "methods.side_tuning.method:SideTuning", role="baseline", order=3,
                    display="Side-Tuning",
                    about="Side-Tuning: alpha-blend of the frozen backbone and a small side net on the same input")]
