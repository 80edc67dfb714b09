"""The shared weights lookup: path, environment variable, cache, checked download."""

from __future__ import annotations

import hashlib

import pytest

import diffsampler as ds
from diffsampler.weights import WeightsFile, locate


def test_lookup_order_and_checked_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSAMPLER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DIFFSAMPLER_OFFLINE", raising=False)
    monkeypatch.delenv("TEST_WEIGHTS", raising=False)
    served = tmp_path / "server" / "w.bin"
    served.parent.mkdir()
    served.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()[:8]
    spec = dict(what="test", file="w.bin", url=served.as_uri(), env_var="TEST_WEIGHTS", subdir="t")

    bad = WeightsFile(**spec, sha256_prefix="00000000")
    with pytest.raises(ds.ModelLoadError, match="checksum mismatch"):
        locate(bad)
    assert not list((tmp_path / "cache" / "t").iterdir())  # nothing half-written is left

    checked = WeightsFile(**spec, sha256_prefix=good)
    path = locate(checked)
    assert path == tmp_path / "cache" / "t" / "w.bin" and path.read_bytes() == b"weights"
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    assert locate(checked) == path  # the cache needs no network
    monkeypatch.setenv("TEST_WEIGHTS", str(served))
    assert locate(checked) == served  # the environment variable beats the cache
    assert locate(checked, path=path) == path  # an explicit path beats both
    with pytest.raises(ds.ModelLoadError, match=r"path='.*nope' does not exist"):
        locate(checked, path=tmp_path / "nope")
    monkeypatch.delenv("TEST_WEIGHTS")
    path.unlink()
    with pytest.raises(ds.ModelLoadError, match=r"DIFFSAMPLER_OFFLINE is set; put w\.bin at"):
        locate(checked)
