"""``python -m benchmark budgets``: the ranking under one budget next to another, and whether each move is
outside the seed spread."""
import json

import pytest

from benchmark.cli import main as cli
from benchmark.publish.budgets import compare, to_markdown
from test_leaderboard import write
from test_results import make_record

BEFORE = {"a": [0.50, 0.52, 0.51], "b": [0.60, 0.62, 0.61], "c": [0.55, 0.58, 0.56]}
AFTER = {"a": [0.80, 0.81, 0.82], "b": [0.59, 0.63, 0.60], "c": [0.57, 0.55, 0.58]}


def records(tmp_path, search_seconds=(100.0, 50.0)):
    """Three methods under the 1-epoch budget and under a tuned until-plateau one, three seeds each."""
    tuning = tmp_path / "tuning.json"
    tuning.write_text(json.dumps({"trials": [{"number": i, "seconds": s} for i, s in enumerate(search_seconds)]}))
    out = []
    for method in BEFORE:
        for seed in range(3):
            out.append(make_record(method=method, seed=seed, score=BEFORE[method][seed]))
            rec = make_record(method=method, seed=seed, score=AFTER[method][seed])
            rec["run"]["config"]["run"].update(hparams="tuned", patience=3, epochs=12)
            rec["run"]["hyperparameters"] = {"source": "tuned", "file": str(tuning) if method == "a" else ""}
            rec["efficiency"]["total_seconds"] = 3600.0
            out.append(rec)
    return out


def test_ranks_changes_and_the_seed_spread(tmp_path):
    [comp] = compare(records(tmp_path), "1ep", "tuned")
    assert (comp.before, comp.after) == ("1ep-b32-len64", "tuned-plateau3-max12ep-b32-len64")
    t = comp.table.set_index("method")
    assert t["before_rank"].to_dict() == {"a": 3, "b": 1, "c": 2}
    assert t["after_rank"].to_dict() == {"a": 1, "b": 2, "c": 3}
    assert t.at["a", "rank_change"] == 2 and t.at["b", "rank_change"] == -1
    assert t.at["a", "change"] == pytest.approx(0.30)
    # a's seeds all beat every 1-epoch seed; b's and c's ranges overlap
    assert t["ranges_apart"].to_dict() == {"a": "better", "b": "overlap", "c": "overlap"}
    assert t.at["a", "welch_p"] < 0.001 < 0.5 < t.at["b", "welch_p"]
    # 9 tuned runs of an hour each; the one search file read once, its trials' seconds summed
    assert comp.runs == 9 and comp.run_seconds == 9 * 3600
    assert (comp.searches, comp.trials, comp.search_seconds) == (1, 2, 150.0)
    text = to_markdown(comp)
    assert "| a | #3 51.00 ± 1.00 (3) | #1 81.00 ± 1.00 (3) | +30.00 | +2 |" in text
    assert "better | <0.001 |" in text and "| 0.000 |" not in text  # a tiny p is not printed as zero
    assert "together 9.04 h" in text


def test_lower_is_better_tasks_rank_the_other_way(tmp_path):
    recs = records(tmp_path)
    for r in recs:
        r["metrics"]["higher_is_better"] = False
    t = compare(recs, "1ep", "tuned")[0].table.set_index("method")
    assert t["after_rank"].to_dict() == {"a": 3, "b": 2, "c": 1}
    assert t.at["a", "ranges_apart"] == "worse"


def test_cli_compares_every_pair_of_matching_budgets_and_says_when_there_are_none(tmp_path, capsys):
    for rec in records(tmp_path):
        write(tmp_path, rec)
    assert cli(["budgets", "--results-dir", str(tmp_path)]) == 0
    assert "1ep-b32-len64 -> tuned-plateau3-max12ep-b32-len64" in capsys.readouterr().out
    capped = make_record(method="a", seed=0, score=0.9)  # a second tuned budget: the 12-epoch cap
    capped["run"]["config"]["run"].update(hparams="tuned", epochs=12)
    write(tmp_path, capped)
    assert cli(["budgets", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1ep-b32-len64 -> tuned-12ep-b32-len64" in out and "-> tuned-plateau3-max12ep-b32-len64" in out
    assert cli(["budgets", "--results-dir", str(tmp_path), "--after", "tuned-12ep"]) == 0
    assert out.count("### ") == 2 and capsys.readouterr().out.count("### ") == 1
    assert cli(["budgets", "--results-dir", str(tmp_path), "--after", "200steps"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no task has runs under a budget starting with '1ep'" in err
    assert cli(["budgets", "--results-dir", str(tmp_path / "none")]) == 2
    assert "no results in" in capsys.readouterr().err


def test_a_search_file_is_found_by_name_in_the_results_folder_and_one_seed_is_no_spread(tmp_path):
    """A run made from another results folder recorded that folder's path: the comparison reads the file of
    that name under its own results folder's tuning/. One seed a side has no spread to be outside of."""
    recs = records(tmp_path)
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning.json").rename(tmp_path / "tuning" / "tuning.json")
    for r in recs:
        if r["run"].get("hyperparameters", {}).get("file"):
            r["run"]["hyperparameters"]["file"] = "elsewhere/tuning/tuning.json"
    recs[1]["run"]["hyperparameters"]["file"] = "results/tuning/tuning.json"  # seed 0 of a, made elsewhere
    [comp] = compare(recs, "1ep", "tuned", results_dir=tmp_path)
    assert (comp.searches, comp.trials, comp.search_seconds) == (1, 2, 150.0)  # the same search, counted once
    one = [r for r in recs if r["run"]["seed"] == 0 or r["run"]["config"]["run"].get("hparams") != "tuned"]
    [comp] = compare(one, "1ep", "tuned", results_dir=tmp_path)
    t = comp.table.set_index("method")
    assert set(t["ranges_apart"]) == {"one seed"} and t["welch_p"].isna().all()
    assert "runs: 3 runs, 3.00 h (their total_seconds); the searches they read: 1 search, 2 trials" in to_markdown(comp)


def test_split_val_compares_the_best_validation_scores_the_choice_reads(tmp_path):
    recs = records(tmp_path)
    for r in recs:  # validation says the opposite of test: b gains, a loses
        tuned = r["run"]["config"]["run"].get("hparams") == "tuned"
        r["metrics"]["val_best"] = {"score": {"a": 0.7, "b": 0.6}.get(r["run"]["method"], 0.5) + (0.1 if tuned else 0)
                                    * (1 if r["run"]["method"] == "b" else -1)}
    val = compare(recs, "1ep", "tuned", split="val")[0]
    t = val.table.set_index("method")
    assert t.at["b", "change"] == pytest.approx(0.1) and t.at["a", "change"] == pytest.approx(-0.1)
    assert "(best validation scores)" in to_markdown(val)
    test = compare(recs, "1ep", "tuned")[0].table.set_index("method")
    assert test.at["a", "change"] == pytest.approx(0.30)


def test_scale_compares_backbones_at_the_same_budget_kind_with_memory_ratios(tmp_path, capsys):
    """``python -m benchmark scale``: the ranking on MiniLM next to MPNet-base, the tuned budget on both sides."""
    small = {"full": [0.80, 0.81, 0.82], "lora": [0.78, 0.79, 0.80], "sherl": [0.76, 0.77, 0.78]}
    large = {"full": [0.86, 0.87, 0.88], "lora": [0.85, 0.86, 0.87], "sherl": [0.88, 0.89, 0.90]}
    peaks = {"minilm": {"full": 2**30, "lora": 2**29, "sherl": 2**28},
             "mpnet-base": {"full": 2**33, "lora": 2**32, "sherl": 2**30}}
    for backbone, scores in (("minilm", small), ("mpnet-base", large)):
        for method, values in scores.items():
            for seed, v in enumerate(values):
                rec = make_record(method=method, seed=seed, score=v, backbone=backbone,
                                  peak=peaks[backbone][method])
                rec["run"]["config"]["run"].update(hparams="tuned", epochs=3)
                write(tmp_path, rec)
                other = make_record(method=method, seed=seed, score=0.5, backbone=backbone)  # 1-epoch: not compared
                write(tmp_path, other)
    assert cli(["scale", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("### ") == 1 and "minilm tuned-3ep-b32-len64 -> mpnet-base tuned-3ep-b32-len64" in out
    assert "| sherl | #3 77.00 ± 1.00 (3) | #1 89.00 ± 1.00 (3) | +12.00 | +2 |" in out
    assert "| 0.250 (0.25) -> 1.000 (0.12) |" in out  # SHERL's peak and its ratio to full fine-tuning, each scale
    from benchmark.publish.figures import write_figures

    pngs = [p.name for p in write_figures(tmp_path)]
    assert "scale__rte__minilm-tuned-3ep-b32-len64__mpnet-base-tuned-3ep-b32-len64__cpu-test.png" in pngs
    assert cli(["scale", "--results-dir", str(tmp_path), "--large", "t5-base"]) == 2
    assert "no task has runs on a backbone starting with 'minilm' and one starting with 't5-base'" in capsys.readouterr().err
