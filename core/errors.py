"""The exceptions diffsampler raises.

Every error a user can cause derives from :class:`DiffSamplerError`; its message is one
sentence that says what was expected. The CLI prints that message without a traceback.
"""

from __future__ import annotations


class DiffSamplerError(Exception):
    """Base class of every error diffsampler raises on purpose."""


class UnknownComponentError(DiffSamplerError, LookupError):
    """A solver, schedule, model, distiller or metric name that nobody registered."""


class DuplicateComponentError(DiffSamplerError, LookupError):
    """A name registered by two plugins, asked for without a ``plugin:name`` qualifier."""


class OptionError(DiffSamplerError, ValueError):
    """An option value, or option name, that a component does not accept."""


class UnreachableNFEError(OptionError):
    """A solver whose NFE per step cannot make the NFE asked for (the nearest reachable are named)."""


class PluginError(DiffSamplerError):
    """A plugin that broke the plugin contract (bad registration call)."""


class SamplingError(DiffSamplerError):
    """Sampling could not proceed: bad sigmas, a denoiser output of the wrong shape or non-finite."""


class ModelLoadError(DiffSamplerError):
    """A model file or directory that cannot be loaded."""


class MissingExtraError(DiffSamplerError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'diffsampler[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, *, extra: str, purpose: str) -> object:
    """Import an optional dependency, or raise :class:`MissingExtraError` naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module.split(".")[0], extra, purpose) from exc
