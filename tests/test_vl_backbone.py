"""The vision-language backbone: every method taps it as it taps a text backbone; the visual adapter
trains under every method that reads the embedding output; the frozen text weights stay frozen."""
import pytest
import torch

import methods  # noqa: F401
from helpers import build_module, one_step, tiny_batch
from methods.base import METHODS
from test_methods import HEAD, MAY_STAY, TRAINS

TOKENS, DIM = 4, 16


def vl_module(method: str, images: int = 1):
    from benchmark.backbones.vl import VisionLanguageBackbone

    return build_module(method, "tiny-bert", wrap=lambda text: VisionLanguageBackbone(
        text, encoder_name="tiny-vision", feature_dim=DIM, tokens=TOKENS, images=images))


def vl_batch(backbone, images: int = 1, n: int = 4):
    batch = tiny_batch(backbone, n=n)
    g = torch.Generator().manual_seed(1)
    batch["visual_feats"] = torch.randn(n, images, TOKENS, DIM, generator=g)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones(n, images * TOKENS, dtype=torch.long)], 1)
    return batch


def test_embed_appends_the_visual_tokens_after_the_text():
    from benchmark.backbones import load_backbone
    from benchmark.backbones.vl import VisionLanguageBackbone

    text = load_backbone("tiny-bert")
    vl = VisionLanguageBackbone(text, encoder_name="tiny-vision", feature_dim=DIM, tokens=TOKENS, images=2)
    batch = vl_batch(vl, images=2)
    emb = vl.embed(batch)
    L = batch["input_ids"].shape[1]
    assert emb.shape == (4, L + 2 * TOKENS, text.hidden_size)
    assert torch.equal(emb[:, :L], text.embed(batch))  # the text part is the text backbone's own
    # the two images are told apart (image embedding), even with identical features
    batch["visual_feats"][:, 1] = batch["visual_feats"][:, 0]
    emb = vl.embed(batch)
    assert not torch.allclose(emb[:, L:L + TOKENS], emb[:, L + TOKENS:])
    assert vl.name == "tiny-bert+tiny-vision" and vl.layers is text.layers
    states, _ = vl.hidden_states(batch)
    assert states[-1].shape == emb.shape


@pytest.mark.parametrize("method", METHODS.names())
def test_only_the_method_and_the_visual_adapter_change(method):
    module = vl_module(method)
    batch = vl_batch(module.method.backbone)
    names = [n for n, _ in module.named_parameters()]
    visual = {n for n in names if n.startswith("method.backbone.visual.")}
    expected = {n for n in names if n.startswith(HEAD) or TRAINS[method](n, module)} | visual
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == expected
    changed, _ = one_step(module, batch)
    may_stay = {n for n in expected if MAY_STAY.get(method, lambda n: False)(n)}
    assert visual <= changed, f"{method}: the visual adapter did not train"
    assert changed <= expected and expected - may_stay <= changed
