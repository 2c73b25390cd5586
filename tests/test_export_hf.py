"""Exports that load in the standard loaders with the trained weights: a text classifier as
`AutoModelForSequenceClassification` / `pipeline`, ONNX with `input_ids` / `attention_mask`, the
model card, and `distill export` end to end on a CSV of texts. What an export carries beside the
weights: file modes, no paths of this machine, the real class names, one tokenizer length, a
tokenizer that loads without custom code, and the ONNX file's metadata."""

from __future__ import annotations

import csv
import json
import os
import stat

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
from distill.data.tokenizers import load_tokenizer  # noqa: E402
from distill.export.formats import export_model  # noqa: E402
from distill.export.hf import export_hf, hf_agreement, load_hf_classifier  # noqa: E402
from distill.export.onnx import check_parity, export_onnx, ort_session  # noqa: E402
from distill.models.encoders import EncoderClassifier  # noqa: E402

LABELS = ["business", "sport", "tech"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def tiny_bert(tok) -> "transformers.BertConfig":
    return transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def classifier(tok):
    cfg = tiny_bert(tok)
    torch.manual_seed(0)
    model = EncoderClassifier(transformers.BertModel(cfg, add_pooling_layer=False), len(LABELS)).eval()
    with torch.no_grad():
        model.head.weight.mul_(20)  # decisive logits: a random head would disagree with this one
    return model


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A saved tokenizer whose tokenizer_config.json says `max_length: 128`, as all-MiniLM-L6-v2's does."""
    directory = tmp_path_factory.mktemp("minilm_like_tok")
    make_tokenizer(directory)
    settings = directory / "tokenizer_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "max_length": 128}))
    return directory


@pytest.fixture(scope="module")
def loaded_classifier(tok, tmp_path_factory):
    """A classifier whose encoder was read from a local directory: its config knows that path."""
    cfg = tiny_bert(tok)
    torch.manual_seed(0)
    source = tmp_path_factory.mktemp("bert")
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(source)
    backbone = transformers.BertModel.from_pretrained(str(source), add_pooling_layer=False)
    return EncoderClassifier(backbone, len(LABELS)).eval()


def texts(n=60):
    words = TEXT.split()
    return [" ".join(words[i % 50: i % 50 + 3 + i % 17]) for i in range(n)]


def held_out(tok, n=60):
    x = encode_texts(tok, texts(n), 24)
    return ArrayDataset(x, torch.zeros(len(x), dtype=torch.long))


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
    assert [p.name for p in out.iterdir() if str(tmp_path).encode() in p.read_bytes()] == []  # model=bert, not its path
    assert load_hf_classifier(out).config.id2label == dict(enumerate(LABELS))


def test_the_check_never_runs_code_it_did_not_write(classifier, tok, tmp_path):
    directory = export_hf(classifier, tmp_path / "hf", tok, labels=LABELS)
    code = directory / "modeling_distill.py"
    code.write_text(code.read_text() + "\nraise SystemExit('ran code from the folder')\n")
    with pytest.raises(ExportError, match="differs from this distill's modeling_distill.py"):
        load_hf_classifier(directory)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_every_file_of_an_hf_export_is_as_readable_as_a_new_file(classifier, tok, tok_dir, tmp_path, umask):
    previous = os.umask(umask)
    try:
        export_model(classifier, "hf", tmp_path / "hf", held_out(tok), labels=LABELS, tokenizer=str(tok_dir),
                     max_length=24, card=lambda result: "card\n")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_the_hf_export_holds_no_path_of_this_machine_and_all_the_class_names(loaded_classifier, tok_dir, tmp_path,
                                                                               tmp_path_factory):
    assert os.path.isabs(loaded_classifier.backbone.config._name_or_path)  # what could have been copied
    directory = export_hf(loaded_classifier, tmp_path / "hf", load_tokenizer(str(tok_dir)), labels=LABELS,
                          max_length=24)
    here = str(tmp_path_factory.getbasetemp()).encode()
    assert [p.name for p in directory.iterdir() if here in p.read_bytes()] == []
    config = json.loads((directory / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)}
    assert not {"id2label", "label2id", "_name_or_path"} & set(config["encoder"])  # no stale two-label default
    assert load_hf_classifier(directory).config.id2label == dict(enumerate(LABELS))


def test_the_tokenizer_settings_hold_one_length_the_models(classifier, tok_dir, tmp_path):
    tokenizer = load_tokenizer(str(tok_dir))
    for max_length, longest in ((24, 24), (None, 64)):  # 64: the encoder's positions (the tokenizer sets no limit)
        directory = export_hf(classifier, tmp_path / str(max_length), tokenizer, labels=LABELS, max_length=max_length)
        settings = json.loads((directory / "tokenizer_config.json").read_text())
        assert settings["model_max_length"] == settings["max_length"] == longest
        assert transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False).model_max_length \
            == longest


def test_the_exported_tokenizer_loads_without_custom_code(classifier, tok, tok_dir, tmp_path, monkeypatch):
    directory = export_hf(classifier, tmp_path / "hf", load_tokenizer(str(tok_dir)), labels=LABELS, max_length=24)
    assert "auto_map" in json.loads((directory / "config.json").read_text())  # the model's custom code
    assert "auto_map" not in json.loads((directory / "tokenizer_config.json").read_text())

    def no_prompt(*args):
        raise AssertionError("asked whether to run the folder's code")

    monkeypatch.setattr("builtins.input", no_prompt)
    loaded = transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    assert type(loaded).__module__.startswith("transformers.")
    assert loaded(texts())["input_ids"] == tok(texts())["input_ids"]
    assert not [p for p in directory.iterdir() if p.suffix == ".py" and p.name != "modeling_distill.py"]


@pytest.mark.parametrize("int8", [False, True])
def test_the_onnx_file_names_its_classes_and_preprocessing(classifier, tok, tok_dir, tmp_path, int8):
    import onnxruntime

    out = tmp_path / "m.onnx"
    export_model(classifier, "onnx", out, held_out(tok), labels=LABELS, tokenizer=str(tok_dir), max_length=24,
                 int8=int8)
    meta = onnxruntime.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == LABELS
    assert meta["max_length"] == "24" and meta["tokenizer"] == tok_dir.name  # its name, not where it lies here
    assert "input_ids and attention_mask" in meta["preprocessing"]


@pytest.fixture(scope="module")
def pooler_classifier(tok, tmp_path_factory):
    """A student built with `pooling: pooler` from a local BERT directory, 1 of its 2 layers kept."""
    from distill.models.encoders import hf_encoder

    cfg = tiny_bert(tok)
    torch.manual_seed(0)
    source = tmp_path_factory.mktemp("bert_with_pooler")
    transformers.BertModel(cfg).save_pretrained(source)
    model = hf_encoder(len(LABELS), str(source), layers=[1], pooling="pooler").eval()
    with torch.no_grad():
        model.head.weight.mul_(20)
    return model


def test_a_pooler_student_exports_as_a_stock_model_that_loads_with_no_custom_code(pooler_classifier, tok, tmp_path,
                                                                                  monkeypatch):
    directory = export_hf(pooler_classifier, tmp_path / "hf", tok, labels=LABELS, max_length=24)
    assert "auto_map" not in json.loads((directory / "config.json").read_text())
    assert not list(directory.glob("*.py"))

    def no_prompt(*args):
        raise AssertionError("asked whether to run the folder's code")

    monkeypatch.setattr("builtins.input", no_prompt)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    assert type(loaded).__name__ == "BertForSequenceClassification" and loaded.config.num_hidden_layers == 1
    x = encode_texts(tok, texts(), 24)
    with torch.no_grad():
        ours = pooler_classifier(x).logits
        theirs = loaded(input_ids=x[:, 0], attention_mask=x[:, 1]).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    classify = transformers.pipeline("text-classification", model=str(directory))
    assert [a["label"] for a in classify(texts()[:8], truncation=True)] == [LABELS[i] for i in ours[:8].argmax(-1)]
    assert len({LABELS[i] for i in ours.argmax(-1)}) > 1  # a meaningful comparison
    assert transformers.AutoTokenizer.from_pretrained(str(directory))(texts())["input_ids"] == tok(texts())["input_ids"]
    report = hf_agreement(pooler_classifier, directory, ArrayDataset(x, torch.zeros(len(x), dtype=torch.long)))
    assert report["agreement"] == 1.0


def test_the_card_of_a_stock_export_asks_for_no_custom_code(pooler_classifier, classifier, tok, tmp_path):
    from distill.export.card import classifier_card

    cards = {}
    for name, model in (("stock", pooler_classifier), ("mean", classifier)):
        result = export_model(model, "hf", tmp_path / name, held_out(tok), labels=LABELS, tokenizer=None, check=True)
        cards[name] = classifier_card(name=name, which="student", fmt="hf", teacher={}, student={},
                                      data={"name": "d", "classes": LABELS}, kd=None, report=None,
                                      check=result["parity"], custom_code=result["custom_code"])
    assert "trust_remote_code" not in cards["stock"] and "stock transformers model" in cards["stock"]
    assert "trust_remote_code=True" in cards["mean"] and "trust_remote_code=False" in cards["mean"]


def test_pooler_pooling_is_refused_before_training_where_no_stock_head_computes_it(tok, tmp_path):
    from distill.core.errors import ModelError
    from distill.models.encoders import hf_encoder, stock_classifier

    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    with pytest.raises(ModelError, match="has none. Use pooling: mean"):
        EncoderClassifier(transformers.BertModel(cfg, add_pooling_layer=False), 3, pooling="pooler")
    roberta = transformers.RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64)
    with pytest.raises(ModelError, match="RobertaForSequenceClassification's is not"):
        stock_classifier(roberta)
    roberta.save_pretrained(tmp_path / "roberta")  # a config only: refused before any weights are read
    with pytest.raises(ModelError, match="RobertaForSequenceClassification's is not"):
        hf_encoder(3, str(tmp_path / "roberta"), pooling="pooler")
    with pytest.raises(ModelError, match="not one of"):
        hf_encoder(3, str(tmp_path / "roberta"), pooling="cls")
    with pytest.raises(ModelError, match="not one of"):
        EncoderClassifier(transformers.BertModel(cfg), 3, pooling="cls")
