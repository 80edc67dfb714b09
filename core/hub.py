"""Loading from the Hugging Face hub (diffusers and transformers models): a local folder or a
hub id, offline mode, and errors that say the hub was unreachable instead of naming whatever file
the library then missed. Used by the plugins whose models come from the hub (latent models, CLIP).
Nothing here imports the hub libraries at module level."""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator

__all__ = ["OFFLINE_HINT", "hub_offline", "hub_unreachable", "looks_local", "quiet_hub_libraries"]

OFFLINE_HINT = "set DIFFSAMPLER_OFFLINE=1 (or HF_HUB_OFFLINE=1) to skip the hub at once"
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether ``DIFFSAMPLER_OFFLINE`` or ``HF_HUB_OFFLINE`` forbids contacting the hub."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("DIFFSAMPLER_OFFLINE", "HF_HUB_OFFLINE"))


# file suffixes no hub repository id ends with: such a source is a local file
_FILE_SUFFIXES = (".ckpt", ".zip", ".pt", ".pth", ".safetensors", ".bin", ".pkl", ".yaml", ".yml")


def looks_local(source: str) -> bool:
    """Whether ``source`` can only be meant as a local path: a hub id is ``org/name``, with one
    ``/`` and no leading ``.``, ``/`` or ``~`` (nor a Windows separator), and no file suffix
    such as ``.ckpt`` or ``.safetensors``."""
    if source.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in source):
        return True
    if source.lower().endswith(_FILE_SUFFIXES):
        return True
    return source.count("/") != 1 or source.endswith("/")


def hub_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the hub could not be reached, whatever file the
    library then names as missing."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: BaseException | None = exc
    for _ in range(20):  # a bounded walk down the cause chain
        if seen is None:
            return False
        if isinstance(seen, LocalEntryNotFoundError | OfflineModeIsEnabled | ConnectionError | TimeoutError):
            return True
        if "ConnectError" in type(seen).__name__ or "ConnectTimeout" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def quiet_hub_libraries() -> Iterator[None]:
    """diffusers' and transformers' own log warnings, progress bars and Python warnings off while
    loading (their errors still show; exceptions are untouched), as before afterwards; also
    huggingface_hub's log warnings (its "Retrying in 1s" lines for an unreachable hub), but not
    its download progress bars. Libraries that are not installed are skipped."""
    logs = []
    for name in ("diffusers", "transformers"):
        try:
            logs.append(importlib.import_module(f"{name}.utils.logging"))
        except ImportError:
            continue
    before = [(log.get_verbosity(), log.is_progress_bar_enabled()) for log in logs]
    for log in logs:
        log.set_verbosity_error()
        log.disable_progress_bar()
    try:
        hub_log = importlib.import_module("huggingface_hub.utils.logging")
        hub_level = hub_log.get_verbosity()
        hub_log.set_verbosity_error()
    except ImportError:
        hub_log = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|huggingface_hub)(\.|$)")
            yield
    finally:
        for log, (level, bars) in zip(logs, before, strict=True):
            log.set_verbosity(level)
            if bars:
                log.enable_progress_bar()
        if hub_log is not None:
            hub_log.set_verbosity(hub_level)
