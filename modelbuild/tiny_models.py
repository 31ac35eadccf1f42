"""Tiny random-weight transformers models for every non-diffusion task, built from configs.

No hub access: configs, tokenizers and image processors are written locally, so each result
loads with ``from_pretrained(DIR)`` exactly like a downloaded checkpoint (and the server infers
its task from ``config.json`` ``architectures``). Weights are random, so outputs are meaningless,
but every code path of the real pipelines runs. Each model is well under a few MB.

  text-classification   BERT classifier, tiny WordPiece vocabulary, labels NEGATIVE/POSITIVE
  image-classification  ViT (32x32, patch 8), PIL image processor, labels cat/dog/bird
  object-detection      YOLOS (ViT backbone, no timm/torchvision), labels cat/dog/person
  text-generation       Llama-class causal LM, byte-level BPE tokenizer with a chat template
                        (``build_gpt2_lm``: a GPT-2 with learned positions and a 64-token context)

Usage: ``python -m modelbuild.tiny_models DIR --task TASK [--seed 0]``

``--format gguf`` (text-generation only) writes the same Llama as one GGUF file for the llama.cpp
backend instead (``DIR/model-<type>.gguf``; ``--gguf_type`` f16 (default), f32, or a 4-bit/8-bit
type llama.cpp quantizes locally: q4_0, q4_k_m, q8_0). See ``modelbuild.gguf_convert``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEXT_LABELS = ("NEGATIVE", "POSITIVE")
IMAGE_LABELS = ("cat", "dog", "bird")
DETECTION_LABELS = ("cat", "dog", "person")

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDPIECE_WORDS = ("the", "a", "is", "good", "bad", "movie", "great", "awful", "hello", "world", "not", "very")

LLM_BOS, LLM_EOS = "<s>", "</s>"
LLM_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Roles other than these make the template raise, as real templates do (the server answers 400).
LLM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LLM_CONTEXT = 256

TASKS = ("text-classification", "image-classification", "object-detection", "text-generation")


def _labels(names) -> dict:
    return {
        "id2label": {index: name for index, name in enumerate(names)},
        "label2id": {name: index for index, name in enumerate(names)},
    }


def build_text_classifier(output_dir: str | Path, seed: int = 0) -> Path:
    """BERT sequence classifier with a WordPiece vocabulary of characters and a few words."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    characters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    vocab = [*WORDPIECE_SPECIALS, *characters, *(f"##{c}" for c in characters), *WORDPIECE_WORDS]
    vocab_file = output / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=64)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.5,  # outputs that differ visibly between inputs
        **_labels(TEXT_LABELS),
    )
    BertForSequenceClassification(config).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def _pil_processor(module: str, class_name: str):
    """The PIL (torchvision-free) image processor; transformers 5 names them ``*ImageProcessorPil``."""
    import importlib

    return getattr(importlib.import_module(module), class_name)


def build_image_classifier(output_dir: str | Path, seed: int = 0) -> Path:
    """ViT image classifier at 32x32 pixels with a PIL-only image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        initializer_range=0.5,
        **_labels(IMAGE_LABELS),
    )
    ViTForImageClassification(config).save_pretrained(output)
    processor = _pil_processor("transformers.models.vit.image_processing_pil_vit", "ViTImageProcessorPil")
    processor(size={"height": 32, "width": 32}).save_pretrained(output)
    return output


def build_object_detector(output_dir: str | Path, seed: int = 0) -> Path:
    """YOLOS detector (a ViT with detection tokens): needs neither timm nor torchvision."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = YolosConfig(
        image_size=[32, 32],
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        num_detection_tokens=5,
        initializer_range=0.3,  # spread the random boxes and scores apart
        **_labels(DETECTION_LABELS),
    )
    YolosForObjectDetection(config).save_pretrained(output)
    processor = _pil_processor("transformers.models.yolos.image_processing_pil_yolos", "YolosImageProcessorPil")
    processor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(output)
    return output


def _byte_level_tokenizer():
    """A byte-level BPE tokenizer with every byte as a token (no merges) and chat specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos_id = len(vocab)  # the first added special token below
    backend.post_processor = processors.TemplateProcessing(
        single=f"{LLM_BOS} $A", pair=f"{LLM_BOS} $A {LLM_BOS} $B", special_tokens=[(LLM_BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=LLM_BOS,
        eos_token=LLM_EOS,
        pad_token=LLM_EOS,
        unk_token=None,
        model_max_length=LLM_CONTEXT,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(LLM_ROLE_TOKENS)})
    tokenizer.chat_template = LLM_CHAT_TEMPLATE
    return tokenizer


def _readable_output_only(model, tokenizer) -> None:
    """Only lowercase letters and spaces get non-zero output rows, so greedy decoding writes words
    (and never the end token: a request runs to max_tokens or a stop sequence)."""
    import torch

    readable = tokenizer.convert_tokens_to_ids([*"abcdefghijklmnopqrstuvwxyz", "Ġ"])
    head = model.get_output_embeddings()
    with torch.no_grad():
        keep = torch.zeros(head.weight.shape[0], dtype=torch.bool)
        keep[readable] = True
        head.weight[~keep] = 0.0


def build_causal_lm(
    output_dir: str | Path,
    seed: int = 0,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
) -> Path:
    """Llama-class causal LM (GQA, RoPE, SwiGLU) with a byte-level tokenizer and a chat template.

    The sizes default to the tiny test model; the benchmarks build a larger one of the same shape."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=LLM_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.3,  # livelier greedy output than the default's repeated byte
    )
    model = LlamaForCausalLM(config)
    _readable_output_only(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def build_gpt2_lm(output_dir: str | Path, seed: int = 0, context: int = 64) -> Path:
    """GPT-2 causal LM: learned position embeddings, so running past ``context`` positions fails
    (an IndexError on CPU, a device-side assert on CUDA) where RoPE models would go on silently."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    tokenizer.model_max_length = context
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3,
        tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(config)
    _readable_output_only(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


BUILDERS = {
    "text-classification": build_text_classifier,
    "image-classification": build_image_classifier,
    "object-detection": build_object_detector,
    "text-generation": build_causal_lm,
}


def build(task: str, output_dir: str | Path, seed: int = 0) -> Path:
    try:
        builder = BUILDERS[task]
    except KeyError:
        raise ValueError(f"no tiny model for task {task!r} (choose from {', '.join(TASKS)})") from None
    return builder(output_dir, seed=seed)


def build_gguf_lm(output_dir: str | Path, seed: int = 0, gguf_type: str = "f16", **sizes) -> Path:
    """The tiny Llama (``build_causal_lm``) as one GGUF file in ``output_dir``; returns the file."""
    import tempfile

    from modelbuild.gguf_convert import FLOAT_TYPES, QUANT_TYPES, convert_llama, quantize

    if gguf_type not in FLOAT_TYPES + QUANT_TYPES:
        raise ValueError(f"gguf type must be one of {FLOAT_TYPES + QUANT_TYPES}, got {gguf_type!r}")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"model-{gguf_type}.gguf"
    with tempfile.TemporaryDirectory() as scratch:
        hf_dir = build_causal_lm(Path(scratch) / "hf", seed=seed, **sizes)
        if gguf_type in FLOAT_TYPES:
            return convert_llama(hf_dir, target, gguf_type)
        f16 = convert_llama(hf_dir, Path(scratch) / "model-f16.gguf", "f16")
        return quantize(f16, target, gguf_type)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelbuild.tiny_models", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="Directory to write the model into.")
    parser.add_argument("--task", required=True, choices=TASKS, help="Which task's model to build.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the random weights.")
    parser.add_argument(
        "--format",
        choices=("transformers", "gguf"),
        default="transformers",
        help="gguf: one GGUF file for the llama.cpp backend (text-generation only).",
    )
    parser.add_argument(
        "--gguf_type", default="f16", help="With --format gguf: f16, f32, q4_0, q4_k_m or q8_0 (quantized locally)."
    )
    args = parser.parse_args(argv)
    if args.format == "gguf":
        if args.task != "text-generation":
            parser.error("--format gguf is only for --task text-generation")
        path = build_gguf_lm(args.output_dir, seed=args.seed, gguf_type=args.gguf_type)
        print(
            f"wrote a tiny text-generation model (llama, {args.gguf_type}) to {path} ({path.stat().st_size / 1e6:.2f} MB)"
        )
        return 0
    path = build(args.task, args.output_dir, seed=args.seed)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    architectures = json.loads((path / "config.json").read_text()).get("architectures")
    print(f"wrote a tiny {args.task} model {architectures} to {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
