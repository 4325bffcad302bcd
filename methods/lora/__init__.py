"""LoRA: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("lora", "methods.lora.method:LoRA", role="baseline", order=1, display="LoRA",
                    about="LoRA via peft on attention query/value")]
