"""The embedded ``digits`` model samples recognisable digits on CPU in seconds.

"Recognisable" is measured: a logistic-regression classifier trained on scikit-learn's digits
classifies class-conditional samples as their class, is confident on unconditional samples,
and the samples lie as close to the data set as real digits lie to each other (far closer
than noise does).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffsampler as ds

sklearn = pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def data_and_classifier() -> tuple[np.ndarray, np.ndarray, object]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x = digits.data / 16.0
    return x, digits.target, LogisticRegression(max_iter=2000).fit(x, digits.target)


def _pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) / 2).reshape(len(x), -1).double().numpy()  # back to [0, 1]


def _nn_distance(samples: np.ndarray, data: np.ndarray) -> float:
    d = ((samples[:, None, :] - data[None]) ** 2).sum(-1)
    return float(np.sqrt(d.min(1)).mean())


def test_digits_model_loads() -> None:
    model = ds.get_model("digits")
    assert isinstance(model, ds.Denoiser) and isinstance(model, ds.HasBottleneck)
    assert model.shape == (1, 8, 8) and model.label_dim == 10
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0)
    assert model.bottleneck_channels == 32
    x = torch.randn(2, 1, 8, 8)
    denoised, feats = model.denoise_with_features(x, torch.tensor([1.0, 2.0]))
    assert feats.shape == (2, 32, 8, 8) and torch.equal(denoised, model(x, torch.tensor([1.0, 2.0])))


def test_digits_samples_are_digits(data_and_classifier) -> None:  # type: ignore[no-untyped-def]
    data, _, clf = data_and_classifier
    n = 60
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10).repeat(n // 10)

    cond = ds.sample(noise, model="digits", solver="euler", nfe=16, cond=labels)
    assert cond.nfe == 16 and torch.isfinite(cond.x).all()
    accuracy = float((clf.predict(_pixels(cond.x)) == labels.numpy()).mean())
    assert accuracy >= 0.9, accuracy

    free = ds.sample(noise, model="digits", solver="euler", nfe=16)
    confidence = float(clf.predict_proba(_pixels(free.x)).max(1).mean())
    assert confidence >= 0.7, confidence  # real digits: 0.92; noise: about 0.5

    noise_distance = _nn_distance(_pixels(torch.randn(n, 1, 8, 8) * 0.5), data)
    sample_distance = _nn_distance(_pixels(free.x), data)
    assert sample_distance < 0.5 * noise_distance, (sample_distance, noise_distance)
    assert sample_distance > 0.2  # not copies of training images (real digits' own: about 1.0)


def test_digits_class_label_option() -> None:
    model = ds.get_model("digits", class_label=7)
    x, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 1.5)
    assert torch.equal(model(x, sigma), ds.get_model("digits")(x, sigma, 7))
    with pytest.raises(ds.OptionError):
        ds.get_model("digits", class_label=10)
