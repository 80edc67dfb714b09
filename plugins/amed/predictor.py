"""The AMED predictor network and its file (Zhou et al. CVPR 2024, arXiv:2312.00094, Sec. 3.2).

A tiny network maps the channel mean of the U-Net's 8x8 bottleneck (64 numbers) and the two
times of a step to ``r`` in (0, 1), the position of the intermediate time
``t_mid = t_next^r t_cur^(1-r)`` (Eq. 8), and optionally to scale factors of the direction and of
the time in ``(1 - s, 1 + s)``. The layer sizes are the seed's ``AMED_predictor``: a positional
embedding (8 channels, sin/cos swapped) of each time through one shared linear layer with SiLU,
a two-layer encoder 64 -> hidden -> 4 of the features, and one linear head per output followed by
a sigmoid.

A trained predictor is one safetensors file: the weights, plus under ``__metadata__["amed"]``
the JSON settings it was trained with and the identity of the model (name, options, sample
shape, bottleneck channels). :func:`load_predictor` reads it back; :meth:`AMEDPredictor.check_model`
refuses a model of another shape.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffsampler import tensorfile
from diffsampler.errors import ModelLoadError, OptionError

__all__ = ["FEATURE_SIZE", "FORMAT", "AMEDPredictor", "load_predictor", "model_identity"]

FORMAT = "diffsampler.amed/1"
#: Spatial size the predictor reads: the channel mean of an 8x8 bottleneck.
FEATURE_SIZE = 8 * 8
NOISE_CHANNELS = 8
ENC_OUT = 4
_WRITTEN_BY = "a .safetensors file written by diffsampler amed train"


def _positional(t: Tensor, channels: int) -> Tensor:
    """EDM's positional embedding with ``endpoint=True``, halves swapped to ``[sin, cos]``."""
    half = channels // 2
    freqs = (1.0 / 10000) ** (torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    angle = t.reshape(-1, 1).to(torch.float32) * freqs
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def _linear(fan_in: int, fan_out: int, mode: str, generator: torch.Generator) -> nn.Linear:
    """A linear layer with the seed's initialisation (zero bias)."""
    layer = nn.Linear(fan_in, fan_out)
    with torch.no_grad():
        if mode == "xavier_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            layer.weight.copy_((torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound)
        else:  # kaiming_normal as EDM's Linear: std sqrt(1 / fan_in)
            layer.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) / math.sqrt(fan_in))
        layer.bias.zero_()
    return layer


def model_identity(model: Any, *, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a predictor remembers of its model: name, options, sample shape, bottleneck channels."""
    return {
        "name": name,
        "options": dict(options or {}),
        "shape": [int(s) for s in model.shape],
        "bottleneck_channels": int(model.bottleneck_channels),
    }


class AMEDPredictor(nn.Module):
    """``(features [B, C, 8, 8], t_cur, t_next) -> (r, scale_dir, scale_time)``, each ``[B]``.

    ``r`` lies in (0, 1); a scale with bound ``s > 0`` lies in ``(1 - s, 1 + s)`` and is exactly
    1 when ``s = 0`` (the head is then absent, as in the seed). ``settings`` are the training
    settings (student solver, num_steps, afs, max_order, ...); ``model`` the model identity.
    """

    def __init__(
        self, settings: dict[str, Any], model: dict[str, Any], *, hidden_dim: int = 128, seed: int = 0
    ) -> None:
        super().__init__()
        self.settings = dict(settings)
        self.model = dict(model)
        self.hidden_dim = int(hidden_dim)
        self.scale_dir = float(settings.get("scale_dir", 0.0))
        self.scale_time = float(settings.get("scale_time", 0.0))
        g = torch.Generator().manual_seed(int(seed))
        joint = 2 * NOISE_CHANNELS + ENC_OUT
        self.map_layer0 = _linear(NOISE_CHANNELS, NOISE_CHANNELS, "xavier_uniform", g)
        self.enc_layer0 = _linear(FEATURE_SIZE, self.hidden_dim, "kaiming_normal", g)
        self.enc_layer1 = _linear(self.hidden_dim, ENC_OUT, "kaiming_normal", g)
        self.fc_r = _linear(joint, 1, "kaiming_normal", g)
        self.fc_scale_dir = _linear(joint, 1, "kaiming_normal", g) if self.scale_dir else None
        self.fc_scale_time = _linear(joint, 1, "kaiming_normal", g) if self.scale_time else None

    @property
    def num_steps(self) -> int:
        return int(self.settings["num_steps"])

    @property
    def student(self) -> str:
        return str(self.settings["solver"])

    def _time(self, t: float | Tensor, batch: int) -> Tensor:
        emb = _positional(torch.as_tensor(t, dtype=torch.float32, device=self.fc_r.weight.device),
                          NOISE_CHANNELS)
        return nn.functional.silu(self.map_layer0(emb)).expand(batch, -1)

    def forward(
        self, features: Tensor | None, t_cur: float | Tensor, t_next: float | Tensor, batch: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``features`` ``None`` stands for the zero feature (an evaluation skipped by AFS)."""
        device = self.fc_r.weight.device
        if features is None:
            if batch is None:
                raise ValueError("batch is needed when features is None")
            flat = torch.zeros(batch, FEATURE_SIZE, device=device)
        else:
            if features.shape[-2:] != (8, 8):
                raise OptionError(
                    f"AMED reads 8x8 bottleneck features; the model gives {tuple(features.shape[-2:])}"
                )
            flat = features.to(device=device, dtype=torch.float32).mean(dim=1).flatten(1)
        b = flat.shape[0]
        enc = self.enc_layer1(nn.functional.silu(self.enc_layer0(flat)))
        out = torch.cat([enc, self._time(t_cur, b), self._time(t_next, b)], dim=1)
        r = torch.sigmoid(self.fc_r(out)).reshape(b)
        ones = torch.ones_like(r)
        sd = ones if self.fc_scale_dir is None else self._scale(self.fc_scale_dir(out), self.scale_dir)
        st = ones if self.fc_scale_time is None else self._scale(self.fc_scale_time(out), self.scale_time)
        return r, sd.reshape(b), st.reshape(b)

    @staticmethod
    def _scale(logit: Tensor, bound: float) -> Tensor:
        """The seed's ``sigmoid * 2s + (1 - s)``: in ``(1 - s, 1 + s)``, 1 at logit 0."""
        return torch.sigmoid(logit) * (2.0 * bound) + (1.0 - bound)

    # -- identity --------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Refuse a model whose sample shape or bottleneck differs from the training model's."""
        from diffsampler.protocols import HasBottleneck

        want = self.model
        if not isinstance(model, HasBottleneck):
            raise OptionError(
                f"AMED needs a model with bottleneck features (HasBottleneck); {type(model).__name__} "
                f"has none (the predictor was trained for {want.get('name')!r})"
            )
        shape = [int(s) for s in model.shape]
        channels = int(model.bottleneck_channels)
        if shape != list(want["shape"]) or channels != int(want["bottleneck_channels"]):
            raise OptionError(
                f"this AMED predictor was trained for model {want.get('name')!r} with sample shape "
                f"{tuple(want['shape'])} and {want['bottleneck_channels']} bottleneck channels; "
                f"the model given has shape {tuple(shape)} and {channels} channels (train one for it)"
            )

    # -- file ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights + settings + model identity as one safetensors file (atomic rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT, "settings": self.settings, "model": self.model,
            "hidden_dim": self.hidden_dim,
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        tensorfile.save_file(tensors, target, metadata={"amed": json.dumps(meta)})


def load_predictor(path: str | os.PathLike[str]) -> AMEDPredictor:
    """Read a predictor file; every problem is one clear error line."""
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"AMED predictor file {str(p)!r} is a folder, not a file")
    if not p.is_file():
        raise OptionError(f"AMED predictor file {str(p)!r} does not exist")
    where = f"AMED predictor file {str(p)!r}"
    not_one = ModelLoadError(f"{str(p)!r} is not an AMED predictor ({_WRITTEN_BY})")
    try:
        raw = tensorfile.read_metadata(p).get("amed")
    except tensorfile.TensorFileError:  # not a safetensors file at all
        raise not_one from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise not_one
    pred = AMEDPredictor(meta["settings"], meta["model"], hidden_dim=int(meta["hidden_dim"]))
    state = tensorfile.load_file(p)
    try:
        pred.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{where}: weights do not fit its settings ({exc})") from None
    return pred.eval()
