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
    with pytest.raises(ModelLoadError, match="could not load the CLIP model"):
        CLIPEncoder.load("laion/CLIP-ViT-g-14-laion2B-s34B-b88K")
