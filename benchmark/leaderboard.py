"""Kept for old imports and ``python -m benchmark.leaderboard``: the leaderboard lives in ``benchmark.publish``
(the frame in ``publish.leaderboard``, its tables in ``publish.tables``)."""
from __future__ import annotations

from benchmark.publish import leaderboard_main as main  # noqa: F401
from benchmark.publish.leaderboard import Report, build_leaderboard, pareto_front  # noqa: F401

if __name__ == "__main__":
    import sys

    from benchmark.cli import main as cli

    sys.exit(cli(["leaderboard", *sys.argv[1:]]))
