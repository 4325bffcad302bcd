"""Importing ``tasks`` registers every task in ``tasks.base.TASKS``."""
from tasks.base import TASKS

import tasks.glue  # noqa: F401,E402
import tasks.rotten_tomatoes  # noqa: F401,E402
import tasks.vl  # noqa: F401,E402

__all__ = ["TASKS"]
