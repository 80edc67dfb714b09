"""Build a :class:`.denoiser.LatentDenoiser` from a diffusers-format folder or hub id.

The folder holds ``unet/`` (``UNet2DModel`` for LDM, ``UNet2DConditionModel`` for Stable
Diffusion), ``vae/`` (``AutoencoderKL``) or ``vqvae/`` (``VQModel``), ``scheduler/`` (its
``betas``/``alphas_cumprod``) and, for text models, ``text_encoder/`` (``CLIPTextModel``) and
``tokenizer/`` (``CLIPTokenizer``). Weights load through diffusers/transformers (safetensors, or
``.bin`` read weights-only); no code from the folder runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffsampler.errors import ModelLoadError, OptionError, require
from diffsampler.hub import OFFLINE_HINT, hub_unreachable, looks_local, quiet_hub_libraries

from .denoiser import LatentDenoiser
from .download import CHECKPOINT_SUFFIXES, _given, checkpoint_in

__all__ = ["load_latent", "resolve_source"]



def _require() -> Any:
    require("transformers", extra="diffusers", purpose="a latent model")
    return require("diffusers", extra="diffusers", purpose="a latent model")


def _offline() -> bool:
    return os.environ.get("DIFFSAMPLER_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_source(source: str, name: str) -> tuple[str, bool]:
    """``(source, is_local)``: an existing local folder, or a hub id to try online; else a
    :class:`ModelLoadError` at once (no hub round trips for a mistyped folder)."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"{name}: {os.fspath(local)} is not a diffusers folder")
        return os.fspath(local), True
    if looks_local(source):
        raise ModelLoadError(
            f"{name}: no such folder: {source!r} (a diffusers folder with unet/, scheduler/, "
            "vae/ or vqvae/; a hub id is org/name)"
        )
    if _offline():
        raise ModelLoadError(f"{name}: {source!r} is no local folder and DIFFSAMPLER_OFFLINE is set")
    return source, False


def _load_error(exc: BaseException, source: str, name: str, local: bool) -> ModelLoadError:
    from huggingface_hub import constants

    if not local and constants.HF_HUB_OFFLINE and hub_unreachable(exc):
        return ModelLoadError(f"{name}: {source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                              "is set; pass path=/local/diffusers/folder")
    if not local and hub_unreachable(exc):
        return ModelLoadError(
            f"{name}: could not reach the Hugging Face hub for {source!r}, and it is not in the "
            f"local Hugging Face cache (offline?); pass path=/local/diffusers/folder, or {OFFLINE_HINT}"
        )
    return ModelLoadError(f"{name}: cannot load the diffusers model {source!r}: {str(exc).splitlines()[0][:300]}")


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


def _networks(diffusers: Any, source: str, kw: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """``(alphas_cumprod, unet, autoencoder, (tokenizer, text encoder) or None)`` from ``source``."""
    import transformers

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
    texts = None
    if text:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
        encoder = transformers.CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
        texts = (tokenizer, encoder.eval().requires_grad_(False))
    return alphas_cumprod, unet, vae, texts


def _read_prompts(name: str, prompt: str | None, prompts_file: str | None) -> list[str]:
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
    return prompts


def _refuse_text_options(name: str, guidance_rate: float | None, negative_prompt: str) -> None:
    """An unconditional model has nothing to guide: refuse options that could not act."""
    if guidance_rate is not None and guidance_rate != 1.0:
        raise OptionError(f"model {name!r} is unconditional: guidance_rate (classifier-free guidance) "
                          "needs a text model; drop it")
    if negative_prompt:
        raise OptionError(f"model {name!r} is unconditional: it takes no negative_prompt")


def _compvis_networks(diffusers: Any, path: str, name: str, config: str | None, ema: bool | None,
                      builtin: Any, first_stage: Callable[[], str] | None,
                      vq_path: str | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(alphas_cumprod, unet, vq, info)`` from a CompVis checkpoint (see :mod:`.compvis`);
    ``first_stage()`` names the VQ checkpoint to use when it has no ``first_stage_model.*``
    (``vq_path``, the explicit option, is then said to be unused when it has one)."""
    from .compvis import build_networks, has_first_stage, read_first_stage, read_state_dict
    from .compvis_config import read_config

    if config is not None:
        cfg = read_config(config)
    elif builtin is not None:
        cfg = builtin
    else:
        raise ModelLoadError(f"{name}: {path} is a CompVis checkpoint: pass config=/path/to/its.yaml "
                             "(models/ldm/configs/latent-diffusion/*.yaml) for its architecture")
    sd = read_state_dict(path, what=name)
    vq_source = None
    if has_first_stage(sd) and vq_path is not None:
        warnings.warn(f"vq_path ignored: {Path(path).name} carries its own first_stage_model.* "
                      "(which wins, as in the seed)", stacklevel=4)
    if not has_first_stage(sd):
        if first_stage is None:
            raise ModelLoadError(f"{name}: {Path(path).name} holds no VQ first stage (first_stage_model.*); "
                                 "pass vq_path=/path/to/its model.ckpt (the seed's vq-f4.zip)")
        vq_source = first_stage()
        sd.update(read_first_stage(vq_source, what=name))
    alphas_cumprod, unet, vq, info = build_networks(diffusers, sd, cfg, ema=ema, what=name)
    info["scale"] = cfg.scale_factor
    info["first_stage"] = vq_source or "the checkpoint's first_stage_model.*"
    return alphas_cumprod, unet, vq, info


def _refuse_missing_checkpoint(source: str, name: str, compvis_options: bool) -> None:
    """A missing ``source`` with a checkpoint suffix, or given CompVis options, is a missing file:
    no diffusers folder or hub id is tried for it."""
    p = Path(source).expanduser()
    if not p.exists() and (compvis_options or p.suffix.lower() in CHECKPOINT_SUFFIXES):
        raise ModelLoadError(f"{name}: path={source!r} does not exist (a CompVis model.ckpt / .zip or a "
                             "diffusers folder)")


def load_latent(
    source: str, *, name: str, guidance_rate: float | None = None, prompt: str | None = None,
    prompts_file: str | None = None, negative_prompt: str = "", precision: str = "fp32",
    channels_last: bool = False, sigma_min: float | None = None, sigma_max: float | None = None, device: str = "cpu",
    default_rate: float = 7.5, ema: bool | None = None, config: str | None = None, builtin_config: Any = None,
    vq_path: str | None = None, first_stage: Callable[[], str] | None = None,
) -> LatentDenoiser:
    """The latent model in ``source``: a local diffusers folder, a hub id when online, or a CompVis
    LDM checkpoint file (``model.ckpt`` or its release ``.zip``; architecture from ``config`` or
    ``builtin_config``; a VQ first stage from ``vq_path`` or ``first_stage()`` when it has none)."""
    diffusers = _require()
    import torch

    checkpoint = checkpoint_in(source)
    if checkpoint is None:
        _refuse_missing_checkpoint(source, name, ema is not None or config is not None or vq_path is not None)
    if checkpoint is not None:
        if vq_path is not None and first_stage is None:
            given = vq_path

            def first_stage() -> str:
                return _given(name, given, "vq_path")
        alphas_cumprod, unet, vae, extra = _compvis_networks(
            diffusers, os.fspath(checkpoint), name, config, ema, builtin_config, first_stage, vq_path)
        texts = None
        extra["format"] = "CompVis checkpoint"
    else:
        if ema is False or config is not None or vq_path is not None:
            raise OptionError(f"{name}: ema, config and vq_path apply to CompVis .ckpt/.zip files; "
                              f"{source!r} is a diffusers folder or hub id (one set of weights)")
        source, local = resolve_source(source, name)
        kw: dict[str, Any] = {"local_files_only": local}
        try:
            with quiet_hub_libraries():
                alphas_cumprod, unet, vae, texts = _networks(diffusers, source, kw)
        except (OSError, ValueError) as exc:
            raise _load_error(exc, source, name, local) from None
        extra = {"format": "diffusers"}
    modules: dict[str, torch.nn.Module] = {"unet": unet, "vae": vae}
    encode_text = None
    if texts is not None:
        tokenizer, modules["text_encoder"] = texts

        def encode_text(prompts: list[str]) -> torch.Tensor:
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            enc = modules["text_encoder"]
            return enc(ids.to(next(enc.parameters()).device))[0]
    else:
        _refuse_text_options(name, guidance_rate, negative_prompt)

    # LDM's VQ autoencoders take the latents as they are (LDMPipeline and the seed do not
    # scale; diffusers' VQModel config carries SD's 0.18215 by default, unused); KL ones use it.
    is_vq = isinstance(vae, diffusers.VQModel)
    scale = float(extra.pop("scale", 1.0)) if is_vq else float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)

    def run_unet(z: torch.Tensor, k: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if context is None:
            return unet(z, k, return_dict=False)[0]
        return unet(z, k, encoder_hidden_states=context, return_dict=False)[0]

    def decode(latent: torch.Tensor) -> torch.Tensor:
        return vae.decode(latent / scale, return_dict=False)[0]

    prompts = _read_prompts(name, prompt, prompts_file)
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    rate = (default_rate if texts is not None else 1.0) if guidance_rate is None else guidance_rate
    info: dict[str, Any] = {"source": source, "vae_scaling_factor": scale, "num_train_timesteps": len(alphas_cumprod),
                            "unet": type(unet).__name__, "autoencoder": type(vae).__name__, **extra}
    if prompts_file is not None:
        info["prompts_file"] = prompts_file
    model = LatentDenoiser(
        unet=run_unet, modules=modules, decoder=decode, shape=(unet.config.in_channels, size, size),
        alphas_cumprod=alphas_cumprod, encode_text=encode_text, prompts=prompts,
        negative_prompt=negative_prompt, guidance_rate=rate, precision=precision,
        channels_last=channels_last, sigma_min=sigma_min, sigma_max=sigma_max, name=name, info=info,
    )
    return model.to(device)
