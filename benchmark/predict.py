"""Peak training memory at a scale this machine cannot run: the training steps of ``make memory`` under
PyTorch's ``FakeTensorMode`` (shapes, dtypes and storage sizes; no data, no arithmetic), counted by the
same ``MemoryTracker``, with the same method, task head, loss and AdamW as a real run.

``python -m benchmark.predict backbone=t5-base batch_size=100 max_length=128`` predicts every registered
method and variant (the rows of ``make memory``) and writes ``results/memory_predicted.csv``.

What a prediction is, exactly:

- The backbone is built from its architecture config alone (a registry tiny config, a config shipped in
  ``benchmark/backbones/configs``, a packaged model's ``config.json``, or a path), random init, no hub.
- Each row runs in its own process (forked from a server that imported torch once), so a crash of one
  row does not take the others with it and peaks never carry over.
- The loop is Lightning's automatic optimisation, step for step: ``optimizer.step(closure)`` whose
  closure runs ``training_step`` (under autocast for ``bf16-mixed``), ``zero_grad`` (to None) and
  ``backward``; then the LR scheduler and the method's ``after_step``. Inputs are [batch, length], every
  token attended. No validation, no ``after_epoch`` (the tracker of ``make memory`` also stops there).
- Data-dependent steps: ``Method.prepare`` (LST's Fisher-pruned init: it changes values, not shapes) is
  not run; GNP-IQ quantizes shape-only (``quant.shape_only``: same packed layout and dtypes, no fit); an
  ISMoE's token dispatch assumes balanced routing (each expert gets its 1/N share of the k T routed
  rows, so the rows kept for backward add up as in any real routing; only the per-expert split is
  assumed); a scalar read from data during ``NoisyQuantLinear``'s construction (its initial noise sigma,
  a value) reads 1. Any other op whose result depends on values fails its row with a one-line reason.
- ``target=cuda`` (default) makes the choices a CUDA run makes by device type, on fake CPU tensors:
  ``dropout`` fused (a bool mask is saved, CPU saves one of the input's dtype), attention through the
  fused memory-efficient SDPA kernel (CPU's math path saves the [B, H, L, L] weights), AdamW's foreach
  update. A fake CUDA *device* cannot
  run autograd on a CPU-only torch build (the autograd engine needs a CUDA device guard and accelerator
  hooks), so autocast (``precision=bf16-mixed``) follows CPU rules, which keep softmax,
  layer norm, pow, sum ... in bf16 where CUDA autocast runs them in fp32. Calibrated against the H100
  reference figures of docs/memory.md (T5-base encoder-decoder, batch 100): full fine-tuning 0.92-0.97, LoRA
  0.93, frozen forward 0.98 of ``max_memory_allocated`` (CPU kernels: 1.21-1.33); kernel workspaces
  (cuBLAS, SDPA backward) and allocator rounding are not tensors and are not counted.
  ``target=cpu`` predicts this machine's CPU run (``make memory``'s tracker) exactly.

``--compare-cuda`` runs the same rows for real on a CUDA device next to their prediction.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from benchmark.cli import OverridesParser, entry_point, quiet
from benchmark.errors import UserError
from benchmark.memory_bench import COLUMNS, select_rows

# a row process re-imports this module as its __main__ (multiprocessing does so for ``python -m``), while
# the process server already imported it: harmless, and said once per row without this filter
warnings.filterwarnings("ignore", message="'benchmark.predict' found in sys.modules", category=RuntimeWarning)

CONFIG_DIR = Path(__file__).resolve().parent / "backbones" / "configs"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {"backbone": "t5-base", "task": "rotten_tomatoes", "batch_size": "100", "max_length": "128",
            "precision": "32-true", "steps": "3", "target": "cuda"}
PREDICT_KEYS = ("backbone", "steps", "target")  # handled here; everything else goes to the run plan
CLI_KEYS = ("methods", "out", "jobs")
PRECISIONS = ("32-true", "32", "bf16-mixed")
TARGETS = ("cuda", "cpu")
EXTRA_COLUMNS = ["source", "target", "steps", "notes", "error", "sim_seconds"]
INT_COLUMNS = ["peak_train_bytes", "weights", "grads", "optimizer", "activations", "other", "trainable_params",
               "backbone_storage_bytes", "cuda_max_allocated", "cuda_max_reserved", "batch_size", "max_length", "steps"]
PRELOAD = ["torch", "torch._subclasses.fake_tensor", "transformers", "transformers.models.t5.modeling_t5",
           "transformers.models.bert.modeling_bert", "transformers.models.roberta.modeling_roberta", "peft",
           "lightning", "methods", "tasks", "benchmark.module", "benchmark.memory", "benchmark.run",
           "benchmark.predict"]


# ---------------------------------------------------------------------------------------------------
# the backbone from its architecture config
# ---------------------------------------------------------------------------------------------------
def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _config_from_json(path: Path):
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
            return name, _config_from_json(shipped), spec.pooling
        source = spec.source() if callable(spec.source) else spec.source
        if os.path.isfile(os.path.join(source, "config.json")):
            return name, _config_from_json(Path(source) / "config.json"), spec.pooling
        raise UserError(f"no architecture config for backbone {name!r}: add benchmark/backbones/configs/{name}.json "
                        f"or pass backbone=<path to its config.json>")
    if shipped.is_file():
        cfg = _config_from_json(shipped)
    else:
        path = Path(name)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UserError(f"unknown backbone {name!r}: use a registered backbone, a shipped config "
                            f"({', '.join(shipped_configs())}) or a path to a config.json")
        cfg = _config_from_json(path)
        name = path.parent.name if path.name == "config.json" else path.stem
    return name, cfg, "mean" if cfg.model_type in ("t5", "mt5") else "cls"


def build_backbone(config, label: str, pooling: str):
    """Random-init backbone from ``config``, as ``load_backbone`` builds a random-config one (no tokenizer)."""
    from transformers import AutoModel, T5EncoderModel

    from benchmark.backbones import Backbone, _family

    family = _family(config.model_type, label)
    model = T5EncoderModel(config) if family.name == "t5" else AutoModel.from_config(config)
    if hasattr(model, "pooler"):
        model.pooler = None
    model.eval()
    return Backbone(label, model, None, family, pooling=pooling).freeze()


# ---------------------------------------------------------------------------------------------------
# ops whose result depends on values
# ---------------------------------------------------------------------------------------------------
class FakeUnsupported(RuntimeError):
    """An op a fake run cannot answer (its output depends on values, or it has no fake kernel)."""


def _where() -> str:
    """The innermost caller outside torch and this file, as ``path:line in function``."""
    skip = (os.sep + "torch" + os.sep, __file__, "memory.py", "contextlib.py")
    for fr in reversed(traceback.extract_stack()[:-1]):
        if not any(s in fr.filename for s in skip):
            path = fr.filename
            for root in (str(REPO_ROOT) + os.sep, os.sep + "site-packages" + os.sep):
                if root in path:
                    path = path.split(root, 1)[1]
            return f"{path}:{fr.lineno} in {fr.name}"
    return "?"


def _scalar_allowed() -> str | None:
    """Construction code whose data-read scalar sets a value, never a shape (see module docstring)."""
    from methods.mpismoe.noisy import NoisyQuantLinear

    allowed = {NoisyQuantLinear.__init__.__code__: "NoisyQuantLinear init sigma"}
    f = sys._getframe()
    while f is not None:
        if f.f_code in allowed:
            return allowed[f.f_code]
        f = f.f_back
    return None


def _data_dependent_policy():
    from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                               UnsupportedOperatorException)
    from torch.utils._python_dispatch import TorchDispatchMode
    import torch

    aten = torch.ops.aten

    class Policy(TorchDispatchMode):
        """Between FakeTensorMode and the tracker: answers balanced MoE dispatch and allowed scalars,
        turns every other data-dependent op into a one-line ``FakeUnsupported``."""

        def __init__(self):
            super().__init__()
            self.moe = None
            self.expert = 0
            self.notes: set[str] = set()

        def watch(self, module) -> None:
            from methods.mpismoe.ismoe import ISMoE

            for m in module.modules():
                if isinstance(m, ISMoE):
                    m.register_forward_pre_hook(self._enter_moe)
                    m.register_forward_hook(self._leave_moe, always_call=True)

        def _enter_moe(self, moe, args):
            self.moe, self.expert = moe, 0

        def _leave_moe(self, moe, args, out):
            self.moe = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten.nonzero.default and self.moe is not None:
                # ISMoE's ``(idx == e).nonzero()``: the rows routed to expert e, balanced over experts
                routed, n_exp, e = args[0].numel(), self.moe.num_experts, self.expert
                self.expert += 1
                self.notes.add("balanced MoE routing")
                rows = routed // n_exp + (1 if e % n_exp < routed % n_exp else 0)
                return torch.empty((rows, args[0].dim()), dtype=torch.long, device=args[0].device)
            try:
                return func(*args, **kwargs)
            except DataDependentOutputException:
                if func is aten._local_scalar_dense.default:
                    why = _scalar_allowed()
                    if why is not None:
                        self.notes.add(f"placeholder scalar ({why})")
                        dt = args[0].dtype
                        return 1.0 if dt.is_floating_point else (True if dt == torch.bool else 1)
                raise FakeUnsupported(f"{func}: result depends on tensor values (at {_where()})") from None
            except DynamicOutputShapeException:
                raise FakeUnsupported(f"{func}: output shape depends on tensor values (at {_where()})") from None
            except UnsupportedOperatorException:
                raise FakeUnsupported(f"{func}: no fake-tensor kernel (at {_where()})") from None

    return Policy()


@contextmanager
def _swappable_params(mode):
    """Two limits of fake modules in torch 2.13, worked around. ``Module.to`` swaps every fake parameter
    for a new one (``swap_tensors``), which refuses tensors with weak references, and the fake mode's
    memo of fresh meta -> fake tensors holds one to every fake ``Parameter`` (and its constant table one
    to a ``Parameter(torch.tensor(...))``): the two swapped tensors' entries (caches) are dropped first,
    so ``.to`` works (peft moves its adapters with it)."""
    import torch

    converter = mode.fake_tensor_converter
    memo = converter.meta_converter.tensor_memo
    swap = torch.utils.swap_tensors
    # ``copy.deepcopy`` of a fake tensor would deep-copy its mode (and that memo) along with it: the
    # copy must live in the same mode (LST's side norm, ISMoE's experts, torchmetrics copy tensors)
    mode.__deepcopy__ = lambda _memo: mode

    def swap_fake(t1, t2):
        pair = (t1, t2)
        for key, value in list(memo.items()):
            if any(value is t for t in pair):
                del memo[key]
        for refs in converter.constant_storage_mapping.values():  # a Parameter(torch.tensor(...))
            refs[:] = [r for r in refs if not any(r() is t for t in pair)]
        for t in pair:
            if getattr(t, "constant", None) is not None:
                t.constant = None  # its value is never read: a fake run reads no values
        return swap(t1, t2)

    torch.utils.swap_tensors = swap_fake
    try:
        yield
    finally:
        torch.utils.swap_tensors = swap


def _cuda_kernels():
    """The two kernel choices ATen makes by device that change what is saved for backward, made as for
    CUDA tensors: ``dropout`` runs fused (``native_dropout``: a bool mask, where CPU keeps a mask of the
    input's dtype), and ``scaled_dot_product_attention`` runs a fused kernel (the memory-efficient one,
    which takes fp32, masks and dropout: output and logsumexp are saved, not the [B, H, L, L] weights
    of CPU's math path). Flash / cuDNN, where CUDA may pick them for 16-bit inputs, save the same."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    dropouts = (F.dropout, torch.dropout)
    sdpa = F.scaled_dot_product_attention

    def dropout(input, p=0.5, training=True, inplace=False, train=None):  # F.dropout and torch.dropout
        training = training if train is None else train
        if inplace or not training or not 0 < p < 1 or input.numel() == 0:
            return None  # ATen's own path (in place dropout is not fused on CUDA either)
        return torch.native_dropout(input, p, True)[0]

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
        if enable_gqa or query.dim() != 4 or query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return None
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # CUDA turns it into an additive mask
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, float("-inf"))
        if attn_mask is not None:
            attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        need_lse = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                   for t in (query, key, value, attn_mask))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, need_lse, dropout_p, is_causal, scale=scale)[0]

    class CudaKernels(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in dropouts or func is sdpa:
                out = (attention if func is sdpa else dropout)(*args, **kwargs)
                if out is not None:
                    return out
            return func(*args, **kwargs)

    return CudaKernels()


@contextmanager
def _target_choices(target: str, fake: bool):
    """Device-type choices made as on ``target`` while the fake ops run on CPU (see module docstring)."""
    if not fake or target != "cuda":
        yield
        return
    with _cuda_kernels():
        yield


# ---------------------------------------------------------------------------------------------------
# one row
# ---------------------------------------------------------------------------------------------------
def _storage_bytes(tensors) -> int:
    """Bytes of distinct storages; keyed by the storage object (a fake storage has no data pointer)."""
    seen, total = [], 0
    for t in tensors:
        st = t.untyped_storage()
        if any(st is s for s in seen):
            continue
        seen.append(st)
        total += st.nbytes()
    return total


def _batch(config, task, batch_size: int, length: int, device, seed: int) -> dict:
    """[batch, length] inputs, every token attended (values matter only to a real run's MoE routing)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, max(4, config.vocab_size), (batch_size, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones(batch_size, length, dtype=torch.long)}
    if getattr(config, "type_vocab_size", 0) > 1:  # BERT-style tokenizers return segment ids
        batch["token_type_ids"] = torch.zeros(batch_size, length, dtype=torch.long)
    if task.problem == "regression":
        batch["labels"] = torch.rand(batch_size, generator=g)
    else:
        batch["labels"] = torch.randint(0, task.num_labels, (batch_size,), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def _split(overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    own = {k: overrides.get(k, DEFAULTS[k]) for k in PREDICT_KEYS}
    rest = {k: v for k, v in overrides.items() if k not in PREDICT_KEYS}
    for k in ("task", "batch_size", "max_length", "precision"):
        rest.setdefault(k, DEFAULTS[k])
    return own, rest


def check(overrides: dict[str, str]):
    """Validate a row's overrides before anything is built; returns the run plan."""
    from benchmark.run import plan

    own, rest = _split(overrides)
    if own["target"] not in TARGETS:
        raise UserError(f"bad value target={own['target']!r}: must be cuda or cpu")
    try:
        if int(own["steps"]) < 2:
            raise ValueError
    except ValueError:
        raise UserError(f"bad value steps={own['steps']!r}: must be an integer >= 2 (the second step "
                        f"runs beside the optimizer state)") from None
    p = plan({**rest, "warmup_steps": "0", "wandb": "disabled"})
    if p.run.precision not in PRECISIONS:
        raise UserError(f"precision={p.run.precision!r} cannot be predicted; use 32-true or bf16-mixed")
    if p.task.images_per_example:
        raise UserError(f"task {p.task.name!r} has images; prediction covers text tasks only")
    backbone_config(own["backbone"])
    return p


def simulate(overrides: dict[str, str], fake: bool = True, device: str = "cpu") -> dict:
    """Build one row's configuration and run its training steps under the tracker: fake tensors
    (a prediction) or real ones on ``device`` (the reference a prediction is checked against)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmark.memory import MemoryTracker, device_name
    from benchmark.module import METLModule
    from benchmark.run import parameter_counts
    from methods.base import Method
    from methods.mpismoe.quant import shape_only

    own, _ = _split(overrides)
    p = check(overrides)
    r, steps, target = p.run, int(own["steps"]), own["target"]
    label, config, pooling = backbone_config(own["backbone"])
    t0 = time.perf_counter()
    notes: list[str] = []
    policy = _data_dependent_policy() if fake else None
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if fake:
            mode = stack.enter_context(FakeTensorMode())
            stack.enter_context(_swappable_params(mode))
            stack.enter_context(policy)
        stack.enter_context(_target_choices(target, fake))
        torch.manual_seed(r.seed)
        with shape_only() if fake else nullcontext():
            backbone = build_backbone(config, label, r.pooling or pooling)
            method = p.method_cls(backbone, p.method_cfg)
        if type(method).prepare is not Method.prepare:
            notes.append("prepare() skipped")
        module = METLModule(method, p.task, lr=p.method_cfg.lr, weight_decay=p.method_cfg.weight_decay,
                            warmup_steps=0, head_dropout=p.method_cfg.head_dropout)
        module.to(device)
        module._trainer = type("Trainer", (), {"estimated_stepping_batches": steps})()
        conf = module.configure_optimizers()
        module._trainer = None  # self.log is then a no-op, as with logger=False
        opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        if fake and target == "cuda":
            for group in opt.param_groups:
                group["foreach"] = True  # AdamW's default for CUDA tensors
        if policy is not None:
            policy.watch(module)
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tracker = MemoryTracker(module, device="cuda" if cuda else None)
        tracker.attach_optimizer(opt)
        autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) \
            if r.precision == "bf16-mixed" else nullcontext
        with tracker:
            module.train()
            for step in range(steps):
                batch = _batch(config, p.task, r.batch_size, r.max_length, device, r.seed + step)
                tracker.track(batch, category="other")

                def closure():
                    with autocast():
                        loss = module.training_step(batch, step)
                    opt.zero_grad()
                    loss.backward()
                    return loss

                opt.step(closure=closure)
                sched.step()
                module.method.after_step(step + 1)
                del batch
        if cuda:
            torch.cuda.synchronize()
        counts = parameter_counts(module, method)
        counts["backbone_storage_bytes"] = _storage_bytes(list(backbone.parameters()) + list(backbone.buffers()))
    if policy is not None:
        notes.extend(sorted(policy.notes))
    bd = tracker.peak_breakdown
    return {"method": r.method, "variant": r.variant or r.method, "peak_train_bytes": tracker.peak_bytes, **bd,
            "trainable_params": counts["trainable_params"], "total_params": counts["total_params"],
            "backbone_storage_bytes": counts["backbone_storage_bytes"], "step_seconds": None,
            "step_seconds_min": None,
            "peak_source": "tracker",
            "cuda_max_allocated": torch.cuda.max_memory_allocated() if cuda else None,
            "cuda_max_reserved": torch.cuda.max_memory_reserved() if cuda else None,
            "batch_size": r.batch_size, "max_length": r.max_length, "precision": r.precision, "backbone": label,
            "device": "fake cpu" if fake else device_name(device), "task": r.task,
            "source": "predicted" if fake else "measured", "target": target if fake else torch.device(device).type,
            "steps": steps, "notes": "; ".join(notes), "error": None,
            "sim_seconds": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------------------------------
# many rows, one process each
# ---------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, FakeUnsupported):
        return msg[:300]
    return f"{type(exc).__name__}: {msg}"[:300]


def _row_worker(overrides: dict[str, str], conn, log_path: str, real_device: str | None) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        import torch

        torch.set_num_threads(1)  # rows run side by side, one per core
        row = simulate(overrides, fake=real_device is None, device=real_device or "cpu")
        conn.send(("ok", row))
    except BaseException as exc:  # noqa: BLE001 - a row's failure is data, reported as one line
        traceback.print_exc()
        conn.send(("failed", _one_line(exc)))
    finally:
        conn.close()


def _context():
    """Row processes fork from a server that imported torch & co once (~10 s saved per row);
    ``METL_PREDICT_START=fork`` forks this process instead (tests), ``spawn`` where there is no fork."""
    import multiprocessing as mp

    method = os.environ.get("METL_PREDICT_START", "forkserver")
    try:
        ctx = mp.get_context(method)
    except ValueError:  # no forkserver (Windows): a fresh interpreter per row
        return mp.get_context("spawn")
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_rows(jobs_list: list[tuple[str, dict[str, str], str | None]], jobs: int = 2,
             progress=None) -> dict[str, tuple[str, object]]:
    """Run ``(key, overrides, real_device)`` jobs in fresh processes, ``jobs`` at a time; returns
    key -> ("ok", row) or ("failed", one-line reason). A crashed process fails only its own row."""
    from multiprocessing.connection import wait

    ctx = _context()
    pending, running, out = list(jobs_list), {}, {}
    logdir = tempfile.mkdtemp(prefix="metl-predict-")
    while pending or running:
        while pending and len(running) < max(1, jobs):
            key, overrides, real = pending.pop(0)
            log = os.path.join(logdir, f"row{len(jobs_list) - len(pending)}.log")
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_row_worker, args=(overrides, send, log, real), daemon=True)
            proc.start()
            send.close()
            running[proc.sentinel] = (key, proc, recv, log)
            if progress:
                progress(f"{'measuring' if real else 'predicting'} {key} ...")
        for sentinel in wait(list(running)):
            key, proc, recv, log = running.pop(sentinel)
            msg = None
            try:
                if recv.poll():
                    msg = recv.recv()
            except (EOFError, OSError):
                msg = None
            proc.join()
            if msg is None:
                tail = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()][-1:] \
                    if os.path.exists(log) else []
                code = proc.exitcode
                how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                msg = ("failed", f"process died ({how})" + (f": {tail[0][:200]}" if tail else ""))
            out[key] = msg
    shutil.rmtree(logdir, ignore_errors=True)
    return out


def _row_overrides(overrides: dict[str, str], label: str, method: str) -> dict[str, str]:
    return {**overrides, "method": method, "variant": "" if label == method else label}


def predict_all(overrides: dict[str, str], methods: list[str] | None = None,
                out: str | Path = "results/memory_predicted.csv", jobs: int = 2) -> int:
    import pandas as pd

    rows = select_rows(methods)
    check(_row_overrides(overrides, *rows[0][:2]))  # a bad input fails once, before any process starts
    t0 = time.perf_counter()
    results = run_rows([(label, _row_overrides(overrides, label, method), None) for label, method, _ in rows],
                       jobs=jobs, progress=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    ok, failed = [], []
    for label, method, _ in rows:
        status, value = results[label]
        if status == "ok":
            ok.append(value)
        else:
            failed.append({"method": method, "variant": label, "error": value, "source": "predicted"})
    if not ok:
        for f in failed:
            print(f"{f['variant']}: failed: {f['error']}", file=sys.stderr)
        print("no memory row could be predicted", file=sys.stderr)
        return 1
    df = pd.DataFrame(ok)
    full = df.loc[df["variant"] == "full", "peak_train_bytes"]
    df["ratio_to_full"] = df["peak_train_bytes"] / full.iloc[0] if len(full) else float("nan")
    df["peak_train_gib"] = df["peak_train_bytes"] / 2**30
    df = df.sort_values("peak_train_bytes", ascending=False)
    if failed:
        df = pd.concat([df, pd.DataFrame(failed)], ignore_index=True)
    df = df[[c for c in COLUMNS + EXTRA_COLUMNS if c in df.columns]]
    for c in INT_COLUMNS:  # stay integers (bytes) beside the empty cells of failed rows
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    first = ok[0]
    print(format_table(df))
    print(f"\npredicted peak training memory (FakeTensorMode + MemoryTracker), GiB = 1024^3 bytes; "
          f"{first['backbone']}, batch {first['batch_size']}, length {first['max_length']}, {first['precision']}, "
          f"target {first['target']}, {first['steps']} steps; {len(ok)} rows in {wall:.0f} s\nwritten: {out}")
    return 1 if failed else 0


def format_table(df) -> str:
    gib = lambda b: "" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b / 2**30:.3f}"  # noqa: E731
    head = ["row", "peak GiB", "ratio to full", "weights", "grads", "optimizer", "activations", "other",
            "trainable", "notes"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for _, r in df.iterrows():
        if isinstance(r.get("error"), str) and r["error"]:
            lines.append(" | ".join([r["variant"], f"failed: {r['error']}"] + [""] * (len(head) - 2)))
            continue
        lines.append(" | ".join([r["variant"], gib(r["peak_train_bytes"]), f"{r['ratio_to_full']:.2f}",
                                 *(gib(r.get(k, 0) or 0) for k in ("weights", "grads", "optimizer", "activations",
                                                                   "other")),
                                 f"{int(r['trainable_params']):,}", r.get("notes") or ""]))
    return "\n".join(lines)


def compare_cuda(overrides: dict[str, str], methods: list[str] | None = None) -> int:
    """Each row predicted (fake, target=cuda) and run for real on CUDA from the same random-init
    backbone config, ``max_memory_allocated`` after the model was moved; one process per run."""
    import torch

    if not torch.cuda.is_available():
        print(f"error: --compare-cuda needs a CUDA device and none is visible (torch {torch.__version__}, "
              f"CUDA build: {torch.version.cuda or 'no'})", file=sys.stderr)
        return 2
    rows = select_rows(methods)
    overrides = {**overrides, "target": "cuda"}
    check(_row_overrides(overrides, *rows[0][:2]))
    jobs_list = []
    for label, method, _ in rows:
        o = _row_overrides(overrides, label, method)
        jobs_list += [((label, "predicted"), o, None), ((label, "measured"), o, "cuda")]
    results = run_rows(jobs_list, jobs=1, progress=lambda s: print(s, file=sys.stderr, flush=True))
    head = ["row", "predicted GiB", "measured GiB (max allocated)", "predicted / measured",
            "tracker on cuda GiB", "max reserved GiB"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    bad = 0
    for label, _, _ in rows:
        (ps, pv), (ms, mv) = results[(label, "predicted")], results[(label, "measured")]
        pred = pv["peak_train_bytes"] if ps == "ok" else None
        meas = mv["cuda_max_allocated"] if ms == "ok" else None
        bad += pred is None or meas is None
        cells = [label, f"{pred / 2**30:.3f}" if pred else f"failed: {pv}",
                 f"{meas / 2**30:.3f}" if meas else f"failed: {mv}",
                 f"{pred / meas:.3f}" if pred and meas else "",
                 f"{mv['peak_train_bytes'] / 2**30:.3f}" if ms == "ok" else "",
                 f"{mv['cuda_max_reserved'] / 2**30:.3f}" if ms == "ok" else ""]
        lines.append(" | ".join(cells))
    print("\n".join(lines))
    first = next((v for s, v in results.values() if s == "ok"), None)
    if first:
        device = next((v["device"] for (k, kind), (s, v) in results.items() if kind == "measured" and s == "ok"), "?")
        print(f"\n{first['backbone']}, batch {first['batch_size']}, length {first['max_length']}, {first['precision']}, "
              f"{first['steps']} steps; measured on {device}; GiB = 1024^3 bytes")
    return 1 if bad else 0


# docs/memory.md: H100 80GB, T5ForConditionalGeneration from the t5-base config (random init), batch 100,
# source length 128, target length 8, fp32, AdamW, max_memory_allocated over 4 training steps
REFERENCE_H100 = {"full": 16_328_735_744, "lora": 10_434_619_904, "frozen": 2_187_279_360}


def _reference_peak(kind: str, target: str, order: str) -> int:
    """One reference run (docs/memory.md) under FakeTensorMode; ``order``: ``plain`` (forward, backward, step,
    zero_grad) or ``lightning`` (zero_grad between forward and backward, inside the step's closure)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import T5ForConditionalGeneration

    from benchmark.memory import MemoryTracker

    config = _config_from_json(CONFIG_DIR / "t5-base.json")
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        mode = stack.enter_context(FakeTensorMode())
        stack.enter_context(_swappable_params(mode))
        stack.enter_context(_target_choices(target, fake=True))
        model = T5ForConditionalGeneration(config)
        if kind == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=32, lora_alpha=32, target_modules=["q", "v"]))
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4,
                                foreach=target == "cuda")
        tracker = MemoryTracker(model, opt)
        with tracker:
            model.train(kind != "frozen")
            for _ in range(2 if kind == "frozen" else 4):
                batch = {"input_ids": torch.randint(0, config.vocab_size, (100, 128)),
                         "attention_mask": torch.ones(100, 128, dtype=torch.long),
                         "labels": torch.randint(0, config.vocab_size, (100, 8))}
                if kind == "frozen":
                    with torch.no_grad():
                        model(**batch)
                    continue

                def closure():
                    loss = model(**batch).loss
                    if order == "lightning":
                        opt.zero_grad()
                    loss.backward()
                    return loss

                opt.step(closure=closure)
                if order == "plain":
                    opt.zero_grad()
    return tracker.peak_bytes


def calibrate(target: str = "cuda") -> int:
    """Predict the H100 reference runs of docs/memory.md and print each prediction beside the measured bytes."""
    print("run | loop order | predicted bytes | H100 max_memory_allocated | predicted / measured")
    print("--- | --- | --- | --- | ---")
    for kind, measured in REFERENCE_H100.items():
        for order in ("plain",) if kind == "frozen" else ("plain", "lightning"):
            peak = _reference_peak(kind, target, order)
            print(f"{kind} | {order} | {peak:,} | {measured:,} | {peak / measured:.3f}", flush=True)
    print(f"\nT5-base encoder-decoder, batch 100, source 128, target 8, fp32, AdamW, 4 steps; target {target}")
    return 0


@entry_point(ValueError)
def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmark.config import parse_overrides

    parser = OverridesParser(prog="python -m benchmark.predict", description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="backbone= batch_size= max_length= precision= target= steps= "
                                                     "task= methods= out= jobs=")
    parser.add_argument("--compare-cuda", action="store_true", help="also run every row for real on CUDA")
    parser.add_argument("--calibrate", action="store_true",
                        help="predict docs/memory.md's H100 reference runs (T5-base encoder-decoder) beside them")
    args = parser.parse_args(argv)
    quiet()
    overrides = parse_overrides(args.overrides)
    opts = {k: overrides.pop(k) for k in CLI_KEYS if k in overrides}
    methods = opts.get("methods", "").replace(",", " ").split() or None
    if args.compare_cuda:
        return compare_cuda(overrides, methods)
    if args.calibrate:
        target = overrides.get("target", DEFAULTS["target"])
        if target not in TARGETS:
            raise UserError(f"bad value target={target!r}: must be cuda or cpu")
        return calibrate(target)
    jobs = int(opts.get("jobs", min(2, os.cpu_count() or 1)))
    return predict_all(overrides, methods, out=opts.get("out", "results/memory_predicted.csv"), jobs=jobs)


if __name__ == "__main__":
    sys.exit(main())
