"""A backbone from its architecture config alone (random init, no hub, no tokenizer): what a memory
prediction builds, since only shapes matter and the weights of a large model need not be on disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

from benchmark.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "backbones" / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))




def config_from_json(path: Path):
    from transformers import AutoConfig

    try:
        d = json.loads(Path(path).read_text())
        model_type = d.pop("model_type")
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read an architecture config from {str(path)!r}: "
                        f"{type(e).__name__}: {e}; it needs a model_type") from None
    return AutoConfig.for_model(model_type, **d)


def backbone_config(name: str) -> tuple[str, object, str]:
    """(label, HF config, pooling) of a backbone, from its architecture alone: a registry entry's random
    config, a config shipped in ``backbones/configs``, a local model's ``config.json``, or a path to one."""
    from benchmark.backbones import BACKBONES

    shipped = CONFIG_DIR / f"{name}.json"
    if name in BACKBONES:
        spec = BACKBONES.get(name)
        if spec.random_config is not None:
            return name, spec.random_config(), spec.pooling
        if shipped.is_file():
            return name, config_from_json(shipped), spec.pooling
        source = spec.source() if callable(spec.source) else spec.source
        if os.path.isfile(os.path.join(source, "config.json")):
            return name, config_from_json(Path(source) / "config.json"), spec.pooling
        raise UserError(f"no architecture config for backbone {name!r}: add benchmark/backbones/configs/{name}.json "
                        f"or pass backbone=<path to its config.json>")
    if shipped.is_file():
        cfg = config_from_json(shipped)
    else:
        path = Path(name)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserError(f"unknown backbone {name!r}: use a registered backbone, a shipped config "
                            f"({', '.join(shipped_configs())}) or a path to a config.json")
        cfg = config_from_json(path)
        name = path.parent.name if path.name == "config.json" else path.stem
    from benchmark.backbones.families import FAMILIES

    family = FAMILIES.get(cfg.model_type)
    return name, cfg, family.default_pooling if family else "cls"


def length_limit(name: str) -> int:
    """The longest input a length search may try on this backbone: its architecture's limit (learned
    absolute positions), else ``capacity.MAX_LENGTH``."""
    from benchmark.backbones import _family
    from benchmark.memory.capacity import MAX_LENGTH

    label, config, _ = backbone_config(name)
    return _family(config.model_type, label).max_length(config) or MAX_LENGTH


def build_backbone(config, label: str, pooling: str, head: str = "classifier"):
    """Random-init backbone from ``config``, as ``load_backbone`` builds a random-config one (no tokenizer);
    ``head=seq2seq``: the whole encoder-decoder with its LM head."""
    from benchmark.backbones import Backbone, _family

    family = _family(config.model_type, label)
    seq2seq = head == "seq2seq"
    if seq2seq and family.seq2seq_class_name is None:
        raise UserError(f"backbone {label!r} is an encoder ({config.model_type}) and has no decoder for head=seq2seq; "
                        f"use head=classifier")
    model = family.new_model(config, seq2seq=seq2seq)
    if hasattr(model, "pooler"):
        model.pooler = None
    model.eval()
    if seq2seq:
        from benchmark.backbones.seq2seq import Seq2SeqBackbone

        return Seq2SeqBackbone(label, model, None, family, pooling=pooling).freeze()
    return Backbone(label, model, None, family, pooling=pooling).freeze()

