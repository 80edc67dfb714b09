"""CLIP score on a tiny random transformers CLIP model, against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsampler.errors import ModelLoadError, OptionError
from diffsampler.plugins.metrics.clip_score import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPEncoder,
    clip_score,
    load_prompts,
    preprocess,
)

transformers = pytest.importorskip("transformers")


class CharTokenizer:
    """A stand-in tokenizer with transformers' call signature: characters to ids, EOS = 2, pad 0."""

    def __call__(self, texts, *, padding, truncation, max_length, return_tensors):
        ids = torch.zeros((len(texts), max_length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            tokens = [1, *[3 + ord(c) % 40 for c in text][: max_length - 2], 2]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=24, patch_size=8),
        projection_dim=8,
    )
    return transformers.CLIPModel(config).eval()


def _direct(model, images: np.ndarray, prompts: list[str]) -> float:
    """100 * mean cosine, from the model's towers and projections called by hand."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    tokens = CharTokenizer()(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=x).pooler_output).double()
        txt = model.text_projection(model.text_model(**tokens).pooler_output).double()
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return float(100 * cos.mean())


def test_clip_score_equals_direct_computation(tiny_clip):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)  # model size: no resize
    prompts = ["a cat", "two dogs on a sofa", "x", "a red car", "the moon"]
    encoder = CLIPEncoder(tiny_clip, CharTokenizer())
    score, count = clip_score(encoder, [images[:2], images[2:]], prompts)
    assert count == 5
    assert score == pytest.approx(_direct(tiny_clip, images, prompts), rel=1e-5)
    shuffled, _ = clip_score(encoder, [images], prompts[::-1])
    assert shuffled != pytest.approx(score)  # pairs matter


def test_preprocess_resizes_short_side_bicubic_and_centre_crops():
    from PIL import Image

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # H 48, W 64 -> 42 x 32 -> crop 32
    resized = np.asarray(Image.fromarray(img).resize((int(64 * 32 / 48), 32), Image.BICUBIC), np.float32) / 255
    expected = resized[:, 5:37]
    expected = (expected - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    got = preprocess(img[None], 32)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    grey = preprocess(img[None, :, :, :1], 32)
    rgb = grey[0] * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    torch.testing.assert_close(rgb[0], rgb[1])  # grey -> equal RGB channels
    torch.testing.assert_close(rgb[1], rgb[2])


def test_registered_metric_scores_samples_against_the_prompt_file(tiny_clip, tmp_path, monkeypatch):
    import diffsampler as ds
    from diffsampler.images import to_uint8

    prompts = ["a cat", "a dog", "a bird", "a fish"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts), encoding="utf-8")
    monkeypatch.setattr(CLIPEncoder, "load", classmethod(lambda cls, name, device="cpu": cls(tiny_clip, CharTokenizer())))
    metric = ds.get_metric("clip-score", prompts=str(tmp_path / "prompts.txt"), device="cpu", batch=3)
    samples = torch.rand((4, 3, 24, 24), generator=torch.Generator().manual_seed(0)) * 2 - 1
    values = metric.compute([samples[:1], samples[1:]])
    assert values == {"clip": pytest.approx(_direct(tiny_clip, to_uint8(samples), prompts), rel=1e-5)}


def test_prompt_files(tmp_path):
    (tmp_path / "p.csv").write_text('id,text\n1,"a cat, sitting"\n2,a dog\n', encoding="utf-8")
    assert load_prompts(tmp_path / "p.csv") == ["a cat, sitting", "a dog"]
    (tmp_path / "p.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    assert load_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "bad.csv").write_text("caption\nx\n", encoding="utf-8")
    with pytest.raises(OptionError, match="'text' column"):
        load_prompts(tmp_path / "bad.csv")


def test_more_images_than_prompts_is_an_error(tiny_clip):
    encoder = CLIPEncoder(tiny_clip, CharTokenizer())
    with pytest.raises(OptionError, match="more images than prompts"):
        clip_score(encoder, [np.zeros((3, 24, 24, 3), np.uint8)], ["a", "b"])


def test_loading_offline_without_files_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="is not in the local Hugging Face cache and offline mode is set; pass --model DIR"):
        CLIPEncoder.load("laion/CLIP-ViT-g-14-laion2B-s34B-b88K")


# --- which prompt each image is scored against ------------------------------------------------

def test_pair_prompts_uses_labels_then_seeds_then_position():
    from diffsampler.plugins.metrics.clip_score import pair_prompts

    assert pair_prompts(3, 3, labels=[1, 2, 0], seeds=[1, 2, 3]).indices == (1, 2, 0)
    by_seed = pair_prompts(5, 3, seeds=[0, 1, 2, 3, 4])  # more images than prompts: fine, like --labels seed
    assert (by_seed.how, by_seed.indices) == ("seed", (0, 1, 2, 0, 1))
    assert pair_prompts(2, 3).indices == (0, 1)
    assert pair_prompts(3, 3, labels=[1, 2, 0], seeds=[1, 2, 3], mode="index").indices == (0, 1, 2)
    with pytest.raises(OptionError, match=r"^3 images but 2 prompts in p\.txt \(image i is paired"):
        pair_prompts(3, 2, prompts_name="p.txt")
    with pytest.raises(OptionError, match=r"^the images' labels run up to 5 but p\.txt has 3 prompts$"):
        pair_prompts(2, 3, labels=[0, 5], prompts_name="p.txt")
    with pytest.raises(OptionError, match=r"^pairing 'labels': no labels are recorded"):
        pair_prompts(2, 3, seeds=[0, 1], mode="labels")
    with pytest.raises(OptionError, match=r"^p\.txt holds no prompts$"):
        pair_prompts(2, 0, prompts_name="p.txt")


@pytest.fixture
def patched_clip(tiny_clip, monkeypatch):
    monkeypatch.setattr(CLIPEncoder, "load", classmethod(lambda cls, name, device="cpu": cls(tiny_clip, CharTokenizer())))
    return tiny_clip


PROMPTS = ["a zero", "a one", "a two", "a three", "a four", "a five", "a six", "a seven", "an eight", "a nine"]


def _sample(tmp_path, labels: str, fmt: str):
    """``diffsampler sample`` on the digits model: images with their labels recorded as sample records them."""
    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    out = tmp_path / f"{labels}-{fmt}"
    result = CliRunner().invoke(build_app(), ["sample", "--model", "digits", "--labels", labels, "--seeds", "3-7",
                                              "--nfe", "2", "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(("labels", "fmt", "where"), [
    ("seed", "npz", "samples.npz"), ("random", "npz", "samples.npz"), ("random", "png", ""), ("random", "zip", "images.zip"),
])
def test_cli_scores_each_image_against_the_prompt_of_its_label(patched_clip, tmp_path, labels, fmt, where):
    """sample --labels seed|random picks prompt labels[j] for image j: clip-score must pair the same way."""
    import json

    from typer.testing import CliRunner

    from diffsampler.cli import build_app
    from diffsampler.imagesets import iter_images

    run = _sample(tmp_path, labels, fmt)
    images = run / where
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    result = CliRunner().invoke(build_app(), ["clip-score", "--images", str(images), "--prompts",
                                              str(tmp_path / "p.txt"), "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    pixels = np.concatenate(list(iter_images(images)))
    used = [3, 4, 5, 6, 7] if labels == "seed" else [int(np.random.default_rng([s, 1]).integers(10)) for s in range(3, 8)]
    assert values == {"clip": pytest.approx(_direct(patched_clip, _resized(pixels), [PROMPTS[i] for i in used]), rel=1e-5),
                      "count": 5, "pairing": "labels"}


def _resized(images: np.ndarray) -> np.ndarray:
    """8x8 grey digits as the 24x24 RGB images CLIP sees (preprocess's bicubic resize, undone normalisation)."""
    x = preprocess(images, 24) * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def test_cli_without_labels_pairs_by_seed_from_png_names_and_prints_the_pairing(patched_clip, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from diffsampler.cli import build_app

    run = _sample(tmp_path, "seed", "png")
    (run / "dataset.json").unlink()  # no labels recorded: the seeds in the names decide
    (tmp_path / "p.txt").write_text("a\nb\nc\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(build_app(), ["clip-score", "--images", str(run), "--prompts", str(tmp_path / "p.txt")])
    assert result.exit_code == 0, result.output
    assert "pairing: each image with prompt seed mod 3, as sample --labels seed (the PNG names)" in result.stderr
    flat = tmp_path / "flat"  # names that are not seeds: image i with prompt i, so 5 images need 5 prompts
    flat.mkdir()
    for i, png in enumerate(sorted(run.rglob("*.png"))):
        shutil.copy(png, flat / f"img{i}.png")
    result = runner.invoke(build_app(), ["clip-score", "--images", str(flat), "--prompts", str(tmp_path / "p.txt")])
    assert isinstance(result.exception, OptionError)
    assert str(result.exception).startswith(f"5 images but 3 prompts in {tmp_path / 'p.txt'} (image i is paired")


def test_cli_pairing_error_is_one_line_naming_the_image_count(monkeypatch, capsys, tmp_path):
    """Said before CLIP loads: no model 'no-such-clip' exists, so loading it first would fail otherwise."""
    import sys

    from diffsampler.cli import main

    monkeypatch.setenv("DIFFSAMPLER_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    np.savez("imgs.npz", arr_0=np.zeros((8, 24, 24, 3), np.uint8))
    (tmp_path / "p.txt").write_text("a cat\na dog\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["diffsampler", "clip-score", "--images", "imgs.npz", "--prompts", "p.txt",
                                      "--model", "no-such-clip"])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip() == ("error: 8 images but 2 prompts in p.txt (image i is paired with prompt i: "
                           "no labels or seeds are recorded with the images)")


def test_metric_pairs_by_labels_or_seeds_as_compare_passes_them(patched_clip, tmp_path):
    import diffsampler as ds
    from diffsampler.images import to_uint8

    prompts = ["a cat", "a dog", "a bird"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts), encoding="utf-8")
    metric = ds.get_metric("clip-score", prompts=str(tmp_path / "prompts.txt"), device="cpu", batch=2)
    samples = torch.rand((5, 3, 24, 24), generator=torch.Generator().manual_seed(1)) * 2 - 1
    pixels = to_uint8(samples)
    seeds = [4, 5, 6, 7, 8]  # more images than prompts: each seed's prompt is known
    by_seed = metric.compute([samples[:2], samples[2:]], seeds=seeds)
    assert by_seed == {"clip": pytest.approx(_direct(patched_clip, pixels, [prompts[s % 3] for s in seeds]), rel=1e-5)}
    labels = [2, 2, 0, 1, 0]
    by_label = metric.compute([samples], seeds=seeds, labels=labels)
    assert by_label == {"clip": pytest.approx(_direct(patched_clip, pixels, [prompts[i] for i in labels]), rel=1e-5)}


def test_compare_hands_the_metric_its_labels():
    from diffsampler.plugins.metrics.clip_score import CLIPScore

    assert CLIPScore.uses_labels and CLIPScore.higher_is_better


def test_metric_warns_once_when_the_model_used_another_single_prompt(patched_clip, tmp_path):
    from types import SimpleNamespace

    import diffsampler as ds

    (tmp_path / "prompts.txt").write_text("a cat\na dog\n", encoding="utf-8")
    metric = ds.get_metric("clip-score", prompts=str(tmp_path / "prompts.txt"), device="cpu")
    samples = torch.zeros((2, 3, 24, 24))
    fixed = SimpleNamespace(prompts=["a red fox"])  # a text model sampled with prompt="a red fox"
    with pytest.warns(UserWarning, match=r"^the model made every image from the prompt 'a red fox', but clip-score"):
        metric.compute([samples], model=fixed, seeds=[0, 1])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute([samples], model=fixed, seeds=[0, 1])  # once per metric, not per compare cell


@pytest.mark.parametrize(("labels", "expected"), [
    ("random", [int(np.random.default_rng([s, 1]).integers(10)) for s in range(3, 8)]),
    (None, [s % 3 for s in range(3, 8)]),  # no labels: seed mod N (here a 3-prompt file)
])
def test_compare_scores_each_sample_against_the_prompt_it_was_drawn_with(patched_clip, tmp_path, monkeypatch,
                                                                          labels, expected):
    """compare --labels hands the metric the per-seed labels; without them it pairs by seed."""
    from diffsampler.compare import CompareConfig, run_compare

    prompts = PROMPTS if labels else PROMPTS[:3]
    (tmp_path / "p.txt").write_text("\n".join(prompts), encoding="utf-8")
    monkeypatch.setenv("DIFFSAMPLER_CLIP_PROMPTS", str(tmp_path / "p.txt"))
    asked: list[str] = []
    encode = CLIPEncoder.encode_texts
    monkeypatch.setattr(CLIPEncoder, "encode_texts", lambda self, texts: (asked.extend(texts), encode(self, texts))[1])
    config = CompareConfig(model="digits", solvers=["euler"], nfes=[2], seeds=range(3, 8), metrics=["clip-score"],
                           labels=labels, batch=5, dtype="float32")
    [cell] = run_compare(config).cells
    assert set(cell.values) == {"clip"}
    assert asked == [prompts[i] for i in expected]


def test_check_run_refuses_unpairable_runs_before_sampling(tmp_path):
    import diffsampler as ds

    (tmp_path / "prompts.txt").write_text("a red fox\na blue bird\n")
    metric = ds.get_metric("clip-score", prompts=str(tmp_path / "prompts.txt"), device="cpu")
    metric.check_run(seeds=range(5))  # seed mod 2
    metric.check_run(seeds=range(3), labels=[1, 0, 1])
    with pytest.raises(OptionError, match="run up to 4"):
        metric.check_run(seeds=range(3), labels=[0, 4, 1])


def test_clip_loading_names_a_missing_folder_and_an_unreachable_hub(monkeypatch):
    def no_hub(*args, **kwargs):
        raise OSError("cannot find config.json") from ConnectionError("network is unreachable")

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", no_hub)
    monkeypatch.delenv("DIFFSAMPLER_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match=r"^no such CLIP folder: 'nodir'"):  # no hub round trip
        CLIPEncoder.load("nodir")
    with pytest.raises(ModelLoadError, match=r"could not be fetched: the Hugging Face hub is unreachable \(offline\?\); set DIFFSAMPLER_OFFLINE"):
        CLIPEncoder.load("openai/clip-vit-base-patch32")


def test_prompts_are_cleaned_as_open_clips_tokenizer_does():
    from diffsampler.plugins.metrics.clip_score import clean_prompt

    assert clean_prompt("  a  dog\n\tand   a cat ") == "a dog and a cat"
    assert clean_prompt("fish &amp; chips &amp;amp; peas") == "fish & chips & peas"
    pytest.importorskip("ftfy")
    assert clean_prompt("“quoted” caf\u00c3\u00a9") == '"quoted" café'  # ftfy: curly quotes, mojibake
