"""Native loading of CompVis latent-diffusion checkpoints (``model.ckpt``, or the ``.zip`` holding it).

The seed (zju-pi/diff-sampler ``sample.py``: ``load_ldm_model`` + ``net.model.ema_scope()``) samples
LDM LSUN-Bedroom / FFHQ (Rombach et al. 2022, arXiv:2112.10752) from the Lightning checkpoint's
``state_dict``:

* the U-Net with the **EMA weights**: LitEma keeps them as buffers ``model_ema.<name>``, where
  ``<name>`` is the parameter name in ``model`` (``diffusion_model.input_blocks.0.0.weight``) with
  the dots removed; ``ema=False`` takes the raw ``model.diffusion_model.*`` weights instead;
* the VQ autoencoder ``first_stage_model.*``, which decodes after quantizing to the codebook (a
  checkpoint without it takes the seed's separate first stage, ``vq-f4.zip``, as the seed's config
  does through its ``first_stage_config.params.ckpt_path``; the LDM checkpoint's own copy wins,
  as in the seed, whose ``load_state_dict`` overwrites it);
* CompVis' ``linear`` betas ``linspace(sqrt(start), sqrt(end), T)^2`` (diffusers' ``scaled_linear``).

The weights are mapped onto diffusers' ``UNet2DModel`` / ``VQModel`` (our own key mapping, written
from the two architectures). The file is read with ``torch.load(weights_only=True)``: no code in it
runs. Lightning checkpoints also name their callback classes (e.g.
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``) in the pickle; those names, and
numpy's scalar/dtype helpers, are mapped to an inert stand-in (:class:`_Inert`) and the entries
they appear in are dropped. Any other non-weight object is refused.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffsampler.errors import ModelLoadError
from diffsampler.weights import cache_dir

from .compvis_config import LDMConfig, UNetConfig, VQConfig

__all__ = ["alphas_cumprod", "build_networks", "extract_zip", "has_first_stage", "read_first_stage",
           "read_state_dict", "unet_state_dict", "vq_state_dict"]

# Globals a Lightning checkpoint may name outside its weights (callback states, numpy scalars in
# them): they are replaced by the inert stand-in, never imported.
_INERT_PREFIXES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.",
                   "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
                   "numpy.dtypes.")


_Allowed = list[Callable[..., Any] | tuple[Callable[..., Any], str]]


class _Inert:
    """Stands in for a class or function named in the pickle outside the weights; does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# -- reading ---------------------------------------------------------------------------------------
def extract_zip(archive: Path, *, what: str, into: Path | None = None) -> Path:
    """The ``model.ckpt`` inside a release zip (e.g. ``lsun_bedrooms.zip``), extracted once into
    ``into`` (default: the cache, keyed by the member's CRC) and reused."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [i for i in zf.infolist() if Path(i.filename).name == "model.ckpt"]
            if len(members) != 1:
                raise ModelLoadError(f"{_about(what, archive)} holds no single model.ckpt (a CompVis LDM zip has one)")
            info = members[0]
            folder = into or cache_dir() / "latent" / "extracted" / f"{archive.stem}-{info.CRC:08x}"
            target = folder / "model.ckpt"
            if target.is_file() and target.stat().st_size == info.file_size:
                return target
            folder.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"model.ckpt.part{os.getpid()}")
            try:
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return target
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(f"{what}: cannot unpack {archive.name}: {str(exc).splitlines()[0][:200]}") from None


def _about(what: str, path: Path) -> str:
    """``what: file`` for a message, or just the file when ``what`` already names it."""
    return path.name if what == path.name else f"{what}: {path.name}"


def _check_inert(names: list[str], path: Path, what: str) -> _Allowed:
    unknown = [n for n in names if not n.startswith(_INERT_PREFIXES)]
    if unknown:
        raise ModelLoadError(
            f"{_about(what, path)} is not a plain weights checkpoint: its pickle needs {', '.join(unknown[:3])}, "
            "which diffsampler does not run (it loads weights only)"
        )
    allowed: _Allowed = [(_Inert, n) for n in names]
    return allowed


def _load_with(path: Path, allowed: _Allowed, mmap: bool) -> Any:
    with torch.serialization.safe_globals(allowed), _quiet_protocol():
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _load_legacy_format(path: Path, what: str) -> Any:
    """torch's pre-1.6 format has no global listing: learn the names from the refusals, one at a time."""
    names: list[str] = []
    for _ in range(32):
        try:
            return _load_with(path, _check_inert(names, path, what), mmap=False)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found is None or found.group(1) in names:
                raise
            names.append(found.group(1))
    raise ModelLoadError(f"{_about(what, path)} names too many objects outside its weights")


@contextlib.contextmanager
def _quiet_protocol() -> Iterator[None]:
    """torch warns about a non-default pickle protocol before refusing a plain pickle; the
    refusal (one line) says enough."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected pickle protocol")
        yield


def _torch_load(path: Path, what: str) -> Any:
    mmap = zipfile.is_zipfile(path)  # torch.save's zip format can be memory-mapped, the legacy one not
    try:
        try:
            with _quiet_protocol():
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            if not mmap:
                return _load_legacy_format(path, what)
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            return _load_with(path, _check_inert(names, path, what), mmap=True)
    except ModelLoadError:
        raise
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0].split(". ")[0][:160] if text else type(exc).__name__
        raise ModelLoadError(f"{_about(what, path)} is damaged or not a PyTorch checkpoint ({first})") from None


def _read_tensors(path: str | os.PathLike[str], what: str) -> tuple[Path, dict[str, Tensor] | None]:
    p = Path(path).expanduser()
    if p.suffix.lower() == ".zip" and p.is_file() and not zipfile.is_zipfile(p):
        raise ModelLoadError(f"{_about(what, p)} is a damaged or truncated zip (incomplete download?)")
    if zipfile.is_zipfile(p) and not _is_torch_zip(p):
        p = extract_zip(p, what=what)
    obj = _torch_load(p, what)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        return p, None
    return p, {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}


def _has(sd: dict[str, Tensor] | None, prefix: str) -> bool:
    return sd is not None and any(k.startswith(prefix) for k in sd)


def read_state_dict(path: str | os.PathLike[str], *, what: str) -> dict[str, Tensor]:
    """The ``state_dict`` of a CompVis/Lightning LDM checkpoint (``.ckpt``, or a zip holding
    ``model.ckpt``), read weights-only."""
    p, sd = _read_tensors(path, what)
    if sd is None or not _has(sd, "model.diffusion_model."):
        raise ModelLoadError(f"{_about(what, p)} is not a CompVis latent-diffusion checkpoint "
                             "(no model.diffusion_model.* weights in its state_dict)")
    return sd


def read_first_stage(path: str | os.PathLike[str], *, what: str) -> dict[str, Tensor]:
    """The VQ autoencoder of a first-stage checkpoint (the seed's ``vq-f4.zip``: bare ``encoder.*``,
    ``decoder.*``, ``quantize.*``; or an LDM checkpoint's ``first_stage_model.*``), with the
    ``first_stage_model.`` prefix of an LDM state dict."""
    p, sd = _read_tensors(path, what)
    if sd is not None and _has(sd, "first_stage_model.decoder."):
        return {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    if sd is None or not _has(sd, "decoder."):
        raise ModelLoadError(f"{_about(what, p)} is not a CompVis VQ autoencoder checkpoint (no decoder.* weights)")
    return {f"first_stage_model.{k}": v for k, v in sd.items() if not k.startswith("loss.")}


def has_first_stage(sd: dict[str, Tensor]) -> bool:
    """Whether an LDM state dict carries its autoencoder (``first_stage_model.*``)."""
    return _has(sd, "first_stage_model.")


def _is_torch_zip(path: Path) -> bool:
    """torch.save's own format is a zip too: ``<root>/data.pkl`` marks it."""
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())


# -- key mapping: CompVis UNetModel -> diffusers UNet2DModel -----------------------------------------
def _resblock(src: str, dst: str) -> Iterator[tuple[str, str]]:
    for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")):
        yield f"{src}.{a}", f"{dst}.{b}"


def _unet_pairs(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    """``(compvis prefix, diffusers prefix, kind)`` for every block, kind ``plain``/``attn``."""
    levels = len(cfg.channel_mult)
    attn = [2**lvl in cfg.attention_resolutions for lvl in range(levels)]
    yield "time_embed.0", "time_embedding.linear_1", "plain"
    yield "time_embed.2", "time_embedding.linear_2", "plain"
    yield "input_blocks.0.0", "conv_in", "plain"
    i = 1
    for lvl in range(levels):
        for r in range(cfg.num_res_blocks):
            yield from ((a, b, "plain") for a, b in _resblock(f"input_blocks.{i}.0", f"down_blocks.{lvl}.resnets.{r}"))
            if attn[lvl]:
                yield f"input_blocks.{i}.1", f"down_blocks.{lvl}.attentions.{r}", "attn"
            i += 1
        if lvl != levels - 1:
            yield f"input_blocks.{i}.0.op", f"down_blocks.{lvl}.downsamplers.0.conv", "plain"
            i += 1
    yield from ((a, b, "plain") for a, b in _resblock("middle_block.0", "mid_block.resnets.0"))
    yield "middle_block.1", "mid_block.attentions.0", "attn"
    yield from ((a, b, "plain") for a, b in _resblock("middle_block.2", "mid_block.resnets.1"))
    j = 0
    for up, lvl in enumerate(reversed(range(levels))):
        for r in range(cfg.num_res_blocks + 1):
            yield from ((a, b, "plain") for a, b in _resblock(f"output_blocks.{j}.0", f"up_blocks.{up}.resnets.{r}"))
            if attn[lvl]:
                yield f"output_blocks.{j}.1", f"up_blocks.{up}.attentions.{r}", "attn"
            if lvl != 0 and r == cfg.num_res_blocks:
                yield f"output_blocks.{j}.{2 if attn[lvl] else 1}.conv", f"up_blocks.{up}.upsamplers.0.conv", "plain"
            j += 1
    yield "out.0", "conv_norm_out", "plain"
    yield "out.2", "conv_out", "plain"


def _legacy_attention(get: Any, src: str, dst: str, head_channels: int) -> dict[str, Tensor]:
    """AttentionBlock with QKVAttentionLegacy: ``qkv`` rows are ``[head][q|k|v][channel]``
    (heads split before q/k/v); diffusers keeps separate ``to_q/to_k/to_v`` linear layers."""
    w, b = get(f"{src}.qkv.weight"), get(f"{src}.qkv.bias")
    width = w.shape[1]
    heads = width // head_channels
    w = w.reshape(heads, 3, head_channels, width)
    b = b.reshape(heads, 3, head_channels)
    out = {f"{dst}.group_norm.weight": get(f"{src}.norm.weight"), f"{dst}.group_norm.bias": get(f"{src}.norm.bias"),
           f"{dst}.to_out.0.weight": get(f"{src}.proj_out.weight").reshape(width, width),
           f"{dst}.to_out.0.bias": get(f"{src}.proj_out.bias")}
    for n, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{name}.weight"] = w[:, n].reshape(width, width)
        out[f"{dst}.{name}.bias"] = b[:, n].reshape(width)
    return out


def unet_state_dict(sd: dict[str, Tensor], cfg: UNetConfig, *, ema: bool, what: str) -> dict[str, Tensor]:
    """The diffusers ``UNet2DModel`` state dict from the EMA (``model_ema.*``) or raw
    (``model.diffusion_model.*``) U-Net weights."""

    def get(name: str) -> Tensor:
        key = ("model_ema.diffusion_model" + name.replace(".", "")) if ema else f"model.diffusion_model.{name}"
        if key not in sd:
            raise KeyError(key)
        return sd[key].to(torch.float32)

    out: dict[str, Tensor] = {}
    try:
        for src, dst, kind in _unet_pairs(cfg):
            if kind == "attn":
                out.update(_legacy_attention(get, src, dst, cfg.num_head_channels))
                continue
            for suffix in ("weight", "bias"):
                try:
                    out[f"{dst}.{suffix}"] = get(f"{src}.{suffix}")
                except KeyError:
                    if not src.endswith("skip_connection"):  # identity skips have no weights
                        raise
    except KeyError as exc:
        raise ModelLoadError(f"{what}: the checkpoint does not fit the U-Net config (missing {exc.args[0]})") from None
    return out


# -- key mapping: taming/CompVis VQModel -> diffusers VQModel ----------------------------------------
def _vq_resnet(src: str, dst: str) -> Iterator[tuple[str, str]]:
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
                 ("nin_shortcut", "conv_shortcut")):
        yield f"{src}.{a}", f"{dst}.{b}"


def _vq_pairs(cfg: VQConfig) -> Iterator[tuple[str, str, str]]:
    levels = len(cfg.ch_mult)
    for part in ("encoder", "decoder"):
        yield f"{part}.conv_in", f"{part}.conv_in", "plain"
        for a, b in (("block_1", "resnets.0"), ("block_2", "resnets.1")):
            yield from ((x, y, "plain") for x, y in _vq_resnet(f"{part}.mid.{a}", f"{part}.mid_block.{b}"))
        yield f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", "attn"
        yield f"{part}.norm_out", f"{part}.conv_norm_out", "plain"
        yield f"{part}.conv_out", f"{part}.conv_out", "plain"
    for lvl in range(levels):
        for r in range(cfg.num_res_blocks):
            yield from ((x, y, "plain") for x, y in _vq_resnet(f"encoder.down.{lvl}.block.{r}",
                                                               f"encoder.down_blocks.{lvl}.resnets.{r}"))
        if lvl != levels - 1:
            yield f"encoder.down.{lvl}.downsample.conv", f"encoder.down_blocks.{lvl}.downsamplers.0.conv", "plain"
    for lvl in range(levels):  # the decoder's up[lvl] runs from the lowest resolution: up_blocks reversed
        up = levels - 1 - lvl
        for r in range(cfg.num_res_blocks + 1):
            yield from ((x, y, "plain") for x, y in _vq_resnet(f"decoder.up.{lvl}.block.{r}",
                                                               f"decoder.up_blocks.{up}.resnets.{r}"))
        if lvl != 0:
            yield f"decoder.up.{lvl}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv", "plain"
    for name in ("quant_conv", "post_quant_conv"):
        yield name, name, "plain"


def vq_state_dict(sd: dict[str, Tensor], cfg: VQConfig, *, what: str) -> dict[str, Tensor]:
    """The diffusers ``VQModel`` state dict from ``first_stage_model.*``."""

    def get(name: str) -> Tensor:
        key = f"first_stage_model.{name}"
        if key not in sd:
            raise KeyError(key)
        return sd[key].to(torch.float32)

    out: dict[str, Tensor] = {}
    try:
        out["quantize.embedding.weight"] = get("quantize.embedding.weight")
        for src, dst, kind in _vq_pairs(cfg):
            if kind == "attn":  # single-head AttnBlock: 1x1 convs q, k, v, proj_out
                out[f"{dst}.group_norm.weight"] = get(f"{src}.norm.weight")
                out[f"{dst}.group_norm.bias"] = get(f"{src}.norm.bias")
                for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
                    w = get(f"{src}.{a}.weight")
                    out[f"{dst}.{b}.weight"] = w.reshape(w.shape[0], w.shape[1])
                    out[f"{dst}.{b}.bias"] = get(f"{src}.{a}.bias")
                continue
            for suffix in ("weight", "bias"):
                try:
                    out[f"{dst}.{suffix}"] = get(f"{src}.{suffix}")
                except KeyError:
                    if not src.endswith("nin_shortcut"):
                        raise
    except KeyError as exc:
        raise ModelLoadError(f"{what}: the checkpoint has no VQ autoencoder fitting the config "
                             f"(missing {exc.args[0]})") from None
    return out


# -- building ----------------------------------------------------------------------------------------
def alphas_cumprod(cfg: LDMConfig) -> Tensor:
    """CompVis ``make_beta_schedule('linear')``: ``betas = linspace(sqrt(b0), sqrt(b1), T)^2``;
    ``prod(1 - beta)`` in float64."""
    betas = torch.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, cfg.timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def _unet_model(diffusers: Any, cfg: UNetConfig) -> Any:
    levels = len(cfg.channel_mult)
    attn = [2**lvl in cfg.attention_resolutions for lvl in range(levels)]
    return diffusers.UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.model_channels * m for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks, attention_head_dim=cfg.num_head_channels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    )


def _vq_model(diffusers: Any, cfg: VQConfig) -> Any:
    levels = len(cfg.ch_mult)
    return diffusers.VQModel(
        in_channels=cfg.in_channels, out_channels=cfg.out_ch, latent_channels=cfg.z_channels,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        num_vq_embeddings=cfg.n_embed, vq_embed_dim=cfg.embed_dim, sample_size=cfg.resolution,
        norm_num_groups=32, scaling_factor=1.0,
    )


def _load(make: Callable[[], Any], state: dict[str, Tensor], what: str, part: str) -> Any:
    """Build on the meta device (no random initialisation of hundreds of millions of weights)
    and take the checkpoint's tensors as they are; strict, so every weight must be there."""
    with torch.device("meta"):
        module = make()
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise ModelLoadError(f"{what}: the {part} weights do not fit the config: "
                             f"{' '.join(s.strip() for s in lines[1:3])[:300]}") from None
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise ModelLoadError(f"{what}: the {part} has tensors the checkpoint does not fill")
    return module.eval().requires_grad_(False)


def build_networks(diffusers: Any, sd: dict[str, Tensor], cfg: LDMConfig, *, ema: bool | None,
                   what: str) -> tuple[Tensor, Any, Any, dict[str, Any]]:
    """``(alphas_cumprod, UNet2DModel, VQModel, info)`` from a CompVis state dict."""
    use_ema = cfg.use_ema if ema is None else ema
    if use_ema and not any(k.startswith("model_ema.diffusion_model") for k in sd):
        raise ModelLoadError(f"{what}: the checkpoint holds no EMA weights (model_ema.*); pass ema=false "
                             "for its raw weights")
    unet_sd = unet_state_dict(sd, cfg.unet, ema=use_ema, what=what)
    vq_sd = vq_state_dict(sd, cfg.vq, what=what)
    unet = _load(lambda: _unet_model(diffusers, cfg.unet), unet_sd, what, "U-Net")
    vq = _load(lambda: _vq_model(diffusers, cfg.vq), vq_sd, what, "VQ autoencoder")
    info = {"weights": "ema (model_ema.*)" if use_ema else "raw (model.diffusion_model.*)",
            "beta_schedule": f"CompVis linear {cfg.linear_start}..{cfg.linear_end}, {cfg.timesteps} steps",
            "scale_factor": cfg.scale_factor}
    return alphas_cumprod(cfg), unet, vq, info
