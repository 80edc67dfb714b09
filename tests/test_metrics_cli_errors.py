"""The metric commands' user errors: one line, exit 2, said before any work (a folder as --out,
a missing or foreign image set, a file that is not a PNG, the wrong kind of .npz), and the
hints that name what works (--weights, --metric "fid[ref=PATH]")."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.cli import main
from diffsampler.compare import parse_metric
from diffsampler.errors import OptionError
from diffsampler.images import png_bytes, read_png, write_png
from diffsampler.imagesets import count_images, iter_images
from diffsampler.plugins.metrics.fid import Stats, save_stats
from diffsampler.plugins.metrics.inception import FIDInceptionV3, randomize_
from diffsampler.plugins.metrics.weights import FID_WEIGHTS_FILE


@pytest.fixture(autouse=True)
def _no_network_no_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))
    for name in ("DIFFSAMPLER_FID_WEIGHTS", "DIFFSAMPLER_FID_REF", "DIFFSAMPLER_PRDC_REF"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Stand-in Inception weights (random; the real file cannot be downloaded in tests)."""
    path = tmp_path_factory.mktemp("w") / FID_WEIGHTS_FILE
    torch.save(randomize_(FIDInceptionV3(), 3).state_dict(), path)
    return path


def error_line(monkeypatch, capsys, *args: str, after: int = 0) -> str:
    """Run ``diffsampler ARGS`` as the script does; its exit status must be 2 and its stderr
    ``after`` progress lines and one line ``error: ...``, returned without the prefix."""
    monkeypatch.setattr(sys, "argv", ["diffsampler", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert info.value.code == 2, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == after + 1 and lines[-1].startswith("error: "), captured.err
    return lines[-1].removeprefix("error: ")


@pytest.fixture
def ref(tmp_path):
    return save_stats(tmp_path / "ref.npz", Stats(mu=np.zeros(2048), sigma=np.eye(2048), count=4))


@pytest.fixture
def pngs(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"{i:06d}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    return folder


def test_fid_ref_refuses_a_folder_as_out_before_reading_weights_or_images(monkeypatch, capsys, tmp_path, pngs):
    (tmp_path / "taken").mkdir()
    message = error_line(monkeypatch, capsys, "fid", "ref", "--data", str(pngs), "--out", "taken")
    assert message == "--out 'taken' is a folder; give a file name"
    message = error_line(monkeypatch, capsys, "fid", "ref", "--data", str(pngs), "--out", "taken",
                         "--features")
    assert message == "--out 'taken' is a folder; give a file name"


def test_fid_ref_with_stand_in_weights_writes_into_a_new_folder(monkeypatch, capsys, tmp_path, weights_file):
    np.savez(tmp_path / "imgs.npz", arr_0=np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8))
    monkeypatch.setattr(sys, "argv", ["diffsampler", "fid", "ref", "--data", "imgs.npz", "--out", "new/ref.npz",
                                      "--weights", str(weights_file), "--device", "cpu"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0, capsys.readouterr().err
    with np.load(tmp_path / "new" / "ref.npz") as data:
        assert int(data["count"]) == 3


@pytest.mark.parametrize("command", [
    ("fid", "calc", "--ref", "ref.npz", "--images"),
    ("fid", "ref", "--out", "o.npz", "--data"),
    ("prdc", "--fake", "pngs", "--real"),
    ("prdc", "--real", "pngs", "--fake"),
])
def test_a_missing_image_set_is_named(monkeypatch, capsys, ref, pngs, command):
    assert error_line(monkeypatch, capsys, *command, "nope.npz") == "no such image set: 'nope.npz'"
    assert error_line(monkeypatch, capsys, *command, "nope") == "no such image set: 'nope'"


def test_clip_score_checks_the_images_before_loading_a_model(monkeypatch, capsys, tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n")
    message = error_line(monkeypatch, capsys, "clip-score", "--images", "nope", "--prompts", "p.txt",
                         "--model", str(tmp_path / "no-model"))
    assert message == "no such image set: 'nope'"


def test_a_file_that_is_no_image_set_is_named(monkeypatch, capsys, tmp_path, ref):
    (tmp_path / "notimg.txt").write_text("hello")
    expected = "'notimg.txt' is not a folder, a .zip or an .npz of images"
    assert error_line(monkeypatch, capsys, "fid", "calc", "--images", "notimg.txt", "--ref", "ref.npz") == expected
    assert error_line(monkeypatch, capsys, "fid", "ref", "--data", "notimg.txt", "--out", "o.npz") == expected
    (tmp_path / "text.npz").write_text("hello")
    message = error_line(monkeypatch, capsys, "fid", "calc", "--images", "text.npz", "--ref", "ref.npz")
    assert message == "'text.npz' is not an .npz of images (an 'arr_0' uint8 [N, H, W, C] or 'samples' array)"
    message = error_line(monkeypatch, capsys, "fid", "calc", "--images", "ref.npz", "--ref", "ref.npz")
    assert message == "'ref.npz' holds FID statistics (mu, sigma), not images"


def test_a_png_that_does_not_decode_is_named(monkeypatch, capsys, tmp_path, ref, pngs, weights_file):
    (pngs / "zz.png").write_text("not a png")
    message = error_line(monkeypatch, capsys, "fid", "calc", "--images", "pngs", "--ref", "ref.npz",
                         "--weights", str(weights_file), "--device", "cpu", after=1)
    assert message == "pngs/zz.png: not a PNG file"


def test_the_loader_checks_every_entry_point_and_names_bad_files(tmp_path):
    with pytest.raises(OptionError, match=r"^no such image set: "):
        count_images(tmp_path / "missing")
    (tmp_path / "t.txt").write_text("x")
    for entry in (count_images, lambda p: list(iter_images(p))):
        with pytest.raises(OptionError, match=r"is not a folder, a \.zip or an \.npz of images"):
            entry(tmp_path / "t.txt")
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        archive.writestr("a.png", png_bytes(np.zeros((4, 4, 1), np.uint8)))
        archive.writestr("b.png", png_bytes(np.zeros((4, 4, 1), np.uint8))[:40])  # truncated
    assert count_images(tmp_path / "set.zip") == 2
    with pytest.raises(OptionError, match=r"^b\.png \(in .*set\.zip\): damaged PNG file \(truncated\)$"):
        list(iter_images(tmp_path / "set.zip"))


def test_read_png_raises_value_error_for_any_damage():
    good = png_bytes(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    np.testing.assert_array_equal(read_png(good), np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    for damaged in (b"hello", good[:20], good[:40], good[:33] + b"\0" * 30 + good[63:]):
        with pytest.raises(ValueError, match=r"^(not a PNG file|damaged PNG file .*)$"):
            read_png(damaged)


def test_fid_calc_names_a_ref_that_is_not_fid_statistics(monkeypatch, capsys, tmp_path, pngs):
    (tmp_path / "gits.json").write_text('{"sigmas": [80, 0.002]}')
    message = error_line(monkeypatch, capsys, "fid", "calc", "--images", "pngs", "--ref", "gits.json")
    assert message == "'gits.json' is not an .npz of FID statistics (written by diffsampler fid ref)"


def test_prdc_real_without_features_says_how_to_rebuild(monkeypatch, capsys, tmp_path, ref, pngs):
    message = error_line(monkeypatch, capsys, "prdc", "--real", "ref.npz", "--fake", "pngs")
    assert message == "'ref.npz' holds FID statistics without features: rebuild it with diffsampler fid ref --features"
    with pytest.raises(OptionError, match="rebuild it with diffsampler fid ref --features"):
        ds.get_metric("prdc", ref="ref.npz")  # refused when built: compare has not sampled yet
    with pytest.raises(OptionError, match=r"^no such image set: 'nope'$"):
        ds.get_metric("prdc", ref="nope")


def test_prdc_checks_fake_before_embedding_real(monkeypatch, capsys, tmp_path, pngs):
    """No weights here: an error about them would mean the real set was embedded first."""
    assert error_line(monkeypatch, capsys, "prdc", "--real", "pngs", "--fake", "nope") == "no such image set: 'nope'"


def test_weights_hint_names_the_flag_and_the_option(monkeypatch, capsys, tmp_path, pngs):
    message = error_line(monkeypatch, capsys, "fid", "ref", "--data", "pngs", "--out", "o.npz")
    assert f"or pass --weights /path/to/{FID_WEIGHTS_FILE} (Python and metric options: weights=PATH)" in message
    assert not (tmp_path / "o.npz").exists()


def test_compare_without_a_reference_names_what_works(monkeypatch, capsys, ref):
    message = error_line(monkeypatch, capsys, "compare", "--model", "gmm", "--metric", "fid", "--nfe", "5",
                         "--solver", "ipndm", "--seeds", "0-3")
    assert message == ("metric 'fid' needs reference statistics: pass ref=PATH "
                       '(compare: --metric "fid[ref=PATH]") or set DIFFSAMPLER_FID_REF=PATH')
    name, options = parse_metric("fid[ref=ref.npz]")  # what the message promises reaches the metric
    assert ds.get_metric(name, **options).ref.count == 4


def test_prdc_refuses_k_against_the_set_sizes_before_embedding(monkeypatch, capsys, tmp_path, pngs):
    """No weights here: an error about them would mean a set was embedded before k was checked."""
    np.savez(tmp_path / "real.npz", features=np.random.default_rng(0).standard_normal((20, 4)))
    message = error_line(monkeypatch, capsys, "prdc", "--real", "real.npz", "--fake", "pngs", "--k", "3")
    assert message == "PRDC with k=3 needs more than 3 points per set: fake 'pngs' has 3"
    np.savez(tmp_path / "few.npz", features=np.zeros((4, 4)))
    message = error_line(monkeypatch, capsys, "prdc", "--real", "few.npz", "--fake", "pngs", "--k", "4")
    assert message == "PRDC with k=4 needs more than 4 points per set: real 'few.npz' has 4"
    with pytest.raises(OptionError, match=r"^PRDC with k=4 needs more than 4 points per set: ref 'few.npz' has 4$"):
        ds.get_metric("prdc", ref="few.npz", k=4)  # refused when built: compare has not sampled yet


def test_a_torch_file_is_no_image_set(monkeypatch, capsys, tmp_path, pngs, weights_file):
    """A .pth is a zip too: it is named as no image set, before any progress line."""
    expected = (f"{str(weights_file)!r} is not an image set (a folder or .zip of PNGs, an .npz with arr_0) "
                "nor a features .npz (diffsampler fid ref --features)")
    assert error_line(monkeypatch, capsys, "prdc", "--real", str(weights_file), "--fake", "pngs") == expected
    assert error_line(monkeypatch, capsys, "prdc", "--real", "pngs", "--fake", str(weights_file)) == expected
    message = error_line(monkeypatch, capsys, "fid", "ref", "--data", str(weights_file), "--out", "o.npz",
                         "--weights", str(weights_file))
    assert message == f"{str(weights_file)!r} is not an image set (a folder or .zip of PNGs, an .npz with arr_0)"
    (tmp_path / "empty").mkdir()
    message = error_line(monkeypatch, capsys, "prdc", "--real", "empty", "--fake", "pngs")
    assert message == "'empty' holds no PNG images"
