"""Every method, task and family name the publishing code knows, and the text that names them: the paper's
table layouts (GLUE as Table 2, vision-language, the ablation Tables 3 and 4), the row order, and what the
figures highlight as ours. Nothing else under ``benchmark.publish`` spells a method's or task's name.
"""
# SEAM(issue17): the lead replaces this module with lookups in the method/task cards each folder declares.
from __future__ import annotations

from dataclasses import dataclass

GLUE_FAMILY = "glue"
GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb")
GLUE_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI",
              "rte": "RTE", "stsb": "STS-B"}
GLUE_AVG = "glue_avg"  # the leaderboard row averaging the eight GLUE tasks
GLUE_AVG_NOTE = "glue_avg = mean of the eight GLUE task means (n = fewest seeds; memory = largest)."
GLUE_TITLE = "GLUE (paper Table 2 layout)"

VL_FAMILY = "vl"
VL_TASKS = ("vqa", "gqa", "nlvr2", "easy_vqa")
VL_NAMES = {"vqa": "VQAv2", "gqa": "GQA", "nlvr2": "NLVR2", "easy_vqa": "easy_vqa"}
VL_TITLE = "Vision-language"



@dataclass(frozen=True)
class Layout:
    """A family's table in the paper's layout: one column per task, in ``tasks`` order, shown as ``names``."""

    family: str
    title: str
    tasks: tuple[str, ...]
    names: dict
    every_column: bool  # a column for each of ``tasks`` even without results; else the tasks that have some,
    # then the family's other tasks by name


LAYOUTS = (Layout(GLUE_FAMILY, GLUE_TITLE, GLUE_TASKS, GLUE_NAMES, every_column=True),
           Layout(VL_FAMILY, VL_TITLE, VL_TASKS, VL_NAMES, every_column=False))
NO_PAPER_TABLES = "No GLUE, vision-language or ablation results yet."

# (table number, what it ablates, prefix of its rows' variant names)
ABLATIONS = (("Table 3", "ISMoE ablation, full-precision backbone", "table3-"),
             ("Table 4", "GNP-IQ ablation (ISMoE on)", "table4-"))
ABLATION_METHOD = "mpismoe"
ABLATION_ROWS = tuple(f"{ABLATION_METHOD}@{p}" for _, _, p in ABLATIONS)  # method labels of the ablation runs
ABLATIONS_MOVED = "MP-ISMoE's ablation rows are in ablations.md. "
ABLATIONS_HEAD = "MP-ISMoE ablations (paper Tables 3 and 4), from the mpismoe@table3-* and mpismoe@table4-* runs."

# Rows in the paper's order (largest memory first, ours last); unknown methods after these, by name.
METHOD_ORDER = ("full", "lora", "bitfit", "side_tuning", "lst", "unipt", "sherl", "mpismoe")
OURS = "mpismoe"  # highlighted in the score-vs-memory figures, as the paper's teaser does
OURS_QUANTIZER = "gnpiq"  # highlighted in the quantization figure
QUANT_TITLE = "GNP-IQ vs other quantizers on the frozen backbone"


def experiments() -> dict:
    """The ablation method's named rows, each with its ``about`` line (imported lazily: methods pull in torch)."""
    from methods.mpismoe.experiments import EXPERIMENTS

    return EXPERIMENTS
