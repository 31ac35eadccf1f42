"""Write a transformers Llama checkpoint as a GGUF file llama.cpp loads, and quantize it locally.

Used for the tiny test model and the benchmark model (no hub): the conversion follows
llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM`` (``LlamaModel.modify_tensors``
permutes the Q and K rows, because llama.cpp's RoPE pairs neighbouring dimensions where
transformers' ``rotate_half`` pairs the two halves of each head) and its tensor names
(``gguf.constants.MODEL_TENSORS[MODEL_ARCH.LLAMA]``). The tokenizer is written as llama.cpp's
``gpt2`` (byte-level BPE) vocabulary with its merges, special tokens and chat template, so the
GGUF file alone serves the same prompts and chat requests as the transformers directory.

Quantization uses llama.cpp's own ``llama_model_quantize`` from ``llama_cpp`` (no separate
binary): ``q4_0`` (4-bit, blocks of 32 weights: the type llama.cpp repacks for ARM's
dot-product kernels on Graviton), ``q4_k_m`` and ``q8_0``.
"""

from __future__ import annotations

import json
from pathlib import Path

QUANT_TYPES = ("q4_0", "q4_k_m", "q8_0")
FLOAT_TYPES = ("f32", "f16")


def _permute(weights, heads: int):
    """convert_hf_to_gguf.py ``LlamaModel.permute``: halves of each head -> interleaved pairs."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensor_name(name: str) -> str | None:
    """transformers parameter name -> llama.cpp tensor name (None: not stored)."""
    simple = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in simple:
        return simple[name]
    parts = name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"]:
        return None
    block, rest = parts[2], ".".join(parts[3:])
    per_block = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{block}.{per_block[rest]}" if rest in per_block else None


def convert_llama(hf_dir: str | Path, output: str | Path, out_type: str = "f16") -> Path:
    """Write the transformers Llama in ``hf_dir`` (safetensors + tokenizer) as one GGUF file."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    if out_type not in FLOAT_TYPES:
        raise ValueError(f"out_type must be one of {FLOAT_TYPES}, got {out_type!r}")
    source = Path(hf_dir)
    config = json.loads((source / "config.json").read_text())
    if config.get("architectures") != ["LlamaForCausalLM"]:
        raise ValueError(f"{source}: only LlamaForCausalLM converts here, got {config.get('architectures')}")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    tokenizer = AutoTokenizer.from_pretrained(source)

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(source.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    rope = config.get("rope_parameters") or {}  # transformers 5 keeps rope_theta there
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16" else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, tokenizer, source)

    weights = {}
    for shard in sorted(source.glob("*.safetensors")):
        weights.update(load_file(shard))
    for name, array in weights.items():
        target = _tensor_name(name)
        if target is None:
            continue
        array = array.astype(np.float32)
        if name.endswith("q_proj.weight"):
            array = _permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, kv_heads)
        if out_type == "f16" and array.ndim == 2:  # norms stay f32, as convert_hf_to_gguf.py keeps them
            array = array.astype(np.float16)
        writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer, source: Path) -> None:
    """The byte-level BPE vocabulary as llama.cpp's ``gpt2`` tokenizer model."""
    import gguf

    vocab_size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    special_ids = set(tokenizer.all_special_ids)
    types = [gguf.TokenType.CONTROL if index in special_ids else gguf.TokenType.NORMAL for index in range(vocab_size)]
    tokenizer_json = json.loads((source / "tokenizer.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if not merges:
        # llama.cpp's vocabulary loader (llama-vocab.cpp, "gpt2" model) requires merges and the gguf
        # writer refuses an empty array: a byte-only vocabulary gets one merge that can never fire
        # (BPE starts from single byte symbols; "<s>" is never one), so tokenization is unchanged.
        merges = [f"{tokenizer.bos_token} {tokenizer.eos_token}"]
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def quantize(source: str | Path, output: str | Path, quant_type: str = "q4_0", threads: int = 0) -> Path:
    """Quantize a GGUF file with llama.cpp's ``llama_model_quantize`` (from llama-cpp-python)."""
    import llama_cpp

    ftypes = {
        "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    }
    if quant_type not in ftypes:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant_type]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({source} -> {quant_type}) failed with status {status}")
    return Path(output)
