"""Regenerate tiny_ldm_vq.{zip,yaml} and tiny_ldm_vq_reference.npz with the seed's own CompVis code.

    python make_tiny_ldm_vq.py SEED_DIR TAMING_DIR OUT_DIR

SEED_DIR: zju-pi/diff-sampler's ``diff-solvers-main`` folder (its ``models/ldm``, ``models/networks_edm.py``,
``torch_utils``, ``dnnlib``); TAMING_DIR: a CompVis/taming-transformers checkout (``VectorQuantizer2``).
pytorch_lightning and torchvision are replaced by the few stand-ins written below (only
``LightningModule``, ``rank_zero_only``, the ``ModelCheckpoint`` class a Lightning checkpoint keys
its callback state by, and an unused ``make_grid``). Nothing of the seed is copied here.
"""
import io
import math
import os
import sys
import tempfile
import zipfile

import numpy as np
import torch

STANDINS = {
    "pytorch_lightning/__init__.py": "import torch\nclass LightningModule(torch.nn.Module):\n    pass\n",
    "pytorch_lightning/utilities/__init__.py": "",
    "pytorch_lightning/utilities/rank_zero.py": "def rank_zero_only(fn):\n    return fn\n",
    "pytorch_lightning/callbacks/__init__.py": "",
    "pytorch_lightning/callbacks/model_checkpoint.py": "class ModelCheckpoint:\n    pass\n",
    "torchvision/__init__.py": "",
    "torchvision/utils.py": "def make_grid(*a, **k):\n    raise NotImplementedError\n",
}


def _standins() -> str:
    root = tempfile.mkdtemp()
    for rel, text in STANDINS.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    return root


sys.path[:0] = [_standins(), sys.argv[1], sys.argv[2]]
torch.set_num_threads(1)

from models.ldm.util import instantiate_from_config  # noqa: E402  (seed code)
from models.networks_edm import CFGPrecond  # noqa: E402  (seed code)
from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint  # noqa: E402  (stand-in)

CONFIG = {
    "target": "models.ldm.models.diffusion.ddpm.LatentDiffusion",
    "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "image", "image_size": 8, "channels": 3,
        "monitor": "val/loss_simple_ema",
        "unet_config": {
            "target": "models.ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32,
                       "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 1],
                       "num_head_channels": 16},
        },
        "first_stage_config": {
            "target": "models.ldm.models.autoencoder.VQModelInterface",
            "params": {"embed_dim": 3, "n_embed": 64,
                       "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3,
                                    "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                    "attn_resolutions": [], "dropout": 0.0},
                       "lossconfig": {"target": "torch.nn.Identity"}},
        },
        "cond_stage_config": "__is_unconditional__",
    },
}


def quantized(shape, std, gen, levels=1, keep=1.0):
    """Random values on a coarse grid (a power of two near std/levels), a fraction ``keep`` of them
    non-zero: exact in fp32, and they deflate well (the checkpoint stays small)."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * std / keep**0.5
    x = x * (torch.rand(shape, generator=gen, dtype=torch.float64) < keep)
    step = 2.0 ** round(math.log2(std / levels))  # a power of two: few mantissa bits
    return (torch.round(x / step) * step).float()


def randomize(model, gen):
    for name, p in model.named_parameters():
        if name.endswith("embedding.weight"):  # VQ codebook: codes of the size of the latents
            p.data = quantized(p.shape, 1.0, gen)
        elif p.dim() > 1:
            fan_in = p[0].numel()
            p.data = quantized(p.shape, 1.0 / fan_in**0.5, gen, keep=0.1 if fan_in > 64 else 1.0)
        elif name.endswith("weight"):  # GroupNorm scales (every other weight is 2-D or more)
            p.data = 1 + quantized(p.shape, 0.1, gen)
        else:
            p.data = quantized(p.shape, 0.05, gen)


def main(out):
    os.makedirs(out, exist_ok=True)
    import yaml
    with open(os.path.join(out, "tiny_ldm_vq.yaml"), "w") as f:
        f.write("# A tiny unconditional VQ latent diffusion model in the CompVis config format (test data).\n")
        yaml.safe_dump({"model": CONFIG}, f, sort_keys=False)
    gen = torch.Generator().manual_seed(20261127)
    ldm = instantiate_from_config(CONFIG).eval()
    randomize(ldm, gen)
    # a distinct EMA copy in LitEma's buffers (model_ema.<name without dots>)
    for name, p in ldm.model.named_parameters():
        buf = getattr(ldm.model_ema, name.replace(".", ""))
        buf.copy_(p.data + quantized(p.shape, 0.02 if p.dim() == 1 else 0.5 / p[0].numel()**0.5, gen, keep=0.05))
    ldm.model_ema.num_updates.fill_(1234)
    sd = ldm.state_dict()
    ckpt = {
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
        "callbacks": {ModelCheckpoint: {"monitor": "val/loss_simple_ema", "best_model_score": torch.tensor(0.125),
                                        "best_model_path": "/logs/checkpoints/last.ckpt", "current_score": None,
                                        "dirpath": "/logs/checkpoints"}},
        "optimizer_states": [], "lr_schedulers": [],
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    with zipfile.ZipFile(os.path.join(out, "tiny_ldm_vq.zip"), "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("model.ckpt", buf.getvalue())
    print("ckpt bytes", len(buf.getvalue()), "zip bytes", os.path.getsize(os.path.join(out, "tiny_ldm_vq.zip")))
    print("unet params", sum(p.numel() for p in ldm.model.parameters()),
          "vq params", sum(p.numel() for p in ldm.first_stage_model.parameters()))

    # --- the seed code's outputs -----------------------------------------------------------
    net = CFGPrecond(ldm, img_resolution=8, img_channels=3, guidance_rate=1.0, guidance_type="uncond",
                     label_dim=0)
    g = torch.Generator().manual_seed(7)
    sigmas = torch.tensor([net.sigma_min, 0.3, 1.0, 3.0, net.sigma_max], dtype=torch.float32)
    x = torch.randn(len(sigmas), 2, 3, 8, 8, generator=g) * torch.sqrt(1 + sigmas**2).reshape(-1, 1, 1, 1, 1)
    d_ema, d_raw = [], []
    with torch.no_grad():
        with ldm.ema_scope():
            for s, xs in zip(sigmas, x, strict=True):
                d_ema.append(net(xs, s.expand(2)))
        for s, xs in zip(sigmas, x, strict=True):
            d_raw.append(net(xs, s.expand(2)))
        z = torch.randn(2, 3, 8, 8, generator=g)
        with ldm.ema_scope():
            images = ldm.decode_first_stage(z)
    d_ema, d_raw = torch.stack(d_ema), torch.stack(d_raw)
    print("sigma range", net.sigma_min, net.sigma_max)
    print("|D_ema - D_raw| max", (d_ema - d_raw).abs().max().item(), "|D| max", d_ema.abs().max().item())
    print("eps_ema std per sigma", [float(((x[i] - d_ema[i]) / sigmas[i]).std()) for i in range(len(sigmas))])
    print("images range", images.min().item(), images.max().item(), images.std().item())
    np.savez_compressed(os.path.join(out, "tiny_ldm_vq_reference.npz"), sigma=sigmas.numpy(), x=x.numpy(),
                        denoised_ema=d_ema.numpy(), denoised_raw=d_raw.numpy(), latent=z.numpy(),
                        decoded=images.numpy(), seed_sigma_min=np.float64(net.sigma_min),
                        seed_sigma_max=np.float64(net.sigma_max))
    print("reference bytes", os.path.getsize(os.path.join(out, "tiny_ldm_vq_reference.npz")))


if __name__ == "__main__":
    main(sys.argv[3])
