"""QLoRA: the card (read without importing torch); the code is in ``method.py``."""
from methods import MethodCard

CARDS = [MethodCard("qlora", "methods.qlora.method:QLoRA", role="alternative", order=8, display="QLoRA",
                    about="QLoRA: LoRA (as lora) over an NF4 4-bit backbone (bitsandbytes Linear4bit, double quant)")]
