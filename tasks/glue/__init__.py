"""The eight GLUE tasks: their cards and the paper's Table 2 (GLUE) layout, both read from the one table in
``spec.py`` without importing torch; the code is in ``task.py``."""
from tasks import TaskCard, TaskGroup
from tasks.glue.spec import SPECS

CARDS = [TaskCard(name, f"tasks.glue.task:GLUE.{name}") for name in SPECS]
# the release's folder names are the paper's spellings (CoLA, SST-2, ..., STS-B); glue_avg averages all eight
GROUPS = [TaskGroup("glue", "GLUE (paper Table 2 layout)", tuple(SPECS),
                    names={name: spec.folder for name, spec in SPECS.items()},
                    average_task="glue_avg", every_column=True,
                    average_note="glue_avg = mean of the eight GLUE task means (n = fewest seeds; memory = largest).")]
