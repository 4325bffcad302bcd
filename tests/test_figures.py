"""Figures from fixture results: PNGs are written, labels and titles say what is plotted (read from the
Figure objects, not pixels), and a missing or broken input skips its figure instead of failing."""
import json

import pandas as pd
import pytest

from benchmark import figures as figures_cli
from benchmark.publish import figures
from benchmark.publish.leaderboard import build_leaderboard
from benchmark.results import load_results, result_path, write_result
from test_results import make_record

GIB = 1024 ** 3
PNG = b"\x89PNG\r\n\x1a\n"

MEMORY_CSV = """method,variant,peak_train_bytes,peak_train_gib,ratio_to_full,weights,grads,optimizer,activations,other,trainable_params,backbone_storage_bytes,step_seconds,peak_source,cuda_max_allocated,cuda_max_reserved,batch_size,max_length,precision,backbone,device
full,full,1519284948,1.41,1.0,90272776,90264584,180529580,1158119424,98584,22566146,90269696,10.0,tracker,,,32,128,32-true,minilm,cpu: test
lora,lora,1045518752,0.97,0.69,91452424,1182728,2365560,950419456,98584,295682,91449344,5.6,tracker,,,32,128,32-true,minilm,cpu: test
mpismoe,table4-mixed-noise,186270436,0.17,0.12,30648140,378444,757044,154388224,98584,94611,30269696,2.0,tracker,,,32,128,32-true,minilm,cpu: test
"""
QUANT_CSV = """quantizer,bits,group_size,mse,mse_ratio_to_rtn,output_error,bytes_per_weight,storage_ratio_fp32,layers,weights,quantize_seconds
gnpiq,2,64,0.00041,0.49,0.08,0.3125,0.08,36,10616832,9.5
rtn,2,64,0.00083,1.0,0.16,0.3125,0.08,36,10616832,0.9
gnpiq,4,64,2.7e-05,0.79,0.005,0.5625,0.14,36,10616832,8.6
rtn,4,64,3.4e-05,1.0,0.006,0.5625,0.14,36,10616832,1.2
"""


@pytest.fixture
def results_dir(tmp_path):
    for seed, score in enumerate([0.70, 0.72, 0.74]):
        rec = make_record(method="lora", task="rte", seed=seed, score=score, peak=2 * GIB)
        write_result(rec, result_path(tmp_path, rec))
        rec = make_record(method="sherl", task="rte", seed=seed, score=score - 0.05, peak=GIB // 2)
        write_result(rec, result_path(tmp_path, rec))
    rec = make_record(method="mpismoe", task="rte", seed=0, score=0.71, peak=GIB // 4)
    write_result(rec, result_path(tmp_path, rec))
    (tmp_path / "memory.csv").write_text(MEMORY_CSV)
    (tmp_path / "quantization.csv").write_text(QUANT_CSV)
    return tmp_path


def test_score_vs_memory_figure(results_dir):
    df, _ = build_leaderboard(*load_results(results_dir))
    fig = figures.accuracy_memory_figure(df)
    ax = fig.axes[0]
    assert "GiB" in ax.get_xlabel() and "test score (%)" in ax.get_ylabel()
    title = ax.get_title()
    assert "rte v1" in title and "minilm" in title and "cpu: test" in title and "n = 1–3 seeds" in title
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0] == "Pareto front" and {"lora (n=3)", "sherl (n=3)", "mpismoe (n=1)"} <= set(labels)
    assert {t.get_text() for t in ax.texts} == {"lora", "sherl", "mpismoe"}  # every point labelled
    # all three are on the front (each has less memory or a better score); the step is held to the largest memory
    (front,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert max(front.get_xdata()) == pytest.approx(2.0) and ax.get_xscale() == "log"  # 8x spread in memory


def test_memory_breakdown_figure():
    import io

    rows = pd.read_csv(io.StringIO(MEMORY_CSV))
    fig = figures.memory_breakdown_figure(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "peak training memory (GiB)"
    assert "batch 32" in ax.get_title() and "length 128" in ax.get_title() and "cpu: test" in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert set(labels) == {"weights", "gradients", "optimizer state", "activations", "other", "measured peak"}
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mpismoe@table4-mixed-noise", "lora", "full"]
    full = [p for p in ax.patches if p.get_y() + p.get_height() / 2 == pytest.approx(2)]  # the top bar
    assert sum(p.get_width() for p in full) == pytest.approx(1519284948 / GIB)  # stacked parts = the peak


def test_quantization_figure():
    import io

    fig = figures.quantization_figure(pd.read_csv(io.StringIO(QUANT_CSV)))
    mse, ratio = fig.axes
    assert mse.get_yscale() == ratio.get_yscale() == "log"
    assert mse.get_xlabel() == "bits per weight (n)" and "MSE" in mse.get_ylabel() and "round-to-nearest" in ratio.get_ylabel()
    assert "GNP-IQ" in fig.get_suptitle() and "group size 64" in fig.get_suptitle()
    assert set(ratio.get_legend_handles_labels()[1]) == {"gnpiq", "rtn", "= round-to-nearest"}


def test_write_figures_writes_pngs_and_a_manifest(results_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    paths = figures.write_figures(results_dir, out)
    assert [p.name for p in paths] == ["score_vs_memory__rte-v1__minilm__1ep-b32-len64__cpu-test.png",
                                       "memory_breakdown__minilm__b32-l128-32-true__cpu-test.png",
                                       "quantization_error.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    manifest = json.loads((out / "figures.json").read_text())
    assert [e["file"] for e in manifest] == [p.name for p in paths]
    assert manifest[0]["task"] == "rte" and manifest[0]["device"] == "cpu: test"
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in paths] + ["figures.json"])


def test_missing_and_broken_inputs_are_skipped_with_a_note(tmp_path, capsys):
    assert figures.write_figures(tmp_path, tmp_path / "figs") == []
    out = capsys.readouterr().out
    assert "no ok runs" in out and "memory.csv" in out and "quantization.csv" in out
    (tmp_path / "memory.csv").write_bytes(b"\x00\xff garbage")
    (tmp_path / "quantization.csv").write_text("quantizer,bits\ngnpiq,2\n")  # no mse column
    assert figures.write_figures(tmp_path, tmp_path / "figs") == []
    out = capsys.readouterr().out
    assert "skipped memory.csv" in out and "skipped quantization.csv: no column group_size, mse" in out


def test_cli_lists_the_files_and_refreshes_the_page(results_dir, capsys):
    assert figures_cli.main(["--results-dir", str(results_dir)]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 figures" in out and "quantization_error.png" in out and "index.html" in out
    page = (results_dir / "index.html").read_text()
    assert 'src="figures/quantization_error.png"' in page and page.count("<figure ") == 3


def test_learning_curves_per_task_from_the_records_val_curve(tmp_path):
    """Runs with a ``val_curve`` get a learning-curve figure (score vs steps and vs seconds, mean over seeds);
    runs without one (records from before) get none, and an older method version is left out."""
    from benchmark.publish.figures import curve_groups, learning_curve_figure

    for seed in range(2):
        for method, start in (("lora", 0.5), ("sherl", 0.6)):
            rec = make_record(method=method, task="rte", seed=seed, score=start + 0.2)
            rec["metrics"]["val_curve"] = [{"step": 10 * (i + 1), "seconds": 2.0 * (i + 1) + seed,
                                            "score": start + 0.1 * i + 0.01 * seed} for i in range(3)]
            write_result(rec, result_path(tmp_path, rec))
    old = make_record(method="sherl", task="rte", seed=0, score=0.1)
    old["run"]["method_version"] = 0
    old["metrics"]["val_curve"] = [{"step": 10, "seconds": 1.0, "score": 0.1}]
    write_result(old, tmp_path / "runs" / "old.json")
    plain = make_record(method="full", task="rte", seed=0, score=0.9)  # no curve
    write_result(plain, result_path(tmp_path, plain))

    records, _ = load_results(tmp_path)
    groups = curve_groups(records)
    (key, methods), = groups.items()
    assert sorted(methods) == ["lora", "sherl"] and all(len(c) == 2 for c in methods.values())
    fig = learning_curve_figure(key, methods)
    steps, seconds = fig.axes
    assert steps.get_xlabel() == "training steps" and "seconds" in seconds.get_xlabel()
    assert "validation score (%)" == steps.get_ylabel() and "rte" in fig.get_suptitle()
    line = next(ln for ln in steps.get_lines() if ln.get_label().startswith("lora"))
    assert list(line.get_xdata()) == [10, 20, 30] and line.get_ydata()[0] == pytest.approx(50.5)

    paths = figures.write_figures(tmp_path)
    curves = [p for p in paths if p.name.startswith("learning_curves__rte-v1")]
    assert len(curves) == 1 and curves[0].read_bytes().startswith(PNG)
    manifest = json.loads((tmp_path / "figures" / "figures.json").read_text())
    assert any(e["kind"] == "learning_curves" for e in manifest)
