"""PRDC (Naeem et al. 2020) against a brute-force reference written from the definitions."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from diffsampler.errors import OptionError
from diffsampler.plugins.metrics.prdc import knn_radii, prdc

SCORES = ("precision", "recall", "density", "coverage")


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The definitions, with full distance matrices (the paper's eqs. 1-4; self is neighbour 0)."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real = np.sort(rr, axis=1)[:, k]
    r_fake = np.sort(ff, axis=1)[:, k]
    inside_real = rf < r_real[:, None]  # [i, j]: fake j in the ball of real i
    inside_fake = rf < r_fake[None, :]  # [i, j]: real i in the ball of fake j
    return {
        "precision": float(inside_real.any(0).mean()),
        "recall": float(inside_fake.any(1).mean()),
        "density": float(inside_real.sum(0).mean() / k),
        "coverage": float((rf.min(1) < r_real).mean()),
    }


@pytest.mark.parametrize(("n", "m", "d", "k", "chunk"), [
    (40, 30, 3, 1, 7), (57, 61, 8, 5, 16), (25, 25, 2, 3, 4096), (33, 20, 16, 5, 5),
])
def test_prdc_equals_brute_force(n, m, d, k, chunk):
    rng = np.random.default_rng(n * m + d)
    real = rng.standard_normal((n, d))
    fake = 0.8 * rng.standard_normal((m, d)) + 0.3
    got = prdc(real, fake, k=k, chunk=chunk)
    want = brute_force(real, fake, k)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got["precision"] < 1 or 0 < got["recall"] < 1  # a non-trivial case


def test_knn_radii_equal_sorted_distances():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4))
    import torch

    radii = knn_radii(torch.from_numpy(x), 5, chunk=9).numpy()
    np.testing.assert_allclose(radii, np.sort(cdist(x, x), axis=1)[:, 5], rtol=1e-12, atol=1e-12)


def test_disjoint_sets_score_zero_and_same_set_is_fully_covered():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((30, 3))
    far = prdc(real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    same = prdc(real, real.copy(), k=3, chunk=8)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same == pytest.approx(brute_force(real, real, 3))


def test_float32_distances_agree_on_separated_data():
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 0.5
    assert prdc(real, fake, k=5, dtype="float32") == pytest.approx(prdc(real, fake, k=5), abs=0.03)


def test_errors():
    rng = np.random.default_rng(4)
    with pytest.raises(OptionError, match="more than 5 points"):
        prdc(rng.standard_normal((5, 2)), rng.standard_normal((10, 2)), k=5)
    with pytest.raises(OptionError, match="dimension"):
        prdc(rng.standard_normal((10, 2)), rng.standard_normal((10, 3)), k=2)


def test_prdc_metric_uses_reference_features(tmp_path, monkeypatch):
    """The registered metric: real features from an .npz, fake features from the Inception network."""
    import torch

    import diffsampler as ds
    import diffsampler.plugins.metrics.fid as fid_module

    rng = np.random.default_rng(5)
    real = rng.standard_normal((20, 4))
    np.savez(tmp_path / "real.npz", features=real)

    def fake_features(net, batches, *, batch=250, on_batch=None):  # a stand-in embedding: flatten
        for b in batches:
            yield b.reshape(len(b), -1).double().numpy()

    monkeypatch.setattr(fid_module, "image_features", fake_features)
    metric = ds.get_metric("prdc", ref=str(tmp_path / "real.npz"), k=3, device="cpu")
    metric._net = object()  # no Inception weights needed for this stand-in
    fake = rng.standard_normal((15, 4))
    values = metric.compute([torch.from_numpy(fake[:7]), torch.from_numpy(fake[7:])])
    assert values == pytest.approx(brute_force(real, fake, 3), abs=1e-12)


def test_compare_runs_prdc_on_an_image_model(tmp_path, monkeypatch):
    """``compare --metric prdc`` on the digits network, options through the environment."""
    import torch
    from sklearn.datasets import load_digits

    from diffsampler.compare import CompareConfig, run_compare
    from diffsampler.plugins.metrics.inception import FIDInceptionV3, randomize_

    weights = tmp_path / "inception.pth"
    torch.save(randomize_(FIDInceptionV3(), 0).state_dict(), weights)
    digits = (load_digits().images[:12] * (255 / 16)).round().astype(np.uint8)[..., None]
    np.savez(tmp_path / "real.npz", arr_0=digits)
    monkeypatch.setenv("DIFFSAMPLER_FID_WEIGHTS", str(weights))
    monkeypatch.setenv("DIFFSAMPLER_PRDC_REF", str(tmp_path / "real.npz"))
    config = CompareConfig(model="digits", solvers=["euler"], nfes=[4], seeds=range(6), metrics=["prdc"], batch=6,
                           dtype="float32")
    result = run_compare(config)
    [cell] = result.cells
    assert set(cell.values) == {"precision", "recall", "density", "coverage"}
    assert all(0 <= v <= 6 / 3 for v in cell.values.values())  # density <= M/k; the rest fractions
    assert result.higher_is_better == ("precision", "recall", "density", "coverage")
    started: list[int] = []
    with pytest.raises(OptionError, match="k=5 needs more than 5 points per set: the sample set has 3"):
        run_compare(attrs.evolve(config, seeds=range(3)), on_start=started.append)
    assert not started


def test_cli_prdc_on_feature_files(tmp_path):
    import json

    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    rng = np.random.default_rng(7)
    real, fake = rng.standard_normal((30, 6)), rng.standard_normal((25, 6)) + 0.2
    runner = CliRunner()
    np.savez(tmp_path / "real.npz", features=real)
    np.savez(tmp_path / "fake.npz", features=fake)
    out = runner.invoke(build_app(), ["prdc", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "fake.npz"),
                                      "--k", "4", "--chunk", "7", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert {k: got[k] for k in SCORES} == pytest.approx(brute_force(real, fake, 4), abs=1e-12)
    assert (got["k"], got["max_size"], got["resize"], got["real_count"], got["fake_count"]) == (4, 5000, "tf", 30, 25)


def test_prdc_metric_checks_k_against_the_samples_before_inception(tmp_path):
    """No Inception weights can be found here: k is refused before the network is needed."""
    import torch

    import diffsampler as ds

    np.savez(tmp_path / "real.npz", features=np.random.default_rng(6).standard_normal((20, 4)))
    metric = ds.get_metric("prdc", ref=str(tmp_path / "real.npz"), k=5, device="cpu", weights=str(tmp_path / "none.pth"))
    with pytest.raises(OptionError, match=r"^PRDC with k=5 needs more than 5 points per set: the sample set has 5$"):
        metric.compute([torch.zeros(3, 3, 8, 8), torch.zeros(2, 3, 8, 8)])


def test_subset_is_edms_random_subset_of_the_seeds_prdc():
    from diffsampler.plugins.metrics.prdc import subset

    # EDM's ImageFolderDataset(max_size=4, random_seed=0) over 10 images keeps these (sorted)
    assert subset(10, 4).tolist() == [2, 4, 8, 9]
    assert subset(10, 10) is None and subset(10, 0) is None and subset(3, 5000) is None
    keep = subset(12_000, 5000)
    assert len(keep) == 5000 and len(set(keep.tolist())) == 5000 and np.all(np.diff(keep) > 0)


def test_take_rows_picks_across_batches():
    import torch

    from diffsampler.plugins.metrics.prdc import take_rows

    whole = np.arange(23 * 2).reshape(23, 2)
    keep = np.array([0, 4, 5, 6, 13, 22])
    for batches in ([whole[:5], whole[5:14], whole[14:]], [torch.from_numpy(whole[i:i + 4]) for i in range(0, 23, 4)]):
        picked = np.concatenate([np.asarray(b) for b in take_rows(batches, keep)])
        assert np.array_equal(picked, whole[keep])


def test_max_size_scores_the_seeds_subsets(tmp_path, monkeypatch):
    import json

    import torch
    from typer.testing import CliRunner

    import diffsampler as ds
    import diffsampler.plugins.metrics.fid as fid_module
    from diffsampler.cli import build_app
    from diffsampler.plugins.metrics.prdc import subset

    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((40, 5)), rng.standard_normal((30, 5)) + 0.3
    np.savez(tmp_path / "real.npz", features=real)
    np.savez(tmp_path / "fake.npz", features=fake)
    expected = brute_force(real[subset(40, 12)], fake[subset(30, 12)], 3)
    assert expected != brute_force(real, fake, 3)
    out = CliRunner().invoke(build_app(), ["prdc", "--real", str(tmp_path / "real.npz"), "--fake",
                                           str(tmp_path / "fake.npz"), "--k", "3", "--max-size", "12", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert {k: got[k] for k in SCORES} == pytest.approx(expected, abs=1e-12)
    assert (got["real_count"], got["fake_count"]) == (12, 12)
    few = CliRunner().invoke(build_app(), ["prdc", "--real", str(tmp_path / "real.npz"), "--fake",
                                           str(tmp_path / "fake.npz"), "--k", "3", "--max-size", "3"])
    assert str(few.exception) == "PRDC with k=3 needs more than 3 points per set: max_size 3 leaves too few"

    def flat_features(net, batches, *, batch=250, on_batch=None):  # a stand-in embedding: flatten
        for b in batches:
            yield b.reshape(len(b), -1).double().numpy()

    monkeypatch.setattr(fid_module, "image_features", flat_features)
    metric = ds.get_metric("prdc", ref=str(tmp_path / "real.npz"), k=3, max_size=12, device="cpu")
    metric._net = object()
    values = metric.compute([torch.from_numpy(fake[:13]), torch.from_numpy(fake[13:])])
    assert values == pytest.approx(expected, abs=1e-12)


def test_an_image_reference_embeds_only_the_chosen_images(tmp_path, monkeypatch):
    import torch

    import diffsampler as ds
    import diffsampler.plugins.metrics.fid as fid_module

    images = np.random.default_rng(4).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "real.npz", arr_0=images)
    seen = []

    def flat_features(net, batches, *, batch=250, on_batch=None):
        for b in batches:
            seen.append(len(b))
            yield torch.as_tensor(np.asarray(b)).reshape(len(b), -1).double().numpy()

    monkeypatch.setattr(fid_module, "image_features", flat_features)
    metric = ds.get_metric("prdc", ref=str(tmp_path / "real.npz"), k=2, max_size=4, batch=3, device="cpu")
    metric._net = object()
    metric.compute([torch.from_numpy(images[:5].astype(np.float64))])
    assert np.array_equal(metric._real, images[[2, 4, 8, 9]].reshape(4, -1))
    assert sum(seen[:-1]) == 4  # the reference: the 4 chosen images only; then the 4 of 5 samples
