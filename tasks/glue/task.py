"""The eight GLUE tasks (family "glue"), built from the table in ``tasks.glue.spec``.

Data: a local directory in the original GLUE release layout (``data_dir=`` or the env var GLUE_DIR), else
the hub dataset nyu-mll/glue. Split protocol and metrics: docs/datasets.md.
"""
from __future__ import annotations

from functools import partial

from tasks.base import MetricSpec, Task, TextToText, rounded_values
from tasks.glue.data import load_glue
from tasks.glue.spec import SPECS, GlueSpec

VERSION = 1


STSB_RANGE = (0.0, 5.0, 0.2)  # T5 writes an STS-B score rounded to the nearest 0.2


def text_to_text(spec: GlueSpec) -> TextToText:
    fields = tuple(c for c in spec.hub if c is not None)
    if spec.regression:
        values, words = rounded_values(*STSB_RANGE)
        return TextToText(spec.name, fields, words, values, b_first=spec.t5_b_first)
    return TextToText(spec.name, fields, spec.label_names, b_first=spec.t5_b_first)


def make_task(spec: GlueSpec) -> Task:
    return Task(name=spec.name, version=VERSION, family="glue",
                problem="regression" if spec.regression else "classification", num_labels=spec.num_labels,
                metrics=tuple(MetricSpec(m, partial(spec.make_metric, m)) for m in spec.metrics),
                score_of=spec.metrics, loader=load_glue, label_names=spec.label_names, about=spec.about,
                text_to_text=text_to_text(spec))


GLUE = {name: make_task(spec) for name, spec in SPECS.items()}  # the cards' targets

__all__ = ["GLUE", "SPECS", "GlueSpec", "load_glue", "make_task"]
