"""Adding a method is one new folder (issue 17): a copy of the suite gets ``methods/toyscale/`` and nothing
else, and every user-facing command shows it — ``make list``, ``make bench QUICK=1``, ``make memory``,
``make memory PREDICT=1``, the leaderboard and ``make advise`` — with no other file edited."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "wandb", "tmp", "*.png", "index.html")

CARD = '''"""A toy side method for the one-folder test: the card."""
from methods import MethodCard

CARDS = [MethodCard("toyscale", "methods.toyscale.method:ToyScale", order=50, display="ToyScale",
                    about="toy: a learned scale and shift of the frozen backbone's pooled feature")]
'''
CODE = '''"""The toy method's code: a learned per-feature scale and shift on the frozen backbone's pooled feature."""
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import Method, MethodConfig
from methods.side import frozen_hidden_states


@dataclass
class ToyScaleConfig(MethodConfig):
    lr: float = 1e-3


class ToyScale(Method):
    config_class = ToyScaleConfig

    def __init__(self, backbone, config):
        super().__init__(backbone, config)
        self.scale = nn.Parameter(torch.ones(backbone.hidden_size))
        self.shift = nn.Parameter(torch.zeros(backbone.hidden_size))

    def forward(self, batch):
        states, ctx = frozen_hidden_states(self.backbone, batch)
        return self.backbone.salient(states[-1], ctx.attention_mask) * self.scale + self.shift
'''


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite") / "metl-bench"
    shutil.copytree(ROOT, root, ignore=SKIP)
    (root / "methods" / "toyscale").mkdir()
    (root / "methods" / "toyscale" / "__init__.py").write_text(CARD)
    (root / "methods" / "toyscale" / "method.py").write_text(CODE)
    return root


def make(root: Path, *args: str) -> str:
    """``make`` in the copy with this interpreter's environment, never reinstalling it."""
    venv = Path(sys.prefix)
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(["make", "-s", f"VENV={venv}", "-o", f"{venv}/.installed", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_a_new_method_is_one_folder(suite):
    tiny = ("BACKBONE=tiny-bert", "BATCH=4", "LEN=16")
    assert "toyscale" in make(suite, "list")

    make(suite, "bench", "QUICK=1", "METHOD=toyscale", "BACKBONE=tiny-bert")
    assert "toyscale" in (suite / "results" / "tmp" / "leaderboard.md").read_text()

    make(suite, "memory", *tiny, "ARGS=--methods toyscale")
    assert "toyscale" in (suite / "results" / "memory.csv").read_text()

    make(suite, "memory", "PREDICT=1", *tiny, "ARGS=methods=toyscale out=results/tmp/predicted.csv")
    assert "toyscale" in (suite / "results" / "tmp" / "predicted.csv").read_text()

    assert "toyscale" in make(suite, "advise", "BUDGET=1GiB", *tiny)
