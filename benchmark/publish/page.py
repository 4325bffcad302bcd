"""One static HTML page of the results (``results/index.html``): the leaderboard as a sortable,
filterable table, the paper-layout tables and the figures.

Self-contained on purpose: inline CSS and JS, no CDN, images by relative path, so it opens from disk
with no server and can be committed next to the files it shows. State lives in the URL hash
(``#sort=score_desc&task=<task>&backbone=<backbone>&device=...``), so a view can be linked, and a headless
browser can be pointed at one (the page test does).
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pandas as pd

from benchmark.publish import fmt
from benchmark.publish.names import NO_PAPER_TABLES
from benchmark.results import atomic_write_text

# (key used in the hash and data attributes, header, numeric)
COLUMNS = [("task", "task", False), ("version", "v", True), ("backbone", "backbone", False),
           ("budget", "budget", False), ("device", "device", False), ("method", "method", False), ("score", "test score (mean ± std)", True),
           ("n", "n", True), ("memory", "peak train mem (GiB)", True), ("params", "params %", True),
           ("trainable", "trainable params", True), ("step", "step (s)", True), ("pareto", "Pareto", True)]
FILTERS = ("task", "backbone", "budget", "device")


def _cell(key: str, text: str, value=None) -> str:
    """A ``<td>``; ``data-v`` carries the raw number the sort uses (empty = missing, sorts last)."""
    attr = f' data-k="{key}"'
    if value is not None:
        attr += f' data-v="{"" if fmt.isnan(value) else repr(float(value))}"'
    return f"<td{attr}>{html.escape(text)}</td>"


def _row(r: pd.Series) -> str:
    score = fmt.score(r["score_mean"], r["score_std"], fmt.is_percent(r["higher_is_better"], r["score_mean"]))
    step = r.get("step_seconds")
    cells = [
        _cell("task", str(r["task"])), _cell("version", str(r["task_version"]), r["task_version"]),
        _cell("backbone", str(r["backbone"])), _cell("budget", str(r["budget"])), _cell("device", str(r["device"])), _cell("method", str(r["method"])),
        _cell("score", score, r["score_mean"]), _cell("n", str(r["n"]), r["n"]),
        _cell("memory", f"{r['peak_train_gib']:.3f}", r["peak_train_gib"]),
        _cell("params", f"{r['trainable_percent']:.2f}", r["trainable_percent"]),
        _cell("trainable", f"{int(r['trainable_params']):,}", r["trainable_params"]),
        _cell("step", fmt.fixed(step), step),
        _cell("pareto", "★" if r["pareto"] else "", 1.0 if r["pareto"] else 0.0),
    ]
    data = " ".join(f'data-{k}="{html.escape(str(r[c]), quote=True)}"'
                    for k, c in (("task", "task"), ("backbone", "backbone"), ("budget", "budget"), ("device", "device")))
    cls = ' class="pareto"' if r["pareto"] else ""
    return f"<tr {data}{cls}>" + "".join(cells) + "</tr>"


def _select(name: str, values: list[str]) -> str:
    options = ['<option value="">all</option>'] + [
        f'<option value="{html.escape(v, quote=True)}">{html.escape(v)}</option>' for v in values]
    return (f'<label>{name} <select id="f-{name}" data-filter="{name}">' + "".join(options)
            + "</select></label>")


def _static_table(table) -> str:
    """A ``benchmark.publish.tables.Table`` as plain HTML (the paper-layout and ablation tables)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if n else ""}">{html.escape(c)}</td>'
                                    for c, n in zip(row, table.numeric)) + "</tr>" for row in table.rows)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    return (f"<h3>{html.escape(table.title)}</h3><table class=\"static\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{notes}")


def _figures(figures_dir: Path, page_dir: Path) -> list[dict]:
    """The figures to embed: ``figures.json`` (written by ``publish.figures``) when present, else every PNG."""
    if not figures_dir.is_dir():
        return []
    manifest = figures_dir / "figures.json"
    entries = []
    if manifest.is_file():
        try:
            entries = [e for e in json.loads(manifest.read_text(encoding="utf-8")) if isinstance(e, dict)]
        except (OSError, ValueError):
            entries = []
    if not entries:
        entries = [{"file": p.name, "title": p.stem} for p in sorted(figures_dir.glob("*.png"))]
    out = []
    for e in entries:
        path = figures_dir / str(e.get("file", ""))
        if path.suffix == ".png" and path.is_file():
            out.append({**e, "src": Path(os.path.relpath(path, page_dir)).as_posix()})
    return out


def _figure_html(fig: dict) -> str:
    data = " ".join(f'data-{k}="{html.escape(str(fig[k]), quote=True)}"' for k in FILTERS if fig.get(k))
    title = html.escape(str(fig.get("title", fig["src"])))
    src = html.escape(fig["src"], quote=True)
    return (f'<figure {data}><a href="{src}"><img src="{src}" alt="{title}" loading="lazy"></a>'
            f"<figcaption>{title}</figcaption></figure>")


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;white-space:nowrap}
th{background:#f3f3f3;text-align:left;white-space:normal;vertical-align:bottom}td[data-v],td.num{text-align:right;font-variant-numeric:tabular-nums}
#lb th{cursor:pointer;user-select:none}#lb th[aria-sort=ascending]::after{content:" ▲"}
#lb th[aria-sort=descending]::after{content:" ▼"}tr.pareto td{background:#fff8e1}
.filters label{margin-right:1em}.note{color:#555;font-size:.9em;max-width:70em}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:48%}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}[hidden]{display:none!important}
"""

JS = r"""
(function () {
  var table = document.getElementById('lb'), tbody = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var rows = Array.prototype.slice.call(tbody.rows);
  rows.forEach(function (tr, i) { tr.dataset.i = i; });
  var selects = Array.prototype.slice.call(document.querySelectorAll('select[data-filter]'));
  var state = {sort: null, dir: 'asc'};

  function key(tr, k) {
    var td = tr.querySelector('td[data-k="' + k + '"]');
    if (!td) return null;
    if (td.hasAttribute('data-v')) { var v = td.getAttribute('data-v'); return v === '' ? null : parseFloat(v); }
    return td.textContent;
  }
  function compare(a, b) {
    var x = key(a, state.sort), y = key(b, state.sort);
    if (x === null || y === null) {  // missing values last, whatever the direction
      if (x === y) return a.dataset.i - b.dataset.i;
      return x === null ? 1 : -1;
    }
    var c = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
    if (state.dir === 'desc') c = -c;
    return c || a.dataset.i - b.dataset.i;
  }
  function render() {
    var sorted = rows.slice();
    if (state.sort) sorted.sort(compare);
    sorted.forEach(function (tr) { tbody.appendChild(tr); });
    var shown = 0;
    rows.forEach(function (tr) {
      var ok = selects.every(function (s) { return !s.value || tr.getAttribute('data-' + s.dataset.filter) === s.value; });
      tr.hidden = !ok; if (ok) shown++;
    });
    document.querySelectorAll('figure').forEach(function (f) {
      f.hidden = !selects.every(function (s) {
        var v = f.getAttribute('data-' + s.dataset.filter); return !s.value || v === null || v === s.value; });
    });
    heads.forEach(function (th) {
      if (th.dataset.k === state.sort) th.setAttribute('aria-sort', state.dir === 'asc' ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    });
    document.getElementById('count').textContent = shown + ' of ' + rows.length + ' rows';
  }
  function toHash() {
    var p = new URLSearchParams();
    if (state.sort) p.set('sort', state.sort + '_' + state.dir);
    selects.forEach(function (s) { if (s.value) p.set(s.dataset.filter, s.value); });
    var h = p.toString();
    try { history.replaceState(null, '', h ? '#' + h : location.pathname + location.search); }
    catch (e) { /* some browsers refuse history on file:// pages; the view still works */ }
  }
  function fromHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ''));
    var s = p.get('sort');
    if (s) {
      var cut = s.lastIndexOf('_'), dir = cut > 0 ? s.slice(cut + 1) : '';
      state.sort = dir === 'asc' || dir === 'desc' ? s.slice(0, cut) : s;
      state.dir = dir === 'desc' ? 'desc' : 'asc';
    }
    selects.forEach(function (sel) {
      var v = p.get(sel.dataset.filter);
      sel.value = v !== null && Array.prototype.some.call(sel.options, function (o) { return o.value === v; }) ? v : '';
    });
  }
  heads.forEach(function (th) {
    th.addEventListener('click', function () {
      if (state.sort === th.dataset.k) state.dir = state.dir === 'asc' ? 'desc' : 'asc';
      else { state.sort = th.dataset.k; state.dir = th.dataset.num === '1' ? 'desc' : 'asc'; }
      render(); toHash();
    });
  });
  selects.forEach(function (s) { s.addEventListener('change', function () { render(); toHash(); }); });
  window.addEventListener('hashchange', function () { fromHash(); render(); });
  fromHash(); render();
})();
"""


def render_page(df: pd.DataFrame, figures: list[dict] = (), tables: list = (), report_lines: list[str] = (),
                links: list[str] = ()) -> str:
    """The page's HTML from a leaderboard frame (``build_leaderboard``), figure entries and static tables."""
    head = "".join(f'<th data-k="{k}" data-num="{int(num)}" title="click to sort">{html.escape(h)}</th>'
                   for k, h, num in COLUMNS)
    body = "\n".join(_row(r) for _, r in df.iterrows())
    selects = "".join(_select(f, sorted({str(v) for v in df[f]})) for f in FILTERS)
    report = ("<details><summary>what went in</summary><pre>" + html.escape("\n".join(report_lines))
              + "</pre></details>") if report_lines else ""
    link_html = " · ".join(f'<a href="{html.escape(p, quote=True)}">{html.escape(p)}</a>' for p in links)
    figs = "".join(_figure_html(f) for f in figures) or '<p class="note">No figures yet: run ' \
        '<code>python -m benchmark.figures</code>.</p>'
    static = "".join(_static_table(t) for t in tables)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>metl-bench results</title><style>{CSS}</style></head>
<body>
<h1>metl-bench: accuracy vs peak training memory</h1>
<p class="note">Test score: mean ± sample std over seeds (fractions in percent), n = seeds. Memory: peak training
bytes / 1024^3 (GiB); compare memory only within one backbone and device. params % = trainable parameters (task head included) / the backbone's own, as the papers count. ★ = Pareto front of score vs memory
within a task, version, backbone, budget (epochs, batch, length, subsets; plateau = until validation stops improving; tuned = the make tune values) and device. Click a header to sort (again to reverse); the view is kept in the
URL hash. {link_html}</p>
{report}
<div class="filters">{selects} <span id="count"></span></div>
<table id="lb"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<h2>Tables in the paper's layout</h2>
{static or '<p class="note">' + NO_PAPER_TABLES + '</p>'}
<h2>Figures</h2>
<div id="figures">{figs}</div>
<script>{JS}</script>
</body></html>
"""


def write_page(out: str | os.PathLike, df: pd.DataFrame, report_lines: list[str] = (), tables: list = (),
               figures_dir: str | os.PathLike | None = None) -> Path:
    """Write the page to ``out`` and return its path: the leaderboard frame, the report's lines and the tables
    as given (nothing is read from the results here); the figures come from ``figures_dir`` (default
    ``figures/`` beside the page), the links are the table files beside it."""
    out = Path(out)
    figures = _figures(Path(figures_dir) if figures_dir is not None else out.parent / "figures", out.parent)
    links = [n for n in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "ablations.md")
             if (out.parent / n).is_file()]
    return atomic_write_text(out, render_page(df, figures, list(tables), list(report_lines), links))
