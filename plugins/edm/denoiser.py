"""The diffsampler :class:`~diffsampler.Denoiser` around an EDM network.

EDM's preconditioned networks already are denoisers ``D(x; sigma)`` in the sense of Karras et
al. 2022 (arXiv:2206.00364, Eq. 7), so this wrapper only adapts calling conventions: class
labels given as ``cond`` (integers or one-hot rows), the ``precision`` and ``channels_last``
inference options, following the input's device, and the bottleneck features that AMED reads
(:class:`~diffsampler.HasBottleneck`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from diffsampler import DenoiserBase
from diffsampler.errors import OptionError, SamplingError
from diffsampler.graphs import PerBatch, capturing

from .precond import Precond

__all__ = ["PRECISIONS", "EDMDenoiser"]

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@contextlib.contextmanager
def _cuda_fp32(allow_tf32: bool) -> Iterator[None]:
    """Within the block, CUDA float32 convolutions and matmuls are exact float32
    (``allow_tf32=False``) or may use TensorFloat-32 tensor cores. PyTorch's default lets cuDNN
    use TF32 for convolutions, which is not exact float32. Uses the ``allow_tf32`` flags; where
    the user configured TF32 through torch's newer per-operator API, their choice is kept."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        old = (cudnn.allow_tf32, matmul.allow_tf32)
    except RuntimeError:  # per-operator fp32_precision settings: leave them alone
        yield
        return
    cudnn.allow_tf32 = matmul.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = old


class EDMDenoiser(DenoiserBase):
    """An EDM network (``VPPrecond``, ``VEPrecond``, ``iDDPMPrecond``, ``EDMPrecond``) as a Denoiser.

    ``cond``: ``None`` (unconditional; for a class-conditional network ``class_label`` if set,
    else EDM's all-zero label vector), an ``int`` for the whole batch, a sequence or integer
    tensor of ``batch`` class indices, or a float tensor of one-hot rows ``[batch, label_dim]``.
    ``precision``: ``fp32`` (exact IEEE float32, default; TF32 is switched off for the call on
    CUDA), ``tf32`` (float32 with TensorFloat-32 tensor cores on CUDA; plain fp32 elsewhere),
    ``fp16`` or ``bf16`` (``torch.autocast``).
    The network moves to the device of the input it is called with.
    """

    paper = (
        "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, "
        "arXiv:2206.00364"
    )

    def __init__(
        self,
        net: Precond,
        *,
        name: str = "edm",
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        precision: str = "fp32",
        channels_last: bool = False,
        class_label: int | None = None,
        device: str | torch.device | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        size = int(net.img_resolution)
        self._init_denoiser((int(net.img_channels), size, size), sigma_min, sigma_max)
        self.net = net.eval()
        self.name = name
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.info = dict(info or {})
        self.label_dim = int(net.label_dim)
        if class_label is not None and not (self.label_dim and 0 <= class_label < self.label_dim):
            raise OptionError(
                f"class_label {class_label} is out of range for a network with {self.label_dim} classes"
            )
        self.class_label = class_label
        self.step_condition: int | None = None  # SFD-v students: the number of sampling steps
        self._per_batch = PerBatch()  # a batch's one-hot labels, checked once, reused at every step
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if device is not None:
            self.net = self.net.to(device)

    def check_labels(self, choice: str | None) -> None:
        """Refuse, before sampling, a run without class labels (``--labels``) of a class-conditional
        network trained without label dropout (EDM's ImageNet-64): EDM's all-zero label vector is
        no class it has seen, so it has no unconditional mode. Networks trained with label dropout
        (``digits``) sample unconditionally with that vector."""
        if choice is not None or self.class_label is not None or not self.label_dim:
            return
        unet = getattr(self.net, "model", self.net)
        if float(getattr(unet, "label_dropout", 0) or 0) > 0:
            return
        raise OptionError(
            f"model {self.name!r} is class-conditional and was trained without label dropout (no "
            "unconditional mode): choose classes with --labels random|seed|K or the model option class_label"
        )

    # -- Denoiser protocol (shape, sigma_min, sigma_max from DenoiserBase) ----------------------
    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """``D(x; sigma)`` in ``x``'s dtype."""
        return self._run(x, sigma, cond, features=False)  # type: ignore[return-value]

    # -- HasBottleneck ---------------------------------------------------------------------------
    @property
    def bottleneck_channels(self) -> int:
        """Channels of the last encoder block at 8x8 (the block the AMED seed hooks)."""
        return self.net.bottleneck_channels

    def denoise_with_features(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        """``(D(x; sigma), features)`` from one forward pass; features ``[batch, C, 8, 8]`` (float32)."""
        return self._run(x, sigma, cond, features=True)  # type: ignore[return-value]

    # -- mechanics -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> EDMDenoiser:
        """Move the network to ``device`` (it also follows its inputs on its own)."""
        self.net = self.net.to(device)
        return self

    def compiled(self, mode: str = "default") -> EDMDenoiser:
        """A copy whose network runs through ``torch.compile`` (:class:`~diffsampler.Compilable`).

        ``default`` (Inductor kernels, no CUDA graphs of its own) is the mode ``bench`` uses: the
        whole sampling loop is captured in one graph by :class:`diffsampler.graphs.GraphedSampler`,
        which ``reduce-overhead``'s per-forward graphs would only duplicate, and
        ``max-autotune`` compiles for minutes for a few percent. Shapes are static
        (``dynamic=False``): a run has one batch shape (and perhaps a smaller last batch, compiled
        once more), and kernels specialised to a shape beat the symbolic-shape kernels that
        PyTorch's automatic dynamic shapes would otherwise build at the second shape seen.
        """
        twin = copy.copy(self)
        twin.net = torch.compile(self.net, mode=mode, dynamic=False)  # type: ignore[assignment]
        return twin

    def class_labels(self, cond: Any, batch: int, device: torch.device) -> Tensor | None:
        """One-hot labels ``[batch or 1, label_dim]`` for ``cond`` (``None`` when unconditional)."""
        if cond is None:
            if not self.label_dim or self.class_label is None:
                return None
            cond = self.class_label
        if not self.label_dim:
            raise SamplingError(f"model {self.name!r} is unconditional; got cond={_short(cond)}")
        if isinstance(cond, Tensor) and cond.is_floating_point():
            if cond.shape[-1] != self.label_dim or cond.dim() > 2:
                raise SamplingError(
                    f"one-hot labels must be shaped [batch, {self.label_dim}], got {tuple(cond.shape)}"
                )
            rows = cond.reshape(-1, self.label_dim)
            if rows.shape[0] not in (1, batch):
                raise SamplingError(f"got {rows.shape[0]} label rows for a batch of {batch}")
            return rows.to(device=device, dtype=torch.float32)
        if isinstance(cond, bool) or not isinstance(cond, int | Sequence | Tensor):
            raise SamplingError(
                f"cond must be class indices or one-hot rows for model {self.name!r}, got {_short(cond)}"
            )
        index = torch.as_tensor(cond, device=device)
        if index.is_floating_point() or index.dtype == torch.bool or index.dim() > 1:
            raise SamplingError(f"class indices must be integers, got {_short(cond)}")
        index = index.reshape(-1).long()
        if index.numel() not in (1, batch):
            raise SamplingError(f"got {index.numel()} class labels for a batch of {batch}")
        if not capturing() and bool(((index < 0) | (index >= self.label_dim)).any()):
            raise SamplingError(f"class labels must be in 0..{self.label_dim - 1}, got {_short(cond)}")
        return torch.nn.functional.one_hot(index, self.label_dim).to(torch.float32)

    def _run(self, x: Tensor, sigma: Tensor, cond: Any, *, features: bool) -> Tensor | tuple[Tensor, Tensor]:
        if self.device != x.device:
            self.net = self.net.to(x.device)
        batch = x.shape[0]
        labels = self._per_batch.value(cond, lambda: self.class_labels(cond, batch, x.device), batch, x.device)
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        inp = x.to(torch.float32)
        if self.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        ctx: contextlib.AbstractContextManager[Any]
        if dtype is not None:
            ctx = torch.autocast(device_type=x.device.type, dtype=dtype)
        elif x.device.type == "cuda":
            ctx = _cuda_fp32(self.precision == "tf32")
        else:
            ctx = contextlib.nullcontext()
        extra = {}
        if self.step_condition is not None:
            extra["step_condition"] = torch.full((x.shape[0],), float(self.step_condition), device=x.device)
        with ctx:
            out = self.net(inp, sigma, labels, return_features=features, **extra)
        if features:
            denoised, feats = out
            return denoised.to(x.dtype).contiguous(), feats.to(torch.float32)
        return out.to(x.dtype).contiguous()

    def __repr__(self) -> str:
        cond = f", classes={self.label_dim}" if self.label_dim else ""
        return (
            f"EDMDenoiser({self.name!r}, {type(self.net).__name__}/{self.net.model_type}, "
            f"shape={self.shape}{cond}, precision={self.precision})"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."
