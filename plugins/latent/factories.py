"""Model factories of the ``latent`` plugin (torch and diffusers are imported when one runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffsampler.errors import ModelLoadError

from .catalog import NAMED, Named

if TYPE_CHECKING:
    from .denoiser import LatentDenoiser

__all__ = ["latent_file", "loads_file", "named_factory"]

PAPER = "Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models, arXiv:2112.10752"


def loads_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a diffusers folder with a U-Net and a scheduler."""
    p = Path(path)
    return p.is_dir() and (p / "unet").is_dir() and (p / "scheduler").is_dir()


def latent_file(*, path: str, **opts: Any) -> LatentDenoiser:
    """Any diffusers-format latent model (LDM: UNet2DModel + VQ/KL; SD: + CLIP text encoder)."""
    from .loader import load_latent

    return load_latent(path, name=Path(path).name or "latent", **opts)


latent_file.loads_file = loads_file  # type: ignore[attr-defined]
latent_file.file_format = "a diffusers model folder with unet/ and scheduler/ (extra [diffusers])"  # type: ignore[attr-defined]
latent_file.paper = PAPER  # type: ignore[attr-defined]


def local_folder(entry: Named) -> str | None:
    env = os.environ.get(entry.env_var)
    return os.path.expanduser(env) if env else None


def named_factory(entry: Named) -> Any:
    def factory(*, path: str | None = None, **opts: Any) -> LatentDenoiser:
        from .loader import load_latent

        source = path or local_folder(entry) or entry.hub_id
        if source is None:
            raise ModelLoadError(
                f"{entry.name}: no diffusers folder; convert the seed's checkpoint ({entry.seed_url}) with "
                f"diffusers' conversion script and pass path=/folder or set {entry.env_var}=/folder"
            )
        model = load_latent(source, name=entry.name, default_rate=entry.guidance_rate, **opts)
        model.info["seed_checkpoint"] = entry.seed_url
        return model

    factory.__name__ = entry.name.replace("-", "_").replace(".", "")
    factory.__doc__ = entry.summary
    factory.paper = PAPER  # type: ignore[attr-defined]
    return factory


def named_entries() -> list[Named]:
    return list(NAMED.values())
