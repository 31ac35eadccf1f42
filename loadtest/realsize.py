"""Build a real-size Stable Diffusion 2.1 pipeline with random weights, from configs alone.

For load tests on an accelerator without downloading a checkpoint: every component has the
shape of ``stabilityai/stable-diffusion-2-1`` (768x768 default), so a pipeline call costs what a
real one costs, while the images are noise. Config values are SD 2.1's published ones:

* UNet: 4 levels of (320, 640, 1280, 1280) channels, 2 layers per block, cross-attention in the
  first three levels, attention head dims (5, 10, 20, 20), linear projections, upcast attention,
  1024-dim cross-attention, 96x96 latents (768x768 images).
* VAE: (128, 256, 512, 512) channels, 2 layers per block, 4 latent channels.
* Text encoder: the OpenCLIP ViT-H/14 text tower as SD 2.1 uses it: 1024 hidden, 23 layers,
  16 heads, 4096 MLP, GELU, 77 tokens, a 49408-token embedding.
* Scheduler: DDIM with v-prediction (scaled-linear betas 0.00085..0.012).

The tokenizer is the minimal byte-level CLIP BPE of ``modelbuild.tiny`` (the real vocabulary is a
download); token ids stay within the 49408-row embedding, and the sequence is still 77 tokens, so
the text encoder's cost is the real one.

Usage: ``python -m loadtest.realsize DIR [--dtype float16] [--seed 0]`` (about 2.6 GB in
float16; building takes a minute or two on CPU).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SD21_UNET = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "upcast_attention": True,
    "dual_cross_attention": False,
}

SD21_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}

SD21_TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}

SD21_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}


def build_sd21(output_dir: str | Path, dtype: str = "float16", seed: int = 0, device: str = "cpu") -> Path:
    """Create and save an SD 2.1-shaped pipeline with random weights; returns the directory."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from modelbuild.tiny import TOKENIZER_MAX_LENGTH, write_tokenizer

    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tokenizer_dir = output / "_tokenizer_src"
    write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=TOKENIZER_MAX_LENGTH)
    if len(tokenizer) > SD21_TEXT_ENCODER["vocab_size"]:
        raise RuntimeError("tokenizer larger than the text encoder's vocabulary")

    with torch.device(device):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **SD21_TEXT_ENCODER,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD21_VAE)
    scheduler = DDIMScheduler(**SD21_SCHEDULER)
    # Random init can overflow half precision; scale the UNet's output layer down so latents stay finite.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.01)
    pipeline = StableDiffusionPipeline(
        unet=unet.to(torch_dtype),
        vae=vae.to(torch_dtype),
        text_encoder=text_encoder.to(torch_dtype),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(output, safe_serialization=True)
    for leftover in tokenizer_dir.iterdir():
        leftover.unlink()
    tokenizer_dir.rmdir()
    return output


def parameter_counts(model_dir: str | Path) -> dict[str, int]:
    """Parameters per component, read from the saved safetensors headers (no weights loaded)."""
    import json
    import struct

    counts: dict[str, int] = {}
    for path in sorted(Path(model_dir).glob("*/*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        total = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
        counts[path.parent.name] = counts.get(path.parent.name, 0) + total
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.realsize", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="Directory to write the pipeline into.")
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default="float16",
        help="Weights dtype on disk (float16: about 2.6 GB).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for the random weights.")
    parser.add_argument(
        "--device", default="cpu", help="Where to initialise the weights ('cuda' is faster when there is a GPU)."
    )
    args = parser.parse_args(argv)
    path = build_sd21(args.output_dir, dtype=args.dtype, seed=args.seed, device=args.device)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    counts = ", ".join(f"{name} {n / 1e6:.0f}M" for name, n in parameter_counts(path).items())
    print(f"wrote an SD 2.1-shaped pipeline (random weights) to {path} ({size / 1e9:.2f} GB; parameters: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
