"""Record pytorch-fid's features for a random state dict (the golden file of test_metrics_inception).

pytorch-fid 0.3.0 needs torchvision; PyPI's torchvision does not load its C++ operators beside a
CPU-only torch, but its Python model definitions do once its fake-kernel registrations are
skipped. Install both without dependencies into a separate folder and run this script:

    pip install --no-deps --target ~/.cache/diffsampler-fidref torchvision==0.28.0 pytorch-fid==0.3.0
    DIFFSAMPLER_FIDREF_DIR=~/.cache/diffsampler-fidref python tests/data/make_pytorch_fid_reference.py

The state dict is ``randomize_(FIDInceptionV3(), seed=0)``; the images come from numpy's
``default_rng(0)``. pytorch-fid loads the state dict strictly, so this also checks that our
module names and shapes are those of ``pt_inception-2015-12-05-6726825d.pth``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from _fidref import import_pytorch_fid, reference_images

from diffsampler.plugins.metrics.inception import FIDInceptionV3, randomize_


def main() -> None:
    torch.set_num_threads(1)
    pfi = import_pytorch_fid()
    if pfi is None:
        raise SystemExit("pytorch-fid is not importable: see this script's docstring")
    state = randomize_(FIDInceptionV3(), 0).state_dict()
    pfi.load_state_dict_from_url = lambda *a, **k: state
    net = pfi.InceptionV3([3]).eval()
    out = {}
    for name, images in reference_images().items():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # pytorch-fid's ToTensor
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # PIL's convert("RGB")
        with torch.no_grad():
            out[name] = net(x)[0].squeeze(-1).squeeze(-1).numpy()
    target = Path(__file__).with_name("pytorch_fid_random_features.npz")
    np.savez_compressed(target, **out)
    print(f"wrote {target}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
    main()
