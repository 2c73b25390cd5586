"""GGUF export of causal-LM students, for llama.cpp and Ollama, with an Ollama Modelfile beside it.

    export_gguf("runs/lm/distilled/model", "student-q8_0.gguf", "q8_0")   # f16 | q8_0 | q4_0

The file format, tensor names and quantizers are those of `gguf`, llama.cpp's own Python package.
llama.cpp's converter (`convert_hf_to_gguf.py`) is a script in its repository, not a package, so
the mapping of a Hugging Face Llama-family model onto the GGUF layout is done here, following
it: hyperparameters from config.json; q/k projections permuted back to the interleaved rotary
layout llama.cpp expects; tied embeddings left as `token_embd` only; norms and 1-D tensors in F32;
the byte-level BPE vocabulary with its merges, special tokens and chat template. Whether that
mapping is right is checked by llama.cpp itself (`distill.export.gguf_check`), token ids and
next-token predictions both.

Types: `f16`; `q8_0` (8-bit blocks of 32); `q4_0` (4-bit blocks of 32; the embedding, which is
also the output head, stays `q8_0`). A matrix whose rows do not split into blocks of 32 falls back
to F16. Supported: `LlamaForCausalLM` / `MistralForCausalLM` with a byte-level BPE tokenizer
(SmolLM2, the students `distill lm` builds from it); others are refused naming what is supported.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.errors import ExportError, ModelError

GGUF_TYPES = ("f16", "q8_0", "q4_0")
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


def export_gguf(model_dir: Path | str, out: Path | str, qtype: str = "q8_0", *,
                modelfile: bool = True) -> dict[str, Any]:
    """Write the HF causal LM in `model_dir` as a GGUF file `out` of type `qtype` (atomic), and an
    Ollama `Modelfile` beside it; returns {"path", "type", "size_mb", "modelfile"}."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if qtype not in GGUF_TYPES:
        raise ModelError(f"Unknown GGUF type `{qtype}`; choose one of {list(GGUF_TYPES)}.")
    model_dir, out = Path(model_dir), Path(out)
    config = AutoConfig.from_pretrained(model_dir)
    _check_supported(config, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pre = _pre_tokenizer(model_dir)
    state = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(model_dir.name)
        _hyperparameters(writer, config, qtype)
        _vocabulary(writer, tokenizer, config, model_dir, pre)
        _tensors(writer, state, config, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    result = {"path": str(out), "type": qtype, "size_mb": out.stat().st_size / 1e6}
    if modelfile:
        result["modelfile"] = str(write_modelfile(out, tokenizer))
    return result


def _check_supported(config: Any, model_dir: Path) -> None:
    archs = getattr(config, "architectures", None) or []
    if not set(archs) & set(ARCHITECTURES):
        raise ModelError(f"{model_dir}: GGUF export supports {', '.join(ARCHITECTURES)}; this model is "
                         f"{archs or config.model_type}. Export it with --format hf and convert it with "
                         "llama.cpp's convert_hf_to_gguf.py.")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ModelError(f"{model_dir}: RoPE scaling `{rope.get('rope_type')}` is not supported by this "
                         "GGUF export (default RoPE only); use llama.cpp's convert_hf_to_gguf.py.")


def _pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, read from tokenizer.json."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{model_dir} has no tokenizer.json; GGUF export needs a fast (byte-level BPE) "
                         "tokenizer saved with the model.")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE":
        raise ModelError(f"{path}: a {spec.get('model', {}).get('type')} tokenizer; GGUF export supports "
                         "byte-level BPE tokenizers (SmolLM2, GPT-2 style).")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1].get("type") == "ByteLevel" and steps[-1].get("use_regex", True)
    if kinds == ["ByteLevel"] and byte_level:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level:
        return "smollm"  # digits one by one, then GPT-2's split
    raise ModelError(f"{path}: pre-tokenizer {kinds} has no known llama.cpp equivalent here; use "
                     "llama.cpp's convert_hf_to_gguf.py.")


def _hyperparameters(writer: Any, config: Any, qtype: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocabulary(writer: Any, tokenizer: Any, config: Any, model_dir: Path, pre: str) -> None:
    """Tokens (by id, with their kind), merges, special ids and the chat template."""
    import gguf

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, kinds = [], []
    for i in range(config.vocab_size):
        if i not in by_id:  # rows of a padded embedding
            tokens.append(f"[PAD{i}]")
            kinds.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer)
    first = tokenizer("a")["input_ids"][:1]
    adds_bos = tokenizer.bos_token_id is not None and first == [tokenizer.bos_token_id]
    writer.add_add_bos_token(adds_bos)  # llama.cpp prepends BOS only when the HF tokenizer does


def _tensors(writer: Any, state: dict[str, torch.Tensor], config: Any, qtype: str) -> None:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        data = tensor.detach().float()
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _interleave_rotary(data, heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _interleave_rotary(data, kv_heads)
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ExportError(f"GGUF export: no llama.cpp tensor name for `{name}`; this model has a part "
                              "the Llama layout lacks. Use llama.cpp's convert_hf_to_gguf.py.")
        array, kind = _encode(data.numpy(), new_name, qtype)
        writer.add_tensor(new_name, array, raw_dtype=kind)


def _interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF stores each head's rotary pairs as two halves; llama.cpp wants them interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _encode(array: np.ndarray, name: str, qtype: str) -> tuple[np.ndarray, Any]:
    """The tensor in the type it is stored as: F32 for norms and 1-D tensors, else `qtype` (the
    embedding stays Q8_0 under q4_0; rows that do not split into blocks fall back to F16)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if array.ndim <= 1 or name.endswith("_norm.weight"):
        kind = T.F32
    elif qtype == "q4_0" and name.startswith(("token_embd", "output.")):
        kind = T.Q8_0
    else:
        kind = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[qtype]
    try:
        return gguf.quants.quantize(array, kind), kind
    except gguf.QuantError:
        return gguf.quants.quantize(array, T.F16), T.F16


def default_system(tokenizer: Any) -> str | None:
    """The system message a ChatML chat template writes when the conversation has none, else None."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render one user turn adds nothing we can copy
        return None
    start = "<|im_start|>system\n"
    if not isinstance(text, str) or start not in text:
        return None
    return text.split(start, 1)[1].split("<|im_end|>", 1)[0] or None


def write_modelfile(gguf_path: Path, tokenizer: Any) -> Path:
    """An Ollama Modelfile beside the GGUF file (`student-q8_0.gguf` → `student-q8_0.Modelfile`):
    `ollama create NAME -f student-q8_0.Modelfile` makes the model.

    A ChatML template (SmolLM2's) is written out in Ollama's template syntax with its stop token, and
    the system message the template adds when a conversation has none (SmolLM2's "You are a helpful AI
    assistant named SmolLM, ...") as the Modelfile's SYSTEM, so Ollama builds the prompts the model was
    trained on; other templates are left to Ollama, which reads the one stored in the GGUF file.
    """
    lines = [f"FROM ./{gguf_path.name}"]
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}', "{{ .Content }}<|im_end|>",
                  '{{ end }}<|im_start|>assistant', '"""', 'PARAMETER stop "<|im_end|>"']
        system = default_system(tokenizer)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    path = gguf_path.with_suffix(".Modelfile")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
