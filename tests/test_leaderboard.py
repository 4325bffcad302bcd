"""The leaderboard from hand-built results: seeds averaged, bad runs dropped and counted, task versions
kept apart, the Pareto front in the task's direction, the GLUE average only when all eight tasks exist."""
import math
import subprocess

import pandas as pd

import pytest

from benchmark.publish import ablations, leaderboard_main, tables
from benchmark.publish.leaderboard import KEYS, build_leaderboard, pareto_front
from tasks.glue.spec import SPECS

GLUE_FAMILY, VL_FAMILY, GLUE_TASKS = "glue", "vl", tuple(SPECS)
from benchmark.publish.tables import export
from benchmark.results import load_results, result_path, write_result
from test_results import make_record

GIB = 1024 ** 3
DEVICE = "cpu: test"


def glue_tables(df):
    return tables.family_tables(df)[GLUE_FAMILY]


def vl_tables(df):
    return tables.family_tables(df)[VL_FAMILY]


def write(results_dir, record, name=None):
    path = result_path(results_dir, record)
    return write_result(record, path if name is None else path.with_name(name))


@pytest.fixture
def results_dir(tmp_path):
    """Two methods x three seeds on RTE v2, one failed run, one corrupt file, one run of RTE v1."""
    for seed, (score, peak) in enumerate([(0.70, 2_000_000_000), (0.72, 2_000_000_001), (0.74, 2_000_000_002)]):
        write(tmp_path, make_record(method="lora", task="rte", version=2, seed=seed, score=score, peak=peak))
    for seed, score in enumerate([0.60, 0.65, 0.61]):
        write(tmp_path, make_record(method="side_tuning", task="rte", version=2, seed=seed, score=score,
                                    peak=1_000_000_000))
    write(tmp_path, make_record(method="lora", task="rte", version=2, seed=3, status="failed",
                                error="CUDA out of memory"))
    # The old version's run lies under another name (the standard path holds no version).
    write(tmp_path, make_record(method="lora", task="rte", version=1, seed=0, score=0.50, peak=3_000_000_000),
          name="seed0-v1.json")
    corrupt = tmp_path / "runs" / "rte-v1" / "side_tuning" / "minilm" / "seed9.json"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_text('{"schema_version": 1, "run"')
    return tmp_path


def test_the_table_from_fixture_records(results_dir):
    df, report = build_leaderboard(*load_results(results_dir))
    assert (report.used, report.failed, report.corrupt, report.invalid, report.duplicate) == (7, 1, 1, 0, 0)
    assert report.rows == 3 and report.dropped == 2
    line = report.lines()[0]
    assert "7 runs" in line and "1 failed" in line and "1 corrupt" in line

    assert list(df[["task", "task_version", "method", "n"]].itertuples(index=False, name=None)) == [
        ("rte", 1, "lora", 1), ("rte", 2, "lora", 3), ("rte", 2, "side_tuning", 3)]  # versions never mixed
    old, lora, side = (df.iloc[i] for i in range(3))

    assert lora.score_mean == pytest.approx(0.72) and lora.score_std == pytest.approx(0.02)
    # side_tuning: mean 0.62, deviations -0.02, 0.03, -0.01 -> sample var (4 + 9 + 1)e-4 / 2 = 7e-4
    assert side.score_mean == pytest.approx(0.62) and side.score_std == pytest.approx(math.sqrt(7e-4))
    assert side.acc_mean == pytest.approx(0.62) and side.acc_std == pytest.approx(math.sqrt(7e-4))
    assert old.score_mean == pytest.approx(0.50) and math.isnan(old.score_std)  # one seed: no std
    assert lora.val_score_mean == pytest.approx(0.72)

    assert lora.peak_train_bytes == 2_000_000_001
    assert df["peak_train_bytes"].dtype.kind == "i"
    assert lora.peak_train_gib == pytest.approx(2_000_000_001 / GIB)
    assert lora.trainable_params == 1000 and lora.trainable_percent == pytest.approx(1.0)
    assert lora.step_seconds == pytest.approx(0.1) and lora.device == DEVICE and lora.task_family == "glue"
    assert list(df["pareto"]) == [True, True, True]  # v1 alone; v2: lora better, side_tuning smaller
    for col in KEYS + ["n", "score_mean", "score_std", "acc_mean", "acc_std", "val_score_mean",
                       "trainable_params", "trainable_percent", "peak_train_bytes", "peak_train_gib",
                       "step_seconds", "pareto"]:
        assert col in df.columns


def test_records_passed_directly_are_validated_and_duplicates_counted():
    bad = make_record(method="x")
    del bad["efficiency"]["peak_train_bytes"]
    early = make_record(seed=0, score=0.1, finished_at="2025-01-01T00:00:00+00:00")
    late = make_record(seed=0, score=0.9, finished_at="2025-01-02T00:00:00+00:00")
    stopped = make_record(seed=1, status="interrupted", error=None)
    df, report = build_leaderboard([late, bad, early, stopped])
    assert (report.used, report.invalid, report.duplicate, report.interrupted) == (1, 1, 1, 1)
    assert len(df) == 1 and df.iloc[0].score_mean == pytest.approx(0.9)  # the latest run of a seed counts


def test_devices_are_kept_apart():
    df, _ = build_leaderboard([make_record(device="cpu: a", score=0.5), make_record(device="NVIDIA H100", score=0.6)])
    assert sorted(df["device"]) == ["NVIDIA H100", "cpu: a"] and list(df["n"]) == [1, 1]


def test_budgets_are_kept_apart(tmp_path):
    """A run on a training subset is another experiment: its own file, its own row, its own Pareto group."""
    small = make_record(seed=0, score=0.55)
    small["run"]["config"]["run"].update(limit_train_samples=4096, limit_eval_samples=2048)
    for rec in (make_record(seed=0, score=0.7), make_record(seed=1, score=0.8), small):
        write(tmp_path, rec)
    df, report = build_leaderboard(*load_results(tmp_path))
    assert report.used == 3 and report.duplicate == 0
    rows = df.set_index("budget")
    assert rows.at["1ep-b32-len64", "n"] == 2 and rows.at["1ep-b32-len64", "score_mean"] == pytest.approx(0.75)
    assert rows.at["1ep-b32-len64-train4096-eval2048", "n"] == 1
    assert df["pareto"].all()  # each is alone in its group


def test_pareto_front_hand_built():
    # (score, memory): (0.9, 10) and its twin, (0.8, 5) on the front; (0.85, 12) and (0.7, 6) dominated.
    assert pareto_front([0.9, 0.8, 0.85, 0.7, 0.9], [10, 5, 12, 6, 10]) == [True, True, False, False, True]
    # lower is better (a loss): (0.3, 1) (0.2, 2) (0.5, 0.5) on the front, (0.4, 1.5) dominated by (0.3, 1)
    assert pareto_front([0.3, 0.2, 0.5, 0.4], [1, 2, 0.5, 1.5], higher_is_better=False) == [True, True, True, False]
    assert pareto_front([0.9, float("nan")], [1, 0.5]) == [True, False]


def test_pareto_in_the_leaderboard_follows_the_task_direction():
    def recs(higher_is_better):
        return [make_record(method="a", score=0.2, peak=2_000, higher_is_better=higher_is_better),
                make_record(method="b", score=0.3, peak=3_000, higher_is_better=higher_is_better)]

    df, _ = build_leaderboard(recs(higher_is_better=False))
    assert dict(zip(df["method"], df["pareto"])) == {"a": True, "b": False}  # b: worse loss, more memory
    assert list(df["method"]) == ["a", "b"]  # best first
    df, _ = build_leaderboard(recs(higher_is_better=True))
    assert dict(zip(df["method"], df["pareto"])) == {"a": True, "b": True}
    assert list(df["method"]) == ["b", "a"]


def glue_records(method, tasks, seeds=(0, 1, 2)):
    out = []
    for i, task in enumerate(tasks):
        for seed in (seeds if task != "stsb" else seeds[:2]):
            out.append(make_record(method=method, task=task, seed=seed, score=0.5 + 0.05 * i + 0.01 * seed,
                                   peak=1_000_000 * (i + 1)))
    return out


def test_glue_average_only_when_all_eight_tasks_exist():
    records = glue_records("lora", GLUE_TASKS) + glue_records("bitfit", GLUE_TASKS[:-1])
    df, _ = build_leaderboard(records)
    avg = df[df["task"] == "glue_avg"]
    assert list(avg["method"]) == ["lora"]  # bitfit lacks stsb
    row = avg.iloc[0]
    per_task = df[(df["method"] == "lora") & df["task"].isin(GLUE_TASKS)]
    assert len(per_task) == 8
    assert row.score_mean == pytest.approx(per_task["score_mean"].mean())
    assert row.n == 2  # stsb has two seeds
    assert row.peak_train_bytes == 8_000_000 and row.task_family == "glue"
    assert df.iloc[-1]["task"] == "glue_avg"  # after the tasks it averages
    assert "glue_avg" not in set(build_leaderboard(glue_records("bitfit", GLUE_TASKS[:-1]))[0]["task"])


def test_glue_average_never_mixes_task_versions():
    records = glue_records("lora", GLUE_TASKS[:-1]) + [make_record(task="stsb", version=2)]
    df, _ = build_leaderboard(records)
    assert "glue_avg" not in set(df["task"])


def test_export_writes_the_tables(results_dir, tmp_path):
    df, _ = build_leaderboard(*load_results(results_dir))
    paths = export(df, tmp_path / "out")
    # RTE is a GLUE task: its Table 2 layout rides along (raw numbers in a CSV of their own)
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard_glue.csv"]
    md, csv, tex, glue = (p.read_text() for p in paths)
    assert "lora" in md and "side_tuning" in md and "peak train mem (GiB)" in md
    # the GLUE table takes RTE's newest version (v2) and names the one it leaves out
    assert "### GLUE (paper Table 2 layout) — minilm, budget 1ep-b32-len64, cpu: test" in md and "left out of this table" in md
    assert "| lora | 1.00 | 1.863 |  |  |  |  |  |  | 72.0 ± 2.0 |" in md and "rte v1" in md
    assert list(pd.read_csv(paths[3])["method"]) == ["lora", "side_tuning"]
    assert "72.00 ± 2.00 (3)" in md and "50.00 (1)" in md and "★" in md
    assert "1,000 (1.00 %)" in md and "1.863" in md  # 2,000,000,001 B = 1.863 GiB
    back = pd.read_csv(paths[1])
    assert list(back["score_mean"]) == pytest.approx(list(df["score_mean"]))
    assert list(back["peak_train_bytes"]) == list(df["peak_train_bytes"])
    assert "\\begin{tabular}" in tex and "side\\_tuning" in tex and "side_tuning" not in tex
    assert "$\\pm$" in tex
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_main_prints_report_and_table_and_writes_files(results_dir, tmp_path, capsys):
    assert leaderboard_main(str(results_dir), str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "1 failed" in out and "1 corrupt" in out and "| side_tuning |" in out.replace("|  ", "| ")
    assert (tmp_path / "out" / "leaderboard.md").exists()
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("<tr data-task=") == 3 and "index.html" in out
    assert not (tmp_path / "out" / "ablations.md").exists()  # no ablation runs: no ablation files


def test_main_without_results_says_so_and_writes_nothing(tmp_path, capsys):
    assert leaderboard_main(str(tmp_path), str(tmp_path / "out")) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"no results in {tmp_path}; run `make bench` first"
    assert not (tmp_path / "out").exists()


# --- the paper's layouts ------------------------------------------------------------------------------
def test_glue_table_in_the_papers_table2_layout():
    old_rte = make_record(method="bitfit", task="rte", version=0, seed=0, score=0.99)
    records = glue_records("lora", GLUE_TASKS) + glue_records("full", GLUE_TASKS[:3]) + [old_rte]
    df, _ = build_leaderboard(records)
    (table,) = glue_tables(df)
    assert table.header == ["method", "params %", "peak train mem (GiB)", "CoLA", "SST-2", "MRPC", "QQP", "MNLI",
                            "QNLI", "RTE", "STS-B", "Avg", "n"]
    assert [r[0] for r in table.rows] == ["full", "lora"]  # the paper's order, not the alphabet; no bitfit v0
    full, lora = table.rows
    # glue_records: task i scores 0.5 + 0.05 i + 0.01 seed -> CoLA seeds .50 .51 .52: 51.0 ± 1.0 (x 100)
    assert lora[3] == "51.0 ± 1.0" and lora[10] == "85.5 ± 0.7"  # STS-B: two seeds, .85 .86
    assert lora[11] == f"{100 * df[(df.method == 'lora') & df.task.isin(GLUE_TASKS)].score_mean.mean():.1f}"
    assert lora[12] == "2" and lora[1] == "1.00" and lora[2] == f"{8_000_000 / GIB:.3f}"  # largest memory
    assert full[5] == "61.0 ± 1.0" and full[6:11] == [""] * 5 and full[11] == ""  # no average without all 8
    assert "rte v0" in " ".join(table.notes)  # the older version is named, never mixed in
    data = table.data.set_index("method")
    assert data.at["lora", "cola_mean"] == pytest.approx(0.51) and data.at["lora", "rte_version"] == 1
    md = tables.to_markdown(df) + table.markdown()
    assert "| method | params % | peak train mem (GiB) | CoLA |" in md
    assert "STS-B" in table.latex() and "\\pm" in table.latex()


def test_vision_language_table_when_vl_results_exist(tmp_path):
    records = [make_record(method="lst", task="vqa", family="vl", score=0.60),
               make_record(method="lst", task="easy_vqa", family="vl", score=0.90),
               make_record(method="sherl", task="gqa", family="vl", score=0.50)]
    df, _ = build_leaderboard(records)
    (table,) = vl_tables(df)
    assert table.header[3:6] == ["VQAv2", "GQA", "easy_vqa"] and [r[0] for r in table.rows] == ["lst", "sherl"]
    assert table.rows[0][3:6] == ["60.0", "", "90.0"]
    names = [p.name for p in export(df, tmp_path)]
    assert "leaderboard_vl.csv" in names and "leaderboard_glue.csv" not in names
    assert "### Vision-language" in (tmp_path / "leaderboard.md").read_text()
    assert glue_tables(df) == []


def ablation_records(rows):
    out = []
    for name, scores, peak in rows:
        for seed, score in enumerate(scores):
            rec = make_record(method="mpismoe", task="rte", seed=seed, score=score, peak=peak)
            rec["run"]["variant"] = name
            out.append(rec)
    return out


def test_ablation_tables_3_and_4(tmp_path):
    from methods.mpismoe.experiments import EXPERIMENTS

    records = ablation_records([("table3-base", [0.70, 0.72, 0.74], 2 * GIB),
                                ("table3-moe-no-prior", [0.71, 0.73], 3 * GIB),
                                ("table3-moe-prior", [0.74, 0.75, 0.76], 4 * GIB),
                                ("table4-mixed-noise", [0.73], GIB)])
    records += glue_records("lora", ["rte"])
    df, _ = build_leaderboard(records)
    t3, t4 = ablations.ablation_tables(df)
    assert t3.title.startswith("Table 3") and "rte v1" in t3.title and t4.title.startswith("Table 4")
    assert [r[1] for r in t3.rows] == ["table3-base", "table3-moe-no-prior", "table3-moe-prior"]
    base, no_prior, prior = t3.rows
    assert base[2] == EXPERIMENTS["table3-base"].about.split(": ", 1)[1]  # "Table 3 row 1: " dropped
    assert base[3] == "72.00 ± 2.00 (3)" and base[5] == "2.000" and base[4] == ""
    assert no_prior[3] == "72.00 ± 1.41 (2)" and no_prior[4] == "+0.00" and no_prior[6] == "+1.000"
    assert prior[3] == "75.00 ± 1.00 (3)" and prior[4] == "+3.00"
    # Table 4 row 1 (full precision) is Table 3 row 1, as in the paper: the same row, its own runs
    assert t4.rows[0][1] == "table3-base" and t4.rows[0][3] == base[3] and t4.rows[0][2].startswith("full precision")
    assert t4.rows[1][3] == "no runs" and t4.rows[3][3] == "73.00 (1)" and t4.rows[3][6] == "-1.000"
    assert "mpismoe@table3-base" not in set(glue_tables(df)[0].data["method"])  # own table only

    paths = ablations.export_ablations(df, tmp_path)
    assert [p.name for p in paths] == ["ablations.md", "ablations.tex"]
    md, tex = (p.read_text() for p in paths)
    assert "### Table 3" in md and "### Table 4" in md and "†" not in md
    assert "\\begin{tabular}" in tex and "table3\\_" not in tex  # no stray escapes


def test_the_default_runs_never_stand_in_for_an_ablation_row():
    records = ablation_records([("table3-moe-prior", [0.74], GIB), ("table4-mixed-precision", [0.70], GIB)])
    records += [make_record(method="mpismoe", task="rte", seed=s, score=v, peak=GIB // 2)
                for s, v in enumerate([0.76, 0.78])]
    df, _ = build_leaderboard(records)
    _, t4 = ablations.ablation_tables(df)
    assert t4.rows[3][1] == "table4-mixed-noise" and t4.rows[3][3] == "no runs"
    # the defaults alone make no ablation table
    assert ablations.ablation_tables(build_leaderboard(records[2:])[0]) == []


def test_ablation_row_with_runs_of_its_own_is_not_replaced(tmp_path):
    records = ablation_records([("table3-moe-prior", [0.74], GIB), ("table3-base", [0.60], GIB),
                                ("ext-sherl-table4-mixed-noise", [0.70], GIB)])
    df, _ = build_leaderboard(records)
    t3, t4, ext4 = ablations.ablation_tables(df)
    assert t4.rows[0][1] == "table3-base" and t4.rows[0][3] == "60.00 (1)" == t3.rows[0][3]
    assert not any("†" in n for n in t4.notes)
    # our SHERL-base extension: a table of its own, never mixed into the paper's
    assert ext4.title.startswith("Table 4, ours") and ext4.rows[-1][1] == "ext-sherl-table4-mixed-noise"
    assert not any(r[1].startswith("ext-") for r in t3.rows + t4.rows)


def test_no_ablation_runs_no_ablation_files(tmp_path):
    df, _ = build_leaderboard(glue_records("lora", ["rte"]))
    assert ablations.ablation_tables(df) == [] and ablations.export_ablations(df, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_runs_of_an_older_method_version_are_dropped_never_averaged():
    old = [make_record(method="sherl", task="rte", seed=s, score=0.9) for s in range(2)]  # no version: 1
    new = [make_record(method="sherl", task="rte", seed=s, score=0.6) for s in range(2)]
    for r in new:
        r["run"]["method_version"] = 2
    lora = make_record(method="lora", task="rte", seed=0, score=0.7)
    df, report = build_leaderboard(old + new + [lora])
    row = df[df["method"] == "sherl"].iloc[0]
    assert int(row["n"]) == 2 and row["score_mean"] == pytest.approx(0.6)
    assert report.older == 2 and "2 older method version" in str(report)
    assert int(df[df["method"] == "lora"].iloc[0]["n"]) == 1  # other methods untouched


def test_a_row_whose_seeds_ran_on_different_commits_is_flagged():
    a, b, c = (make_record(seed=s, score=0.6 + s / 10) for s in range(3))
    c["run"]["git_commit"] = "1" * 40  # unknown to this checkout: it stands for itself
    df, _ = build_leaderboard([a, b, c])
    assert df.iloc[0]["code_versions"] == 2
    assert "(3; 2 code versions)" in tables.to_markdown(df)
    same, _ = build_leaderboard([a, b])
    assert same.iloc[0]["code_versions"] == 1 and "versions)" not in tables.to_markdown(same).split("\n\n")[0]


def test_commits_that_changed_only_results_docs_or_publishing_code_are_one_code_version(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    def commit(path, text):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
        git("add", "-A")
        git("commit", "-qm", path)
        return git("rev-parse", "HEAD")

    git("init", "-q")
    for path in ("benchmark/a.py", "methods/m.py", "tasks/t.py", "pyproject.toml"):
        first = commit(path, "x = 1\n")
    docs_only = commit("README.md", "results changed\n")
    publishing = commit("benchmark/publish/tables.py", "the tables read finished runs only\n")
    code = commit("methods/m.py", "x = 2\n")
    records = [make_record(seed=s, score=0.6) for s in range(3)]
    for r, c in zip(records, (first, docs_only, publishing)):
        r["run"]["git_commit"] = c
    df, _ = build_leaderboard(records, repo_dir=tmp_path)
    assert df.iloc[0]["code_versions"] == 1 and "versions)" not in tables.to_markdown(df).split("\n\n")[0]
    records[2]["run"]["git_commit"] = code
    df, _ = build_leaderboard(records, repo_dir=tmp_path)
    assert df.iloc[0]["code_versions"] == 2 and "(3; 2 code versions)" in tables.to_markdown(df)
    records[2]["run"]["git_commit"] = commit("benchmark/a.py", "x = 3\n")  # the run's own code, outside publish/
    df, _ = build_leaderboard(records, repo_dir=tmp_path)
    assert df.iloc[0]["code_versions"] == 2
