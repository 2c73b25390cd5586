"""The Python API with user-defined modules and plain torch datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import distill
from distill import CE, KD, TrainConfig
from distill.core.errors import ConfigError, DataError


class Blobs(Dataset):
    """Three Gaussian blobs in 4-D, served as (x, y) tuples like most user datasets."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
        self.x = centres[self.y] + 0.7 * torch.randn(n, 4, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.body(x)


class Student(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture(scope="module")
def blobs() -> tuple[Blobs, Blobs]:
    return Blobs(96, seed=0), Blobs(48, seed=1)


@pytest.fixture(scope="module")
def teacher(blobs) -> nn.Module:
    torch.manual_seed(0)
    result = distill.train(Teacher(), blobs[0], epochs=8, batch_size=16, lr=0.02, quiet=True)
    return result.model


def test_train_baseline_returns_metrics(blobs):
    torch.manual_seed(0)
    result = distill.train(Teacher(), blobs[0], val_data=blobs[1], epochs=8, batch_size=16, lr=0.02,
                           quiet=True)
    assert len(result.history) == 8
    assert result.metrics["accuracy"] > 0.8  # chance is 1/3
    assert "agreement" not in result.metrics
    assert isinstance(result.model, Teacher)


def test_distill_with_user_modules_and_tuple_dataset(blobs, teacher):
    train, val = blobs
    result = distill.distill(teacher, Student(), train, loss=KD(temperature=4, ratio=0.9), val_data=val,
                             epochs=2, batch_size=16, lr=0.05, quiet=True)
    assert isinstance(result, distill.Result) and isinstance(result.model, Student)
    assert len(result.history) == 2
    assert {"train_loss", "train_kd", "train_ce", "val_accuracy"} <= set(result.history[0])
    assert set(result.metrics) >= {"accuracy", "agreement", "kl_teacher", "ece", "nll"}
    assert result.metrics["agreement"] > 0.6
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher is frozen


def test_distill_uses_a_dataloaders_dataset_and_batch_size(blobs, teacher):
    train, _ = blobs
    via_loader = distill.distill(teacher, Student(), DataLoader(train, batch_size=12, shuffle=True),
                                 epochs=2, quiet=True)
    via_dataset = distill.distill(teacher, Student(), train, epochs=2, batch_size=12, quiet=True)
    other_batch = distill.distill(teacher, Student(), train, epochs=2, batch_size=16, quiet=True)
    assert via_loader.history == via_dataset.history
    assert via_loader.history != other_batch.history


def test_cached_signal_matches_live_signal(blobs, teacher, tmp_path: Path):
    train, val = blobs
    cache = tmp_path / "cache"
    live = distill.distill(teacher, Student(), train, val_data=val, epochs=2, batch_size=16, quiet=True)
    cached = distill.distill(teacher, Student(), train, val_data=val, signal="cached", cache_dir=cache,
                             epochs=2, batch_size=16, quiet=True)
    manifests = list(cache.glob("*/manifest.json"))
    assert len(manifests) == 1
    assert [r["train_loss"] for r in cached.history] == pytest.approx([r["train_loss"] for r in live.history],
                                                                      rel=1e-5)
    assert cached.metrics["agreement"] == live.metrics["agreement"]


def test_config_object_and_options(blobs, teacher, tmp_path: Path):
    cfg = TrainConfig(epochs=5, batch_size=32, scheduler="none")
    result = distill.distill(teacher, Student(), blobs[0], config=cfg, epochs=1, checkpoint_dir=tmp_path,
                             quiet=True)
    assert len(result.history) == 1  # keyword options override the config
    assert (tmp_path / "last.safetensors").is_file() and (tmp_path / "metrics.jsonl").is_file()


def test_ce_loss_never_runs_the_teacher_during_training(blobs):
    class CountingTeacher(Teacher):
        calls = 0

        def forward(self, x):
            CountingTeacher.calls += 1
            return super().forward(x)

    torch.manual_seed(0)
    result = distill.distill(CountingTeacher(), Student(), blobs[0], loss=CE(), epochs=2, batch_size=16,
                             quiet=True)
    assert set(result.history[0]) == {"step", "epoch", "train_loss", "train_ce"}
    assert CountingTeacher.calls <= 1  # at most the probe for the number of classes, never per batch


def test_invalid_option_is_a_config_error_naming_the_option(blobs, teacher):
    with pytest.raises(ConfigError, match="`epochs`"):
        distill.distill(teacher, Student(), blobs[0], epochs=0, quiet=True)
    with pytest.raises(ConfigError, match="Did you mean `batch_size`"):
        distill.distill(teacher, Student(), blobs[0], batchsize=8, quiet=True)


def test_labels_out_of_range_in_a_user_dataset_are_a_clear_error(teacher):
    class BadLabels(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(4), 7 if i == 5 else 0

    with pytest.raises(DataError, match=r"labels in \[0, 7\].*labels must be in \[0, 2\]"):
        distill.distill(teacher, Student(), BadLabels(), loss=KD(), epochs=1, batch_size=4, quiet=True)


def _bert(layers: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(layers)
    return BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))


def _token_rows(n: int = 24) -> list[tuple[dict, int]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        mask = torch.ones(8, dtype=torch.long)
        mask[5 + i % 3:] = 0  # padded tails
        rows.append(({"input_ids": torch.randint(1, 40, (8,), generator=g), "attention_mask": mask}, i % 3))
    return rows


@pytest.mark.parametrize("as_dicts", [False, True])
def test_hugging_face_rows_and_models_distil_with_the_mask_reaching_both(as_dicts):
    teacher, student = _bert(2), _bert(1)
    rows = _token_rows()
    data = [{**x, "labels": y} for x, y in rows] if as_dicts else rows
    masks = []
    for m in (teacher, student):  # record what each model's own forward receives
        m.forward = (lambda m, f: lambda *a, **kw: (masks.append((m, kw.get("attention_mask"))), f(*a, **kw))[1])(
            m, m.forward)
    result = distill.distill(teacher, student, data, loss=KD(temperature=2, ratio=0.5), epochs=1, batch_size=8,
                             val_data=data, quiet=True)
    assert result.model is student and 0 <= result.metrics["accuracy"] <= 1
    seen = {mod for mod, mask in masks if mask is not None and bool((mask == 0).any())}
    assert seen == {teacher, student}  # both were called with the rows' padding mask
    x = rows[0][0]
    out = student(input_ids=x["input_ids"][None], attention_mask=x["attention_mask"][None])  # as before
    assert out.logits.shape == (1, 3)
    with pytest.raises(Exception):  # the (B, 2, L) adapter is gone once distill returns
        student(torch.stack([x["input_ids"], x["attention_mask"]])[None])


def test_a_dict_row_without_inputs_or_input_ids_names_its_keys():
    from distill.core.errors import DataError

    with pytest.raises(DataError, match=r"dataset item 0 is a dict with keys \['pixels', 'y'\]"):
        distill.distill(_bert(1), _bert(1), [{"pixels": torch.zeros(3), "y": 0}], epochs=1, quiet=True)


def test_hugging_face_rows_of_different_lengths_are_padded_per_batch_like_a_tokenizer_would(tmp_path: Path):
    from distill.data.batches import iter_batches

    rows = [({"input_ids": torch.arange(1, 1 + n), "attention_mask": torch.ones(n, dtype=torch.long)}, n % 3)
            for n in (3, 5, 4, 6)]
    (batch,) = list(iter_batches(rows, torch.arange(4), 4))
    assert batch["inputs"].shape == (4, 2, 6)
    assert batch["inputs"][0].tolist() == [[1, 2, 3, 0, 0, 0], [1, 1, 1, 0, 0, 0]]  # id 0 under mask 0
    result = distill.distill(_bert(2), _bert(1), rows, loss=KD(), epochs=1, batch_size=2, signal="cached",
                             cache_dir=tmp_path / "cache", quiet=True)  # the teacher cache batches them too
    assert len(result.history) == 1 and (tmp_path / "cache").is_dir()


def test_a_student_still_improving_at_the_end_is_noted():
    from distill.api import still_improving

    rising = [{"step": s, "val_accuracy": 0.5 + 0.04 * s} for s in range(1, 10)]  # +12 points over the last third
    (note,) = still_improving(rising, 500, "distilled")
    assert note.startswith("distilled: validation accuracy was still rising at the end (74.0% at step 6, 86.0% at step 9)")
    assert still_improving(rising, 5, "distilled") == []  # on 5 validation examples that rise is noise
    assert still_improving([{"step": s, "val_accuracy": 0.9} for s in range(1, 10)], 500, "x") == []  # a plateau
