"""The vision-language tasks: their cards and the paper's vision-language table (read without importing
torch); the code is in ``task.py``. easy_vqa is the offline one ``make paper`` runs: one epoch over 2,048
training questions (64 steps), validated on a 512-question subset of its validation split (the full epoch of
34,753 questions takes hours per run on 2 CPU cores) and tested once on its whole test split (9,673 questions:
a 512-question test subset adds about +-2 points of sampling error that the seed spread does not show)."""
from tasks import TaskCard, TaskGroup

CARDS = [
    TaskCard("easy_vqa", "tasks.vl.task:EASY_VQA", paper_order=1,
             paper_budget={"limit_train_samples": "2048", "limit_eval_samples": "512", "limit_test_samples": "0"},
             # a trial of make tune: one epoch of the same 2,048 questions, validated every 16 steps (the pruner's
             # reports); the tuned rows: those values on the same subsets for the whole 12-epoch cap, validated every
             # half epoch, tested at the best validation. Not until-plateau (patience 3), which this task had first:
             # the side networks sit at ~0.78 validation for up to 7 epochs, then climb as the learning rate decays,
             # so patience 3 stopped them mid-schedule (MP-ISMoE seed 0: test 73.44 at patience 3, 82.42 at the cap)
             tune_budget={"limit_train_samples": "2048", "limit_eval_samples": "512", "max_steps": "64",
                          "val_check_interval": "16"},
             paper_tuned_budget={"hparams": "tuned", "limit_train_samples": "2048", "limit_eval_samples": "512",
                                 "limit_test_samples": "0", "epochs": "12", "val_check_interval": "0.5"}),
    TaskCard("vqa", "tasks.vl.task:VQA"),
    TaskCard("gqa", "tasks.vl.task:GQA"),
    TaskCard("nlvr2", "tasks.vl.task:NLVR2"),
]
# the paper's VQA/GQA/NLVR2 columns, then easy_vqa; any other task of the family follows by name
GROUPS = [TaskGroup("vl", "Vision-language", ("vqa", "gqa", "nlvr2", "easy_vqa"),
                    names={"vqa": "VQAv2", "gqa": "GQA", "nlvr2": "NLVR2", "easy_vqa": "easy_vqa"})]
