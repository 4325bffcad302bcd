"""Resume only the same plan: a killed run's lock names its run directory and the settings it trained with;
the next run of that results file continues it only if its own settings are the same and its checkpoint can
be read. Anything else is one line (exit 2) and the lock stays, so the next attempt meets the same question
instead of silently starting over; ``fresh=true`` starts over."""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmark.errors import UserError

# run settings that change how a run is shown or saved, never what it computes
VOLATILE = ("fresh", "progress", "wandb", "wandb_project", "checkpoint_every", "num_workers", "run_dir")
ASIDE = "resume.ckpt.unreadable-"  # a checkpoint that could not be read, kept beside the run's others


def plan_of(config: dict) -> dict:
    """The settings a resumed run must share with the run it continues (``config``: a record's run config)."""
    run = {k: v for k, v in (config.get("run") or {}).items() if k not in VOLATILE}
    return {"run": run, "method": dict(config.get("method") or {})}


def left_behind(ckpt: Path) -> bool:
    """A killed run left something to resume (or a checkpoint an earlier attempt found unreadable)."""
    return ckpt.is_file() or any(ckpt.parent.glob(ASIDE + "*"))


def changes(before: dict, now: dict) -> list[str]:
    """``key before -> now`` for every setting that differs (``method.<key>`` for the method's)."""
    out = []
    for part in ("run", "method"):
        a, b = before.get(part) or {}, now.get(part) or {}
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{'method.' if part == 'method' else ''}{k} {a.get(k)!r} -> {b.get(k)!r}")
    return out


def _refuse(lock, previous: dict, why: str) -> None:
    if lock is not None:  # the killed run's lock as it was: the next run of this results file meets the same
        lock.info = dict(previous)
        lock.note()
        lock.keep()
    raise UserError(why)


def check(previous: dict, plan: dict, ckpt: Path, lock) -> None:
    """Refuse (UserError, one line) to resume ``previous`` (the lock a killed run left) with another ``plan``,
    or from a checkpoint that cannot be read, which is moved aside first."""
    run_dir = previous.get("run_dir")
    recorded = previous.get("plan")
    if recorded is not None:
        diff = changes(recorded, plan)
        if diff:
            _refuse(lock, previous, f"the unfinished run in {run_dir} was started with other settings "
                                    f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}): run it again "
                                    f"with those to resume it, or add fresh=true to start over")
    if not ckpt.is_file():
        aside = sorted(ckpt.parent.glob(ASIDE + "*"))[-1]
        _refuse(lock, previous, f"the unfinished run in {run_dir} has no readable resume checkpoint "
                                f"({aside.name} could not be read): add fresh=true to start over")
    problem = unreadable(ckpt)
    if problem:
        aside = ckpt.with_name(ASIDE + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"))
        ckpt.rename(aside)
        _refuse(lock, previous, f"the resume checkpoint of the unfinished run in {run_dir} cannot be read "
                                f"({problem}); kept aside as {aside.name}: add fresh=true to start over")


def unreadable(ckpt: Path) -> str:
    """"" when ``ckpt`` loads as a Lightning checkpoint, else why not (one line)."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several kinds for a truncated or foreign file
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'empty or truncated'}"
    if not isinstance(state, dict) or "state_dict" not in state:
        return "not a Lightning checkpoint"
    return ""


def resume_plan(p) -> dict:
    """What a resumed run of plan ``p`` must share with the run it continues: its resolved settings."""
    from benchmark.results import build_record

    return plan_of(build_record(p)["run"]["config"])


def resume_checkpoint(run_dir: Path) -> Path:
    """Where a run keeps its whole training state while it trains (``checkpoint_every``)."""
    return Path(run_dir) / "checkpoints" / "resume.ckpt"


def unfinished(p, lock) -> Path | None:
    """The run directory of a killed run of this plan that left a resume checkpoint (named in the lock it
    left behind), unless ``fresh=true``; says so in one line. A run of other settings, or a checkpoint that
    cannot be read (kept aside), is refused in one line and the lock kept, so nothing starts over untold."""
    previous = getattr(lock, "previous", None) or {}
    run_dir = previous.get("run_dir")
    if not run_dir or not left_behind(resume_checkpoint(run_dir)):
        return None
    if p.run.fresh:
        print(f"fresh=true: not resuming the unfinished run in {run_dir}; starting over", file=sys.stderr)
        return None
    check(previous, resume_plan(p), resume_checkpoint(run_dir), lock)
    print(f"resuming the unfinished run in {run_dir} from its last checkpoint (FRESH=1 / fresh=true starts over)",
          file=sys.stderr)
    return Path(run_dir)
