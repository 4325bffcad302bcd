"""Full fine-tuning: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("full", "methods.full.method:FullFineTuning", role="reference", order=0, display="Full fine-tuning",
                    about="full fine-tuning (every backbone weight)")]
