"""Model factories of the ``edm`` plugin. Torch is imported when a factory runs, not before."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffsampler.errors import ModelLoadError

from .catalog import PRETRAINED, Pretrained

if TYPE_CHECKING:
    from .denoiser import EDMDenoiser

__all__ = ["DIGITS_CONFIG", "digits", "edm_file", "loads_file", "pretrained_factory", "weights_dir"]

PAPER = (
    "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, "
    "arXiv:2206.00364"
)
DIGITS_CONFIG = "digits.json"
_CONFIG_FORMAT = "diffsampler.edm"  # = checkpoint.CONFIG_FORMAT, repeated to stay torch-free


def weights_dir() -> Path:
    """The folder of the embedded weights (package data)."""
    return Path(str(resources.files(__package__))) / "weights"


def _wrap(net: Any, info: dict[str, Any], name: str, **options: Any) -> EDMDenoiser:
    from .denoiser import EDMDenoiser

    return EDMDenoiser(net, name=name, info=info, **options)


def _is_our_config(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == _CONFIG_FORMAT


def loads_file(path: str | os.PathLike[str]) -> bool:
    """Whether the generic ``edm`` model loads ``path``: any ``.pkl`` (read as an EDM pickle,
    safely), or a ``.safetensors``/``.pt``/``.pth``/``.json`` that has our JSON config."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix == ".pkl":
        return True
    if p.suffix == ".json":
        return _is_our_config(p)
    if p.suffix in (".safetensors", ".pt", ".pth"):
        for candidate in (p.with_suffix(".json"), p.parent / "config.json"):
            if candidate.is_file():
                return _is_our_config(candidate)
    return False


def edm_file(
    *,
    path: str,
    key: str = "ema",
    class_label: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    device: str = "cpu",
) -> EDMDenoiser:
    """An EDM network from a file: EDM pickle (safely), or weights + JSON config."""
    from .checkpoint import load_network

    net, info = load_network(path, key=key)
    return _wrap(
        net, info, Path(path).stem, class_label=class_label, precision=precision,
        channels_last=channels_last, sigma_min=sigma_min, sigma_max=sigma_max, device=device,
    )


edm_file.loads_file = loads_file  # type: ignore[attr-defined]
edm_file.file_format = (  # type: ignore[attr-defined]
    "an EDM network pickle (.pkl), or .safetensors/.pt/.pth weights with a diffsampler.edm JSON config "
    "beside them (<stem>.json or config.json, written by train-denoiser or save_network)"
)
edm_file.paper = PAPER  # type: ignore[attr-defined]


def _check_entry(net: Any, entry: Pretrained, source: Path) -> None:
    found = (int(net.img_resolution), int(net.img_channels), int(net.label_dim))
    wanted = (entry.resolution, entry.channels, entry.label_dim)
    if found != wanted:
        raise ModelLoadError(
            f"{source} is not the {entry.name} network: it has resolution, channels, classes "
            f"{found}, expected {wanted}"
        )


def pretrained_factory(entry: Pretrained) -> Any:
    """The factory of one named pretrained network."""

    def factory(
        *,
        path: str | None = None,
        download: bool = True,
        class_label: int | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        device: str = "cpu",
    ) -> EDMDenoiser:
        from .checkpoint import load_pickle
        from .download import resolve_weights

        source = resolve_weights(entry, path=path, download=download)
        net, info = load_pickle(source)
        _check_entry(net, entry, source)
        info.update(name=entry.name, file=os.fspath(source))
        return _wrap(
            net, info, entry.name, class_label=class_label, precision=precision,
            channels_last=channels_last, sigma_min=sigma_min, sigma_max=sigma_max, device=device,
        )

    factory.__name__ = entry.name.replace("-", "_")
    factory.__doc__ = entry.summary
    factory.paper = PAPER  # type: ignore[attr-defined]
    return factory


def digits(
    *,
    class_label: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    device: str = "cpu",
) -> EDMDenoiser:
    """Embedded EDM SongUNet trained on scikit-learn's 8x8 digits (1x8x8, 10 classes, CPU-fast)."""
    from .checkpoint import load_network

    config = weights_dir() / DIGITS_CONFIG
    if not config.is_file():
        raise ModelLoadError(f"the embedded digits weights are missing ({config}); reinstall diffsampler")
    net, info = load_network(config)
    return _wrap(
        net, info, "digits", class_label=class_label, precision=precision,
        channels_last=channels_last, sigma_min=sigma_min, sigma_max=sigma_max, device=device,
    )


digits.paper = PAPER  # type: ignore[attr-defined]


def pretrained_entries() -> list[Pretrained]:
    return list(PRETRAINED.values())
