"""The test split is measured whole where validation is a subset (easy_vqa in ``make paper``): a 512-question
test subset adds about +-2 points of sampling error that the seed spread does not show."""
import pytest

from benchmark.config import ConfigError, RunConfig
from benchmark.data import TaskDataModule
from benchmark.results import budget_label
from tasks import TASKS


def _sizes(**limits) -> dict[str, int]:
    dm = TaskDataModule(TASKS.get("easy_vqa"), None, max_length=16, batch_size=2, eval_batch_size=2, **limits)
    return {k: len(v) for k, v in dm.load_raw().items()}


def test_the_test_split_follows_validation_unless_told():
    whole = _sizes()
    assert _sizes(limit_eval_samples=512)["test"] == 512  # -1: as validation, the old behaviour
    sizes = _sizes(limit_train_samples=64, limit_eval_samples=512, limit_test_samples=0)
    assert sizes == {"train": 64, "validation": 512, "test": whole["test"]}
    assert whole["test"] == 9673
    assert _sizes(limit_eval_samples=512, limit_test_samples=1000)["test"] == 1000


def test_the_budget_label_says_when_the_test_split_differs():
    label = lambda **run: budget_label({"config": {"run": run}})  # noqa: E731
    assert label(limit_eval_samples=512) == "1ep-b32-len64-eval512"
    assert label(limit_eval_samples=512, limit_test_samples=512) == "1ep-b32-len64-eval512"
    assert label(limit_eval_samples=512, limit_test_samples=0) == "1ep-b32-len64-eval512-testall"
    assert label(limit_eval_samples=512, limit_test_samples=2000) == "1ep-b32-len64-eval512-test2000"
    assert label(limit_test_samples=0) == "1ep-b32-len64"  # both whole


def test_paper_tests_easy_vqa_whole_and_its_searches_do_not_see_it():
    from benchmark.paper import PAPER_TASKS, search_overrides

    easy = [pt for pt in PAPER_TASKS if pt.task == "easy_vqa"]
    assert easy and all(pt.budget["limit_test_samples"] == "0" for pt in easy)
    tuned = [pt for pt in easy if pt.tuned]
    assert tuned and "limit_test_samples" not in search_overrides({"method": "lora", **tuned[0].budget})


def test_a_bad_test_limit_is_one_line():
    with pytest.raises(ConfigError, match="limit_test_samples"):
        RunConfig(limit_test_samples=-2)
