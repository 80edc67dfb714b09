"""CLIP score of images against their prompts (Hessel et al. 2021, arXiv:2104.08718), as the seed.

``score = 100 * mean_i cos(E_img(x_i), E_txt(p_i))``: image ``i`` is paired with prompt ``i``; no
clamp at 0 (the seed's ``clip_score.py``; Hessel et al.'s CLIPScore is ``2.5 * max(cos, 0)``).
The seed uses open_clip's ViT-g-14 trained on LAION-2B (``laion2b_s34b_b88k``); here the same
weights are read with Hugging Face transformers' ``CLIPModel`` (the hub repository
``laion/CLIP-ViT-g-14-laion2B-s34B-b88K`` holds them in that format), or any CLIP directory.
Images are preprocessed as open_clip does: PIL bicubic resize of the short side to the model's
size, centre crop, normalisation with CLIP's mean and standard deviation.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler.errors import ModelLoadError, OptionError, require
from diffsampler.options import in_range, option

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CLIPEncoder", "CLIPScore", "CLIPScoreOptions", "clip_score", "load_prompts", "preprocess"]

DEFAULT_MODEL = "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts from a CSV with a ``text`` column (the seed's COCO captions) or a text file, one a line."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"no such prompt file: {str(p)!r}")
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "text" not in reader.fieldnames:
                raise OptionError(f"{p}: a prompt CSV needs a 'text' column")
            return [row["text"] for row in reader]
    return [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def preprocess(images: np.ndarray, size: int) -> Tensor:
    """uint8 ``[N, H, W, C]`` -> normalised float ``[N, 3, size, size]`` (open_clip's transform)."""
    import torch

    image_mod = require("PIL.Image", extra="clip", purpose="CLIP score preprocessing")
    out = []
    for img in images:
        pil = image_mod.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert("RGB")
        w, h = pil.size
        scale = size / min(w, h)
        new = (size, int(h * scale)) if w <= h else (int(w * scale), size)
        if new != (w, h):
            pil = pil.resize(new, image_mod.BICUBIC)
        w, h = pil.size
        left, top = round((w - size) / 2.0), round((h - size) / 2.0)
        pil = pil.crop((left, top, left + size, top + size))
        out.append(np.asarray(pil, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _features(out: Any) -> Tensor:
    """transformers < 5 returns the projected embedding, 5.x an output whose pooler_output it is."""
    return out if hasattr(out, "norm") else out.pooler_output


class CLIPEncoder:
    """A transformers ``CLIPModel`` and its tokenizer as image and text encoders."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def encode_images(self, images: np.ndarray) -> Tensor:
        import torch

        with torch.no_grad():
            pixels = preprocess(images, self.size).to(self.device)
            return _features(self.model.get_image_features(pixel_values=pixels)).double()

    def encode_texts(self, prompts: Sequence[str]) -> Tensor:
        import torch

        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        return _features(out).double()

    @classmethod
    def load(cls, name: str = DEFAULT_MODEL, *, device: str = "cpu") -> CLIPEncoder:
        """From a local directory, or the hub unless ``DIFFSAMPLER_OFFLINE``/``HF_HUB_OFFLINE`` is set."""
        transformers: Any = require("transformers", extra="clip", purpose="the CLIP score")
        offline = any(
            os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
            for v in ("DIFFSAMPLER_OFFLINE", "HF_HUB_OFFLINE")
        )
        local = Path(name).expanduser()
        source = str(local) if local.is_dir() else name
        try:
            model = transformers.CLIPModel.from_pretrained(source, local_files_only=offline)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=offline)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load the CLIP model {name!r} ({str(exc).splitlines()[0]}); pass model=DIR "
                "with a transformers CLIP checkpoint (config.json, weights, tokenizer files)"
            ) from None
        return cls(model, tokenizer, device=device)


def clip_score(encoder: Any, batches: Iterable[np.ndarray], prompts: Sequence[str]) -> tuple[float, int]:
    """``100 * mean cos`` over image/prompt pairs, and the number of pairs.

    ``encoder`` has ``encode_images(uint8 NHWC) -> [n, d]`` and ``encode_texts(list) -> [n, d]``.
    """
    total, count = 0.0, 0
    for images in batches:
        if count + len(images) > len(prompts):
            raise OptionError(f"more images than prompts ({len(prompts)})")
        img = encoder.encode_images(images)
        txt = encoder.encode_texts(prompts[count : count + len(images)])
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        total += float((100 * (img * txt).sum(-1)).sum())
        count += len(images)
    if count == 0:
        raise OptionError("no images for the CLIP score")
    return total / count, count


@attrs.frozen(kw_only=True)
class CLIPScoreOptions:
    prompts: str | None = option(
        None, help="prompts: CSV with a 'text' column (COCO captions) or a text file, one per image "
        "(else $DIFFSAMPLER_CLIP_PROMPTS)"
    )
    model: str = option(DEFAULT_MODEL, help="transformers CLIP directory or hub id (the seed: ViT-g-14 LAION-2B)")
    device: str = option("auto", help="device: auto, cpu, cuda, cuda:N")
    batch: int = option(64, help="images per CLIP forward pass", validator=in_range(1))


class CLIPScore:
    """CLIP score: 100 x mean cosine similarity of images and their prompts (the seed's)."""

    paper = "Hessel et al. 2021, arXiv:2104.08718 (CLIPScore); Radford et al. 2021 (CLIP)"
    higher_is_better = True

    def __init__(self, *, prompts: str | None = None, model: str = DEFAULT_MODEL, device: str = "auto",
                 batch: int = 64) -> None:
        from .fid import from_env

        self.prompts = load_prompts(from_env(prompts, "DIFFSAMPLER_CLIP_PROMPTS", "clip-score", "a prompt file", "prompts"))
        self.model_name, self.device, self.batch = model, device, batch
        self._encoder: Any = None

    def compute(
        self,
        batches: Iterable[Any],
        *,
        model: Any = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, float]:
        from diffsampler.images import to_uint8

        from .fid import _device

        if self._encoder is None:
            self._encoder = CLIPEncoder.load(self.model_name, device=_device(self.device))

        def uint8() -> Iterable[np.ndarray]:
            for b in batches:
                arr = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
                arr = arr if arr.dtype == np.uint8 else to_uint8(arr)
                for start in range(0, len(arr), self.batch):
                    yield arr[start : start + self.batch]

        score, _ = clip_score(self._encoder, uint8(), self.prompts)
        return {"clip": score}


def clip_metric(*, prompts: str | None = None, model: str = DEFAULT_MODEL, device: str = "auto", batch: int = 64) -> CLIPScore:
    """CLIP score of images against their prompts (transformers CLIP; the seed's ViT-g-14)."""
    return CLIPScore(prompts=prompts, model=model, device=device, batch=batch)


clip_metric.paper = CLIPScore.paper  # type: ignore[attr-defined]
