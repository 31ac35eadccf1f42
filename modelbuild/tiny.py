"""Build a tiny Stable Diffusion pipeline with random weights, entirely from configs.

No hub access: every component (UNet, VAE, CLIP text encoder, CLIP tokenizer, scheduler) is
constructed locally and saved with ``save_pretrained``, so the result loads with
``StableDiffusionPipeline.from_pretrained(DIR)`` exactly like a real checkpoint. The weights
are random, so images are noise, but every code path of the real pipeline runs.

Usage: ``python -m modelbuild.tiny DIR [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TOKENIZER_MAX_LENGTH = 77


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tokenizer(directory: Path) -> None:
    """Write a minimal CLIP BPE tokenizer: every byte symbol, its end-of-word form, specials."""
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_level_alphabet()
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + list(SPECIAL_TOKENS)
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "model_max_length": TOKENIZER_MAX_LENGTH,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[1],
        "tokenizer_class": "CLIPTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _tiny_tokenizer(output: Path):
    from transformers import CLIPTokenizer

    tokenizer_dir = output / "_tokenizer_src"
    write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=TOKENIZER_MAX_LENGTH)
    for leftover in tokenizer_dir.iterdir():
        leftover.unlink()
    tokenizer_dir.rmdir()
    return tokenizer


def _text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def _tiny_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd(output_dir: str | Path, seed: int = 0, variant: str | None = None) -> Path:
    """Create and save a tiny random Stable Diffusion pipeline; returns the directory.

    ``variant`` (e.g. "fp16") saves the weights as ``*.fp16.safetensors`` in float16, the way
    hub repos publish their half-precision copies.
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer(output)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if variant == "fp16":
        pipeline = pipeline.to(torch.float16)
    pipeline.save_pretrained(output, safe_serialization=True, variant=variant)
    return output


def build_tiny_sdxl(output_dir: str | Path, seed: int = 0) -> Path:
    """Create and save a tiny random Stable Diffusion XL pipeline: two text encoders (the second
    with a projection for the pooled embedding), a UNet with SDXL's text-time conditioning, and
    ``force_zeros_for_empty_prompt`` as SDXL base ships it."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer(output)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer))
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + 32,  # 6 size/crop numbers + pooled text
        transformer_layers_per_block=(1, 1),
        norm_num_groups=32,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_tiny_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(output, safe_serialization=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelbuild.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="Directory to write the pipeline into.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the random weights.")
    parser.add_argument("--xl", action="store_true", help="A Stable Diffusion XL pipeline instead.")
    parser.add_argument("--variant", choices=("fp16",), default=None, help="Save float16 *.fp16.safetensors.")
    args = parser.parse_args(argv)
    if args.xl:
        path = build_tiny_sdxl(args.output_dir, seed=args.seed)
    else:
        path = build_tiny_sd(args.output_dir, seed=args.seed, variant=args.variant)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    kind = "Stable Diffusion XL" if args.xl else "Stable Diffusion"
    print(f"wrote a tiny {kind} pipeline to {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
