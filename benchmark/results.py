"""One JSON per run: the record's layout, its validation, an atomic writer and a tolerant reader.

The leaderboard is a pure function of these files, so the schema is checked on the way out (an
invalid record is never written) and on the way in (a corrupt or invalid file is reported and
skipped, never fatal). Bytes are integers; a float that is not finite is written as ``null``,
because JSON has no NaN.

Layout (``SCHEMA_VERSION`` 1)::

    {"schema_version": 1,
     "run": {id, method, [variant], task, task_version, task_family, backbone, seed, status, error,
             git_commit, git_dirty, wandb_run_id, config, started_at, finished_at},
     "metrics": {primary: "score", higher_is_better, val_best: {name: float}, test: {name: float},
                 val_curve: [{step, seconds, score}, ...]},
     "efficiency": {trainable_params, total_params, [backbone_params], trainable_percent,
                    [trainable_percent_of_total], backbone_storage_bytes,
                    checkpoint_bytes, peak_train_bytes, peak_source, memory_breakdown, tracker_peak_bytes,
                    cuda_max_allocated, cuda_max_reserved, step_seconds, samples_per_second, total_seconds,
                    batch_size, max_length, precision, device, num_processes},
     "env": {python, platform, torch, lightning, transformers, peft, datasets, torchmetrics, device_name}}
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmark.provenance import PACKAGES, env_info, git_info  # noqa: F401  (part of the record's API)

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "interrupted")
BREAKDOWN = ("weights", "grads", "optimizer", "activations", "other")
CORRUPT = "corrupt"  # prefix of a load_results reason: the file is not readable JSON
INVALID = "invalid"  # prefix of a load_results reason: JSON, but not a valid record

# Type tags: "str", "int" (not bool), "num" (int or float, not bool), "bool", "dict"; "?" = may be None.
RUN_FIELDS = {
    "id": "str", "method": "str", "task": "str", "task_version": "int", "task_family": "str",
    "backbone": "str", "seed": "int", "status": "str", "error": "str?", "git_commit": "str?",
    "git_dirty": "bool?", "wandb_run_id": "str?", "config": "dict", "started_at": "str", "finished_at": "str",
}
# variant: a named configuration of the method (``variant=``), absent = none; method_version: the
# method's ``version`` when it ran, absent = 1 (records from before versions)
# hyperparameters: where the method's hyperparameters came from ({"source": "paper"} or {"source": "tuned",
# "values", "search", "file"}: make tune's choice), absent = paper (records from before make tune)
RUN_OPTIONAL = {"variant": "str?", "method_version": "int", "hyperparameters": "dict"}
METRICS_FIELDS = {"primary": "str", "higher_is_better": "bool", "val_best": "dict", "test": "dict"}
# val_curve: every validation of the run, [{"step", "seconds" (since training began), "score"}, ...];
# absent in records from before it was kept
CURVE_KEYS = ("step", "seconds", "score")
EFFICIENCY_FIELDS = {
    "trainable_params": "int", "total_params": "int", "trainable_percent": "num",
    "backbone_storage_bytes": "int", "checkpoint_bytes": "int?", "peak_train_bytes": "int",
    "peak_source": "str", "memory_breakdown": "dict", "tracker_peak_bytes": "int?",
    "cuda_max_allocated": "int?", "cuda_max_reserved": "int?", "step_seconds": "num?",
    "samples_per_second": "num?", "total_seconds": "num", "batch_size": "int", "max_length": "int",
    "precision": "str", "device": "str", "num_processes": "int",
}
# train_steps: optimizer steps trained (where an until-plateau run stopped); absent in older records
# steps_per_epoch: training batches per epoch (what cost estimates scale by); absent in older records
# segments: > 1 when resumed; earlier_seconds: the training time of the segments before the last (in total_seconds)
# backbone_params: the backbone's own parameters, trainable_percent's denominator (the papers'); with it,
# trainable_percent_of_total = 100 * trainable / total. Records without it divide trainable_percent by the total.
EFFICIENCY_OPTIONAL = {"train_steps": "int", "steps_per_epoch": "int", "segments": "int", "earlier_seconds": "num",
                       "backbone_params": "int", "trainable_percent_of_total": "num"}
ENV_FIELDS = {"python": "str?", "platform": "str?", **{p: "str?" for p in PACKAGES}, "device_name": "str?",
              "cpu_threads": "int?"}
# packages whose version records carry since they joined the suite (older records lack them)
ENV_OPTIONAL = ("bitsandbytes", "cpu_threads")


# --- validation ------------------------------------------------------------------------------------
def _type_ok(value: Any, tag: str) -> bool:
    if tag.endswith("?"):
        if value is None:
            return True
        tag = tag[:-1]
    if tag == "str":
        return isinstance(value, str)
    if tag == "bool":
        return isinstance(value, bool)
    if tag == "dict":
        return isinstance(value, dict)
    if tag == "list":
        return isinstance(value, list)
    if isinstance(value, bool):
        return False
    if tag == "int":
        return isinstance(value, numbers.Integral)
    if tag == "num":
        return isinstance(value, numbers.Real)
    raise ValueError(f"unknown type tag {tag!r}")


def _check_fields(section: dict, name: str, spec: dict[str, str], required: bool) -> list[str]:
    problems = []
    for key, tag in spec.items():
        if key not in section:
            if required:
                problems.append(f"{name}.{key} is missing")
            continue
        value = section[key]
        if not _type_ok(value, tag):
            problems.append(f"{name}.{key} should be {tag.rstrip('?')}{' or null' if tag.endswith('?') else ''}, "
                            f"got {type(value).__name__}")
        elif tag == "num" and not math.isfinite(value):  # would be written as null: not a number any more
            problems.append(f"{name}.{key} should be a finite number, got {value!r}")
    return problems


def _is_finite_number(v: Any) -> bool:
    return _type_ok(v, "num") and math.isfinite(v)


def validate(record: Any) -> list[str]:
    """Everything wrong with ``record`` as a results record (empty when valid)."""
    if not isinstance(record, dict):
        return [f"a record is a JSON object, got {type(record).__name__}"]
    problems: list[str] = []
    version = record.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        problems.append(f"schema_version should be {SCHEMA_VERSION}, got {version!r}")
    sections = {}
    for name in ("run", "metrics", "efficiency", "env"):
        section = record.get(name)
        if not isinstance(section, dict):
            problems.append(f"{name} is missing" if section is None else f"{name} should be an object")
            section = {}
        sections[name] = section
    run, metrics, eff, env = (sections[k] for k in ("run", "metrics", "efficiency", "env"))

    problems += _check_fields(run, "run", RUN_FIELDS, required=True)
    problems += _check_fields(run, "run", RUN_OPTIONAL, required=False)
    status = run.get("status")
    if isinstance(status, str) and status not in STATUSES:
        problems.append(f"run.status should be one of {', '.join(STATUSES)}, got {status!r}")
    for key in ("started_at", "finished_at"):
        if isinstance(run.get(key), str):
            try:
                datetime.fromisoformat(run[key])
            except ValueError:
                problems.append(f"run.{key} is not an ISO time: {run[key]!r}")
    ok = status == "ok"

    problems += _check_fields(metrics, "metrics", METRICS_FIELDS, required=True)
    if "primary" in metrics and metrics["primary"] != "score":
        problems.append(f"metrics.primary should be 'score', got {metrics['primary']!r}")
    for part in ("val_best", "test"):
        values = metrics.get(part)
        if isinstance(values, dict):
            for k, v in values.items():
                if not isinstance(k, str) or not (v is None or _type_ok(v, "num")):
                    problems.append(f"metrics.{part}.{k} should be a number or null, got {type(v).__name__}")
    curve = metrics.get("val_curve", [])
    if not isinstance(curve, list) or not all(isinstance(c, dict) and set(c) == set(CURVE_KEYS)
                                              and all(_type_ok(c[k], "num") for k in CURVE_KEYS) for c in curve):
        problems.append("metrics.val_curve should be a list of {step, seconds, score} numbers")
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    if ok and not _is_finite_number(test.get("score")):
        problems.append("an ok run needs a finite metrics.test.score")

    # A failed run may have stopped before any figure existed: its efficiency fields are optional.
    problems += _check_fields(eff, "efficiency", EFFICIENCY_FIELDS, required=ok)
    problems += _check_fields(eff, "efficiency", EFFICIENCY_OPTIONAL, required=False)
    if ok and _type_ok(eff.get("peak_train_bytes"), "int") and eff["peak_train_bytes"] < 0:
        problems.append("efficiency.peak_train_bytes is negative")
    breakdown = eff.get("memory_breakdown")
    if isinstance(breakdown, dict):
        problems += _check_fields(breakdown, "efficiency.memory_breakdown", dict.fromkeys(BREAKDOWN, "int?"),
                                  required=ok)

    problems += _check_fields(env, "env", {k: v for k, v in ENV_FIELDS.items() if k not in ENV_OPTIONAL}, required=True)
    problems += _check_fields(env, "env", {k: ENV_FIELDS[k] for k in ENV_OPTIONAL}, required=False)
    if not problems:
        try:
            _dumps(record)
        except (TypeError, ValueError) as e:
            problems.append(f"not JSON-serialisable: {e}")
    return problems


# --- writing and reading ---------------------------------------------------------------------------
def _json_safe(obj: Any) -> Any:
    """Non-finite floats -> None (JSON has no NaN), numpy/torch scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj) if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # a 0-d numpy array or torch tensor
        return _json_safe(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj  # json.dumps raises TypeError on anything else


def _dumps(record: dict) -> str:
    return json.dumps(_json_safe(record), indent=2, allow_nan=False) + "\n"


def atomic_write(path: str | os.PathLike, write, *, binary: bool = True, fsync: bool = False) -> Path:
    """Call ``write(file)`` on a temp file in the same folder, then ``os.replace`` it onto ``path``.

    Readers see the old file or the new one, never a half-written one; a crash leaves no temp file
    behind under the final name (temp names end in ``.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` to ``path`` atomically and durably (results files)."""
    return atomic_write(path, lambda f: f.write(text), binary=False, fsync=True)


def write_result(record: dict, path: str | os.PathLike) -> Path:
    """Validate ``record`` and write it atomically to ``path``; ValueError (nothing written) if invalid."""
    problems = validate(record)
    if problems:
        raise ValueError(f"refusing to write an invalid results record to {path}: " + "; ".join(problems))
    return atomic_write_text(path, _dumps(record))


def slug(name: str) -> str:
    """A safe file/folder name for ``name``: '/' -> '--', anything outside [A-Za-z0-9._@-] -> '-'."""
    s = name.strip().strip("/").replace("/", "--")
    s = re.sub(r"[^A-Za-z0-9._@-]+", "-", s)
    if not s.strip("."):  # "", ".", ".." would not be a folder of its own
        s = "_" + s
    return s


def label_slug(name: str) -> str:
    """The run-id / log-folder form of a label: '/' -> '--', ':' -> '-', the rest kept.

    Not ``slug``: run ids have kept '+' and spaces since the first run (``easy_vqa-full-minilm+efficientnet-lite0-
    s0-...`` is filed under ``minilm-efficientnet-lite0/``), so one rule would rename ids or files."""
    return name.strip("/").replace("/", "--").replace(":", "-")


def run_id_for(plan, tail: str) -> str:
    """``<task>-<label>-<backbone>-s<seed>-<tail>``: a start time (a run) or a status (a failed run)."""
    r = plan.run
    return f"{r.task}-{label_slug(r.label)}-{label_slug(plan.backbone_label)}-s{r.seed}-{tail}"


def build_record(plan, *, run_id: str = "", status: str = "ok", error: str | None = None,
                 git: tuple[str | None, bool | None] = (None, None), wandb_run_id: str | None = None,
                 started_at: str = "", finished_at: str = "", val_best: dict | None = None,
                 test: dict | None = None, efficiency: dict | None = None, env: dict | None = None,
                 val_curve: list[dict] | None = None) -> dict:
    """The results record of a run of ``plan`` (a ``benchmark.run.Plan``), in the one key order every file has.

    With the plan alone it is the record a run would be filed under and compared by (``make paper``'s
    expected run: path and currency need only the plan); a finished or failed run adds what it measured.
    """
    from benchmark.config import as_dict

    r = plan.run
    metrics = {"primary": "score", "higher_is_better": plan.task.higher_is_better,
               "val_best": val_best or {}, "test": test or {}}
    if val_curve is not None:
        metrics["val_curve"] = val_curve
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {"id": run_id, "method": r.method, "method_version": plan.method_cls.version,
                "variant": r.variant or None, "task": r.task, "task_version": plan.task.version,
                "task_family": plan.task.family, "backbone": plan.backbone_label, "seed": r.seed,
                "status": status, "error": error, "git_commit": git[0], "git_dirty": git[1],
                "wandb_run_id": wandb_run_id, "hyperparameters": plan.hyperparameters,
                "config": {"run": as_dict(r), "method": as_dict(plan.method_cfg)},
                "started_at": started_at, "finished_at": finished_at},
        "metrics": metrics,
        "efficiency": efficiency or {},
        "env": env or {},
    }


def method_label(run: dict) -> str:
    """``method`` or ``method@variant``: a variant's runs are a row of their own, never averaged in."""
    return f"{run['method']}@{run['variant']}" if run.get("variant") else run["method"]


BUDGET_FIELDS = ("epochs", "max_steps", "patience", "batch_size", "max_length", "limit_train_samples", "limit_eval_samples",
                 "limit_test_samples", "precision", "hparams")


def budget_label(run: dict) -> str:
    """The training budget a run had, as a short name: ``1ep-b32-len64``, ``1ep-b32-len64-train4096-eval2048``
    (subsets; ``-testall`` where the test split is whole and validation a subset), ``200steps-...``,
    ``plateau3-max20ep-...`` (until-plateau), ``...-bf16-mixed`` (not fp32),
    ``tuned-...`` (make tune's hyperparameters, not the papers').

    Runs of different budgets are different experiments: they never share a results file or a leaderboard
    row. Read from the run's config; a field a record lacks takes RunConfig's default."""
    from benchmark.config import RunConfig

    given = (run.get("config") or {}).get("run") or {}
    v = {k: given.get(k, getattr(RunConfig, k)) for k in BUDGET_FIELDS}
    cap = f"{v['max_steps']}steps" if int(v["max_steps"]) > 0 else f"{v['epochs']}ep"
    if int(v["patience"]):  # until-plateau: the patience, then the cap (``plateau3-max20ep``)
        cap = f"plateau{v['patience']}-max{cap}"
    parts = [cap, f"b{v['batch_size']}", f"len{v['max_length']}"]
    if int(v["limit_train_samples"]):
        parts.append(f"train{v['limit_train_samples']}")
    if int(v["limit_eval_samples"]):
        parts.append(f"eval{v['limit_eval_samples']}")
    test = int(v["limit_test_samples"])
    if test >= 0 and test != int(v["limit_eval_samples"]):  # the test split not as validation's
        parts.append(f"test{test}" if test else "testall")
    if str(v["precision"]) not in ("32-true", "32"):
        parts.append(str(v["precision"]))
    if v["hparams"] != "paper":
        parts.insert(0, str(v["hparams"]))
    return "-".join(parts)


def result_path(results_dir: str | os.PathLike, record: dict) -> Path:
    """``<results_dir>/runs/<task>-v<version>/<method[@variant]>/<backbone-slug>/<budget>/seed<seed>.json``:
    neither a new task version nor another budget (``budget_label``) overwrites the results of the old one."""
    run = record["run"]
    return (Path(results_dir) / "runs" / f"{slug(run['task'])}-v{run['task_version']}" / slug(method_label(run))
            / slug(run["backbone"]) / slug(budget_label(run)) / f"seed{run['seed']}.json")


def load_results(results_dir: str | os.PathLike) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every valid record under ``<results_dir>/runs/**/*.json`` (failed runs included, status says so),
    and ``(path, reason)`` for each file skipped; the reason starts with "corrupt:" or "invalid:"."""
    records: list[dict] = []
    problems: list[tuple[Path, str]] = []
    for path in sorted(Path(results_dir).glob("runs/**/*.json")):
        if not path.is_file():
            continue
        record, problem = read_result(path)
        if problem:
            problems.append((path, problem))
        else:
            records.append(record)
    return records, problems


def read_result(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """One results file: ``(record, None)``, or ``(None, reason)`` with the reason starting "corrupt:" or
    "invalid:"."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{CORRUPT}: {type(e).__name__}: {e}"
    issues = validate(record)
    if issues:
        return None, f"{INVALID}: " + "; ".join(issues)
    return record, None
