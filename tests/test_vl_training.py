"""VQAv2, GQA and NLVR2 end to end: tiny datasets in the official formats, through the real loaders, the
feature cache and the orchestrator (train, select on val, test once), for a side method and for LoRA."""
import json

import pytest

import tasks.vl.loaders as loaders
from benchmark import results
from benchmark.run import run
from test_vl_tasks import VQA_TRAIN, VQA_VAL, write_gqa, write_nlvr2, write_vqa

TINY = {"backbone": "tiny-bert", "vision": "tiny-vision", "wandb": "disabled", "progress": "false", "epochs": "1",
        "batch_size": "4", "max_length": "16", "warmup_steps": "0"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl")
    write_vqa(root / "vqa", VQA_TRAIN, "train2014", root / "vqa" / "train2014")
    write_vqa(root / "vqa", VQA_VAL, "val2014", root / "vqa" / "val2014")
    write_gqa(root / "gqa")
    write_nlvr2(root / "nlvr2")
    return root


@pytest.mark.parametrize("task", ["vqa", "gqa", "nlvr2"])
@pytest.mark.parametrize("method", ["lst", "lora"])
def test_a_run_trains_and_tests_through_the_real_loaders(task, method, data, tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "VQA_MIN_COUNT", 2)
    cache = tmp_path / "features"
    overrides = {**TINY, "method": method, "task": task, "data_dir": str(data / task), "feature_cache": str(cache),
                 "results_dir": str(tmp_path / "results"), "run_dir": str(tmp_path / "runs")}
    if method == "lst":
        overrides["fisher_samples"] = "4"
    rec = json.loads(run(overrides).read_text())
    assert results.validate(rec) == [] and rec["run"]["backbone"] == "tiny-bert+tiny-vision"
    test = rec["metrics"]["test"]
    assert 0.0 <= test["score"] <= 1.0
    if task == "nlvr2":
        assert 0.0 <= test["consistency"] <= 1.0
    if task == "vqa":
        assert "vqa_acc" in test
    assert rec["efficiency"]["peak_train_bytes"] > 0
    assert any(cache.rglob("*.npy"))  # the images went through the feature cache


def test_a_second_run_computes_no_image_features(data, tmp_path, monkeypatch):
    from benchmark.vision import FeatureCache

    computed = []
    original = FeatureCache.features

    def spy(self, encoder, paths, **kw):
        out = original(self, encoder, paths, **kw)
        computed.append(self.computed)
        return out

    monkeypatch.setattr(FeatureCache, "features", spy)
    overrides = {**TINY, "method": "side_tuning", "task": "gqa", "data_dir": str(data / "gqa"),
                 "feature_cache": str(tmp_path / "features"), "results_dir": str(tmp_path / "results"),
                 "run_dir": str(tmp_path / "runs")}
    run(overrides)
    run({**overrides, "seed": "1"})
    assert computed[0] > 0 and computed[1] == 0
