"""The trainable percentage with the papers' denominator (the backbone's own parameters, as LST's code divides),
and the published T5-base layer lists: on the t5-base architecture with fake tensors (shapes only, nothing
downloaded), SHERL's and LST's reported shares come out."""
import pytest
import torch

import methods  # noqa: F401  (registers)
from helpers import build_module, toy_task


def t5_base_counts(method: str, variant: str) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmark.memory.architecture import backbone_config, build_backbone
    from benchmark.memory.fake import swappable_params
    from benchmark.module import METLModule
    from benchmark.run import parameter_counts
    from methods.base import METHODS

    cls = METHODS.get(method)
    label, config, pooling = backbone_config("t5-base")
    mode = FakeTensorMode()
    with mode, swappable_params(mode):
        backbone = build_backbone(config, label, pooling, head="seq2seq")
        m = cls(backbone, cls.config_class(**cls.variants.get(variant, {})))
        module = METLModule(m, toy_task(), lr=1e-3, weight_decay=0.0, warmup_steps=0, head_dropout=0.0)
        return {**parameter_counts(module, m), "method": m}


@pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")
@pytest.mark.parametrize("method, paper, measured", [("sherl", 0.85, 0.8556), ("lst", 1.74, 1.7401)])
def test_paper_layers_on_t5_base_give_the_papers_trainable_percent(method, paper, measured):
    counts = t5_base_counts(method, "paper-layers")
    assert counts["backbone_params"] == 222_903_552  # T5-base with its tied LM head, counted once
    assert counts["trainable_percent"] == pytest.approx(paper, abs=0.01)
    assert counts["trainable_percent"] == pytest.approx(measured, abs=5e-4)
    assert counts["trainable_percent_of_total"] < counts["trainable_percent"]  # the side network in the total
    m = counts["method"]
    if method == "lst":
        assert m.source_layers == m.decoder_source_layers == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    else:
        assert m.taps == [0, 2, 3, 4, 6, 7, 8, 10, 11, 12] and m.decoder_taps == [0, 2, 3, 4, 6, 7, 8, 10, 11]


def test_the_denominator_is_the_backbone_before_the_method_adds_to_it():
    """LoRA's adapters live inside the backbone's model: they count as trainable, never as backbone."""
    from benchmark.run import parameter_counts

    plain = build_module("lst", "tiny-bert", init="random")
    lora = build_module("lora", "tiny-bert", r=2)
    counts = parameter_counts(lora, lora.method)
    own = plain.method.backbone.own_parameter_count
    assert own == sum(p.numel() for p in plain.method.backbone.model.parameters())
    assert counts["backbone_params"] == own < counts["total_params"]
    assert counts["trainable_percent"] == pytest.approx(100 * counts["trainable_params"] / own)
    assert counts["trainable_percent_of_total"] == pytest.approx(100 * counts["trainable_params"] / counts["total_params"])
