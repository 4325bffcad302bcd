"""`make advise`: the predicted peaks against a budget, joined with the leaderboard's accuracy."""
import pandas as pd
import pytest

from benchmark.advise import advise, parse_budget
from benchmark.errors import UserError
from benchmark.results import result_path, write_result
from test_results import make_record

GIB = 2**30


def test_budget_units():
    assert parse_budget("8GiB") == 8 * GIB and parse_budget("8") == 8 * GIB
    assert parse_budget("8GB") == 8 * 10**9 and parse_budget("512 MiB") == 512 * 2**20
    with pytest.raises(UserError, match="BUDGET=8GiB"):
        parse_budget("lots")


def test_the_best_method_that_fits_comes_first(tmp_path, capsys):
    rows = [("full", "full", 10 * GIB), ("lora", "lora", 6 * GIB), ("lst", "lst", 3 * GIB),
            ("unipt", "unipt", 1 * GIB), ("mpismoe", "mpismoe-4bit", 2 * GIB), ("sherl", "sherl", 2 * GIB)]
    pd.DataFrame([{"method": m, "variant": v, "peak_train_bytes": b, "batch_size": 8, "max_length": 16,
                   "precision": "32-true", "backbone": "minilm", "error": None} for m, v, b in rows]) \
        .to_csv(tmp_path / "memory_predicted.csv", index=False)
    scores = {"full": 0.90, "lora": 0.88, "lst": 0.80, "unipt": 0.75, "mpismoe@mpismoe-4bit": 0.82, "sherl": 0.70}
    for method, score in scores.items():
        for seed in range(3):
            rec = make_record(method=method.split("@")[0], task="rte", seed=seed, score=score + 0.01 * seed)
            if "@" in method:
                rec["run"]["variant"] = method.split("@")[1]
            write_result(rec, result_path(tmp_path, rec))
    out = advise("4GiB", "minilm", 8, 16, task="rte", results_dir=tmp_path)
    order = [r["method"] for r in out]
    # fitting first, most accurate first; then what does not fit
    assert order[:4] == ["mpismoe@mpismoe-4bit", "lst", "unipt", "sherl"] and set(order[4:]) == {"full", "lora"}
    pareto = {r["method"] for r in out if r["pareto"]}
    assert pareto == {"mpismoe@mpismoe-4bit", "unipt"}  # lst and sherl: mpismoe-4bit is better with no more memory
    assert out[0]["n"] == 3 and abs(out[0]["mean"] - 83.0) < 1e-6
    printed = capsys.readouterr().out
    assert "budget 4.00 GiB" in printed and "best that fits: mpismoe@mpismoe-4bit" in printed
