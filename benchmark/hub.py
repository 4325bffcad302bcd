"""Fail fast and clearly when a hub name is used without network, instead of a 20-second retry loop."""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from benchmark.errors import UserError


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face endpoint accepts a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)  # DNS can hang past the socket timeout; never wait longer than this
    return bool(ok)


def require_hub(what: str, fix: str) -> None:
    if not hub_reachable():
        raise UserError(f"cannot download {what}: the Hugging Face hub is unreachable (offline or no network); {fix}")


# the hub ids registered as backbone names (benchmark.backbones registers them, each of the family its name
# starts with; kept here, light, so the run command can check them before it imports torch)
HUB_BACKBONES = ("bert-base-uncased", "roberta-base", "t5-small", "t5-base", "t5-large")


def hub_id(name: str) -> str | None:
    """The hub repository a backbone name means (a registered hub name, ``hf:<id>``, ``owner/name``), or None
    (a packaged or test backbone, a local directory)."""
    if name in HUB_BACKBONES:
        return name
    if name.startswith("hf:"):
        return name[3:]
    if "/" in name and not name.startswith((".", "/")) and not os.path.isdir(name):
        return name
    return None


def preflight(backbone: str) -> None:
    """Before anything heavy is imported: a hub backbone that is not in the local cache needs the network, so
    without it fail now, in about a second, with the same line the loader would print much later."""
    repo = hub_id(backbone)
    if repo is None:
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # a malformed id: the loader reports it
        return
    if not cached:
        require_hub(f"backbone {backbone!r}", "connect to the network once to cache it, pass a local model "
                                              "directory as BACKBONE, or use BACKBONE=minilm, which runs offline")
