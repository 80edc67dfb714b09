"""EDM checkpoints: EDM's pickle format loaded safely, plain state dicts loaded strictly.

The tests write tiny random-weight networks in the exact pickle format of NVlabs/edm
(``torch_utils.persistence`` records around each module's ``__dict__``), using a stand-in
``torch_utils.persistence`` module, and load them through ``diffsampler.get_model(path)``.
The embedded ``module_src`` of every record is code that would create a marker file if it were
executed: the loader must never run it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import diffsampler as ds
from diffsampler import tensorfile
from diffsampler.plugins.edm.checkpoint import config_of, load_network, save_network
from diffsampler.plugins.edm.dhariwalunet import DhariwalUNet
from diffsampler.plugins.edm.precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond

# -- writing EDM's pickle format ---------------------------------------------------------------


@contextlib.contextmanager
def fake_persistence() -> Iterator[types.ModuleType]:
    """A stand-in ``torch_utils.persistence`` so that pickle can name its reconstruct function."""
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # what EDM's loader would call
        raise AssertionError("the safe loader must never call the real reconstruct function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    pkg.persistence = mod  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})
    try:
        yield mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture
def persistence() -> Iterator[types.ModuleType]:
    with fake_persistence() as mod:
        yield mod


class _Record:
    """Pickles as EDM's ``persistent_class.__reduce__`` does."""

    def __init__(self, persistence: types.ModuleType, class_name: str, state: dict[str, Any], src: str):
        self.meta = dict(type="class", version=6, module_src=src, class_name=class_name, state=state)
        self.fn = persistence._reconstruct_persistent_obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, (self.meta,))


def edm_records(module: torch.nn.Module, persistence: types.ModuleType, src: str) -> Any:
    """``module`` as the object tree EDM pickles: records whose state is the module's __dict__."""
    state = dict(module.__dict__)
    state["_modules"] = collections.OrderedDict(
        (k, None if v is None else edm_records(v, persistence, src)) for k, v in module._modules.items()
    )
    if isinstance(module, torch.nn.ModuleDict):  # not persistent: pickled as a plain ModuleDict
        container = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
        container.__dict__.update(state)
        return container
    state.pop("bottleneck_key", None)
    kwargs = dict(module._init_kwargs)  # type: ignore[attr-defined]
    if type(module).__name__ == "UNetBlock":  # EDM records numpy scalars here
        kwargs["skip_scale"] = np.sqrt(np.float64(kwargs.get("skip_scale", 1.0)))
    state["_init_args"], state["_init_kwargs"] = (), kwargs
    return _Record(persistence, type(module).__name__, state, src)


def write_edm_pickle(path: Path, net: torch.nn.Module, persistence: types.ModuleType, marker: Path) -> None:
    src = f"open({os.fspath(marker)!r}, 'w').write('the module source was executed')\n"
    data = dict(
        ema=edm_records(net, persistence, src),
        loss_fn=_Record(persistence, "EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}, src),
        augment_pipe=None,
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip", use_labels=False),
    )
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (EDM zero-initialises output layers, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net.eval()


TINY_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1)
NETWORKS = {
    "ddpmpp-vp": lambda: VPPrecond(
        img_resolution=16, img_channels=3, model_type="SongUNet", embedding_type="positional",
        encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
        augment_dim=9, use_fp16=False, **TINY_SONG,
    ),
    "ncsnpp-ve": lambda: VEPrecond(
        img_resolution=16, img_channels=3, model_type="SongUNet", embedding_type="fourier",
        encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
        resample_filter=[1, 3, 3, 1], augment_dim=9, **TINY_SONG,
    ),
    "adm-edm-cond": lambda: EDMPrecond(
        img_resolution=16, img_channels=3, label_dim=5, model_type="DhariwalUNet", model_channels=64,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1, use_fp16=True,
    ),
    "adm-iddpm": lambda: iDDPMPrecond(
        img_resolution=8, img_channels=3, model_type="DhariwalUNet", model_channels=64,
        channel_mult=[1], num_blocks=1, attn_resolutions=[], M=50,
    ),
}


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_edm_pickle_loads_identically(kind: str, tmp_path: Path, persistence: types.ModuleType) -> None:
    torch.manual_seed(0)
    net = randomise(NETWORKS[kind]())
    marker = tmp_path / "executed.txt"
    path = tmp_path / f"network-snapshot-{kind}.pkl"
    write_edm_pickle(path, net, persistence, marker)

    model = ds.get_model(path)
    assert not marker.exists(), "module_src from the pickle was executed"
    assert model.shape == (3, net.img_resolution, net.img_resolution)
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0)
    assert type(model.net) is type(net) and model.net is not net

    x = torch.randn(3, *model.shape, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.01, 1.0, 40.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 4]), 5).float() if net.label_dim else None
    with torch.no_grad():
        expected = net(x, sigma, labels)
    got = model(x, sigma, cond=[0, 3, 4] if net.label_dim else None)
    assert torch.equal(got, expected)
    state, loaded = net.state_dict(), model.net.state_dict()
    assert list(state) == list(loaded)
    assert all(torch.equal(state[k], loaded[k]) for k in state)


def test_pickle_entry_and_description(tmp_path: Path, persistence: types.ModuleType) -> None:
    net = randomise(NETWORKS["ddpmpp-vp"]())
    path = tmp_path / "snap.pkl"
    write_edm_pickle(path, net, persistence, tmp_path / "m")
    model = ds.get_model(path)
    assert model.info["precond"] == "VPPrecond" and model.info["architecture"] == "SongUNet"
    assert model.info["init_kwargs"]["channel_mult"] == [1, 2]
    with pytest.raises(ds.ModelLoadError, match="no network entry 'net'"):
        ds.get_model("edm", path=str(path), key="net")
    with pytest.raises(ds.ModelLoadError, match="not an EDM network record"):
        ds.get_model("edm", path=str(path), key="dataset_kwargs")


# -- malicious pickles ------------------------------------------------------------------------


class _Evil:
    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _payloads(marker: Path) -> dict[str, Any]:
    import subprocess

    touch = f"touch {marker}"
    return {
        "system": _Evil(os.system, touch),
        "eval": _Evil(eval, f"open({os.fspath(marker)!r}, 'w')"),
        "exec": _Evil(exec, f"open({os.fspath(marker)!r}, 'w')"),
        "subprocess": _Evil(subprocess.call, ["touch", os.fspath(marker)]),
        "getattr": _Evil(getattr, "text", "upper"),
    }


@pytest.mark.parametrize("name", ["system", "eval", "exec", "subprocess", "getattr"])
def test_malicious_pickle_is_refused(name: str, tmp_path: Path, persistence: types.ModuleType) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(ds.ModelLoadError, match="not on the allow-list") as err:
        ds.get_model(path)
    module, qualname = payload.func.__module__, payload.func.__name__
    assert f"'{module}.{qualname}'" in str(err.value)
    assert not marker.exists()


def test_payload_hidden_inside_a_network_is_refused(tmp_path: Path, persistence: types.ModuleType) -> None:
    marker = tmp_path / "pwned"
    net = randomise(NETWORKS["ddpmpp-vp"]())
    records = edm_records(net, persistence, "")
    records.meta["state"]["sigma_min"] = _Evil(os.system, f"touch {marker}")  # deep in the tree
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(dict(ema=records), protocol=4))
    with pytest.raises(ds.ModelLoadError, match=r"'posix\.system'|'nt\.system'"):
        ds.get_model(path)
    assert not marker.exists()


def test_payload_inside_a_storage_is_refused(tmp_path: Path, persistence: types.ModuleType) -> None:
    """``torch.storage._load_from_bytes`` bytes are read weights-only, never unpickled freely."""
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2)

    class _Storage:
        def __reduce__(self) -> tuple[Any, ...]:
            return (torch.storage._load_from_bytes, (inner,))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(dict(ema=_Storage()), protocol=4))
    with pytest.raises(ds.ModelLoadError, match="storage"):
        ds.get_model(path)
    assert not marker.exists()


def test_raw_pickle_opcodes_cannot_reach_builtins(tmp_path: Path) -> None:
    # protocol 4 STACK_GLOBAL of builtins.getattr, and a dotted name off an allowed global
    for module, name in (("builtins", "getattr"), ("collections", "OrderedDict.__init__")):
        raw = (
            b"\x80\x04"
            + b"\x8c" + bytes([len(module)]) + module.encode()
            + b"\x8c" + bytes([len(name)]) + name.encode()
            + b"\x93."
        )
        path = tmp_path / "raw.pkl"
        path.write_bytes(raw)
        with pytest.raises(ds.ModelLoadError, match=f"'{module}.{name}'"):
            ds.get_model(path)


def test_broken_records_are_reported(tmp_path: Path, persistence: types.ModuleType) -> None:
    net = randomise(NETWORKS["ddpmpp-vp"]())
    # a parameter missing from the recorded state
    records = edm_records(net, persistence, "")
    enc = records.meta["state"]["_modules"]["model"].meta["state"]["_modules"]["enc"]
    conv = enc.__dict__["_modules"]["16x16_conv"].meta["state"]
    conv["_parameters"] = collections.OrderedDict(weight=conv["_parameters"]["weight"])
    path = tmp_path / "missing.pkl"
    path.write_bytes(pickle.dumps(dict(ema=records), protocol=4))
    with pytest.raises(ds.ModelLoadError, match=r"missing keys: model\.enc\.16x16_conv\.bias"):
        ds.get_model(path)
    # an unknown class name
    records = edm_records(net, persistence, "")
    records.meta["class_name"] = "MysteryPrecond"
    path.write_bytes(pickle.dumps(dict(ema=records), protocol=4))
    with pytest.raises(ds.ModelLoadError, match="unknown network class 'MysteryPrecond'"):
        ds.get_model(path)
    # an init kwarg our classes do not know
    records = edm_records(net, persistence, "")
    records.meta["state"]["_init_kwargs"]["warp_drive"] = True
    path.write_bytes(pickle.dumps(dict(ema=records), protocol=4))
    with pytest.raises(ds.ModelLoadError, match="warp_drive"):
        ds.get_model(path)
    # a truncated file
    path.write_bytes(pickle.dumps(dict(ema=edm_records(net, persistence, "")), protocol=4)[:500])
    with pytest.raises(ds.ModelLoadError, match="not a valid EDM pickle"):
        ds.get_model(path)


# -- state dicts + JSON config -----------------------------------------------------------------


def test_safetensors_and_json_round_trip(tmp_path: Path) -> None:
    net = randomise(NETWORKS["ncsnpp-ve"]())
    json_path = save_network(net, tmp_path / "tiny")
    config = json.loads(json_path.read_text())
    assert config["precond"] == "VEPrecond" and config["architecture"] == "SongUNet"
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 5.0])
    expected = net(x, sigma)
    for path in (json_path, tmp_path / "tiny.safetensors"):
        model = ds.get_model(path)
        assert torch.equal(model(x, sigma), expected)
    # .pt state dict with the same JSON beside it (read weights-only)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.safetensors").unlink()
    cfg = dict(config, weights="tiny.pt")
    (tmp_path / "tiny.json").write_text(json.dumps(cfg))
    assert torch.equal(ds.get_model(tmp_path / "tiny.pt")(x, sigma), expected)
    assert torch.equal(ds.get_model(tmp_path / "tiny.json")(x, sigma), expected)


def test_state_dict_loading_is_strict(tmp_path: Path) -> None:
    net = randomise(NETWORKS["adm-edm-cond"]())
    config = config_of(net, weights="w.safetensors")
    (tmp_path / "w.json").write_text(json.dumps(config))
    state = net.state_dict()

    missing = {k: v for k, v in state.items() if k != "model.out_conv.bias"}
    tensorfile.save_file(missing, tmp_path / "w.safetensors")
    with pytest.raises(ds.ModelLoadError, match=r"missing keys: model\.out_conv\.bias"):
        load_network(tmp_path / "w.safetensors")

    extra = dict(state, **{"model.surprise": torch.zeros(2)})
    tensorfile.save_file(extra, tmp_path / "w.safetensors")
    with pytest.raises(ds.ModelLoadError, match=r"unexpected keys: model\.surprise"):
        load_network(tmp_path / "w.safetensors")

    bad = dict(state, **{"model.out_conv.bias": torch.zeros(7)})
    tensorfile.save_file(bad, tmp_path / "w.safetensors")
    with pytest.raises(ds.ModelLoadError, match=r"shape mismatches: model\.out_conv\.bias \(file \(7,\)"):
        load_network(tmp_path / "w.safetensors")


def test_pt_files_are_read_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    net = randomise(NETWORKS["adm-iddpm"]())
    (tmp_path / "w.json").write_text(json.dumps(config_of(net, weights="w.pt")))
    buffer = io.BytesIO()
    torch.save({"state_dict": _Evil(os.system, f"touch {marker}")}, buffer)
    (tmp_path / "w.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ds.ModelLoadError, match="weights-only"):
        ds.get_model(tmp_path / "w.pt")
    assert not marker.exists()


def test_config_errors_are_clear(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    tensorfile.save_file({"a": torch.zeros(1)}, weights)
    with pytest.raises(ds.ModelLoadError, match="no installed model plugin"):
        ds.get_model(weights)  # no JSON beside it: the edm plugin does not claim it
    with pytest.raises(ds.ModelLoadError, match="has no JSON config"):
        ds.get_model("edm", path=str(weights))
    (tmp_path / "w.json").write_text(json.dumps({"format": "diffsampler.edm", "precond": "EDMPrecond",
                                                 "architecture": "UNet3000", "init_kwargs": {}}))
    with pytest.raises(ds.ModelLoadError, match="unknown architecture"):
        ds.get_model(weights)
    with pytest.raises(ds.ModelLoadError, match="no such model file"):
        ds.get_model("edm", path=str(tmp_path / "absent.pkl"))


def test_bare_network_without_precond_is_refused(tmp_path: Path, persistence: types.ModuleType) -> None:
    unet = DhariwalUNet(img_resolution=8, in_channels=1, out_channels=1, model_channels=64,
                        channel_mult=[1], num_blocks=1, attn_resolutions=[])
    path = tmp_path / "bare.pkl"
    path.write_bytes(pickle.dumps(dict(ema=edm_records(unet, persistence, "")), protocol=4))
    with pytest.raises(ds.ModelLoadError, match="bare DhariwalUNet without a preconditioner"):
        ds.get_model(path)
