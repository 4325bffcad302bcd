"""LST's side-network initialisation: structured pruning of the backbone's layers, ranked by Fisher
information, copied into the narrow side layers.

Three kinds of width are pruned, each keeping the top 1/r of its channels:

- the hidden (residual) width d: one index set shared by every side layer, because the residual
  connections tie the hidden channels of all layers together;
- per layer, each inner width: the attention width (n_heads x head_dim) and the FFN width. Every
  projection that writes an inner width (query/key/value, FFN in) keeps the chosen rows, every
  projection that reads it (attention out, FFN out) the same columns, so query and key still meet
  in the same dimensions and value feeds the output projection it was trained with.

Attention heads stay consistent: when the side layer keeps the head size, whole heads are chosen
(by their summed Fisher); when it keeps the head count (T5's d_kv / r), the top dimensions within
each head; otherwise (a single narrow head) the top dimensions overall. LayerNorms keep the hidden
slice. Anything else with the same shape in side and backbone (T5's relative position bias, and MPNet's,
which the encoder owns: ``backbone.stack_parameters``) is copied.

Which parameter axis is which width is read from the layer itself, with no per-family code: one
forward pass of a backbone layer with hooks on its Linears and LayerNorms. A Linear whose input is the
layer input or a LayerNorm output reads the residual stream and writes an inner width; any other
Linear reads the inner width opened by the writers called since the previous reader, and writes the
residual stream. The inner width with three writers (query, key, value) is the attention. Head counts
come from the config each attention module keeps (``num_attention_heads``, which T5 configs alias), or
from the module's own ``num_attention_heads`` where it keeps no config (MPNet).
A layer that breaks these rules gets a one-line error asking for init=random.

Fisher information: the empirical Fisher, squared gradients of the task loss through a temporary
linear head on the salient token, accumulated over mini-batches of the first ``samples`` training
samples (the mini-batch form of the squared-gradient estimate); a channel's score is the summed
Fisher of every weight tied to it. The hidden ranking sums over every kept layer. The temporary head
(N(0, 0.02), fixed seed) is discarded; the backbone runs in eval mode (no dropout) for the pass, with
gradients only for its layers' weights, and is frozen again afterwards with no gradient kept.
Cost: one forward and backward of the backbone per mini-batch (32 batches for 1,024 samples at batch 32).

Seq2seq (LST's T5 code prunes its side decoder too): the loss is the model's own, token cross-entropy of
the gold label word through the frozen LM head (no temporary head), one backward gives the Fisher of
encoder and decoder layers together. The hidden width is ONE index set for both stacks (ranked by their
summed Fisher): the side decoder's cross-attention reads the side encoder's output, so its key/value
columns must index the channels the side encoder kept. A decoder block is read like any layer, its
cross-attention key and value reading the memory (a residual-stream input) and making a second attention
width; ``DecoderStack`` presents the decoder to these functions as a stack of its own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.errors import UserError

HIDDEN = "hidden"


@dataclass
class InnerWidth:
    """One inner width of a layer: the Linears that write it (rows) and read it (columns)."""

    writers: list[str] = field(default_factory=list)
    readers: list[str] = field(default_factory=list)

    @property
    def attention(self) -> bool:
        return len(self.writers) >= 3  # query, key, value


@dataclass
class LayerAxes:
    """Per parameter name of a layer: the role of each axis, ``HIDDEN``, an inner-width index, or None."""

    roles: dict[str, tuple]
    inner: list[InnerWidth]


@dataclass
class PrunePlan:
    """The channels kept: ``hidden`` for every side layer, ``inner[k][g]`` for inner width g of backbone layer k."""

    hidden: torch.Tensor
    inner: dict[int, list[torch.Tensor]]
    axes: LayerAxes | None = None
    left_as_initialised: list[str] = field(default_factory=list)  # side parameters with no backbone slice
    seconds: float = 0.0
    samples: int = 0


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def layer_axes(backbone, layer: nn.Module) -> LayerAxes:
    """Read which axis of which parameter is the hidden width or an inner width (see the module doc)."""
    d = backbone.hidden_size
    dtype = next(layer.parameters()).dtype
    device = next(layer.parameters()).device
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    norms = {n: m for n, m in layer.named_modules() if _is_norm(m)}
    calls: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []  # tensors kept alive: no address reuse
    hooks = []
    for kind, modules in (("linear", linears), ("norm", norms)):
        for name, m in modules.items():
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, kind=kind, name=name: calls.append((kind, name, inp[0], out))))
    x = torch.randn(1, 4, d, dtype=dtype, device=device)
    ctx = backbone.layer_context(torch.ones(1, 4, dtype=torch.long, device=device), dtype)
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            backbone.run_layer(layer, x, ctx)
    finally:
        layer.train(was_training)
        for h in hooks:
            h.remove()

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.data_ptr() == b.data_ptr() and a.shape == b.shape

    residual = [x] + ([ctx.extra["memory"]] if "memory" in ctx.extra else [])  # cross-attention reads it
    roles: dict[str, tuple] = {}
    inner: list[InnerWidth] = []
    current: InnerWidth | None = None
    for kind, name, inp, out in calls:
        if kind == "norm":
            residual.append(out)
            continue
        if f"{name}.weight" in roles:
            continue
        m = linears[name]
        if m.in_features == d and any(same(inp, r) for r in residual):
            if current is None or current.readers:
                current = InnerWidth()
                inner.append(current)
            current.writers.append(name)
            g = len(inner) - 1
            roles[f"{name}.weight"], roles[f"{name}.bias"] = (g, HIDDEN), (g,)
        else:
            width = linears[current.writers[0]].out_features if current is not None else None
            if current is None or m.in_features != width or m.out_features != d:
                raise UserError(f"lst: cannot read the structure of a {type(layer).__name__} layer for Fisher "
                                f"init (Linear {name!r}); use init=random")
            current.readers.append(name)
            g = len(inner) - 1
            roles[f"{name}.weight"], roles[f"{name}.bias"] = (HIDDEN, g), (HIDDEN,)
    missing = [n for n in linears if f"{n}.weight" not in roles]
    if missing or not any(w.attention for w in inner) or any(not w.readers for w in inner):
        raise UserError(f"lst: cannot read the structure of a {type(layer).__name__} layer for Fisher init "
                        f"(unplaced Linears {missing}); use init=random")
    for name, m in norms.items():
        for pname, _ in m.named_parameters(recurse=False):
            roles[f"{name}.{pname}"] = (HIDDEN,)
    params = dict(layer.named_parameters())
    roles = {n: r for n, r in roles.items() if n in params}
    for n in params:
        roles.setdefault(n, None)  # copied only where side and backbone shapes agree
    return LayerAxes(roles, inner)


class DecoderStack:
    """A seq2seq backbone's decoder, presented to the pruning as a stack of layers (``layers``,
    ``run_layer``, ``layer_context``); a layer context carries a random memory for the cross-attention."""

    def __init__(self, backbone):
        self.backbone = backbone
        self.hidden_size = backbone.hidden_size

    @property
    def layers(self):
        return self.backbone.decoder_layers

    def run_layer(self, layer, hidden, ctx):
        return self.backbone.run_decoder_layer(layer, hidden, ctx)

    def layer_context(self, mask, dtype):
        memory = torch.randn(mask.shape[0], 3, self.hidden_size, dtype=dtype, device=mask.device)
        memory_mask = torch.ones(mask.shape[0], 3, dtype=torch.long, device=mask.device)
        return self.backbone.decoder_context(mask.shape[1], memory, memory_mask, dtype)


def attention_heads(module: nn.Module) -> int:
    """Head count of a (side or backbone) layer, from the config its attention module keeps."""
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "num_attention_heads"):
            return int(cfg.num_attention_heads)
    for m in module.modules():  # an attention module that keeps no config keeps the count itself (MPNet's)
        if isinstance(getattr(m, "num_attention_heads", None), int):
            return m.num_attention_heads
    raise UserError(f"lst: cannot find the attention head count of a {type(module).__name__} layer; use init=random")


def top_sorted(score: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(score, k).indices.sort().values


def pick_attention(score: torch.Tensor, heads: int, side_heads: int, side_width: int) -> torch.Tensor:
    """Keep ``side_width`` of the attention width, head-consistently (see the module doc)."""
    head_dim, side_head_dim = score.numel() // heads, side_width // side_heads
    per_head = score.view(heads, head_dim)
    if side_head_dim == head_dim and side_heads <= heads:  # whole heads
        keep = top_sorted(per_head.sum(1), side_heads)
        return (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()
    if side_heads == heads and side_head_dim <= head_dim:  # the top dimensions of every head
        return torch.cat([h * head_dim + top_sorted(per_head[h], side_head_dim) for h in range(heads)])
    return top_sorted(score, side_width)


def accumulate_fisher(backbone, params: dict, train_loader, samples: int, loss_of) -> tuple[dict, int]:
    """Summed squared gradients of ``loss_of(batch)`` for each of ``params`` (key -> backbone parameter) over
    the first ``samples`` training samples; the backbone in eval mode, gradients only for ``params``, and
    frozen again afterwards with no gradient kept."""
    device = next(backbone.parameters()).device
    fisher = {key: torch.zeros_like(p) for key, p in params.items()}
    was_training = backbone.training
    was_trainable = {id(p): p.requires_grad for p in backbone.parameters()}
    backbone.eval()
    for p in params.values():
        p.requires_grad_(True)
    seen = 0
    try:
        for batch in train_loader:
            if seen >= samples:
                break
            n = min(len(batch["labels"]), samples - seen)
            loss = loss_of({k: v[:n].to(device) for k, v in batch.items()})
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for key, grad in zip(params, grads):
                if grad is not None:
                    fisher[key] += grad.detach().float() ** 2
            seen += n
    finally:  # frozen again as before, and no gradient kept anywhere in the backbone
        for p in backbone.parameters():
            p.requires_grad_(was_trainable[id(p)])
            p.grad = None
        backbone.train(was_training)
    if seen == 0:
        raise UserError("lst: the training loader gave no samples for the Fisher init; use init=random")
    return fisher, seen


def empirical_fisher(backbone, layer_indices: list[int], train_loader, task, samples: int) -> tuple[dict, int]:
    """Summed squared gradients of the task loss for every parameter of the given backbone layers."""
    layers = backbone.layers
    params = {(k, n): p for k in layer_indices for n, p in layers[k].named_parameters()}
    device = next(backbone.parameters()).device
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(backbone.hidden_size, task.num_labels).to(device)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=g)  # a temporary head, the usual init of a new head
        head.bias.zero_()

    def loss_of(batch):
        labels = batch.pop("labels")
        states, _ = backbone.hidden_states(batch)
        return task.loss(head(backbone.salient(states[-1], batch["attention_mask"])).float(), labels)

    return accumulate_fisher(backbone, params, train_loader, samples, loss_of)


def seq2seq_fisher(backbone, encoder_layers: list[int], decoder_layers: list[int], train_loader, task,
                   samples: int) -> tuple[dict, dict, int]:
    """Summed squared gradients of the seq2seq loss (the gold label word through the frozen LM head) for
    every parameter of the given encoder and decoder layers: (encoder fisher, decoder fisher, samples)."""
    from benchmark.heads import LabelWordHead

    params = {("enc", k, n): p for k in encoder_layers for n, p in backbone.layers[k].named_parameters()}
    params |= {("dec", k, n): p for k in decoder_layers for n, p in backbone.decoder_layers[k].named_parameters()}
    head = LabelWordHead(backbone, task, target_length=512).to(next(backbone.parameters()).device)
    fisher, seen = accumulate_fisher(backbone, params, train_loader, samples, lambda batch: head.loss(
        backbone, {k: v for k, v in batch.items() if k != "labels"}, batch))
    split = lambda tag: {key[1:]: f for key, f in fisher.items() if key[0] == tag}  # noqa: E731
    return split("enc"), split("dec"), seen


def _channel_score(f: torch.Tensor, axis: int) -> torch.Tensor:
    return f.sum(dim=[a for a in range(f.ndim) if a != axis]) if f.ndim > 1 else f


def hidden_score(backbone, source_layers: list[int], axes: LayerAxes, fisher: dict) -> torch.Tensor:
    """The summed Fisher of every hidden (residual) channel over the source layers."""
    score = torch.zeros(backbone.hidden_size)
    for k in source_layers:
        for name, role in axes.roles.items():
            if role and (k, name) in fisher:
                for axis, r in enumerate(role):
                    if r == HIDDEN:
                        score += _channel_score(fisher[(k, name)], axis).cpu()
    return score


def plan_pruning(backbone, side_layers: nn.ModuleList, source_layers: list[int], axes: LayerAxes,
                 fisher: dict, hidden: torch.Tensor | None = None) -> PrunePlan:
    """Rank channels by summed Fisher and keep the top 1/r: one hidden set (by ``hidden``, a score given
    for several stacks at once, else this stack's), per-layer inner sets."""
    scores = hidden if hidden is not None else hidden_score(backbone, source_layers, axes, fisher)
    side_params = dict(side_layers[0].named_parameters())
    d_side = next(side_params[n].shape[i] for n, role in axes.roles.items() if role
                  for i, r in enumerate(role) if r == HIDDEN)
    heads = attention_heads(backbone.layers[source_layers[0]])
    inner: dict[int, list[torch.Tensor]] = {}
    for j, k in enumerate(source_layers):
        side_heads = attention_heads(side_layers[j])
        sets = []
        for g, width in enumerate(axes.inner):
            score = None
            for name, role in axes.roles.items():
                if role and g in role and (k, name) in fisher:
                    s = _channel_score(fisher[(k, name)], role.index(g)).cpu()
                    score = s if score is None else score + s
            side_width = dict(side_layers[j].named_modules())[width.writers[0]].out_features
            if width.attention:
                sets.append(pick_attention(score, heads, side_heads, side_width))
            else:
                sets.append(top_sorted(score, side_width))
        inner[k] = sets
    return PrunePlan(hidden=top_sorted(scores, d_side), inner=inner)


def pruned(param: torch.Tensor, role: tuple | None, plan: PrunePlan, k: int) -> torch.Tensor:
    """The backbone parameter of layer k restricted to the kept channels."""
    out = param
    for axis, r in enumerate(role or ()):
        idx = plan.hidden if r == HIDDEN else plan.inner[k][r]
        out = out.index_select(axis, idx.to(out.device))
    return out


@torch.no_grad()
def copy_pruned(backbone, side_layers: nn.ModuleList, source_layers: list[int], axes: LayerAxes,
                plan: PrunePlan) -> list[str]:
    """Copy each kept backbone slice into its side layer; returns the side parameters left as initialised."""
    left = []
    layers = backbone.layers
    shared = backbone.stack_parameters() if hasattr(backbone, "stack_parameters") else {}  # MPNet's bias table
    for j, k in enumerate(source_layers):
        src = dict(layers[k].named_parameters())
        for name, p in side_layers[j].named_parameters():
            role = axes.roles.get(name)
            src_p = src.get(name)
            if src_p is None:  # a stack-level parameter only one backbone layer owns (T5's position bias)
                src_p = next((dict(layer.named_parameters())[name] for layer in layers
                              if name in dict(layer.named_parameters())), None)
            if src_p is None:  # or one the stack owns outside its layers (MPNet's position bias table)
                src_p = shared.get(name)
            value = pruned(src_p, role, plan, k) if src_p is not None else None
            if value is None or value.shape != p.shape:
                left.append(f"{j}.{name}")
                continue
            p.copy_(value.to(p.dtype))
    return left


def fisher_prune_init_seq2seq(backbone, side_layers: nn.ModuleList, source_layers: list[int],
                              dec_side_layers: nn.ModuleList, dec_source_layers: list[int], train_loader, task,
                              samples: int) -> tuple[PrunePlan, PrunePlan]:
    """Both side stacks of a seq2seq LST from one Fisher pass, with one hidden set (module doc)."""
    t0 = time.perf_counter()
    decoder = DecoderStack(backbone)
    enc_axes = layer_axes(backbone, backbone.layers[source_layers[0]])
    dec_axes = layer_axes(decoder, decoder.layers[dec_source_layers[0]])
    enc_f, dec_f, seen = seq2seq_fisher(backbone, source_layers, dec_source_layers, train_loader, task, samples)
    hidden = (hidden_score(backbone, source_layers, enc_axes, enc_f)
              + hidden_score(decoder, dec_source_layers, dec_axes, dec_f))
    plans = []
    for stack, sides, sources, axes, fisher in ((backbone, side_layers, source_layers, enc_axes, enc_f),
                                                (decoder, dec_side_layers, dec_source_layers, dec_axes, dec_f)):
        plan = plan_pruning(stack, sides, sources, axes, fisher, hidden=hidden)
        plan.axes = axes
        plan.left_as_initialised = copy_pruned(stack, sides, sources, axes, plan)
        plan.seconds, plan.samples = time.perf_counter() - t0, seen
        plans.append(plan)
    return plans[0], plans[1]


def fisher_prune_init(backbone, side_layers: nn.ModuleList, source_layers: list[int], train_loader, task,
                      samples: int) -> PrunePlan:
    t0 = time.perf_counter()
    axes = layer_axes(backbone, backbone.layers[source_layers[0]])
    fisher, seen = empirical_fisher(backbone, source_layers, train_loader, task, samples)
    plan = plan_pruning(backbone, side_layers, source_layers, axes, fisher)
    plan.axes = axes
    plan.left_as_initialised = copy_pruned(backbone, side_layers, source_layers, axes, plan)
    plan.seconds, plan.samples = time.perf_counter() - t0, seen
    return plan
