"""rotten_tomatoes: the card (read without importing torch); the code is in ``task.py``. The default task,
and the paper's sentiment task at the default budget (one epoch, batch 32, length 64; the committed results
are that), where the methods' ablation rows run too."""
from tasks import TaskCard

CARDS = [TaskCard("rotten_tomatoes", "tasks.rotten_tomatoes.task:TASK", default=True, paper_budget={},
                  paper_variants=True, paper_order=0)]
