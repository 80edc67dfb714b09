"""Model factories of the ``latent`` plugin (torch and diffusers are imported when one runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffsampler.errors import ModelLoadError, OptionError

from .catalog import NAMED, Named
from .download import checkpoint_in, is_compvis_checkpoint

if TYPE_CHECKING:
    from .denoiser import LatentDenoiser

__all__ = ["latent_file", "loads_file", "named_factory"]

PAPER = "Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models, arXiv:2112.10752"


def loads_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a diffusers folder with a U-Net and a scheduler, or a CompVis LDM
    checkpoint (``.ckpt``, its release ``.zip``, or a folder holding ``model.ckpt``; it then
    needs ``config=``)."""
    p = Path(path)
    return (p.is_dir() and (p / "unet").is_dir() and (p / "scheduler").is_dir()) or is_compvis_checkpoint(p)


def latent_file(*, path: str, **opts: Any) -> LatentDenoiser:
    """Any diffusers-format latent model (LDM: UNet2DModel + VQ/KL; SD: + CLIP text encoder)."""
    from .loader import load_latent

    return load_latent(path, name=Path(path).name or "latent", **opts)


latent_file.loads_file = loads_file  # type: ignore[attr-defined]
latent_file.file_format = (  # type: ignore[attr-defined]
    "a diffusers model folder with unet/ and scheduler/, or an unconditional CompVis LDM "
    "model.ckpt / release .zip with option config=ITS.yaml (extra [diffusers])")
latent_file.paper = PAPER  # type: ignore[attr-defined]


def local_folder(entry: Named) -> str | None:
    """The environment variable's folder or file, if set."""
    env = os.environ.get(entry.env_var)
    return os.path.expanduser(env) if env else None


def _text_factory(entry: Named) -> Any:
    def factory(*, path: str | None = None, **opts: Any) -> LatentDenoiser:
        from .loader import load_latent

        source = path or local_folder(entry) or entry.hub_id
        if source is None:  # pragma: no cover - every text entry has a hub id
            raise ModelLoadError(f"{entry.name}: pass path=/diffusers/folder or set {entry.env_var}")
        if Path(source).expanduser().is_file():
            raise ModelLoadError(f"{entry.name}: {source} is a file; this model loads from a diffusers "
                                 f"folder or the hub id {entry.hub_id}")
        model = load_latent(source, name=entry.name, default_rate=entry.guidance_rate, **opts)
        model.info["seed_checkpoint"] = entry.seed_url
        return model

    return factory


def _ldm_factory(entry: Named) -> Any:
    def factory(*, path: str | None = None, ema: bool | None = None, vq_path: str | None = None,
                download: bool = True, **opts: Any) -> LatentDenoiser:
        from .compvis_config import SEED_CONFIGS
        from .download import resolve_ldm, resolve_vq_f4
        from .loader import load_latent

        source = resolve_ldm(entry, path=path, download=download)
        if checkpoint_in(source) is None and vq_path is not None:
            raise OptionError(f"{entry.name}: vq_path applies to CompVis checkpoints; {source} is a diffusers folder")
        model = load_latent(source, name=entry.name, default_rate=1.0, ema=ema,
                            builtin_config=SEED_CONFIGS[entry.name],
                            first_stage=lambda: resolve_vq_f4(entry.name, path=vq_path, download=download),
                            vq_path=vq_path, **opts)
        model.info["seed_checkpoint"] = entry.seed_url
        return model

    return factory


def named_factory(entry: Named) -> Any:
    factory = _ldm_factory(entry) if entry.native else _text_factory(entry)

    factory.__name__ = entry.name.replace("-", "_").replace(".", "")
    factory.__doc__ = entry.summary
    factory.paper = PAPER
    return factory


def named_entries() -> list[Named]:
    return list(NAMED.values())
