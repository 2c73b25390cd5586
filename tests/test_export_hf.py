"""Exports that load in the standard loaders with the trained weights: a text classifier as
`AutoModelForSequenceClassification` / `pipeline`, ONNX with `input_ids` / `attention_mask`, the
model card, and `distill export` end to end on a CSV of texts."""

from __future__ import annotations

import csv
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from lm_helpers import TEXT, make_tokenizer  # noqa: E402

from distill.cli import main  # noqa: E402
from distill.core.checkpoint import save_weights  # noqa: E402
from distill.core.errors import ExportError  # noqa: E402
from distill.data.arrays import ArrayDataset  # noqa: E402
from distill.data.text import encode_texts  # noqa: E402
from distill.export.formats import export_model  # noqa: E402
from distill.export.hf import export_hf, hf_agreement, load_hf_classifier  # noqa: E402
from distill.export.onnx import check_parity, export_onnx, ort_session  # noqa: E402
from distill.models.encoders import EncoderClassifier  # noqa: E402

LABELS = ["business", "sport", "tech"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def classifier(tok):
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = EncoderClassifier(transformers.BertModel(cfg, add_pooling_layer=False), len(LABELS)).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)  # decisive logits: a random head would disagree with this one
    return model


def texts(n=60):
    words = TEXT.split()
    return [" ".join(words[i % 50: i % 50 + 3 + i % 17]) for i in range(n)]


def test_the_classifier_loads_with_its_head_pooling_and_names(classifier, tok, tmp_path):
    directory = export_hf(classifier, tmp_path / "hf", tok, labels=LABELS, max_length=24)
    x = encode_texts(tok, texts(), 24)  # (N, 2, 24), rows of different lengths
    loaded = load_hf_classifier(directory)
    with torch.no_grad():
        ours = classifier(x).logits
        theirs = loaded(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert loaded.config.id2label == dict(enumerate(LABELS))
    classify = transformers.pipeline("text-classification", model=str(directory), trust_remote_code=True)
    answers = classify(texts()[:8], truncation=True)
    assert [a["label"] for a in answers] == [LABELS[i] for i in ours[:8].argmax(-1)]
    assert len({a["label"] for a in classify(texts(), truncation=True)}) > 1  # a meaningful comparison
    report = hf_agreement(classifier, directory, ArrayDataset(x, torch.zeros(len(x), dtype=torch.long)))
    assert report["agreement"] == 1.0 and report["n"] == len(x)


def test_a_plain_loader_refuses_the_classifier_instead_of_guessing_a_head(classifier, tok, tmp_path):
    directory = export_hf(classifier, tmp_path / "hf", tok, labels=LABELS)
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForSequenceClassification.from_pretrained(str(directory))


def test_an_export_that_disagrees_is_reported_and_kept(classifier, tok, tmp_path):
    directory = export_hf(classifier, tmp_path / "hf", tok, labels=LABELS)
    x = encode_texts(tok, texts(), 24)
    other = EncoderClassifier(classifier.backbone, len(LABELS)).eval()
    with torch.no_grad():
        other.head.weight.copy_(-classifier.head.weight)
        other.head.bias.copy_(-classifier.head.bias)
    with pytest.raises(ExportError, match=r"picks the same class .* kept for inspection"):
        hf_agreement(other, directory, ArrayDataset(x, torch.zeros(len(x), dtype=torch.long)))
    assert (directory / "model.safetensors").is_file()


def test_onnx_text_inputs_are_named_and_any_length(classifier, tok, tmp_path):
    x = encode_texts(tok, texts(), 24)
    path = export_onnx(classifier, x[:2], tmp_path / "c.onnx")
    session = ort_session(path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    short = encode_texts(tok, texts()[:5], 11)  # another batch size and sequence length
    got = session.run(["logits"], {"input_ids": short[:, 0].numpy(), "attention_mask": short[:, 1].numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), classifier(short).logits, atol=1e-4, rtol=1e-4)
    assert check_parity(classifier, path, x).top1_agreement == 1.0


def test_export_model_writes_a_card_beside_each_format(classifier, tok, tmp_path):
    x = encode_texts(tok, texts(), 24)
    test = ArrayDataset(x, torch.zeros(len(x), dtype=torch.long))
    cards = []
    for fmt, out in (("hf", tmp_path / "hf"), ("onnx", tmp_path / "m.onnx"), ("safetensors", tmp_path / "m.st")):
        result = export_model(classifier, fmt, out, test, check=fmt != "safetensors", labels=LABELS,
                              card=lambda result, fmt=fmt: f"---\nlibrary_name: {fmt}\n---\n{result.get('parity')}\n")
        cards.append(open(result["card"]).read())
        if fmt != "safetensors":
            assert result["parity"]["agreement"] == 1.0
        if fmt == "onnx":
            assert result["parity"]["half_length_agreement"] == 1.0  # the dynamic sequence axis, checked
            assert result["input_names"] == ["input_ids", "attention_mask"]
    assert (tmp_path / "hf" / "README.md").is_file() and (tmp_path / "m.onnx.README.md").is_file()
    assert "'agreement': 1.0" in cards[0] and cards[2].endswith("None\n")


def test_distill_export_of_a_text_student_from_a_csv(tmp_path, tok, capsys):
    """`distill export --format hf --check` on a text-CSV config: the folder, its check and its card."""
    tok.save_pretrained(tmp_path / "tok")
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    with open(tmp_path / "news.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "topic"])
        writer.writerows((t, LABELS[i % 3]) for i, t in enumerate(texts(90)))
    student = {"arch": "hf_encoder", "kwargs": {"model": str(tmp_path / "bert"), "num_layers": 1,
                                                "pretrained": False}}
    common = ["data.name=csv", f"data.path={tmp_path / 'news.csv'}", "data.text_column=text",
              "data.label_column=topic", "data.label_fraction=1.0", f"data.tokenizer={tmp_path / 'tok'}",
              "data.max_length=24",
              "student.arch=hf_encoder", f"student.kwargs={json.dumps(student['kwargs'])}",
              "teacher.arch=hf_encoder", f"teacher.kwargs={json.dumps({'model': str(tmp_path / 'bert')})}"]
    from distill.data.datasets import load_data
    from distill.recipes.classify.config import load_config
    from distill.recipes.classify.students import build_student

    config = load_config(None, common)
    model = build_student(config, load_data(config.data), None)
    save_weights(tmp_path / "student.safetensors", model)
    out = tmp_path / "exported"
    assert main(["export", *common, f"student.checkpoint={tmp_path / 'student.safetensors'}", "--format", "hf",
                 "--out", str(out), "--check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["agreement"] == 1.0
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
    assert "business, sport, tech" in card and "trust_remote_code=True" in card
    assert load_hf_classifier(out).config.id2label == dict(enumerate(LABELS))


def test_the_check_never_runs_code_it_did_not_write(classifier, tok, tmp_path):
    directory = export_hf(classifier, tmp_path / "hf", tok, labels=LABELS)
    code = directory / "modeling_distill.py"
    code.write_text(code.read_text() + "\nraise SystemExit('ran code from the folder')\n")
    with pytest.raises(ExportError, match="differs from this distill's modeling_distill.py"):
        load_hf_classifier(directory)
