"""``python -m benchmark.figures [--results-dir results] [--out results/figures]`` (``make figures``): the
figures step of ``benchmark.publish``; the plots themselves are in ``benchmark.publish.figures``."""
from __future__ import annotations

from benchmark.cli import entry_point
from benchmark.publish import figures_main

main = entry_point()(figures_main)  # bad input: one line, exit 2

if __name__ == "__main__":
    raise SystemExit(main())
