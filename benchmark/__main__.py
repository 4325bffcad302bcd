"""``python -m benchmark <command>``: the one CLI, in benchmark/cli.py."""
import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
