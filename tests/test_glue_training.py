"""Every registered method trains one step on every GLUE task's real loader (tiny original-format
files), through the real data module, on a tiny backbone."""
import pytest
import torch

import methods  # noqa: F401
import tasks  # noqa: F401
from benchmark.data import TaskDataModule
from helpers import build_module
from methods.base import METHODS
from tasks.base import TASKS
from test_tasks import write_glue

GLUE = ["cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb"]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue_train")
    write_glue(root)
    return root


@pytest.fixture(scope="module")
def batches(glue_dir):
    from benchmark.backbones import load_backbone

    tok = load_backbone("tiny-bert").tokenizer
    out = {}
    for name in GLUE:
        dm = TaskDataModule(TASKS.get(name), tok, max_length=32, batch_size=8, eval_batch_size=8,
                            data_dir=str(glue_dir))
        dm.setup()
        out[name] = next(iter(dm.train_dataloader()))
    return out


@pytest.mark.parametrize("method", METHODS.names())
def test_one_step_on_every_glue_task(method, batches):
    for name in GLUE:
        task = TASKS.get(name)
        module = build_module(method, "tiny-bert", task=task)
        batch = batches[name]
        module.train()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
        loss = task.loss(module(batch), batch["labels"])
        assert torch.isfinite(loss), (method, name)
        loss.backward()
        opt.step()
        module.eval()
        with torch.no_grad():
            preds = task.predictions(module(batch))
        metrics = task.make_metrics()
        values = {k: m(preds, batch["labels"]) for k, m in metrics.items()}
        assert torch.isfinite(task.score(values)) or name == "cola", (method, name)


@pytest.fixture(scope="module")
def t5_batches(glue_dir):
    """Every GLUE task's real loader in its text-to-text form (T5 input template), tokenized for tiny-t5."""
    from benchmark.backbones import load_backbone

    tok = load_backbone("tiny-t5", head="seq2seq").tokenizer
    out = {}
    for name in GLUE:
        dm = TaskDataModule(TASKS.get(name), tok, max_length=32, batch_size=4, eval_batch_size=4,
                            data_dir=str(glue_dir), text_to_text=True)
        dm.setup()
        out[name] = next(iter(dm.train_dataloader()))
    return out


@pytest.mark.parametrize("method", METHODS.names())
def test_one_seq2seq_step_on_every_glue_task(method, t5_batches):
    """The seq2seq kind: teacher forcing on each task's label words, then rank classification scores."""
    cfg = {"lora": {"r": 2}, "lst": {"fisher_samples": 4}}.get(method, {})
    for name in GLUE:
        task = TASKS.get(name)
        module = build_module(method, "tiny-t5", task=task, head="seq2seq", **cfg)
        batch = t5_batches[name]
        module.method.prepare([batch], task)
        module.train()
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
        loss = module.head.loss(module.method, module.inputs(batch), batch)
        assert torch.isfinite(loss), (method, name)
        loss.backward()
        opt.step()
        module.eval()
        with torch.no_grad():
            scores = module(batch)
        assert scores.shape == (len(batch["labels"]), len(task.text_to_text.label_words)), (method, name)
        preds = module.head.predictions(scores)
        values = {k: m(preds, batch["labels"]) for k, m in task.make_metrics().items()}
        assert torch.isfinite(task.score(values)) or name in ("cola", "stsb"), (method, name)
