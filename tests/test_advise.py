"""`make advise`: the predicted peaks against a budget, joined with the leaderboard's accuracy."""
import pandas as pd
import pytest

from benchmark.advise import advise, main, parse_budget
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
    out = advise("4GiB", "minilm", 8, 16, task="rte", results_dir=tmp_path, largest=False)
    order = [r["method"] for r in out]
    # fitting first, most accurate first; then what does not fit
    assert order[:4] == ["mpismoe@mpismoe-4bit", "lst", "unipt", "sherl"] and set(order[4:]) == {"full", "lora"}
    pareto = {r["method"] for r in out if r["pareto"]}
    assert pareto == {"mpismoe@mpismoe-4bit", "unipt"}  # lst and sherl: mpismoe-4bit is better with no more memory
    assert out[0]["n"] == 3 and abs(out[0]["mean"] - 83.0) < 1e-6
    printed = capsys.readouterr().out
    assert "budget 4.00 GiB" in printed and "best that fits: mpismoe@mpismoe-4bit" in printed


# --- the largest batch that fits (benchmark/memory/capacity.py) ---------------------------------------------
def _peaks(base, per_example, kink=None, steeper=1):
    """A fixture prediction: weights and optimizer state, plus activations per example (steeper past ``kink``,
    as when another phase of the step holds the peak at large batches)."""
    return lambda b: base + per_example * b + (steeper - 1) * per_example * max(0, b - (kink or b))


@pytest.mark.parametrize("base,per,kink,steeper,budget", [
    (3 * GIB, 40 * 2**20, None, 1, 8 * GIB),  # straight line: the estimate and its neighbour settle it
    (1 * GIB, 5 * 2**20, 200, 3, 6 * GIB),  # a kink past the first probes: the line misses, bisection finds it
    (9 * GIB, 2**20, None, 1, 8 * GIB),  # nothing fits
    (GIB, 1, None, 1, 8 * GIB),  # everything up to the cap fits
])
def test_the_largest_batch_is_found_exactly_in_few_probes(base, per, kink, steeper, budget):
    from benchmark.memory.capacity import MAX_BATCH, largest_batch

    f = _peaks(base, per, kink, steeper)
    best, probes = largest_batch(f, budget, first=8)
    expect = 0 if f(1) > budget else next((b - 1 for b in range(2, MAX_BATCH + 1) if f(b) > budget), MAX_BATCH)
    assert best == expect
    assert best == 0 or f(best) <= budget < (f(best + 1) if best < MAX_BATCH else float("inf"))
    assert len(probes) <= (5 if kink is None else 20)


def test_tight_means_within_ten_percent_below_the_budget():
    from benchmark.memory.capacity import is_tight

    assert is_tight(int(7.3 * GIB), 8 * GIB) and is_tight(8 * GIB, 8 * GIB)
    assert not is_tight(int(7.1 * GIB), 8 * GIB) and not is_tight(int(8.1 * GIB), 8 * GIB)


def test_advise_lists_the_largest_batch_and_flags_tight_rows_and_a_second_call_is_cached(tmp_path, capsys,
                                                                                         monkeypatch):
    from benchmark.memory import predict
    from methods import METHODS

    monkeypatch.setenv("METL_CACHE", str(tmp_path / "cache"))
    peaks = {name: int((i + 1.5) * GIB) for i, name in enumerate(METHODS)}
    peaks[next(iter(METHODS))] = int(3.8 * GIB)  # tight under 4 GiB
    pd.DataFrame([{"method": m, "variant": m, "peak_train_bytes": b - GIB // 4, "nvidia_smi_bytes": b,
                   "batch_size": 8, "max_length": 16, "precision": "32-true", "backbone": "minilm", "error": None}
                  for m, b in peaks.items()]) \
        .to_csv(tmp_path / "memory_predicted.csv", index=False)
    calls = []

    def fake_rows(todo, jobs=2, progress=None, largest_under=None, knob="batch_size", knob_max=None, known=None):
        calls.append([name for name, _, _ in todo])
        return {name: ("ok", {"method": name, "variant": name, "largest_batch": 8 * largest_under // peaks[name]})
                for name, _, _ in todo}

    monkeypatch.setattr(predict, "run_rows", fake_rows)
    out = {r["method"]: r for r in advise("4GiB", "minilm", 8, 16, results_dir=tmp_path)}
    assert calls == [list(METHODS)]
    assert all(out[m]["largest"] == 8 * 4 * GIB // peaks[m] for m in METHODS)
    assert [m for m, r in out.items() if r["tight"]] == [next(iter(METHODS))]
    printed = capsys.readouterr().out
    assert "largest batch" in printed and "yes, tight" in printed and "nvidia-smi" in printed
    again = {r["method"]: r["largest"] for r in advise("4GiB", "minilm", 8, 16, results_dir=tmp_path)}
    assert calls == [list(METHODS)] and again == {m: r["largest"] for m, r in out.items()}  # from the cache


def test_fits_is_decided_on_what_nvidia_smi_would_show(tmp_path):
    """Allocated 3.7 GiB fits 4 GiB; reserved plus the CUDA context, 4.2 GiB, does not: the row does not fit."""
    pd.DataFrame([{"method": "lora", "variant": "lora", "peak_train_bytes": int(3.7 * GIB),
                   "nvidia_smi_bytes": int(4.2 * GIB), "batch_size": 8, "max_length": 16, "precision": "32-true",
                   "backbone": "minilm", "error": None}]).to_csv(tmp_path / "memory_predicted.csv", index=False)
    (row,) = advise("4GiB", "minilm", 8, 16, results_dir=tmp_path, largest=False)
    assert not row["fits"] and row["shown_bytes"] == int(4.2 * GIB)


def test_the_length_search_is_capped_by_the_architecture():
    from benchmark.memory.architecture import length_limit
    from benchmark.memory.capacity import MAX_LENGTH

    assert length_limit("minilm") == 512  # BERT's learned positions
    assert length_limit("roberta-base") == 512  # 514 positions, the first two are RoBERTa's padding offset
    assert length_limit("t5-small") == MAX_LENGTH  # relative positions: the search's own cap


def test_the_longest_length_is_found_exactly_and_never_beyond_the_limit(tmp_path):
    """The same search over max_length at the row's batch: a peak quadratic in the length (attention scores
    on a math path) is answered exactly; when even the limit fits, the answer is the limit."""
    from benchmark.memory.capacity import PredictionCache, largest_batch_row

    def simulate(ov):
        n = int(ov["max_length"])
        assert ov["batch_size"] == "4"  # the batch stays the row's
        return {"method": "m", "variant": "m", "peak_train_bytes": 10_000 + 300 * n + 2 * n * n}

    cache = PredictionCache(tmp_path, version="t")
    budget = 10_000 + 300 * 700 + 2 * 700 * 700
    row = largest_batch_row({"batch_size": "4", "max_length": "128"}, budget, simulate, cache, knob="max_length",
                            maximum=4096)
    assert row["longest_length"] == 700 and len(row["probes"]) <= 12
    capped = largest_batch_row({"batch_size": "4", "max_length": "128"}, budget, simulate, cache,
                               knob="max_length", maximum=512)
    assert capped["longest_length"] == 512 == capped["limit"]


def test_advise_longest_adds_each_methods_longest_length_at_the_batch(tmp_path, capsys, monkeypatch):
    from benchmark.memory import predict
    from methods import METHODS

    monkeypatch.setenv("METL_CACHE", str(tmp_path / "cache"))
    pd.DataFrame([{"method": m, "variant": m, "peak_train_bytes": GIB, "nvidia_smi_bytes": 2 * GIB,
                   "batch_size": 8, "max_length": 16, "precision": "32-true", "backbone": "minilm", "error": None}
                  for m in METHODS]).to_csv(tmp_path / "memory_predicted.csv", index=False)
    asked = []

    def fake_rows(todo, jobs=2, progress=None, largest_under=None, knob="batch_size", knob_max=None, known=None):
        asked.append((knob, knob_max))
        # the table's row is each search's first probe, at the asked batch (8) or length (16): not predicted again
        assert known == {name: {8 if knob == "batch_size" else 16: 2 * GIB} for name, _, _ in todo}
        key = "largest_batch" if knob == "batch_size" else "longest_length"
        return {name: ("ok", {"method": name, "variant": name, key: 100 + i, "limit": knob_max})
                for i, (name, _, _) in enumerate(todo)}

    monkeypatch.setattr(predict, "run_rows", fake_rows)
    rows = advise("4GiB", "minilm", 8, 16, results_dir=tmp_path, longest=True)
    assert [k for k, _ in asked] == ["batch_size", "max_length"] and asked[1][1] == 512  # MiniLM's positions
    assert sorted(r["longest"] for r in rows) == list(range(100, 100 + len(list(METHODS))))
    assert "longest length" in capsys.readouterr().out
    assert main(["budget=4GiB", "longest=yes"]) == 2
