"""User errors of the analytic models (``gmm``, ``empirical``): one line, exit status 2, and the
formats ``empirical data=`` reads (image sets converted as PNG folders are)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.images import png_bytes


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


def error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a refused command (its whole stderr)."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_gmm_refuses_an_empty_sigma_range_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ds.OptionError, match=r"model 'gmm': need sigma_min < sigma_max, got 5 and 1$"):
        ds.get_model("gmm", sigma_min=5, sigma_max=1)
    res = cli("sample", "--model", "gmm", "--model-opt", "sigma_min=5", "--model-opt", "sigma_max=1",
              "--seeds", "0", "--nfe", "4", "--out", str(tmp_path / "g"))
    assert error_line(res) == "error: model 'gmm': need sigma_min < sigma_max, got 5 and 1"
    assert not (tmp_path / "g").exists()


def test_empirical_refuses_a_torch_file_briefly(tmp_path: Path) -> None:
    pt = tmp_path / "weights.pt"
    torch.save({f"layer{k}.weight": torch.randn(64, 64) for k in range(8)}, pt)  # a zip, as an npz is
    res = cli("sample", "--model", "empirical", "--model-opt", f"data={pt}", "--seeds", "0", "--nfe", "4",
              "--out", str(tmp_path / "e"))
    line = error_line(res)
    assert line.startswith(f"error: empirical data '{pt}' is a torch.save file, not an .npz: expected")
    assert len(line) < 400 and "\\x" not in line


def test_empirical_refuses_a_non_numeric_or_wrong_rank_array(tmp_path: Path) -> None:
    words = tmp_path / "words.npz"
    np.savez(words, data=np.array(["a", "b"]))
    with pytest.raises(ds.OptionError, match=r"'data' holds no numeric array; expected an \.npz"):
        ds.get_model("empirical", data=str(words))
    flat = tmp_path / "flat.npz"
    np.savez(flat, np.zeros((3, 4)))
    with pytest.raises(ds.OptionError, match=r"got an array of shape \(3, 4\); expected an \.npz holding "
                                             r"float \[N, C, H, W\]"):
        ds.get_model("empirical", data=str(flat))
    nchw_bytes = tmp_path / "nchw.npz"
    np.savez(nchw_bytes, np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ds.OptionError, match=r"uint8 data are images \[N, H, W, C\]"):
        ds.get_model("empirical", data=str(nchw_bytes))


def test_empirical_reads_an_image_set_npz_as_its_png_folder(tmp_path: Path) -> None:
    """``arr_0`` uint8 NHWC (the image-set format ``sample`` writes) gives the same points as
    the same images in a PNG folder: NCHW in [-1, 1]."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for k, image in enumerate(images):
        (folder / f"{k}.png").write_bytes(png_bytes(image))
    np.savez(tmp_path / "set.npz", arr_0=images)
    from_npz = ds.get_model("empirical", data=str(tmp_path / "set.npz"))
    from_folder = ds.get_model("empirical", data=str(folder))
    assert from_npz.shape == (3, 6, 4) == from_folder.shape
    np.testing.assert_array_equal(from_npz.points, from_folder.points)
    assert from_npz.points.min() >= -1 and from_npz.points.max() <= 1


def test_empirical_warns_on_float_data_far_outside_the_image_range(tmp_path: Path) -> None:
    np.savez(tmp_path / "raw.npz", data=np.linspace(0, 255, 2 * 48).reshape(2, 3, 4, 4))
    with pytest.warns(UserWarning, match=r"spans \[0, 255\], far outside \[-1, 1\]"):
        ds.get_model("empirical", data=str(tmp_path / "raw.npz"))
    np.savez(tmp_path / "ok.npz", data=np.linspace(-1, 1, 2 * 48).reshape(2, 3, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.get_model("empirical", data=str(tmp_path / "ok.npz")).shape == (3, 4, 4)
    res = cli("sample", "--model", "empirical", "--model-opt", f"data={tmp_path / 'raw.npz'}", "--seeds", "0",
              "--nfe", "2", "--out", str(tmp_path / "w"))
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "far outside [-1, 1]" in warned[0]
