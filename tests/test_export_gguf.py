"""GGUF export of a causal-LM student: the file transformers' own GGUF reader (and, in the slow
test, llama.cpp itself) loads back into the same model, its types, the Modelfile, bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from lm_helpers import TEXT, make_bpe_tokenizer, make_llama  # noqa: E402

from distill.cli import main  # noqa: E402
from distill.core.errors import ModelError  # noqa: E402
from distill.export.gguf import export_gguf  # noqa: E402


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny Llama (4 heads, 2 KV heads, hidden 64: rows split into blocks of 32) with a BPE tokenizer."""
    directory = tmp_path_factory.mktemp("student")
    tok = make_bpe_tokenizer(directory)
    model = make_llama(directory, tok, hidden=64, layers=2).eval()
    return directory, model, tok


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize(("qtype", "atol", "min_agree"), [("f16", 2e-2, 0.99), ("q8_0", 0.1, 0.9)])
def test_transformers_reads_the_gguf_back_into_the_same_model(student, tmp_path, qtype, atol, min_agree):
    directory, model, tok = student
    result = export_gguf(directory, tmp_path / f"s-{qtype}.gguf", qtype)
    assert result["size_mb"] > 0 and (tmp_path / f"s-{qtype}.Modelfile").is_file()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"s-{qtype}.gguf").eval()
    ids = tok(TEXT[:300])["input_ids"]
    ours, theirs = logits_of(model, ids), logits_of(back, ids)
    assert (ours - theirs).abs().max() < atol  # q/k were permuted and unpermuted, nothing else changed
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= min_agree
    tok_back = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=f"s-{qtype}.gguf")
    assert tok_back(TEXT[:300], add_special_tokens=False)["input_ids"] == ids


def test_the_file_has_llama_metadata_and_the_types_asked_for(student, tmp_path):
    directory, model, _ = student
    export_gguf(directory, tmp_path / "s.gguf", "q4_0")
    reader = gguf.GGUFReader(tmp_path / "s.gguf")
    fields = {name: reader.fields[name] for name in reader.fields}
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch == "llama" and int(fields["llama.block_count"].parts[-1][0]) == 2
    assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"
    assert "tokenizer.chat_template" in fields and "tokenizer.ggml.merges" in fields
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"


def test_the_modelfile_holds_the_chat_template_in_ollama_syntax(student, tmp_path):
    directory, _, _ = student
    export_gguf(directory, tmp_path / "s.gguf", "f16")
    text = (tmp_path / "s.Modelfile").read_text()
    assert text.startswith("FROM ./s.gguf\n") and "{{ range .Messages }}" in text.replace("{{-", "{{")
    assert 'PARAMETER stop "<|im_end|>"' in text


SMOLLM2_TEMPLATE = (  # SmolLM2-Instruct's chat template: a default system turn when the conversation has none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_the_modelfile_keeps_the_default_system_message_of_the_template(student, tmp_path):
    from distill.export.gguf import write_modelfile

    _, _, tok = student
    smol = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    smol.chat_template = SMOLLM2_TEMPLATE
    text = write_modelfile(tmp_path / "m.gguf", smol).read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    smol.chat_template = SMOLLM2_TEMPLATE.replace("named SmolLM, trained by Hugging Face", "").replace(
        "{% if loop.first and messages[0]['role'] != 'system' %}", "{% if false %}")
    assert "SYSTEM" not in write_modelfile(tmp_path / "n.gguf", smol).read_text()  # none added: none written


def test_unsupported_models_and_types_are_refused_before_writing(student, tmp_path):
    directory, _, _ = student
    with pytest.raises(ModelError, match="Unknown GGUF type `q3`"):
        export_gguf(directory, tmp_path / "x.gguf", "q3")
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64)).save_pretrained(bert)
    with pytest.raises(ModelError, match="GGUF export supports LlamaForCausalLM"):
        export_gguf(bert, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_export_gguf(student, tmp_path, capsys):
    directory, _, _ = student
    out = tmp_path / "s.gguf"
    assert main(["export", str(directory), "--format", "gguf", "--type", "f16", "--out", str(out)]) == 0
    assert out.is_file() and "Modelfile" in capsys.readouterr().out
    card = (tmp_path / "s.gguf.README.md").read_text()
    assert card.startswith("---\n") and "GGUF f16" in card and "ollama create" in card
    assert main(["export", "a=b", "--format", "gguf", "--out", str(out)]) == 2
    assert "model directory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_llama_cpp_runs_the_export_like_pytorch(student, tmp_path):
    from distill.export.gguf_check import gguf_agreement

    directory, model, tok = student
    texts = [p for p in TEXT.split(". ") if p]
    export_gguf(directory, tmp_path / "s.gguf", "f16")
    report = gguf_agreement(tmp_path / "s.gguf", model, tok, texts, block=64, teacher=model)
    assert report["tokenization_match"] == 1.0
    assert report["top1_agreement"] >= 0.99 and report["teacher_top1_agreement"] == report["top1_agreement"]
