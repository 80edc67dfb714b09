"""Device names and output files are checked before any work starts."""

from __future__ import annotations

import os

import pytest
import torch

from diffsampler.devices import resolve_device
from diffsampler.errors import OptionError
from diffsampler.outputs import check_output_file


def test_auto_and_cpu_resolve():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_a_bad_or_missing_device_is_one_clear_error():
    with pytest.raises(OptionError, match="must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="--device cuda: no CUDA device is available"):
            resolve_device("cuda")
    with pytest.raises(OptionError, match=r"^--dev cuda:99:"):
        resolve_device("cuda:99", flag="--dev")


def test_a_model_option_device_is_checked_as_the_flag_is():
    import diffsampler as ds

    with pytest.raises(OptionError, match=r"^--model-opt device must be auto, cpu, cuda or cuda:N, got 'gpu'$"):
        ds.get_model("digits", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match=r"^--model-opt device cuda: no CUDA device is available"):
            ds.get_model("digits", device="cuda")
    assert ds.get_model("digits", device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_output_file_checks(tmp_path):
    with pytest.raises(OptionError, match="is a folder; give a file name"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(OptionError, match=r"its folder .* is a file, not a folder"):
        check_output_file(tmp_path / "f" / "out.json")
    out = check_output_file(tmp_path / "new" / "deeper" / "out.json")
    assert out.parent.is_dir() and not out.exists()  # the folder is made, the file is not


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OptionError, match="is not writable"):
        check_output_file(locked / "out.json")


def test_a_missing_zip_model_file_is_named(tmp_path):
    import diffsampler as ds

    with pytest.raises(ds.ModelLoadError, match=r"^model file 'missing\.zip' does not exist$"):
        ds.get_model("missing.zip")
