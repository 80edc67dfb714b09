"""Model factories of the ``guided`` plugin. Torch is imported when a factory runs, not before.

Weights are plain ``.pt`` state dicts read with ``torch.load(..., weights_only=True)`` (no code
in a model file ever runs) and loaded strictly into :mod:`.unet`'s modules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffsampler.errors import ModelLoadError, OptionError

from .catalog import ADM_FORMAT, CLASSIFIER_FORMAT, DEFAULT_GUIDANCE_RATE, NAMED, Named, Weights
from .download import resolve

__all__ = ["adm_file", "build_network", "loads_file", "named_factory", "read_config", "state_mismatch"]

PAPER = "Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis, arXiv:2105.05233"
CM_PAPER = "Song et al. 2023, Consistency Models, arXiv:2303.01469"


def read_config(path: Path, fmt: str) -> dict[str, Any]:
    """A JSON config of ``fmt`` (``diffsampler.adm`` or ``diffsampler.adm-classifier``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(data.get("network"), dict):
        raise ModelLoadError(f"{path} is not a {fmt} config (need 'format': '{fmt}' and a 'network' dict)")
    return data


def _has_config(path: Path, fmt: str) -> bool:
    try:
        read_config(path, fmt)
    except ModelLoadError:
        return False
    return True


def loads_file(path: str | os.PathLike[str]) -> bool:
    """Whether the generic ``adm`` model loads ``path``: a ``.pt`` with a ``diffsampler.adm``
    JSON beside it (same stem)."""
    p = Path(path)
    return p.is_file() and p.suffix in (".pt", ".pth") and _has_config(p.with_suffix(".json"), ADM_FORMAT)


def build_network(network: dict[str, Any], state_path: Path, *, classifier: bool, hint: str = "") -> Any:
    """Build the module described by ``network`` and load ``state_path`` into it strictly;
    ``hint`` ends the message when the file does not fit."""
    import torch

    from .unet import ADMClassifier, ADMUNet

    cls = ADMClassifier if classifier else ADMUNet
    try:
        module = cls(**network)
    except TypeError as exc:
        raise ModelLoadError(f"bad network settings for {cls.__name__}: {exc}") from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or a corrupt file
        raise ModelLoadError(f"cannot read {state_path} as a weights-only state dict: {str(exc)[:300]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{state_path} holds no state dict (a dict of tensors)")
    problems = state_mismatch(module.state_dict(), state)
    if problems:
        raise ModelLoadError(f"{state_path} does not fit {cls.__name__}: {problems}{hint}")
    module.load_state_dict(state, strict=True)
    return module.float().eval()


def state_mismatch(expected: dict[str, Any], given: dict[str, Any], shown: int = 8) -> str:
    """Missing, unexpected and misshaped keys of ``given``, a few of each and their counts ('' if it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [
        f"{k} (file {tuple(given[k].shape)}, network {tuple(expected[k].shape)})"
        for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshaped)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            parts.append(f"{label}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)


def _denoiser(unet: Any, classifier: Any, precond: str, name: str, info: dict[str, Any], **opts: Any) -> Any:
    from .denoiser import make_denoiser

    return make_denoiser(unet, precond=precond, classifier=classifier, name=name, info=info, **opts)


def adm_file(
    *, path: str, config: str | None = None, classifier_path: str | None = None,
    classifier_config: str | None = None, guidance_rate: float | None = None, **opts: Any,
) -> Any:
    """Any guided-diffusion-style network: a ``.pt`` state dict plus a ``diffsampler.adm`` JSON
    (``{"format", "precond": "vp"|"edm", "network": ADMUNet kwargs}``), optionally a classifier."""
    weights = Path(path).expanduser()
    if not weights.is_file():
        raise ModelLoadError(f"adm: path={path!r} does not exist")
    if guidance_rate and not classifier_path:
        raise OptionError(
            f"adm: guidance_rate={guidance_rate:g} needs a classifier: add classifier_path=... "
            "(classifier guidance), or drop guidance_rate"
        )
    cfg_path = Path(config) if config else weights.with_suffix(".json")
    cfg = read_config(cfg_path, ADM_FORMAT)
    unet = build_network(cfg["network"], weights, classifier=False,
                         hint=f"; check the network settings in {cfg_path}")
    classifier = None
    info: dict[str, Any] = {"file": os.fspath(weights), "network": cfg["network"]}
    if classifier_path:
        cpath = Path(classifier_path).expanduser()
        if not cpath.is_file():
            raise ModelLoadError(f"adm: classifier_path={classifier_path!r} does not exist")
        ccfg_path = Path(classifier_config) if classifier_config else cpath.with_suffix(".json")
        ccfg = read_config(ccfg_path, CLASSIFIER_FORMAT)
        classifier = build_network(ccfg["network"], cpath, classifier=True,
                                   hint=f"; check the network settings in {ccfg_path}")
        info["classifier_file"] = os.fspath(cpath)
    rate = (DEFAULT_GUIDANCE_RATE if classifier is not None else 0.0) if guidance_rate is None else guidance_rate
    return _denoiser(unet, classifier, cfg.get("precond", "vp"), weights.stem, info, guidance_rate=rate, **opts)


adm_file.loads_file = loads_file  # type: ignore[attr-defined]
adm_file.file_format = "ADM .pt/.pth weights with a diffsampler.adm JSON config of the same stem"  # type: ignore[attr-defined]
adm_file.paper = PAPER  # type: ignore[attr-defined]


def named_factory(entry: Named) -> Any:
    """The factory of one named network."""

    def factory(
        *, path: str | None = None, classifier_path: str | None = None, download: bool = True, **opts: Any
    ) -> Any:
        source = resolve(entry.name, entry.model, path=path, download=download)
        hint = (f"; is this the published {entry.model.file}? For another architecture use "
                "--model adm with a diffsampler.adm JSON")
        unet = build_network(entry.model.network, source, classifier=False, hint=hint)
        info: dict[str, Any] = {"name": entry.name, "file": os.fspath(source), "seed_dataset": entry.seed_name}
        classifier = None
        if entry.classifier is not None and float(opts.get("guidance_rate", 0.0)) != 0.0:
            csource = resolve(entry.name, entry.classifier, path=classifier_path, download=download)
            chint = f"; is this the published {entry.classifier.file}?"
            classifier = build_network(entry.classifier.network, csource, classifier=True, hint=chint)
            info["classifier_file"] = os.fspath(csource)
        if entry.precond == "edm":
            opts = {**opts, "clip": False}
        return _denoiser(unet, classifier, entry.precond, entry.name, info, **opts)

    factory.__name__ = entry.name.replace("-", "_")
    factory.__doc__ = entry.summary
    factory.paper = CM_PAPER if entry.precond == "edm" else PAPER  # type: ignore[attr-defined]
    return factory


def weights_present(entry: Named) -> bool:
    """Whether every file of ``entry`` is already local (env var or cache); torch-free."""
    from .download import local_copy

    parts: list[Weights] = [entry.model] + ([entry.classifier] if entry.classifier else [])
    return all(local_copy(w) is not None for w in parts)


def named_entries() -> list[Named]:
    return list(NAMED.values())
