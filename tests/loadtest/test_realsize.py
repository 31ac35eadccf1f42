"""The SD 2.1-shaped builder: published parameter counts, and the build/save/load path (shrunk)."""

from __future__ import annotations

import pytest

from loadtest import realsize


def test_components_have_sd21_published_parameter_counts():
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):  # shapes only: no memory, no random init
        unet = UNet2DConditionModel(**realsize.SD21_UNET)
        vae = AutoencoderKL(**realsize.SD21_VAE)
        text = CLIPTextModel(CLIPTextConfig(**realsize.SD21_TEXT_ENCODER))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    # stabilityai/stable-diffusion-2-1: unet, vae, text_encoder.
    assert counts == [865_910_724, 83_653_863, 340_387_840]
    assert realsize.SD21_UNET["sample_size"] * 8 == 768


def test_build_saves_a_loadable_pipeline(tmp_path, monkeypatch):
    """The real builder with the sizes shrunk, so it runs in seconds on CPU."""
    torch = pytest.importorskip("torch")
    from diffusers import StableDiffusionPipeline

    monkeypatch.setitem(realsize.SD21_UNET, "block_out_channels", (32, 32, 64, 64))
    monkeypatch.setitem(realsize.SD21_UNET, "attention_head_dim", (2, 2, 4, 4))
    monkeypatch.setitem(realsize.SD21_UNET, "cross_attention_dim", 32)
    monkeypatch.setitem(realsize.SD21_UNET, "layers_per_block", 1)
    monkeypatch.setitem(realsize.SD21_UNET, "sample_size", 8)
    monkeypatch.setitem(realsize.SD21_VAE, "block_out_channels", (32, 32, 32, 32))
    monkeypatch.setitem(realsize.SD21_VAE, "layers_per_block", 1)
    for key, value in (
        ("hidden_size", 32),
        ("intermediate_size", 37),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 4),
        ("projection_dim", 32),
        ("vocab_size", 1000),
    ):
        monkeypatch.setitem(realsize.SD21_TEXT_ENCODER, key, value)

    path = realsize.build_sd21(tmp_path / "sd", dtype="float32")
    counts = realsize.parameter_counts(path)
    assert set(counts) == {"unet", "vae", "text_encoder"} and all(n > 0 for n in counts.values())
    assert not (path / "_tokenizer_src").exists()

    pipeline = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    image = pipeline(
        "a cat", num_inference_steps=1, height=64, width=64, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
