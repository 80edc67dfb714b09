"""No host-device synchronisation inside the sampling loop (what a CUDA-graph capture needs and
what keeps a GPU busy): every sampling run here goes through the *meta* device, whose tensors have
shapes but no values, so any read of a tensor value on the host (``.item()``, ``bool(t)``,
``float(t)``, ``.tolist()``, a copy to the CPU) raises. Sigmas and coefficients are host floats,
as they must be. Value checks that a capture skips (class-label ranges) are skipped here the same
way, by ``capturing()`` answering True."""

from __future__ import annotations

import math

import pytest
import torch

import diffsampler as ds

ODE_SOLVERS = ["euler", "heun", "dpm", "ipndm", "ipndm_v", "deis", "dpmpp", "unipc"]  # the built-in ones


@pytest.fixture(scope="module")
def meta_digits():
    return ds.get_model("digits").to("meta")


def _sigmas(model, steps: int = 6):
    return ds.get_schedule("polynomial", rho=7.0).sigmas(steps, model.sigma_min, model.sigma_max)


def test_meta_tensors_refuse_host_reads():
    t = torch.ones(2, device="meta")
    for read in (lambda: bool(t.sum() > 0), lambda: float(t.sum()), lambda: t.tolist(), lambda: t.cpu()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("afs", [False, True])
@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_every_solver_samples_without_reading_device_values(meta_digits, name: str, afs: bool):
    x = torch.empty(3, *meta_digits.shape, device="meta")
    out = ds.get_solver(name).sample(meta_digits, x, _sigmas(meta_digits), check_finite=False, afs=afs)
    assert out.x.device.type == "meta" and out.x.shape == x.shape


@pytest.mark.parametrize("name, options", [
    ("dpmpp", {"thresholding": "dynamic"}), ("dpmpp", {"max_order": 2, "predict_x0": False}),
    ("unipc", {"variant": "bh2"}), ("deis", {"max_order": 3}), ("ipndm", {"max_order": 2}),
])
def test_solver_options_sample_without_reading_device_values(meta_digits, name: str, options: dict):
    x = torch.empty(3, *meta_digits.shape, device="meta")
    solver = ds.get_solver(name, **options)
    assert solver.sample(meta_digits, x, _sigmas(meta_digits), check_finite=False).x.device.type == "meta"


def test_the_finiteness_check_is_the_one_host_read_and_it_can_be_switched_off(meta_digits):
    x = torch.empty(3, *meta_digits.shape, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        ds.get_solver("euler").sample(meta_digits, x, _sigmas(meta_digits))


def test_class_labels_on_the_device(meta_digits, monkeypatch):
    import diffsampler.plugins.edm.denoiser as edm_denoiser

    monkeypatch.setattr(edm_denoiser, "capturing", lambda: True)
    x = torch.empty(3, *meta_digits.shape, device="meta")
    labels = torch.empty(3, dtype=torch.long, device="meta")
    out = ds.get_solver("ipndm").sample(meta_digits, x, _sigmas(meta_digits), cond=labels, check_finite=False)
    assert out.x.device.type == "meta"


@pytest.mark.parametrize("student", ["amed", "ipndm", "dpmpp"])
def test_amed_solvers_sample_without_reading_device_values(meta_digits, tmp_path, student: str):
    from diffsampler.plugins.amed.predictor import AMEDPredictor, model_identity

    digits = ds.get_model("digits")
    steps = 4
    settings = dict(solver=student, num_steps=steps, afs=False, scale_dir=0.0, scale_time=0.0, max_order=3,
                    predict_x0=True, lower_order_final=True, schedule="polynomial", schedule_options={"rho": 7.0},
                    sigmas=_sigmas(digits, steps).tolist())
    predictor = AMEDPredictor(settings, model_identity(digits, name="digits"), hidden_dim=8)
    with torch.no_grad():
        predictor.fc_r.bias.fill_(math.log(0.3 / 0.7))
    predictor.save(tmp_path / "p.safetensors")
    solver = ds.get_solver("amed" if student == "amed" else f"amed-{student}", predictor=str(tmp_path / "p.safetensors"))
    x = torch.empty(3, *meta_digits.shape, device="meta")
    out = solver.sample(meta_digits, x, _sigmas(digits, steps), check_finite=False)
    assert out.x.device.type == "meta"


def test_adm_with_classifier_guidance_samples_without_reading_device_values(tmp_path, monkeypatch):
    import json

    import diffsampler.plugins.guided.denoiser as guided_denoiser
    from diffsampler.plugins.guided.unet import ADMClassifier, ADMUNet

    unet_cfg = dict(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                    attention_resolutions=[2], channel_mult=[1, 2], num_classes=4, num_head_channels=8,
                    use_scale_shift_norm=True, resblock_updown=True)
    cls_cfg = dict(image_size=8, in_channels=3, model_channels=32, out_channels=4, num_res_blocks=1,
                   attention_resolutions=[2], channel_mult=[1, 2], num_head_channels=8,
                   use_scale_shift_norm=True, resblock_updown=True)
    for module, cfg, name, fmt in ((ADMUNet(**unet_cfg), unet_cfg, "adm.pt", "diffsampler.adm"),
                                   (ADMClassifier(**cls_cfg), cls_cfg, "cls.pt", "diffsampler.adm-classifier")):
        torch.save(module.state_dict(), tmp_path / name)
        (tmp_path / name).with_suffix(".json").write_text(json.dumps({"format": fmt, "network": cfg}))
    model = ds.get_model("adm", path=str(tmp_path / "adm.pt"), classifier_path=str(tmp_path / "cls.pt"),
                         guidance_rate=1.0, channels_last=True).to("meta")
    monkeypatch.setattr(guided_denoiser, "capturing", lambda: True)
    x = torch.empty(2, *model.shape, device="meta")
    labels = torch.empty(2, dtype=torch.long, device="meta")
    out = ds.get_solver("dpmpp").sample(model, x, _sigmas(model), cond=labels, check_finite=False)
    assert out.x.device.type == "meta"


def test_label_checks_run_once_per_batch_not_per_step(monkeypatch):
    """EDM's and ADM's class-label range check reads the labels on the host; a solver passes the
    same tensor at every step, so it runs once per batch (again after an in-place change)."""
    from diffsampler.graphs import PerBatch

    model = ds.get_model("digits")
    calls = []
    real = type(model).class_labels

    def counted(self, cond, batch, device):
        calls.append(1)
        return real(self, cond, batch, device)

    monkeypatch.setattr(type(model), "class_labels", counted)
    labels = torch.tensor([1, 2, 3])
    x = ds.seed_noise(range(3), model.shape) * model.sigma_max
    first = ds.get_solver("heun").sample(model, x, _sigmas(model), cond=labels).x  # 10 evaluations
    assert len(calls) == 1
    labels.copy_(torch.tensor([4, 5, 6]))
    second = ds.get_solver("heun").sample(model, x, _sigmas(model), cond=labels).x
    assert len(calls) == 2 and not torch.equal(first, second)
    fresh = ds.get_solver("heun").sample(ds.get_model("digits"), x, _sigmas(model), cond=torch.tensor([4, 5, 6])).x
    torch.testing.assert_close(second, fresh)
    cache, made = PerBatch(), []

    def make(value):
        made.append(value)
        return value

    assert cache.value(labels, lambda: make("a"), 3) == "a" and cache.value(labels, lambda: make("b"), 3) == "a"
    assert cache.value(labels, lambda: make("c"), 4) == "c"  # another key
    labels.add_(1)
    assert cache.value(labels, lambda: make("d"), 4) == "d"  # changed in place
    with torch.inference_mode():
        frozen = torch.tensor([1])
    assert cache.value(frozen, lambda: make("e")) == "e" and cache.value(frozen, lambda: make("f")) == "f"  # not kept
    assert made == list("acdef")


def test_the_list_above_is_every_built_in_training_free_solver():
    own = [c for c in ds.get_registry().components("solver") if c.distribution == "diffsampler"]
    learned = {"amed", "sfd"}  # plugins whose solvers need a trained file (tested above / in their suites)
    assert sorted(c.name for c in own if c.plugin not in learned) == sorted(ODE_SOLVERS)
