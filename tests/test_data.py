"""Datasets: deterministic stratified splits, IDX/CSV readers, user datasets, label checks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from distill.core.errors import DataError
from distill.data.arrays import (
    ArrayDataset,
    IndexedDataset,
    as_indexed,
    check_labels,
    labels_of,
    stratified_split,
)
from distill.data.batches import iter_batches
from distill.data.config import DataConfig
from distill.data.datasets import load_data
from distill.data.images import FASHION_CLASSES, read_idx
from distill.data.tables import from_arrays


def _rows(ds: ArrayDataset) -> set[bytes]:
    return {x.numpy().tobytes() for x in ds.inputs}


def test_digits_splits_are_deterministic_for_one_seed():
    a = load_data(DataConfig(seed=3))
    b = load_data(DataConfig(seed=3))
    c = load_data(DataConfig(seed=4))
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).inputs, getattr(b, part).inputs)
        assert torch.equal(getattr(a, part).labels, getattr(b, part).labels)
    assert not torch.equal(a.val.labels, c.val.labels)


def test_digits_splits_are_disjoint_stratified_and_standardised():
    d = load_data(DataConfig(val_fraction=0.1, test_fraction=0.2))
    assert d.num_classes == 10 and d.input_shape == (1, 8, 8)
    sizes = [len(d.train), len(d.val), len(d.test)]
    assert sum(sizes) == 1797
    assert sizes[1] == pytest.approx(0.1 * 1797, abs=10) and sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    train, val, test = _rows(d.train), _rows(d.val), _rows(d.test)
    assert len(train) == sizes[0]  # every image is distinct, so the row sets identify examples
    assert not (train & val) and not (train & test) and not (val & test)
    for part in (d.train, d.val, d.test):
        assert set(part.labels.tolist()) == set(range(10))
    assert d.train.inputs.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert d.train.inputs.std().item() == pytest.approx(1.0, abs=1e-3)


def test_stratified_split_partitions_the_indices():
    labels = torch.arange(103) % 4
    a, b, c = stratified_split(labels, (0.1, 0.3), seed=0)
    assert sorted(torch.cat([a, b, c]).tolist()) == list(range(103))
    assert all(torch.equal(x, y) for x, y in zip((a, b, c), stratified_split(labels, (0.1, 0.3), seed=0)))


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    d = from_arrays(np.arange(100, dtype=np.float32)[:, None], y, val_fraction=0.1, test_fraction=0.2)
    assert torch.bincount(d.val.labels).tolist() == [5, 3, 2]
    assert torch.bincount(d.test.labels).tolist() == [10, 6, 4]
    # the index sets partition the 100 examples
    values = torch.cat([d.train.inputs, d.val.inputs, d.test.inputs]).flatten()
    assert len(torch.unique(values)) == 100


def test_limit_keeps_a_deterministic_subset(digits):
    again = load_data(DataConfig(limit=300, seed=0))
    assert len(digits.train) == 300
    assert torch.equal(digits.train.inputs, again.train.inputs)
    assert len(digits.val) == len(load_data(DataConfig(seed=0)).val)  # val/test are not limited


# --------------------------------------------------------------------------- IDX files


def _write_idx(path: Path, array: np.ndarray, *, cut: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(payload[: len(payload) - cut])


def test_read_idx_roundtrip(tmp_path: Path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    got = read_idx(tmp_path / "x-idx3-ubyte.gz")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, array)


def test_read_idx_uncompressed(tmp_path: Path):
    path = tmp_path / "y-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    np.testing.assert_array_equal(read_idx(path), [7, 8, 9])


@pytest.mark.parametrize("cut", [1, 30])  # inside the data, inside the header
def test_read_idx_truncated_payload_is_a_data_error(tmp_path: Path, cut: int):
    path = tmp_path / "x.gz"
    _write_idx(path, np.zeros((2, 3, 4), dtype=np.uint8), cut=cut)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_cut_off_gzip_stream_is_a_data_error(tmp_path: Path):
    path = tmp_path / "x.gz"
    rng = np.random.default_rng(0)
    _write_idx(path, rng.integers(0, 256, (20, 28, 28)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_read_idx_bad_magic(tmp_path: Path):
    path = tmp_path / "x"
    path.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


def _fake_fashion(root: Path, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    root.mkdir()
    train_y = np.arange(n_train) % 10
    test_y = rng.permutation(np.arange(n_test) % 10)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", train_y)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", test_y)
    return train_y, test_y


def test_fashion_mnist_from_a_directory_of_idx_files(tmp_path: Path):
    root = tmp_path / "fashion"
    train_y, test_y = _fake_fashion(root, n_train=100, n_test=30)
    d = load_data(DataConfig(name="fashion_mnist", path=root, val_fraction=0.1))
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert d.class_names == FASHION_CLASSES
    # the shipped t10k files are the test split, in file order; val is carved out of train
    assert len(d.test) == 30
    assert d.test.labels.tolist() == test_y.tolist()
    assert len(d.val) == 10 and len(d.train) == 90
    assert sorted(d.train.labels.tolist() + d.val.labels.tolist()) == sorted(train_y.tolist())
    assert set(d.val.labels.tolist()) == set(range(10))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="fashion_mnist", path=tmp_path))
    msg = str(exc.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert "get-fashion-mnist.sh" in msg and "data.path" in msg


# --------------------------------------------------------------------------- CSV


def _write_csv(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(0)
    lines = ["f1,kind,f2"]
    for i in range(n):
        label = i % 3
        lines.append(f"{rng.normal() + label:.4f},{label},{rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("column", ["kind", 1, -2])
def test_csv_label_column_by_name_or_index(tmp_path: Path, column):
    path = _write_csv(tmp_path / "t.csv")
    d = load_data(DataConfig(name="csv", path=path, label_column=column, val_fraction=0.2, test_fraction=0.2))
    assert d.num_classes == 3 and d.input_shape == (2,)
    assert len(d.train) + len(d.val) + len(d.test) == 60
    assert set(d.test.labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("column", ["label", 7])
def test_csv_bad_label_column_lists_the_columns(tmp_path: Path, column):
    path = _write_csv(tmp_path / "t.csv")
    with pytest.raises(DataError) as exc:
        load_data(DataConfig(name="csv", path=path, label_column=column))
    assert "data.label_column" in str(exc.value)
    assert "['f1', 'kind', 'f2']" in str(exc.value)


def test_csv_with_empty_cells_is_a_data_error(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,0\n,1\n3,0\n")
    with pytest.raises(DataError, match="every cell must be a number"):
        load_data(DataConfig(name="csv", path=path))


@pytest.mark.parametrize("label, message", [
    ("99", r"line 5: label 99 is outside the class ids 0..3 .*ids \[3, 4, 5, 6, 7\] never occur"),
    ("1.5", "line 5: label 1.5 is not a whole number"),
    ("-1", "line 5: label -1 is outside the class ids"),
])
def test_csv_labels_that_are_not_class_ids_are_refused_naming_the_line_and_column(tmp_path: Path, label, message):
    path = tmp_path / "t.csv"  # 3 classes, then one wrong label on line 5 (the header is line 1)
    path.write_text(f"a,kind\n1,0\n2,1\n3,2\n4,{label}\n5,1\n")
    with pytest.raises(DataError, match=message) as exc:
        load_data(DataConfig(name="csv", path=path, label_column="kind"))
    assert "column `kind` (data.label_column)" in str(exc.value) and str(path) in str(exc.value)


def test_csv_empty_cell_names_its_line_and_column(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,,1\n")
    with pytest.raises(DataError, match="line 3, column `b`"):
        load_data(DataConfig(name="csv", path=path))


def test_negative_labels_are_rejected():
    with pytest.raises(DataError, match=">= 0"):
        from_arrays(np.zeros((20, 2)), np.array([-1, 0] * 10))


# --------------------------------------------------------------------------- user datasets


class _Pairs(Dataset):
    def __init__(self, n: int):
        self.x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 2


def test_indexed_dataset_over_tuples():
    ds = as_indexed(_Pairs(5))
    assert isinstance(ds, IndexedDataset)
    item = ds[3]
    assert torch.equal(item["inputs"], torch.tensor([9.0, 10.0, 11.0]))
    assert item["labels"] == 1 and item["index"] == 3
    batches = list(iter_batches(ds, torch.tensor([4, 0, 2]), batch_size=2))
    assert batches[0]["index"].tolist() == [4, 0]  # dataset indices, not positions in the batch
    assert batches[1]["labels"].tolist() == [0]
    assert labels_of(ds).tolist() == [0, 1, 0, 1, 0]


def test_indexed_dataset_over_dicts_and_bad_items():
    class Dicts(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"inputs": torch.ones(2) * i, "labels": i}

    assert IndexedDataset(Dicts())[1]["labels"] == 1

    class Bad(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.ones(2)

    with pytest.raises(DataError, match="item 0 is a Tensor"):
        IndexedDataset(Bad())[0]


def test_array_dataset_serves_dicts_and_checks_lengths():
    ds = ArrayDataset(torch.zeros(4, 2), torch.tensor([1, 0, 1, 0]))
    assert as_indexed(ds) is ds
    assert ds[2]["labels"].item() == 1 and ds[2]["index"] == 2
    with pytest.raises(DataError, match="must match"):
        ArrayDataset(torch.zeros(4, 2), torch.zeros(3))


def test_check_labels_out_of_range_names_the_range():
    ds = ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 4, 12]))
    with pytest.raises(DataError) as exc:
        check_labels(ds, 10, "my data")
    msg = str(exc.value)
    assert "my data" in msg and "[0, 12]" in msg and "[0, 9]" in msg
    check_labels(ds, 13, "my data")  # in range: no error


def _table(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("review", "sentiment")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_csv_of_texts_and_label_names_loads_as_text_classification(tmp_path):
    pytest.importorskip("transformers")
    from lm_helpers import make_tokenizer

    from distill.data.config import DataConfig
    from distill.data.datasets import load_data

    rows = [("I love this new car, it drives well", "pos"), ("terrible, it broke, in a day", "neg")] * 15
    words = tuple(w.strip(",") for text, _ in rows[:2] for w in text.split())
    make_tokenizer(tmp_path / "tok", extra_words=words)  # a local tokenizer: no hub, no model package
    cfg = DataConfig(name="csv", path=_table(tmp_path / "reviews.csv", rows), text_column="review",
                     label_column="sentiment", max_length=16, tokenizer=str(tmp_path / "tok"))
    splits = load_data(cfg)
    assert splits.class_names == ["neg", "pos"] and splits.modality == "text" and splits.input_shape == (2, 16)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30
    first = splits.train.inputs[0]
    assert first.dtype == torch.int64 and first[1].sum() > 3  # [ids; mask], real tokens under the mask
    ids = [(text, str(2 * (i % 6))) for i, (text, _) in enumerate(rows)]  # class ids 0, 2, …, 10 written as text
    by_number = load_data(cfg.model_copy(update={"path": _table(tmp_path / "ids.csv", ids)}))
    assert by_number.class_names == ["0", "2", "4", "6", "8", "10"]


@pytest.mark.parametrize(("rows", "text_column", "message"), [
    ([("good", "pos"), ("bad", "neg")], "reveiw", r"`data.text_column`: .* has no column `reveiw`. Did you mean "
                                                  r"`review`\?"),
    ([("good", "pos"), ("  ", "neg")], "review", r"line 3, column `review`: the text is empty"),
    ([("good", "pos"), ("bad", "")], "review", r"line 3, column `sentiment`: the label is empty"),
    ([("good", "pos"), ("fine", "pos")], "review", r"1 distinct label\(s\) over 2 rows"),
])
def test_a_bad_text_table_is_refused_naming_the_line_and_column(tmp_path, rows, text_column, message):
    from distill.data.text import read_text_table

    with pytest.raises(DataError, match=message):
        read_text_table(_table(tmp_path / "t.csv", rows), text_column, "sentiment")


def test_text_column_is_only_for_tables_and_datasets():
    from distill.core.errors import ConfigError
    from distill.recipes.classify.config import load_config

    with pytest.raises(ConfigError, match="data.text_column names a column of a CSV or JSONL file or a dataset; data.name is digits"):
        load_config(None, ["data.name=digits", "data.text_column=review"])


def test_a_jsonl_of_texts_loads_like_a_csv_and_names_bad_lines(tmp_path):
    import json as _json

    from distill.core.errors import ConfigError
    from distill.data.text import read_text_table
    from distill.recipes.classify.config import load_config

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(_json.dumps({"text": f"row {i}", "label": i % 3}) + "\n" for i in range(6)) + "\n")
    texts, labels = read_text_table(path, "text", "label")
    assert texts[:2] == ["row 0", "row 1"] and labels == ["0", "1", "2", "0", "1", "2"]
    path.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"line 2, column `label`: the label is empty or missing"):
        read_text_table(path, "text", "label")
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 2\n')
    with pytest.raises(DataError, match=r"rows.jsonl, line 2: not valid JSON"):
        read_text_table(path, "text", "label")
    with pytest.raises(ConfigError, match="data.name=jsonl reads texts: set data.text_column"):
        load_config(None, ["data.name=jsonl", f"data.path={path}"])
