"""FID: the Frechet distance against closed forms, streaming moments, the npz format (EDM's and
ours), count warnings, weights resolution, and the metric and CLI end to end (random weights)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler.errors import ModelLoadError, OptionError
from diffsampler.images import to_uint8, write_png
from diffsampler.plugins.metrics.analytic import frechet_to_moments
from diffsampler.plugins.metrics.fid import (
    FeatureMoments,
    Stats,
    count_warnings,
    frechet_distance,
    image_features,
    load_inception,
    load_stats,
    save_stats,
)
from diffsampler.plugins.metrics.inception import FIDInceptionV3, randomize_
from diffsampler.plugins.metrics.weights import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_URL,
    resolve_fid_weights,
)


def _spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def _frechet_symmetric(mu1, s1, mu2, s2) -> float:
    """Independent form: tr (S1^1/2 S2 S1^1/2)^1/2 from symmetric eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + (2 - 1) ** 2)


def test_frechet_distance_of_full_gaussians_matches_the_symmetric_form():
    rng = np.random.default_rng(1)
    for d in (2, 16, 64):
        mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_frechet_symmetric(mu1, s1, mu2, s2), rel=1e-9)
        assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_of_rank_deficient_covariances_is_finite_and_right():
    """Fewer samples than dimensions (FID of a small set): singular covariances."""
    rng = np.random.default_rng(2)
    d = 40
    s1, s2 = _spd(rng, d, rank=10), _spd(rng, d, rank=12)
    mu = np.zeros(d)
    value = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(value)
    assert value == pytest.approx(_frechet_symmetric(mu, s1, mu, s2), rel=1e-4, abs=1e-6)


def test_frechet_distance_of_samples_equals_the_analytic_metric():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    mean, cov = rng.standard_normal(6), _spd(rng, 6)
    moments = FeatureMoments()
    moments.add(x)
    stats = moments.stats()
    # rel 1e-6, not 1e-12: frechet_to_moments sums sqrt of the n - d round-off eigenvalues of its
    # n x n product (each ~1e-15, so ~3e-8 apiece); the symmetric form agrees to 1e-12 (above)
    assert frechet_distance(stats.mu, stats.sigma, mean, cov) == pytest.approx(frechet_to_moments(x, mean, cov), rel=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(OptionError, match="different shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streamed_moments_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((101, 7)).astype(np.float32) + 5
    moments = FeatureMoments()
    for chunk in np.array_split(x, 4):
        moments.add(chunk)
    stats = moments.stats()
    assert stats.count == 101
    np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(OptionError, match="at least 2"):
        FeatureMoments().stats()


def test_stats_round_trip_and_edm_reference_files(tmp_path):
    rng = np.random.default_rng(5)
    mu, sigma = rng.standard_normal(8), _spd(rng, 8)
    path = save_stats(tmp_path / "ref.npz", Stats(mu=mu, sigma=sigma, count=50000))
    back = load_stats(path)
    assert back.count == 50000 and np.array_equal(back.mu, mu) and np.array_equal(back.sigma, sigma)
    assert back.mu.dtype == np.float64
    # EDM's fid.py ref: np.savez(dest, mu=mu, sigma=sigma), no count
    np.savez(tmp_path / "edm.npz", mu=mu.astype(np.float32), sigma=sigma)
    edm = load_stats(tmp_path / "edm.npz")
    assert edm.count is None and edm.mu.dtype == np.float64 and np.allclose(edm.mu, mu, rtol=1e-6)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(OptionError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=np.eye(3))
    with pytest.raises(OptionError, match="do not match"):
        load_stats(tmp_path / "shape.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(OptionError, match=r"not an \.npz"):
        load_stats(tmp_path / "text.npz")
    with pytest.raises(OptionError, match="no such"):
        load_stats(tmp_path / "missing.npz")


def test_count_warnings():
    assert count_warnings(50000, 50000) == [] and count_warnings(50000, None) == []
    assert len(count_warnings(10000, 50000)) == 2
    [only] = count_warnings(60000, 50000)
    assert "60000 samples" in only and "50000 images" in only


@pytest.fixture(autouse=True)
def _no_network_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DIFFSAMPLER_FID_WEIGHTS", raising=False)


def test_weights_resolution_order(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError) as info:
        resolve_fid_weights()
    message = str(info.value)
    assert FID_WEIGHTS_FILE in message and FID_WEIGHTS_URL in message and "DIFFSAMPLER_FID_WEIGHTS" in message
    cached = tmp_path / "cache" / "metrics" / FID_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_fid_weights() == cached
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("DIFFSAMPLER_FID_WEIGHTS", str(env_file))
    assert resolve_fid_weights() == env_file
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(b"x")
    assert resolve_fid_weights(explicit) == explicit
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_fid_weights(tmp_path / "nope.pth")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / FID_WEIGHTS_FILE
    torch.save(randomize_(FIDInceptionV3(), 3).state_dict(), path)
    return path


def test_load_inception_reads_the_state_dict_and_rejects_other_files(weights_file, tmp_path):
    net = load_inception(weights_file, device="cpu")
    expected = randomize_(FIDInceptionV3(), 3)
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, expected.Mixed_7c.branch_pool.conv.weight)
    assert not net.training
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ModelLoadError, match="not the FID Inception weights"):
        load_inception(other)


@pytest.fixture
def recorded_distance(monkeypatch):
    """Record the moments handed to frechet_distance (a 2048-d sqrtm takes ~10 s on 2 cores; the
    distance itself is tested above) and return a cheap stand-in value."""
    import diffsampler.plugins.metrics.fid as fid_module

    calls = []

    def record(mu1, s1, mu2, s2, **_):
        calls.append((mu1, s1, mu2, s2))
        return float(((mu1 - mu2) ** 2).sum())

    monkeypatch.setattr(fid_module, "frechet_distance", record)
    return calls


def _moments(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


def _assert_moments(call, f, ref_f) -> None:
    mu1, s1, mu2, s2 = call
    for got, want in zip((mu1, s1, mu2, s2), (*_moments(f), *_moments(ref_f)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())  # float32 convs, other batch sizes


def test_fid_metric_measures_the_moments_of_directly_computed_features(weights_file, tmp_path, recorded_distance):
    gen = torch.Generator().manual_seed(0)
    ref_images = torch.rand((4, 3, 16, 16), generator=gen) * 2 - 1
    samples = [torch.rand((2, 3, 16, 16), generator=gen) * 1.6 - 0.8 for _ in range(2)]
    net = load_inception(weights_file, device="cpu")
    with torch.no_grad():
        ref_f = net(torch.from_numpy(to_uint8(ref_images))).double().numpy()
        f = net(torch.from_numpy(to_uint8(torch.cat(samples)))).double().numpy()
    save_stats(tmp_path / "ref.npz", Stats(mu=ref_f.mean(0), sigma=np.cov(ref_f, rowvar=False), count=4))
    metric = ds.get_metric("fid", ref=str(tmp_path / "ref.npz"), weights=str(weights_file), device="cpu", batch=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = metric.compute(samples)
        first = len(caught)
        metric.compute(samples)  # the same warning is not repeated (compare calls once per cell)
        again = len(caught)
        metric.compute(samples[:1])
    call = recorded_distance[0]
    _assert_moments(call, f, ref_f)
    assert values == {"fid": pytest.approx(float(((f.mean(0) - ref_f.mean(0)) ** 2).sum()), rel=1e-4)}
    messages = [str(w.message) for w in caught]
    assert first == again == 1 and "FID of 4 samples: published FIDs use 50000" in messages[0]
    assert "FID of 2 samples against reference statistics of 4 images" in messages[1:]


def test_image_features_accept_uint8_and_float_batches_alike(weights_file):
    net = load_inception(weights_file, device="cpu")
    x = torch.rand((2, 3, 8, 8)) * 2 - 1
    a = np.concatenate(list(image_features(net, [x], batch=1)))
    b = np.concatenate(list(image_features(net, [to_uint8(x)])))
    np.testing.assert_array_equal(a, b)


def test_fid_metric_needs_a_reference(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFSAMPLER_FID_REF", raising=False)
    with pytest.raises(OptionError, match="DIFFSAMPLER_FID_REF"):
        ds.get_metric("fid")
    save_stats(tmp_path / "r.npz", Stats(mu=np.zeros(3), sigma=np.eye(3), count=2))
    monkeypatch.setenv("DIFFSAMPLER_FID_REF", str(tmp_path / "r.npz"))
    assert ds.get_metric("fid").ref.count == 2


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "diffsampler", *args], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_cli_ref_and_calc_report_counts_and_match_the_library(weights_file, tmp_path, monkeypatch, recorded_distance):
    import json

    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(images):
        write_png(folder / f"{i:06d}.png", img)
    fake = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "fake.npz", arr_0=fake)
    env = {"DIFFSAMPLER_FID_WEIGHTS": str(weights_file), "DIFFSAMPLER_OFFLINE": "1"}
    ref = _cli("fid", "ref", "--data", str(folder), "--out", str(tmp_path / "ref.npz"), "--device", "cpu",
               "--features", env=env)
    assert ref.returncode == 0, ref.stderr
    assert "(4 images, resize tf)" in ref.stdout and "50000" in ref.stderr
    stats = load_stats(tmp_path / "ref.npz")
    assert stats.count == 4
    monkeypatch.setenv("DIFFSAMPLER_FID_WEIGHTS", str(weights_file))
    calc = CliRunner().invoke(build_app(), [
        "fid", "calc", "--images", str(tmp_path / "fake.npz"), "--ref", str(tmp_path / "ref.npz"),
        "--device", "cpu", "--batch", "2", "--json"])
    assert calc.exit_code == 0, calc.output
    out = json.loads(calc.stdout)
    assert out["count"] == 3 and out["ref_count"] == 4
    assert "3 samples against reference statistics of 4 images" in " ".join(calc.stderr.split())
    net = load_inception(weights_file, device="cpu")
    with torch.no_grad():
        r = net(torch.from_numpy(images)).double().numpy()
        f = net(torch.from_numpy(fake)).double().numpy()
    [call] = recorded_distance
    _assert_moments(call, f, r)
    np.testing.assert_allclose(stats.mu, r.mean(0), rtol=1e-4, atol=1e-5 * np.abs(r).max())  # other threads
    stored = np.load(tmp_path / "ref.npz")["features"]  # --features: for prdc --real
    assert stored.shape == (4, 2048)
    np.testing.assert_allclose(stored, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_cli_error_without_weights_is_one_line(tmp_path):
    np.savez(tmp_path / "imgs.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    proc = _cli("fid", "ref", "--data", str(tmp_path / "imgs.npz"), "--out", str(tmp_path / "o.npz"),
                env={"DIFFSAMPLER_OFFLINE": "1", "DIFFSAMPLER_CACHE": str(tmp_path)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and FID_WEIGHTS_FILE in proc.stderr


def test_statistics_record_their_resize_and_another_resize_is_refused(weights_file, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    images = np.random.default_rng(8).integers(0, 256, (6, 10, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", arr_0=images)
    monkeypatch.setenv("DIFFSAMPLER_FID_WEIGHTS", str(weights_file))
    runner, app = CliRunner(), build_app()
    for resize in ("tf", "pytorch-fid"):
        made = runner.invoke(app, ["fid", "ref", "--data", str(tmp_path / "imgs.npz"), "--out",
                                   str(tmp_path / f"{resize}.npz"), "--device", "cpu", "--resize", resize, "--features"])
        assert made.exit_code == 0, made.output
        assert load_stats(tmp_path / f"{resize}.npz").resize == resize
    tf, pt = load_stats(tmp_path / "tf.npz"), load_stats(tmp_path / "pytorch-fid.npz")
    assert np.abs(tf.mu - pt.mu).max() > 1e-3  # the two preparations give other features
    refused = runner.invoke(app, ["fid", "calc", "--images", str(tmp_path / "imgs.npz"), "--ref",
                                  str(tmp_path / "pytorch-fid.npz"), "--device", "cpu"])
    assert isinstance(refused.exception, OptionError)
    assert str(refused.exception) == (
        f"--ref {str(tmp_path / 'pytorch-fid.npz')!r} was computed with resize=pytorch-fid, this run uses "
        "resize=tf: Inception features of the two do not compare; use resize=pytorch-fid (--resize pytorch-fid, "
        "or the metric option resize=pytorch-fid in compare) or rebuild it")
    same = runner.invoke(app, ["fid", "calc", "--images", str(tmp_path / "imgs.npz"), "--ref",
                               str(tmp_path / "pytorch-fid.npz"), "--device", "cpu", "--resize", "pytorch-fid", "--json"])
    assert same.exit_code == 0 and abs(json.loads(same.stdout)["fid"]) < 1e-2, same.output  # itself (rank 5 in 2048-d)
    with pytest.raises(OptionError, match="was computed with resize=tf, this run uses resize=pytorch-fid"):
        ds.get_metric("fid", ref=str(tmp_path / "tf.npz"), resize="pytorch-fid")
    with pytest.raises(OptionError, match="was computed with resize=pytorch-fid, this run uses resize=tf"):
        ds.get_metric("prdc", ref=str(tmp_path / "pytorch-fid.npz"), k=2)
    bad = runner.invoke(app, ["fid", "calc", "--images", str(tmp_path / "imgs.npz"), "--ref",
                              str(tmp_path / "tf.npz"), "--resize", "area"])
    assert str(bad.exception) == "--resize must be one of tf, pytorch-fid, got 'area'"


def test_calc_num_scores_edms_random_subset(weights_file, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from diffsampler.cli import build_app
    from diffsampler.plugins.metrics.prdc import subset

    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (9, 10, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", arr_0=images)
    monkeypatch.setenv("DIFFSAMPLER_FID_WEIGHTS", str(weights_file))
    runner, app = CliRunner(), build_app()
    base = ["fid", "calc", "--images", str(tmp_path / "imgs.npz"), "--device", "cpu", "--json"]
    keep = subset(9, 5, 3)
    assert keep.tolist() != subset(9, 5, 0).tolist()
    save_stats(tmp_path / "ref.npz", _stats_of(weights_file, images[keep]))
    got = runner.invoke(app, [*base, "--ref", str(tmp_path / "ref.npz"), "--num", "5", "--seed", "3"])
    assert got.exit_code == 0, got.output
    out = json.loads(got.stdout)
    assert out["count"] == 5 and abs(out["fid"]) < 1e-2  # the same 5 images as the reference
    other = json.loads(runner.invoke(app, [*base, "--ref", str(tmp_path / "ref.npz"), "--num", "5"]).stdout)
    assert other["fid"] > out["fid"] + 1e-3
    assert (out["num"], out["seed"], out["resize"], out["ref_resize"]) == (5, 3, "tf", None)
    lone = runner.invoke(app, [*base, "--ref", str(tmp_path / "ref.npz"), "--seed", "3"])
    assert str(lone.exception) == "--seed picks the --num images: give --num as well"
    short = runner.invoke(app, [*base, "--ref", str(tmp_path / "ref.npz"), "--num", "20"])
    assert str(short.exception) == f"found 9 images in {str(tmp_path / 'imgs.npz')!r}, but --num expects at least 20"


def _stats_of(weights_file, images):
    net = load_inception(weights_file, device="cpu")
    with torch.no_grad():
        f = net(torch.from_numpy(images)).double().numpy()
    moments = FeatureMoments()
    moments.add(f)
    return moments.stats()


def test_an_interrupted_reference_continues_where_it_stopped(weights_file, tmp_path, monkeypatch):
    """Ctrl-C during `fid ref` keeps the moments (and features) of the images measured so far in
    OUT.partial; the same command continues after them and ends with the statistics (and features)
    of an uninterrupted run; other settings start afresh."""
    from typer.testing import CliRunner

    import diffsampler.plugins.metrics.fid as fid_module
    from diffsampler.cli import build_app

    images = np.random.default_rng(7).integers(0, 256, (7, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", arr_0=images)
    monkeypatch.setenv("DIFFSAMPLER_FID_WEIGHTS", str(weights_file))
    args = ["fid", "ref", "--data", str(tmp_path / "imgs.npz"), "--device", "cpu", "--batch", "2", "--features"]
    runner, app = CliRunner(), build_app()
    whole = runner.invoke(app, [*args, "--out", str(tmp_path / "whole.npz")])
    assert whole.exit_code == 0, whole.output
    real_add, calls = fid_module.FeatureMoments.add, []

    def add_then_stop(self, features):
        calls.append(len(features))
        if len(calls) == 3:  # the third chunk: interrupted before its moments are added
            raise KeyboardInterrupt
        real_add(self, features)

    monkeypatch.setattr(fid_module.FeatureMoments, "add", add_then_stop)
    out = tmp_path / "ref.npz"
    stopped = runner.invoke(app, [*args, "--out", str(out)])
    assert stopped.exit_code == 130 and not out.exists()
    assert "interrupted after 4 of 7 images" in " ".join(stopped.stderr.split())
    with np.load(tmp_path / "ref.npz.partial") as state:
        assert int(state["count"]) == 4 and state["features"].shape == (4, 2048)
    monkeypatch.setattr(fid_module.FeatureMoments, "add", real_add)
    resumed = runner.invoke(app, [*args, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "the last 3 of 7" in " ".join(resumed.stderr.split()) and not (tmp_path / "ref.npz.partial").exists()
    with np.load(out) as got, np.load(tmp_path / "whole.npz") as expected:
        assert int(got["count"]) == 7
        for key in ("mu", "sigma", "features"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-9)
    # a saved state of another image set is not used
    monkeypatch.setattr(fid_module.FeatureMoments, "add", add_then_stop)
    calls.clear()
    runner.invoke(app, [*args, "--out", str(tmp_path / "other.npz")])
    monkeypatch.setattr(fid_module.FeatureMoments, "add", real_add)
    np.savez(tmp_path / "imgs.npz", arr_0=images[::-1])  # the same path and count, another set
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "other.npz")])
    assert again.exit_code == 0 and "other settings: starting afresh" in " ".join(again.stderr.split())
    with np.load(tmp_path / "other.npz") as got, np.load(tmp_path / "whole.npz") as expected:
        np.testing.assert_allclose(got["features"], expected["features"][::-1], rtol=1e-6, atol=1e-9)
    # an unreadable state (a crash while writing it, another file) is replaced, not a crash
    for junk in (b"", b"PK\x03\x04garbage"):
        (tmp_path / "third.npz.partial").write_bytes(junk)
        third = runner.invoke(app, [*args, "--out", str(tmp_path / "third.npz")])
        assert third.exit_code == 0 and "not a readable interrupted reference" in " ".join(third.stderr.split())
        (tmp_path / "third.npz").unlink()
