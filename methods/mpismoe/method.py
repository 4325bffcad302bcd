"""MP-ISMoE (Zhang et al., AAAI 2026): a GNP-IQ quantized frozen backbone plus a side network whose
FFNs are interactive mixtures of experts, built on a base side method (LST, UniPT or SHERL).

Built by composition, so the base method's code is the one its own row runs:
1. the base method is built on the backbone (``base``, default SHERL as the paper's best);
2. GNP-IQ: every backbone linear the base does not train becomes a packed n-bit ``QuantLinear``
   (``PerturbedQuantLinear``, with learnable noise per output channel, inside the backbone's layers under
   ``noise_on=backbone``); the ones it trains (SHERL's late layer) become ``NoisyQuantLinear`` (fp32
   master, learnable Gaussian perturbation, periodic re-quantization of p % of the groups); every frozen
   ``nn.Embedding`` (word, position, token type; T5's shared table, tied to ``embed_tokens``, once;
   T5's relative attention bias too, as the paper quantizes every weight but LayerNorm) becomes a
   ``QuantEmbedding`` that dequantizes only the looked-up rows; a linear tied to a table (T5's LM head)
   becomes a ``TiedQuantLinear`` over that same table (stored and counted once); LayerNorms stay fp32
   (trainable with ``train_layernorm``, the paper's mixed precision) unless ``quantize_layernorm`` (the
   paper's "unified low precision" ablation);
3. ISMoE: every FFN slot of the base's side network becomes N experts with top-k routing refined
   by the interaction prior from the backbone's salient token. A slot is an ``FFNSlot`` (get /
   install / restore; LST's narrow backbone layers split their FFN over two submodules) or a
   ``(parent, attr)`` pair (UniPT, SHERL);
4. numeric precision is the run's (``precision=``), the same for every row of a comparison: the paper's
   16-bit side network is a ``precision=bf16-mixed`` run, which gives every method the same autocast.
   Nothing here looks at the device's capabilities.

The base is built with its own defaults (SHERL as published: only side modules train) plus
``base.<key>=<value>`` overrides from the command line or a variant (``base_overrides``). Where the noise
acts is ``noise_on``: ``trained`` (default) perturbs only the backbone weights the base trains, none on a
faithful base, so the backbone runs without autograd, as the paper's GLUE memory (0.3-0.4 GB over
SHERL/UniPT on T5-base) requires; ``backbone`` perturbs every quantized linear of the backbone's layers,
trained through the forward pass, as the paper's Table 4 numbers require (``experiments.py``). With
``noise_on=backbone`` or ``train_layernorm`` MP-ISMoE computes the backbone's states with autograd
(``backbone_states``) and hands them to its base (``FROZEN_STATES``); on seq2seq the base still runs the
decoder without autograd, so only the encoder's linears and LayerNorms take part. Every paper ablation is
a switch: quantize_backbone, quantize_layernorm, train_layernorm, noise (noise_on), moe, prior; the rows of
the paper's Tables 3 and 4 and of our extension are named in ``experiments.py``.

``prepare`` (data-dependent init of the base, LST's Fisher pruning): the experts are taken out
(each slot gets its expert 0, an exact copy of the side FFN, back), the base prepares itself with
the backbone's layers (encoder and decoder) temporarily dequantized to fp32 modules (Fisher needs real parameters; the
slices copied into the side layers are those of the n-bit backbone MP-ISMoE keeps, as the fp32
weights are not kept after construction), then fresh ISMoEs are built from the initialised FFNs.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from benchmark.backbones.base import FFNSlot, as_slot
from benchmark.errors import UserError
from methods.base import METHODS, Method
from methods.mpismoe.config import MPISMoEConfig
from methods.mpismoe.experiments import EXPERIMENTS, PAPER_ROWS
from methods.mpismoe.fake_hints import fake_hints
from methods.mpismoe.ismoe import ISMoE
from methods.mpismoe.noisy import NoisyQuantLinear, PerturbedQuantLinear
from methods.mpismoe.qlinear import QuantEmbedding, QuantLinear, TiedQuantLinear, _is_layer_norm
from methods.mpismoe.qnorm import QuantLayerNorm
from methods.side import FROZEN_STATES, frozen_hidden_states

def _first_linear(module: nn.Module) -> nn.Linear:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m
    raise ValueError(f"{type(module).__name__} has no nn.Linear to route on")


class MPISMoE(Method):
    config_class = MPISMoEConfig
    # 2: one run-level precision (no bf16 side network of its own), GNP-IQ ranges contain every group,
    # re-quantization before validation, noise mean applied in eval too (in quantization steps), router
    # softmax over the kept logits with the prior in logit space, SHERL base as published (version 2)
    # 3: router prior as Eq. 8 ((softmax(g) + c) / 2, the logit form a variant), T5's tied LM head quantized
    # once with its table (seq2seq), LST base on seq2seq (decoder dequantized for the Fisher init), the
    # table3-*/table4-* rows on the paper's UniPT base (the SHERL chain is ext-sherl-*), new switches
    # noise_on and train_layernorm (defaults unchanged)
    version = 3
    # the named experiments (paper Tables 3 and 4, and ours): one ``make memory`` row each
    variants = {name: dict(e.overrides) for name, e in EXPERIMENTS.items()}
    paper_variants = PAPER_ROWS
    runs_on_seq2seq = True  # where its base does: the whole encoder-decoder (and LM head) is quantized
    may_skip_parameters = True  # top-k dispatch: an expert no token picked gets no gradient that step
    fake_tensor_hints = classmethod(lambda cls: fake_hints())  # the memory predictor: fake_hints.py

    def __init__(self, backbone, config: MPISMoEConfig):
        super().__init__(backbone, config)
        base_cls = METHODS.get(config.base)
        if backbone.seq2seq and not base_cls.runs_on_seq2seq:
            raise UserError(f"mpismoe: base {config.base!r} does not run on a seq2seq backbone yet; "
                            f"use head=classifier or another base")
        self.base = base_cls(backbone, config.base_config())
        if not hasattr(self.base, "side_ffn_slots"):
            raise ValueError(f"base {config.base!r} exposes no side FFN slots for ISMoE")
        self.noisy: list[str] = []  # NoisyQuantLinear: backbone weights the base trains
        self.perturbed: list[str] = []  # PerturbedQuantLinear: frozen backbone linears (noise_on=backbone)
        self.quant_stats = self._quantize_backbone() if config.quantize_backbone else {}
        self.trained_layernorms = self._train_layernorms() if config.train_layernorm else []
        # the backbone's own parameters train (noise, LayerNorms): its forward runs with autograd
        self.backbone_trains = bool(self.perturbed or self.trained_layernorms)
        # plain attributes (not submodules): a slot only points into the base's own modules
        self.slots: list[FFNSlot] = [as_slot(s) for s in self.base.side_ffn_slots()] if config.moe else []
        self.moes = nn.ModuleList()
        self._wrap()

    # --- ISMoE ----------------------------------------------------------------------------------
    def _wrap(self) -> None:
        """Replace every slot's FFN by a fresh ISMoE built from it (expert 0 = the FFN exactly)."""
        cfg, moes = self.config, []
        for slot in self.slots:
            ffn = slot.get()
            ref = next(iter(ffn.parameters()), None)
            moe = ISMoE(ffn, d_in=_first_linear(ffn).in_features, prior_dim=self.backbone.hidden_size,
                        num_experts=cfg.num_experts, top_k=cfg.top_k, use_prior=cfg.prior,
                        norm=cfg.prior_norm, perturb_std=cfg.expert_perturb, balance_coef=cfg.balance_coef,
                        prior_form=cfg.prior_form)
            if ref is not None:
                moe.to(device=ref.device)
            slot.install(moe)
            moes.append(moe)
        self.moes = nn.ModuleList(moes)

    def _unwrap(self) -> None:
        """Put each slot's FFN back: expert 0 of its ISMoE (the unperturbed copy of the FFN)."""
        for slot, moe in zip(self.slots, self.moes):
            slot.restore(moe.experts[0])
        self.moes = nn.ModuleList()

    def prepare(self, train_loader, task) -> None:
        """The base's data-dependent init (LST's Fisher pruning) on the plain side network, then fresh
        experts from the initialised FFNs. Runs before any optimizer exists, so rebuilding is safe."""
        if type(self.base).prepare is Method.prepare:
            return  # the base initialises nothing from data: keep the experts built at construction
        self._unwrap()
        try:
            with self.full_precision_layers():
                self.base.prepare(train_loader, task)
        finally:
            self._wrap()

    @contextmanager
    def full_precision_layers(self):
        """Within: every quantized module inside the backbone's layers (QuantLinear, QuantEmbedding,
        QuantLayerNorm) is replaced by a frozen fp32 module of the original type holding its dequantized
        weights; on exit the quantized modules are put back unchanged. Trained ``NoisyQuantLinear``s
        stay. Only the layers, the encoder's and (seq2seq) the decoder's: the embeddings run as they are
        (nothing needs their parameters)."""
        swaps = []
        for layer in self._stack_layers():
            for name, mod in list(layer.named_modules()):
                if not isinstance(mod, (QuantLinear, QuantEmbedding, QuantLayerNorm)):
                    continue
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                setattr(parent, child, mod.to_float())
                swaps.append((parent, child, mod))
        try:
            yield
        finally:
            for parent, child, mod in reversed(swaps):
                setattr(parent, child, mod)

    def _stack_layers(self) -> list[nn.Module]:
        """The backbone's layers: the encoder's, then (seq2seq) the decoder's."""
        return list(self.backbone.layers) + list(getattr(self.backbone, "decoder_layers", []))

    def _own_forward_modules(self) -> set[int]:
        """ids of the modules MP-ISMoE's forward runs with autograd when the backbone trains: the whole model
        but a seq2seq decoder (its base runs the decoder without autograd, ``frozen_decoder_states``)."""
        model = self.backbone.model
        skip: set[int] = set()
        if self.backbone.seq2seq:
            dec = self.backbone.decoder_layers
            root = next(n for n, m in model.named_modules() if m is dec).rpartition(".")[0]
            skip = {id(m) for m in (model.get_submodule(root) if root else dec).modules()}
        return {id(m) for m in model.modules()} - skip

    # --- GNP-IQ ---------------------------------------------------------------------------------
    def _quantize_backbone(self) -> dict:
        cfg, model = self.config, self.backbone.model
        stats = {"frozen": 0, "trained": 0, "perturbed": 0, "tied": 0, "layernorms": 0, "embeddings": 0,
                 "embeddings_kept": 0}
        # linears tied to an embedding table (T5's LM head and ``shared``): quantized once, with the table
        tables = {_weight_key(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        tied: dict[str, nn.Linear] = {}
        in_layers = {id(m) for layer in self.backbone.layers for m in layer.modules()}
        perturb = cfg.noise and cfg.noise_on == "backbone"
        for name, lin in list(self.backbone.linear_modules().items()):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if lin.weight.requires_grad:  # the base trains it: fp32 master + GNP noise/re-quantization
                q = NoisyQuantLinear(lin, cfg.bits, cfg.group_size, noise=cfg.noise)
                self.noisy.append(name)
                stats["trained"] += 1
            elif _weight_key(lin.weight) in tables:
                tied[name] = lin
                continue
            else:
                q = QuantLinear.from_linear(lin, cfg.bits, cfg.group_size, method="gnpiq")
                if perturb and id(lin) in in_layers:
                    q = PerturbedQuantLinear.from_quant(q)
                    self.perturbed.append(name)
                    stats["perturbed"] += 1
                stats["frozen"] += 1
            setattr(parent, child, q)
        quantized = self._quantize_embeddings(stats) if cfg.quantize_embeddings else {}
        for name, lin in tied.items():  # without quantized tables a tied linear stays the fp32 table's
            table = quantized.get(_weight_key(lin.weight))
            if table is not None:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child,
                        TiedQuantLinear(table, lin.bias))
                stats["tied"] += 1
        if cfg.quantize_layernorm:
            for name, ln in list(self.backbone.layer_norms().items()):
                if not _is_layer_norm(ln) or ln.weight.requires_grad:
                    continue  # a LayerNorm the base trains keeps its fp32 weights
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child,
                        QuantLayerNorm(ln, cfg.bits, cfg.group_size))
                stats["layernorms"] += 1
        return stats

    def _quantize_embeddings(self, stats: dict) -> dict[tuple, QuantEmbedding]:
        """Every frozen nn.Embedding -> QuantEmbedding. Tables sharing one weight (T5's ``shared`` and
        ``encoder.embed_tokens``) are quantized once and the same module is put in every place. A table
        the base trains keeps its fp32 weights (none of LST, UniPT, SHERL trains one). Returns the
        quantized tables by weight key (``_weight_key``)."""
        cfg, model = self.config, self.backbone.model
        places: dict[tuple, list[str]] = {}
        tables: dict[tuple, nn.Embedding] = {}
        quantized: dict[tuple, QuantEmbedding] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            if isinstance(m, nn.Embedding):
                key = _weight_key(m.weight)
                places.setdefault(key, []).append(name)
                tables.setdefault(key, m)
        for key, names in places.items():
            emb = tables[key]
            if emb.weight.requires_grad or emb.max_norm is not None:
                stats["embeddings_kept"] += 1
                continue
            q = QuantEmbedding.from_embedding(emb, cfg.bits, cfg.group_size, method="gnpiq")
            for name in names:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
            quantized[key] = q
            stats["embeddings"] += 1
        return quantized

    def _train_layernorms(self) -> list[str]:
        """``train_layernorm``: the backbone's LayerNorms that MP-ISMoE's forward runs (not a seq2seq
        decoder's) become trainable, fp32 as they are; returns their names."""
        own = self._own_forward_modules()
        names = []
        for name, ln in self.backbone.layer_norms().items():
            if _is_layer_norm(ln) and id(ln) in own:
                ln.requires_grad_(True)
                names.append(name)
        return names

    def train(self, mode: bool = True):
        super().train(mode)  # the frozen backbone stays in eval ...
        for layer in self.noisy_layers() + self.perturbed_layers():
            layer.train(mode)  # ... but the noise-perturbed layers follow the training mode
        return self

    def noisy_layers(self) -> list[NoisyQuantLinear]:
        return [self.backbone.model.get_submodule(n) for n in self.noisy]

    def perturbed_layers(self) -> list[PerturbedQuantLinear]:
        return [self.backbone.model.get_submodule(n) for n in self.perturbed]

    def after_step(self, step: int) -> None:
        every = self.config.requant_every_steps
        if self.config.requantize and every and step > 0 and step % every == 0:
            self.requantize()

    def after_epoch(self, epoch: int) -> None:
        if self.config.requantize and not self.config.requant_every_steps:
            self.requantize()

    def requantize(self) -> None:
        for layer in self.noisy_layers() + self.perturbed_layers():
            layer.requantize(self.config.requant_fraction)

    def extra_state_prefixes(self) -> list[str]:
        return [f"backbone.model.{n}." for n in self.noisy + self.perturbed]  # re-fitted codes, scales, zeros

    # --- forward --------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.base.feature_dim

    def backbone_states(self, batch) -> tuple[list[torch.Tensor], object]:
        """The backbone's states as its base reads them: without autograd (``frozen_hidden_states``) unless
        the backbone's own parameters train (``noise_on=backbone``, ``train_layernorm``)."""
        if not self.backbone_trains:
            return frozen_hidden_states(self.backbone, batch)
        return self.backbone.hidden_states(batch, embedded=self.backbone.embed(batch))

    def forward(self, batch):
        states, ctx = self.backbone_states(batch)
        if any(moe.use_prior for moe in self.moes):  # only the prior reads it: nothing else holds it
            h0 = self.backbone.salient(states[-1], ctx.attention_mask)
            for moe in self.moes:
                moe.set_prior_input(h0)
        return self.base({**batch, FROZEN_STATES: (states, ctx)})

    def extra_loss(self):
        losses = [a for a in (m.pop_aux_loss() for m in self.moes) if a is not None]
        return torch.stack(losses).sum() if losses else None

    def training_stats(self) -> dict[str, float]:
        """Per side layer since the last call: each expert's share of the routed token slots (load) and
        the router's mean entropy; per noise-perturbed backbone layer: GNP-IQ's mu and sigma (in
        quantization steps)."""
        out = {}
        for i, moe in enumerate(self.moes):
            out.update({f"moe{i}/{k}": v for k, v in moe.pop_stats().items()})
        for name, layer in zip(self.noisy, self.noisy_layers()):
            out.update({f"gnpiq/{name}/{k}": v for k, v in layer.noise_stats().items()})
        perturbed = [layer.noise_stats() for layer in self.perturbed_layers()]
        if perturbed:  # one pair for the whole backbone: its mean over the perturbed linears
            out.update({f"gnpiq/backbone/{k}": sum(p[k] for p in perturbed) / len(perturbed) for k in ("mu", "sigma")})
        return out


def _weight_key(w: torch.Tensor) -> tuple:
    """Tied weights share a key: one Parameter, or one storage (keyed by its Python object, as storage.py does:
    fake tensors have no data pointer, and T5's encoder and decoder position-bias tables have one shape)."""
    return (id(w.untyped_storage()), w.storage_offset(), tuple(w.shape), w.stride()) \
        if w.device.type != "meta" else (id(w),)
