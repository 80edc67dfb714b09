"""Build a :class:`.denoiser.LatentDenoiser` from a diffusers-format folder or hub id.

The folder holds ``unet/`` (``UNet2DModel`` for LDM, ``UNet2DConditionModel`` for Stable
Diffusion), ``vae/`` (``AutoencoderKL``) or ``vqvae/`` (``VQModel``), ``scheduler/`` (its
``betas``/``alphas_cumprod``) and, for text models, ``text_encoder/`` (``CLIPTextModel``) and
``tokenizer/`` (``CLIPTokenizer``). Weights load through diffusers/transformers (safetensors, or
``.bin`` read weights-only); no code from the folder runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffsampler.errors import ModelLoadError, require

from .denoiser import LatentDenoiser

__all__ = ["load_latent"]


def _require() -> Any:
    require("transformers", extra="diffusers", purpose="latent models")
    return require("diffusers", extra="diffusers", purpose="latent models")


def _offline() -> bool:
    return os.environ.get("DIFFSAMPLER_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _has(source: str, sub: str) -> bool:
    p = Path(source)
    if p.is_dir():
        return (p / sub).is_dir()
    from huggingface_hub import file_exists  # hub id

    return bool(file_exists(source, f"{sub}/config.json") or file_exists(source, f"{sub}/scheduler_config.json")
                or file_exists(source, f"{sub}/tokenizer_config.json"))


def _alphas_cumprod(diffusers: Any, cfg: dict[str, Any]) -> Any:
    """``prod(1 - beta)`` in float64 for the linear and scaled-linear (LDM/SD) beta schedules;
    otherwise diffusers' own (float32) values."""
    import torch

    n = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 2e-2))
    kind = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float64)
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    else:
        return diffusers.DDPMScheduler.from_config(cfg).alphas_cumprod.double()
    return torch.cumprod(1 - betas, dim=0)


def load_latent(
    source: str, *, name: str, guidance_rate: float | None, prompt: str | None,
    prompts_file: str | None, negative_prompt: str, precision: str, sigma_min: float | None,
    sigma_max: float | None, device: str, default_rate: float = 7.5,
) -> LatentDenoiser:
    """The latent model in ``source`` (a local diffusers folder, or a hub id when online)."""
    diffusers = _require()
    import torch

    local = Path(source).expanduser()
    if local.exists():
        source = os.fspath(local)
        if not local.is_dir():
            raise ModelLoadError(f"{name}: {source} is not a diffusers folder")
    elif _offline():
        raise ModelLoadError(f"{name}: {source!r} is no local folder and DIFFSAMPLER_OFFLINE is set")
    kw: dict[str, Any] = {"local_files_only": local.exists()}
    try:
        sched_cfg = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler", **kw)
        alphas_cumprod = _alphas_cumprod(diffusers, sched_cfg)
        text = _has(source, "text_encoder")
        unet_cls = diffusers.UNet2DConditionModel if text else diffusers.UNet2DModel
        unet = unet_cls.from_pretrained(source, subfolder="unet", **kw).eval().requires_grad_(False)
        if _has(source, "vqvae"):
            vae = diffusers.VQModel.from_pretrained(source, subfolder="vqvae", **kw)
        else:
            vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
        vae = vae.eval().requires_grad_(False)
        modules: dict[str, torch.nn.Module] = {"unet": unet, "vae": vae}
        encode_text = None
        if text:
            import transformers

            tokenizer = transformers.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
            encoder = transformers.CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
            modules["text_encoder"] = encoder.eval().requires_grad_(False)

            def encode_text(prompts: list[str]) -> torch.Tensor:
                ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
                enc = modules["text_encoder"]
                return enc(ids.to(next(enc.parameters()).device))[0]
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{name}: cannot load the diffusers model {source!r}: {str(exc).splitlines()[0]}") from None

    # LDM's VQ autoencoders take the latents as they are (LDMPipeline and the seed do not
    # scale; diffusers' VQModel config carries SD's 0.18215 by default, unused); KL ones use it.
    is_vq = isinstance(vae, diffusers.VQModel)
    scale = 1.0 if is_vq else float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)

    def run_unet(z: torch.Tensor, k: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if context is None:
            return unet(z, k, return_dict=False)[0]
        return unet(z, k, encoder_hidden_states=context, return_dict=False)[0]

    def decode(latent: torch.Tensor) -> torch.Tensor:
        return vae.decode(latent / scale, return_dict=False)[0]

    prompts: list[str] = []
    if prompts_file is not None:
        try:
            lines = Path(prompts_file).expanduser().read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelLoadError(f"{name}: cannot read prompts_file: {exc}") from None
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise ModelLoadError(f"{name}: {prompts_file} holds no prompt")
    if prompt is not None:
        if prompts:
            raise ModelLoadError(f"{name}: give prompt or prompts_file, not both")
        prompts = [prompt]
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    rate = (default_rate if text else 1.0) if guidance_rate is None else guidance_rate
    info = {"source": source, "vae_scaling_factor": scale, "num_train_timesteps": len(alphas_cumprod),
            "unet": type(unet).__name__, "autoencoder": type(vae).__name__}
    model = LatentDenoiser(
        unet=run_unet, modules=modules, decoder=decode, shape=(unet.config.in_channels, size, size),
        alphas_cumprod=alphas_cumprod, encode_text=encode_text, prompts=prompts,
        negative_prompt=negative_prompt, guidance_rate=rate, precision=precision,
        sigma_min=sigma_min, sigma_max=sigma_max, name=name, info=info,
    )
    return model.to(device)
