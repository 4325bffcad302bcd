"""The one publish step: the results are read once and the page written once; the leaderboard alone never
loads torch, peft or matplotlib; the shared number rules; and no method or task name outside ``names``."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.publish import fmt, names, publish
from benchmark.results import result_path, write_result
from test_results import ROOT, make_record

GIB = 1024 ** 3


@pytest.fixture
def results_dir(tmp_path):
    for seed, score in enumerate([0.70, 0.74]):
        for method, peak in (("lora", 2 * GIB), ("sherl", GIB // 2)):
            rec = make_record(method=method, task="rte", seed=seed, score=score, peak=peak)
            write_result(rec, result_path(tmp_path, rec))
    return tmp_path


def test_publish_reads_the_results_once_and_writes_the_page_once(results_dir, monkeypatch, capsys):
    from benchmark.publish import page
    from benchmark.results import load_results

    calls = {"load": 0, "page": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr("benchmark.results.load_results", counted("load", load_results))
    monkeypatch.setattr(page, "write_page", counted("page", page.write_page))
    written = publish(results_dir)
    assert calls == {"load": 1, "page": 1}
    names_ = [p.name for p in written]
    assert names_[:4] == ["leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard_glue.csv"]
    assert names_[-1] == "index.html" and any(n.startswith("score_vs_memory__rte-v1") for n in names_)
    text = (results_dir / "index.html").read_text()
    assert text.count("<figure ") == 1 and text.count("<tr data-task=") == 2  # the figure drawn in this step


def test_the_leaderboard_alone_loads_no_torch_peft_or_matplotlib(results_dir):
    code = ("import runpy, sys\n"
            f"sys.argv = ['benchmark.leaderboard', '--results-dir', {str(results_dir)!r}]\n"
            "try:\n    runpy.run_module('benchmark.leaderboard', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'peft', 'matplotlib') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (results_dir / "leaderboard.md").is_file() and (results_dir / "index.html").is_file()


def test_the_shared_number_rules():
    assert fmt.is_percent(True, 0.5, -1.0, 1.0) and not fmt.is_percent(False, 0.5)
    assert not fmt.is_percent(True, 1.5) and not fmt.is_percent(True, float("nan")) and not fmt.is_percent(True, None)
    assert fmt.score(0.7234, 0.0123, True) == "72.34 ± 1.23" and fmt.score(2.5, None, False) == "2.5000"
    assert fmt.score(float("nan"), 0.1, True) == "" and fmt.pm(0.72, float("nan")) == "72.0"
    assert fmt.fixed(None) == "" and fmt.fixed(0.12345) == "0.123" and fmt.signed(-0.0001, 2) == "+0.00"
