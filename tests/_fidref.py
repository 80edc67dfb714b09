"""Access to pytorch-fid (the independent FID reference) for tests, when it can be imported.

pytorch-fid imports torchvision. PyPI's torchvision wheel fails to import beside a CPU-only torch
('operator torchvision::nms does not exist': its compiled operators do not load, and its fake
kernel registrations then fail). Only torchvision's Python model definitions are needed, so the
registration module is replaced by an empty one before the import. Looked for: an importable
``pytorch_fid``, else the folder ``$DIFFSAMPLER_FIDREF_DIR`` (default
``~/.cache/diffsampler-fidref``) made by
``pip install --no-deps --target DIR torchvision==0.28.0 pytorch-fid==0.3.0``.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np


def import_pytorch_fid() -> Any | None:
    """``pytorch_fid.inception``, or None when it cannot be imported here."""
    folder = Path(os.environ.get("DIFFSAMPLER_FIDREF_DIR", "~/.cache/diffsampler-fidref")).expanduser()
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.append(str(folder))
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        import pytorch_fid.inception as pfi
    except Exception:
        return None
    return pfi


def reference_images() -> dict[str, np.ndarray]:
    """Fixed uint8 NHWC inputs: CIFAR-sized RGB, a non-square RGB pair, and grey digits-sized."""
    rng = np.random.default_rng(0)
    return {
        "rgb32": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
        "rgb40x24": rng.integers(0, 256, (1, 40, 24, 3), dtype=np.uint8),
        "grey8": rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8),
    }
