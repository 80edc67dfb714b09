"""CLIP score of images against their prompts (Hessel et al. 2021, arXiv:2104.08718), as the seed.

``score = 100 * mean_i cos(E_img(x_i), E_txt(p_i))``, ``p_i`` the prompt image ``i`` was made from
(:func:`pair_prompts`: the labels recorded with the images, else ``seed mod N``, else position ``i``);
no clamp at 0 (the seed's ``clip_score.py``; Hessel et al.'s CLIPScore is ``2.5 * max(cos, 0)``).
The seed uses open_clip's ViT-g-14 trained on LAION-2B (``laion2b_s34b_b88k``); here the same
weights are read with Hugging Face transformers' ``CLIPModel`` (the hub repository
``laion/CLIP-ViT-g-14-laion2B-s34B-b88K`` holds them in that format), or any CLIP directory.
Images are preprocessed as open_clip does: PIL bicubic resize of the short side to the model's
size, centre crop, normalisation with CLIP's mean and standard deviation.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from diffsampler.errors import ModelLoadError, OptionError, require
from diffsampler.options import in_range, option

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "PAIRINGS", "CLIPEncoder", "CLIPScore", "CLIPScoreOptions", "Pairing", "Recorded", "clean_prompt", "clip_score",
    "load_prompts", "pair_prompts", "preprocess", "recorded_labels",
]

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


PAIRINGS = ("auto", "labels", "seed", "index")


@attrs.frozen
class Recorded:
    """What an image set records about how its images were made, in the loader's image order."""

    labels: tuple[int, ...] | None = None  # prompt index per image (``sample --labels``)
    seeds: tuple[int, ...] | None = None
    source: str = ""  # where the labels (else the seeds) were read, for messages


@attrs.frozen
class Pairing:
    """The prompt index of every image, and which rule chose it."""

    how: str  # "labels", "seed" or "index"
    indices: tuple[int, ...]
    n_prompts: int
    source: str = ""

    def describe(self) -> str:
        """One line for the user: which prompt each image is scored against."""
        where = f" ({self.source})" if self.source else ""
        if self.how == "labels":
            return f"each image with the prompt of its recorded label{where}"
        if self.how == "seed":
            return f"each image with prompt seed mod {self.n_prompts}, as sample --labels seed{where}"
        return "image i with prompt i (no labels or seeds recorded with the images)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pair_prompts(
    count: int,
    n_prompts: int,
    *,
    labels: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    mode: str = "auto",
    prompts_name: str = "the prompt file",
    source: str = "",
) -> Pairing:
    """Which of ``n_prompts`` prompts each of ``count`` images was made from.

    ``auto``: the recorded ``labels`` (the prompt indices ``sample --labels`` used) when given,
    else ``seed mod n_prompts`` when the seeds are known (``--labels seed``, and the seed's
    MS-COCO protocol, prompt ``seed`` for seeds ``0..N-1``), else image ``i`` with prompt ``i``.
    ``labels``, ``seed`` and ``index`` force one rule. Checked before any model is loaded.
    """
    if mode not in PAIRINGS:
        raise OptionError(f"pairing must be one of {', '.join(PAIRINGS)}, got {mode!r}")
    if n_prompts == 0:
        raise OptionError(f"{prompts_name} holds no prompts")
    if mode == "auto":
        mode = "labels" if labels is not None else "seed" if seeds is not None else "index"
    if mode == "labels":
        if labels is None:
            raise OptionError("pairing 'labels': no labels are recorded with the images "
                              "(a 'labels' array in the .npz, or dataset.json)")
        _check_length(labels, count, "labels")
        bad = [int(i) for i in labels if not 0 <= int(i) < n_prompts]
        if bad:
            raise OptionError(f"the images' labels run up to {max(int(i) for i in labels)} "
                              f"but {prompts_name} has {_plural(n_prompts, 'prompt')}")
        return Pairing("labels", tuple(int(i) for i in labels), n_prompts, source)
    if mode == "seed":
        if seeds is None:
            raise OptionError("pairing 'seed': no seeds are known for the images "
                              "(a 'seeds' array in the .npz, or PNG names as sample writes them)")
        _check_length(seeds, count, "seeds")
        return Pairing("seed", tuple(int(s) % n_prompts for s in seeds), n_prompts, source)
    if count > n_prompts:
        raise OptionError(f"{_plural(count, 'image')} but {_plural(n_prompts, 'prompt')} in {prompts_name} "
                          "(image i is paired with prompt i: no labels or seeds are recorded with the images)")
    return Pairing("index", tuple(range(count)), n_prompts)


def _check_length(values: Sequence[int], count: int, what: str) -> None:
    if len(values) != count:
        raise OptionError(f"{_plural(len(values), what[:-1])} recorded for {_plural(count, 'image')}")


def recorded_labels(path: str | os.PathLike[str]) -> Recorded:
    """The labels and seeds recorded with the image set at ``path``, in the loader's order.

    An ``.npz`` from ``sample``: its ``labels`` and ``seeds`` arrays. A folder or ``.zip`` of
    PNGs: the labels of EDM's ``dataset.json`` (beside the images or inside the zip), and the
    seeds of PNG names in ``sample``'s layout (``000000/000123.png``). Missing ones are None.
    """
    from diffsampler.imagesets import check_image_set, image_names, open_npz

    p = check_image_set(path)
    if p.suffix.lower() == ".npz" and not p.is_dir():
        data = open_npz(p)
        if data is None:
            return Recorded()
        with data:
            labels = _ints(data["labels"]) if "labels" in data else None
            seeds = _ints(data["seeds"]) if "seeds" in data else None
        return Recorded(labels, seeds, f"{p.name} '{'labels' if labels is not None else 'seeds'}'")
    names = image_names(p)
    seeds = _seeds_from_names(names)
    table = _dataset_json(p)
    if table is None:
        return Recorded(None, seeds, "the PNG names")
    missing = [n for n in names if n not in table]
    if missing:
        raise OptionError(f"dataset.json of {str(p)!r} has no label for {missing[0]}")
    return Recorded(tuple(table[n] for n in names), seeds, "dataset.json")


def _ints(array: np.ndarray) -> tuple[int, ...] | None:
    """A 1-D integer array as ints; None for anything else (not this kind of record)."""
    return tuple(int(v) for v in array) if array.ndim == 1 and array.dtype.kind in "iu" else None


_PNG_NAME = re.compile(r"^\d+/(\d+)\.png$")


def _seeds_from_names(names: Sequence[str]) -> tuple[int, ...] | None:
    """The seeds of names in ``sample``'s layout (``000000/000123.png``); None if any name is not."""
    from diffsampler.outputs import png_name

    seeds = []
    for name in names:
        match = _PNG_NAME.match(name.replace(os.sep, "/"))
        if match is None or png_name(int(match.group(1))) != name.replace(os.sep, "/"):
            return None
        seeds.append(int(match.group(1)))
    return tuple(seeds) if seeds else None


def _dataset_json(p: Path) -> dict[str, int] | None:
    """EDM's ``dataset.json`` labels, name -> label; None without one (or with ``labels: null``)."""
    try:
        if p.is_dir():
            text = (p / "dataset.json").read_text(encoding="utf-8") if (p / "dataset.json").is_file() else None
        else:
            with zipfile.ZipFile(p) as archive:
                text = archive.read("dataset.json").decode() if "dataset.json" in archive.namelist() else None
        if text is None:
            return None
        rows = json.loads(text).get("labels")
        return None if rows is None else {str(name): int(label) for name, label in rows}
    except (ValueError, TypeError, AttributeError, OSError, zipfile.BadZipFile) as exc:
        raise OptionError(f"dataset.json of {str(p)!r} is not EDM's format "
                          f'{{"labels": [[name, label], ...]}} ({exc})') from None


def clean_prompt(text: str) -> str:
    """A prompt as open_clip's tokenizer cleans it before BPE (the seed's CLIP score): ftfy's
    ``fix_text`` (mojibake, curly quotes; when ftfy is installed, as with the ``[clip]`` extra),
    HTML entities unescaped twice (``&amp;amp;`` -> ``&``), runs of whitespace made one space."""
    import html
    import re

    try:
        import ftfy
    except ImportError:
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


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
            [clean_prompt(p) for p in prompts], padding="max_length", truncation=True, max_length=self.max_length,
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
        from diffsampler.hub import (
            OFFLINE_HINT,
            hub_offline,
            hub_unreachable,
            looks_local,
            quiet_hub_libraries,
        )

        transformers: Any = require("transformers", extra="clip", purpose="the CLIP score")
        local = Path(name).expanduser()
        if not local.is_dir() and looks_local(name):  # no hub round trips for a mistyped folder
            raise ModelLoadError(
                f"no such CLIP folder: {name!r} (a transformers CLIP checkpoint: config.json, weights, "
                "tokenizer files; a hub id is org/name)"
            )
        offline = hub_offline()
        source = str(local) if local.is_dir() else name
        try:
            with quiet_hub_libraries():
                model = transformers.CLIPModel.from_pretrained(source, local_files_only=offline)
                tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=offline)
        except (OSError, ValueError) as exc:
            if not local.is_dir() and hub_unreachable(exc):
                where = "is not in the local Hugging Face cache and offline mode is set" if offline else (
                    f"could not be fetched: the Hugging Face hub is unreachable (offline?); {OFFLINE_HINT}")
                raise ModelLoadError(
                    f"the CLIP model {name!r} {where}; pass --model DIR (Python: model=DIR) with a local "
                    "transformers CLIP checkpoint"
                ) from None
            raise ModelLoadError(
                f"could not load the CLIP model {name!r} ({str(exc).splitlines()[0][:300]}); pass --model DIR "
                "(Python: model=DIR) with a transformers CLIP checkpoint (config.json, weights, tokenizer files)"
            ) from None
        return cls(model, tokenizer, device=device)


def clip_score(encoder: Any, batches: Iterable[np.ndarray], prompts: Sequence[str]) -> tuple[float, int]:
    """``100 * mean cos`` over image/prompt pairs, and the number of pairs: image ``i`` of the
    batches with ``prompts[i]`` (pair them first with :func:`pair_prompts`).

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
        None, help="prompts: CSV with a 'text' column (COCO captions) or a text file, one a line; image i is "
        "scored against the prompt it was made from (its label, else seed mod N) (else $DIFFSAMPLER_CLIP_PROMPTS)"
    )
    model: str = option(DEFAULT_MODEL, help="transformers CLIP directory or hub id (the seed: ViT-g-14 LAION-2B)")
    device: str = option("auto", help="device: auto, cpu, cuda, cuda:N")
    batch: int = option(64, help="images per CLIP forward pass", validator=in_range(1))


class CLIPScore:
    """CLIP score: 100 x mean cosine similarity of images and their prompts (the seed's)."""

    paper = "Hessel et al. 2021, arXiv:2104.08718 (CLIPScore); Radford et al. 2021 (CLIP)"
    higher_is_better = True
    uses_labels = True  # compare passes the prompt index each seed was sampled with

    def __init__(self, *, prompts: str | None = None, model: str = DEFAULT_MODEL, device: str = "auto",
                 batch: int = 64) -> None:
        from .fid import from_env

        self.prompts_path = from_env(prompts, "DIFFSAMPLER_CLIP_PROMPTS", "clip-score", "a prompt file", "prompts")
        self.prompts = load_prompts(self.prompts_path)
        if not self.prompts:  # refused now, so that compare refuses it before it samples
            raise OptionError(f"{self.prompts_path} holds no prompts")
        self.model_name, self.device, self.batch = model, device, batch
        self._encoder: Any = None
        self._warned = False

    def check_run(self, *, seeds: Sequence[int], labels: Sequence[int] | None = None) -> None:
        """Refuse, before ``compare`` samples, a run whose images cannot be paired with prompts."""
        pair_prompts(len(seeds), len(self.prompts), labels=labels, seeds=seeds, prompts_name=self.prompts_path)

    def compute(
        self,
        batches: Iterable[Any],
        *,
        model: Any = None,
        seeds: Sequence[int] | None = None,
        labels: Sequence[int] | None = None,
    ) -> dict[str, float]:
        """Image ``j`` against ``prompts[labels[j]]`` (the prompt indices the run used, e.g.
        ``seed_labels``), else ``prompts[seeds[j] mod N]``, else ``prompts[j]``."""
        from diffsampler.images import to_uint8

        images = [arr if arr.dtype == np.uint8 else to_uint8(arr)
                  for arr in (b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b) for b in batches)]
        count = sum(len(a) for a in images)
        pairing = pair_prompts(count, len(self.prompts), labels=labels, seeds=seeds,
                               prompts_name=self.prompts_path)
        if labels is None:
            self._check_model_prompts(model)
        if self._encoder is None:
            from .fid import _device

            self._encoder = CLIPEncoder.load(self.model_name, device=_device(self.device))

        def chunks() -> Iterable[np.ndarray]:
            for arr in images:
                for start in range(0, len(arr), self.batch):
                    yield arr[start : start + self.batch]

        score, _ = clip_score(self._encoder, chunks(), [self.prompts[i] for i in pairing.indices])
        return {"clip": score}

    def _check_model_prompts(self, model: Any) -> None:
        """Warn (once) when the model made every image from one prompt that is not the file's."""
        own = getattr(model, "prompts", None)
        if self._warned or not isinstance(own, list) or len(own) != 1 or self.prompts == own:
            return
        self._warned = True
        warnings.warn(
            f"the model made every image from the prompt {own[0]!r}, but clip-score scores them against "
            f"{self.prompts_path} ({_plural(len(self.prompts), 'prompt')}, seed mod {len(self.prompts)}): "
            "give clip-score a prompt file with that one prompt",
            stacklevel=3,
        )


def clip_metric(*, prompts: str | None = None, model: str = DEFAULT_MODEL, device: str = "auto", batch: int = 64) -> CLIPScore:
    """CLIP score of images against their prompts (transformers CLIP; the seed's ViT-g-14)."""
    return CLIPScore(prompts=prompts, model=model, device=device, batch=batch)


clip_metric.paper = CLIPScore.paper  # type: ignore[attr-defined]
