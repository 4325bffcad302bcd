"""The HTML page: one row per leaderboard row, the filters, nothing fetched from outside; and, when a
Chromium is on PATH, the page really sorts and filters in a headless browser (state from the URL hash)."""
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest

from benchmark.publish import publish
from benchmark.publish.leaderboard import build_leaderboard
from benchmark.results import load_results, result_path, write_result
from test_results import make_record

GIB = 1024 ** 3
# (task, method, score, peak GiB): memory 10 GiB vs 9 GiB vs 2 GiB sorts wrongly as text ("10" < "2" < "9")
RUNS = [("rte", "full", 0.80, 10), ("rte", "lora", 0.78, 9), ("rte", "sherl", 0.74, 2),
        ("sst2", "full", 0.93, 10), ("sst2", "sherl", 0.91, 2)]


def write_page(results_dir):
    """The page as ``make leaderboard`` writes it (tables first, the figures already there)."""
    publish(results_dir, figures=False)
    return results_dir / "index.html"


@pytest.fixture
def results_dir(tmp_path):
    for task, method, score, gib in RUNS:
        for seed in (0, 1):
            rec = make_record(method=method, task=task, seed=seed, score=score + 0.01 * seed, peak=gib * GIB)
            write_result(rec, result_path(tmp_path, rec))
    rec = make_record(method="lora", task="sst2", seed=0, status="failed", error="CUDA out of memory")
    write_result(rec, result_path(tmp_path, rec))
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "quantization_error.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return tmp_path


class Rows(HTMLParser):
    """The leaderboard's body rows: (attributes, {data-k: cell text}) in document order."""

    def __init__(self, text: str):
        super().__init__()
        self.rows, self._in, self._cell = [], False, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._in = attrs.get("id") == "lb"
        elif self._in and tag == "tr" and "data-task" in attrs:
            self.rows.append((attrs, {}))
        elif self._in and tag == "td" and self.rows:
            self._cell = attrs.get("data-k")
            self.rows[-1][1][self._cell] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False
        elif tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell and self.rows:
            self.rows[-1][1][self._cell] += data


def test_page_has_every_row_the_filters_and_no_outside_resources(results_dir):
    page = write_page(results_dir)
    assert page == results_dir / "index.html"
    text = page.read_text()
    df, _ = build_leaderboard(*load_results(results_dir))
    rows = Rows(text).rows
    assert len(rows) == len(df) == 5
    assert [(a["data-task"], c["method"]) for a, c in rows] == list(zip(df["task"], df["method"]))
    first = rows[0][1]
    assert first["score"] == "80.50 ± 0.71" and first["n"] == "2" and first["memory"] == "10.000"
    assert first["params"] == "1.00" and first["device"] == "cpu: test"
    assert [c["pareto"] for _, c in rows] == ["★", "★", "★", "★", "★"]  # each is best or smallest somewhere
    for name, options in (("task", ["rte", "sst2"]), ("backbone", ["minilm"]), ("device", ["cpu: test"])):
        select = re.search(rf'<select id="f-{name}" data-filter="{name}">(.*?)</select>', text).group(1)
        assert re.findall(r'<option value="([^"]*)">', select) == [""] + options
    assert "1 failed" in text  # what went in
    assert 'src="figures/quantization_error.png"' in text
    assert not re.search(r'(src|href)="(https?:)?//', text) and "@import" not in text


def chromium():
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


needs_browser = pytest.mark.skipif(chromium() is None, reason="no chromium/chromium-browser/google-chrome on PATH")


def browse(tmp_path, *args):
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@needs_browser
def test_browser_screenshot(results_dir, tmp_path):
    page = write_page(results_dir)
    shot = tmp_path / "shot.png"
    browse(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1280, 900)
    assert len(data) > 20_000  # a rendered table, not a blank page


@needs_browser
def test_browser_sorts_and_filters_from_the_url_hash(results_dir, tmp_path):
    page = write_page(results_dir)

    def shown(hash_):
        dom = browse(tmp_path, "--dump-dom", page.as_uri() + hash_).stdout
        rows = Rows(dom).rows
        visible = [(c["task"], c["method"]) for a, c in rows if "hidden" not in a]
        assert len(rows) == 5 and f"{len(visible)} of 5 rows" in dom  # filtered rows are hidden, not removed
        return visible

    # numbers sort as numbers: 2 < 9 < 10 GiB; ties keep the table's order
    assert shown("#sort=memory_asc") == [("rte", "sherl"), ("sst2", "sherl"), ("rte", "lora"), ("rte", "full"),
                                         ("sst2", "full")]
    assert shown("#sort=score_desc") == [("sst2", "full"), ("sst2", "sherl"), ("rte", "full"), ("rte", "lora"),
                                         ("rte", "sherl")]
    assert shown("#sort=method_asc&task=rte") == [("rte", "full"), ("rte", "lora"), ("rte", "sherl")]
