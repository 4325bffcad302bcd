"""Peak training memory at a scale this machine cannot run: the training steps of ``make memory`` under
PyTorch's ``FakeTensorMode`` (shapes, dtypes and storage sizes; no data, no arithmetic), counted by the
same ``MemoryTracker``, with the same method, task head, loss and AdamW as a real run.

``python -m benchmark.memory.predict backbone=t5-base batch_size=100 max_length=128`` predicts every
registered method and variant (the rows of ``make memory``) and writes ``results/memory_predicted.csv``.

What a prediction is, exactly:

- The backbone is built from its architecture config alone (a registry tiny config, a config shipped in
  ``benchmark/backbones/configs``, a packaged model's ``config.json``, or a path), random init, no hub.
- Each row runs in its own process (``benchmark.jobs``), so a crash of one row does not take the others
  with it and peaks never carry over.
- The loop is Lightning's automatic optimisation, step for step (``simulate.py``).
- Data-dependent steps: ``Method.prepare`` (LST's Fisher-pruned init: it changes values, not shapes) is
  not run; a method whose steps read data answers them through its ``FakeHints`` (MP-ISMoE:
  methods/mpismoe/fake_hints.py: shape-only GNP-IQ, balanced MoE routing, one placeholder scalar), each
  said in the row's notes. Any other op whose result depends on values fails its row with a one-line
  reason.
- ``target=cuda`` (default) makes the choices a CUDA run makes by device type, on fake CPU tensors:
  ``dropout`` fused (a bool mask is saved, CPU saves one of the input's dtype), attention through the
  fused memory-efficient SDPA kernel (CPU's math path saves the [B, H, L, L] weights), AdamW's foreach
  update. A fake CUDA *device* cannot
  run autograd on a CPU-only torch build (the autograd engine needs a CUDA device guard and accelerator
  hooks), so autocast (``precision=bf16-mixed``) runs CPU's autocast with CUDA's cast policy
  (``autocast.py``: softmax, layer norm, pow, sum, the losses ... in fp32, as on CUDA). Calibrated against
  the H100 figures of docs/memory.md (T5-base encoder-decoder, batch 100): full fine-tuning 0.92-0.97, LoRA
  0.93, frozen forward 0.98 of ``max_memory_allocated`` (CPU kernels: 1.21-1.33); kernel workspaces
  (cuBLAS, SDPA backward) and allocator rounding are not tensors and are not counted.
  ``target=cpu`` predicts this machine's CPU run (``make memory``'s tracker) exactly.

``--compare-cuda`` runs the same rows for real on a CUDA device next to their prediction;
``--calibrate`` predicts the H100 reference runs of docs/memory.md (``calibrate.py``), or the same model at
another ``batch_size= max_length= target_length= precision=``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from benchmark.cli import OverridesParser, entry_point, quiet
from benchmark.errors import UserError
from benchmark.memory.fake import FakeUnsupported
from benchmark.memory.simulate import DEFAULTS, TARGETS, check, simulate
from benchmark.memory.table import format_table, row_overrides, select_rows, write_table

MARK = "METL_PREDICT_JSON "
# what every row process imports: loaded once by the job runner's process server, each row forks from it
PRELOAD = ("torch", "torch._subclasses.fake_tensor", "transformers", "benchmark.bnb_preload", "peft", "lightning", "methods.base",
           "benchmark.module", "benchmark.run", "benchmark.memory.simulate")
CLI_KEYS = ("methods", "out", "jobs")


# ---------------------------------------------------------------------------------------------------
# many rows, one process each
# ---------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, FakeUnsupported):
        return msg[:300]
    return f"{type(exc).__name__}: {msg}"[:300]


def _row_process(overrides: dict[str, str], real_device: str | None, largest_under: int | None = None,
                 cached: bool = False, knob: str = "batch_size", knob_max: int | None = None,
                 known: dict[int, int] | None = None) -> int:
    """A row's own process: its result (or its one-line failure) as one marked JSON line. ``largest_under``:
    the largest ``knob`` (batch, or length at the row's batch) up to ``knob_max`` that fits that many bytes
    (``capacity.py``), every probe cached on disk."""
    try:
        import torch

        torch.set_num_threads(1)  # rows run side by side, one per core
        if largest_under is not None:
            from benchmark.memory.capacity import MAX_BATCH, largest_batch_row

            msg = ("ok", largest_batch_row(overrides, largest_under, simulate, knob=knob,
                                           maximum=knob_max or MAX_BATCH, known=known))
        elif cached and real_device is None:  # make advise: the same prediction is read back, not rerun
            from benchmark.memory.capacity import PredictionCache, default_cache_folder

            msg = ("ok", PredictionCache(default_cache_folder()).get(overrides, simulate))
        else:
            msg = ("ok", simulate(overrides, fake=real_device is None, device=real_device or "cpu"))
    except BaseException as exc:  # noqa: BLE001 - a row's failure is data, reported as one line
        traceback.print_exc()
        msg = ("failed", _one_line(exc))
    print(MARK + json.dumps(msg), flush=True)
    return 0


def _died(d) -> tuple[str, str]:
    code = d.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    tail = d.last_line()
    return "failed", f"process died ({how})" + (f": {tail[:200]}" if tail else "")


def run_rows(jobs_list: list[tuple[object, dict[str, str], str | None]], jobs: int = 2,
             progress=None, largest_under: int | None = None, cached: bool = False, knob: str = "batch_size",
             knob_max: int | None = None, known: dict | None = None) -> dict[object, tuple[str, object]]:
    """Run ``(key, overrides, real_device)`` rows in fresh processes, ``jobs`` at a time; returns
    key -> ("ok", row) or ("failed", one-line reason). A crashed process fails only its own row.
    ``largest_under``: each row answers the largest ``knob`` (up to ``knob_max``) that fits that many bytes
    instead; ``known``: key -> {value: peak} a search need not predict again."""
    from benchmark import jobs as runner

    todo = []
    for key, overrides, real in jobs_list:
        argv = [sys.executable, "-m", "benchmark.memory.predict", "--one", *(["--device", real] if real else []),
                *(["--largest-under", str(largest_under), "--knob", knob] if largest_under is not None else []),
                *(["--knob-max", str(knob_max)] if knob_max else []),
                *([f"--known={','.join(f'{b}:{v}' for b, v in known[key].items())}"]
                  if known and known.get(key) else []),
                *(["--cached"] if cached else []),
                *(f"{k}={v}" for k, v in overrides.items())]
        todo.append(runner.Job(str(key), argv, data=(key, real)))
    out = {}

    def started(i, job):
        if progress:
            progress(f"{'measuring' if job.data[1] else 'predicting'} {job.data[0]} ...")

    def done(i, d):
        line = next((ln for ln in d.stdout.splitlines() if ln.startswith(MARK)), None)
        out[d.job.data[0]] = tuple(json.loads(line[len(MARK):])) if line else _died(d)

    runner.run(todo, workers=jobs, on_start=started, on_done=done, preload=PRELOAD)
    return out


CONFIGURATION = ("backbone", "batch_size", "max_length", "precision")


def _other_configurations(out: str, row: dict):
    """The rows of ``out`` predicted for another configuration (backbone kind, batch, length, precision) than
    ``row``'s: a new prediction replaces its own configuration's rows and keeps these."""
    import pandas as pd

    path = Path(out)
    if not path.is_file():
        return None
    try:
        old = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if not set(CONFIGURATION) <= set(old.columns):
        return None
    same = pd.Series(True, index=old.index)
    for k in CONFIGURATION:
        same &= old[k].astype(str) == str(row[k])
    rest = old[~same]
    return rest if len(rest) else None


def predict_all(overrides: dict[str, str], methods: list[str] | None = None,
                out: str = "results/memory_predicted.csv", jobs: int = 2, cached: bool = False) -> int:
    rows = select_rows(methods)
    check(row_overrides(overrides, *rows[0][:2]))  # a bad input fails once, before any process starts
    t0 = time.perf_counter()
    results = run_rows([(label, row_overrides(overrides, label, method), None) for label, method, _ in rows],
                       jobs=jobs, progress=lambda s: print(s, file=sys.stderr, flush=True), cached=cached)
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
    first = ok[0]
    others = _other_configurations(out, first)
    df = write_table(ok, out, failed, predicted=True)
    if others is not None:  # one table keeps every predicted configuration (t5-base and t5-base:seq2seq, ...)
        import pandas as pd

        pd.concat([df, others], ignore_index=True).to_csv(out, index=False)
    print(format_table(df))
    print(f"\npredicted peak training memory (FakeTensorMode + MemoryTracker), GiB = 1024^3 bytes; "
          f"{first['backbone']}, batch {first['batch_size']}, length {first['max_length']}, {first['precision']}, "
          f"target {first['target']}, {first['steps']} steps; {len(ok)} rows in {wall:.0f} s\nwritten: {out}")
    return 1 if failed else 0


COMPARE_COLUMNS = ["row", "predicted_tensors_bytes", "predicted_allocated_bytes", "measured_max_allocated_bytes",
                   "allocated_ratio", "predicted_reserved_bytes", "measured_max_reserved_bytes", "reserved_ratio",
                   "measured_tracker_bytes", "sdpa_kernels", "backbone", "batch_size", "max_length", "precision",
                   "steps", "device", "error"]


def compare_rows(rows: list[str], results: dict) -> list[dict]:
    """One row per method: its prediction beside its real CUDA run (``results``: (label, "predicted" |
    "measured") -> ("ok", row) or ("failed", reason)). The allocated ratio compares the allocator model's
    blocks plus cuBLAS's workspaces (what ``max_memory_allocated`` counts) with the measured figure; the real
    run names the SDPA kernels it ran."""
    out = []
    for label in rows:
        (ps, pv), (ms, mv) = results[(label, "predicted")], results[(label, "measured")]
        p = pv if ps == "ok" else {}
        m = mv if ms == "ok" else {}
        alloc, meas = p.get("predicted_allocated_bytes"), m.get("cuda_max_allocated")
        pres, mres = p.get("predicted_reserved_bytes"), m.get("cuda_max_reserved")
        first = p or m
        out.append({"row": label, "predicted_tensors_bytes": p.get("peak_train_bytes"),
                    "predicted_allocated_bytes": alloc, "measured_max_allocated_bytes": meas,
                    "allocated_ratio": round(alloc / meas, 4) if alloc and meas else None,
                    "predicted_reserved_bytes": pres, "measured_max_reserved_bytes": mres,
                    "reserved_ratio": round(pres / mres, 4) if pres and mres else None,
                    "measured_tracker_bytes": m.get("peak_train_bytes"), "sdpa_kernels": m.get("sdpa_kernels", ""),
                    "backbone": first.get("backbone"), "batch_size": first.get("batch_size"),
                    "max_length": first.get("max_length"), "precision": first.get("precision"),
                    "steps": first.get("steps"), "device": m.get("device"),
                    "error": "; ".join(f"{kind}: {v}" for kind, s, v in (("predicted", ps, pv), ("measured", ms, mv))
                                       if s != "ok")})
    return out


def compare_cuda(overrides: dict[str, str], methods: list[str] | None = None,
                 out: str = "results/memory_cuda.csv") -> int:
    """Each row predicted (fake, target=cuda) and run for real on CUDA from the same random-init
    backbone config, ``max_memory_allocated`` after the model was moved; one process per run. The table is
    printed and written to ``out`` (CSV, integer bytes)."""
    import torch

    if not torch.cuda.is_available():
        print(f"error: --compare-cuda needs a CUDA device and none is visible (torch {torch.__version__}, "
              f"CUDA build: {torch.version.cuda or 'no'})", file=sys.stderr)
        return 2
    rows = select_rows(methods)
    overrides = {**overrides, "target": "cuda"}
    check(row_overrides(overrides, *rows[0][:2]))
    jobs_list = []
    for label, method, _ in rows:
        o = row_overrides(overrides, label, method)
        jobs_list += [((label, "predicted"), o, None), ((label, "measured"), o, "cuda")]
    results = run_rows(jobs_list, jobs=1, progress=lambda s: print(s, file=sys.stderr, flush=True))
    table = compare_rows([label for label, _, _ in rows], results)
    gib = lambda b: f"{b / 2**30:.3f}" if b else ""  # noqa: E731
    head = ["row", "predicted allocated GiB", "measured max allocated GiB", "ratio", "predicted reserved GiB",
            "measured max reserved GiB", "ratio", "tracker on cuda GiB", "SDPA kernels"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in table:
        lines.append(" | ".join([r["row"], gib(r["predicted_allocated_bytes"]), gib(r["measured_max_allocated_bytes"]),
                                 str(r["allocated_ratio"] or ""), gib(r["predicted_reserved_bytes"]),
                                 gib(r["measured_max_reserved_bytes"]), str(r["reserved_ratio"] or ""),
                                 gib(r["measured_tracker_bytes"]), r["sdpa_kernels"] or r["error"]]))
    print("\n".join(lines))
    import pandas as pd

    from benchmark.results import atomic_write_text

    atomic_write_text(Path(out), pd.DataFrame(table, columns=COMPARE_COLUMNS).to_csv(index=False, lineterminator="\n"))
    first = next((r for r in table if r["device"]), None)
    if first:
        print(f"\n{first['backbone']}, batch {first['batch_size']}, length {first['max_length']}, {first['precision']}, "
              f"{first['steps']} steps; measured on {first['device']}; GiB = 1024^3 bytes; written: {out}")
    return 1 if any(r["error"] for r in table) else 0


@entry_point(ValueError)
def main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmark.config import parse_overrides

    parser = OverridesParser(prog="python -m benchmark predict", description=__doc__.split("\n\n")[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="backbone= batch_size= max_length= precision= target= steps= "
                                                     "task= methods= out= jobs=")
    parser.add_argument("--compare-cuda", action="store_true", help="also run every row for real on CUDA")
    parser.add_argument("--calibrate", action="store_true",
                        help="predict docs/memory.md's H100 reference runs (T5-base encoder-decoder) beside them")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a row's own process
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)  # with --one: run for real there
    parser.add_argument("--largest-under", type=int, default=None, help=argparse.SUPPRESS)  # with --one
    parser.add_argument("--knob", default="batch_size", help=argparse.SUPPRESS)  # with --largest-under
    parser.add_argument("--knob-max", type=int, default=None, help=argparse.SUPPRESS)  # with --largest-under
    parser.add_argument("--known", default="", help=argparse.SUPPRESS)  # with --largest-under: b:peak,...
    parser.add_argument("--cached", action="store_true", help="read and keep each row's prediction in the disk "
                        "cache (~/.cache/metl-bench/predictions), as make advise does")
    args = parser.parse_args(argv)
    quiet()
    overrides = parse_overrides(args.overrides)
    if args.one:
        known = {int(b): int(v) for b, v in (kv.split(":") for kv in args.known.split(",") if kv)}
        return _row_process(overrides, args.device, args.largest_under, args.cached, args.knob, args.knob_max,
                            known or None)
    opts = {k: overrides.pop(k) for k in CLI_KEYS if k in overrides}
    methods = opts.get("methods", "").replace(",", " ").split() or None
    if args.compare_cuda:
        return compare_cuda(overrides, methods, out=opts.get("out", "results/memory_cuda.csv"))
    if args.calibrate:
        from benchmark.memory.calibrate import calibrate

        target = overrides.pop("target", DEFAULTS["target"])
        if target not in TARGETS:
            raise UserError(f"bad value target={target!r}: must be cuda or cpu")
        shape = {}
        for key, value in overrides.items():
            if key == "precision":
                if value not in ("32-true", "bf16-mixed"):
                    raise UserError(f"bad value precision={value!r}: --calibrate predicts 32-true or bf16-mixed")
                shape[key] = value
            elif key in ("batch_size", "max_length", "target_length"):
                if not value.isdigit() or int(value) < 1:
                    raise UserError(f"bad value {key}={value!r}: a whole number >= 1")
                shape[key] = int(value)
            else:
                raise UserError(f"--calibrate takes target= batch_size= max_length= target_length= precision=, "
                                f"not {key}=")
        return calibrate(target, **shape)
    jobs = int(opts.get("jobs", min(2, os.cpu_count() or 1)))
    return predict_all(overrides, methods, out=opts.get("out", "results/memory_predicted.csv"), jobs=jobs,
                       cached=args.cached)


if __name__ == "__main__":
    sys.exit(main())
