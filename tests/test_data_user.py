"""Users' own text data: split files, Hugging Face datasets (saved, as files, in memory), and runs
named after the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from lm_helpers import make_tokenizer  # noqa: E402

from distill.core.errors import DataError  # noqa: E402
from distill.data.config import DataConfig  # noqa: E402
from distill.data.datasets import load_data  # noqa: E402

ROWS = [("I love this new car, it drives well", "pos"), ("terrible, it broke in a day", "neg"),
        ("a fine and happy day", "pos"), ("the worst thing I ever bought", "neg")]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    make_tokenizer(directory, extra_words=tuple(w.strip(",") for t, _ in ROWS for w in t.split()))
    return directory


def table(path: Path, rows, header=("review", "sentiment")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def text_cfg(tok_dir, **kw) -> DataConfig:
    return DataConfig(text_column="review", label_column="sentiment", max_length=12, tokenizer=str(tok_dir), **kw)


def test_split_files_are_used_as_given_and_missing_ones_cut_from_train(tmp_path, tok_dir):
    train = table(tmp_path / "train.csv", ROWS * 10)
    test = table(tmp_path / "test.csv", ROWS[:3])
    splits = load_data(text_cfg(tok_dir, name="csv", path=train, test_path=test, val_fraction=0.25))
    assert len(splits.test) == 3 and len(splits.val) == 10 and len(splits.train) == 30
    assert splits.class_names == ["neg", "pos"] and splits.test.labels.tolist() == [1, 0, 1]
    both = load_data(text_cfg(tok_dir, name="csv", path=train, val_path=test, test_path=test))
    assert len(both.train) == 40 and len(both.val) == len(both.test) == 3


def test_a_split_with_a_label_training_lacks_is_refused(tmp_path, tok_dir):
    train = table(tmp_path / "train.csv", ROWS * 3)
    test = table(tmp_path / "test.csv", [("so so", "meh")])
    with pytest.raises(DataError, match=r"test split has label\(s\) \['meh'\]"):
        load_data(text_cfg(tok_dir, name="csv", path=train, test_path=test))


def test_split_files_need_a_text_table():
    with pytest.raises(ValueError, match="data.test_path is a split file"):
        DataConfig(name="digits", test_path="x.csv")


def test_a_saved_dataset_dict_brings_its_splits_and_class_names(tmp_path, tok_dir):
    features = datasets.Features({"review": datasets.Value("string"),
                                  "sentiment": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"review": [t for t, _ in ROWS], "sentiment": [int(s == "pos") for _, s in ROWS]}
    part = datasets.Dataset.from_dict({k: v * 5 for k, v in rows.items()}, features=features)
    datasets.DatasetDict(train=part, validation=part.select(range(4)), test=part.select(range(6))
                         ).save_to_disk(str(tmp_path / "reviews"))
    splits = load_data(text_cfg(tok_dir, name="hf", path=tmp_path / "reviews"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 4, 6)
    assert splits.class_names == ["negative", "positive"]


def test_a_data_file_is_read_by_load_dataset_and_errors_name_the_column(tmp_path, tok_dir):
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in ROWS * 10))
    splits = load_data(text_cfg(tok_dir, name="hf", path=path))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40 and splits.class_names == ["neg", "pos"]
    with pytest.raises(DataError, match=r"no column `reveiw`\. Did you mean `review`"):
        load_data(DataConfig(name="hf", path=path, text_column="reveiw", label_column="sentiment",
                             tokenizer=str(tok_dir)))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a saved dataset"):
        load_data(text_cfg(tok_dir, name="hf", path=tmp_path / "plain"))


def test_a_run_on_users_data_is_named_after_it(tmp_path):
    from distill.recipes.classify.config import load_config

    path = table(tmp_path / "support_tickets.csv", ROWS * 3)
    cfg = load_config(None, ["data.name=csv", f"data.path={path}", "data.text_column=review",
                             "data.label_column=sentiment"])
    assert cfg.name == "support_tickets" and cfg.data.title == "support_tickets"
    named = load_config(None, ["name=mine", "data.name=csv", f"data.path={path}", "data.text_column=review",
                               "data.label_column=sentiment"])
    assert named.name == "mine"
    assert DataConfig(name="hf", path="/cache/datasets/tickets-0123456789abcdef",
                      text_column="t").title == "tickets"
    # a file named after its split is named by its folder: the report says "flowers", not "train"
    assert DataConfig(name="images", path="/data/flowers/train/").title == "flowers"
    assert DataConfig(name="csv", path="/data/reviews/train.csv").title == "reviews"


def test_distill_run_takes_a_dataset_object(tmp_path, monkeypatch):
    import distill
    from distill.recipes.classify import pipeline

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    seen = {}
    monkeypatch.setattr(pipeline, "run", lambda cfg, resume=False: seen.setdefault("cfg", cfg) and tmp_path)
    ds = datasets.Dataset.from_dict({"review": [t for t, _ in ROWS], "sentiment": [s for _, s in ROWS]})
    distill.run(overrides={"data.text_column": "review", "data.label_column": "sentiment"}, dataset=ds)
    cfg = seen["cfg"]
    assert cfg.data.name == "hf" and Path(cfg.data.path).parent == tmp_path / "cache" / "datasets"
    assert cfg.name == "dataset" and datasets.load_from_disk(str(cfg.data.path))["review"][0] == ROWS[0][0]


def _images(root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(shapes):
            base = 200 if cls == "cat" else 30  # the classes differ in brightness
            pixels = np.clip(rng.normal(base, 10, (h, w) if mode == "L" else (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / cls / f"{i}.png")
    return root


def test_an_image_folder_is_a_dataset_with_its_class_names(tmp_path):
    root = _images(tmp_path / "pets", {"cat": [(6, 5)] * 10, "dog": [(6, 5)] * 10})
    cfg = DataConfig(name="images", path=root, val_fraction=0.2, test_fraction=0.2)
    splits = load_data(cfg)
    assert splits.class_names == ["cat", "dog"] and splits.input_shape == (1, 5, 6) and cfg.title == "pets"
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20 and splits.modality == "images"
    x, y = splits.test.inputs, splits.test.labels  # brightness tells the classes apart after standardising
    assert bool(((x.mean((1, 2, 3)) > 0) == (y == 0)).all())


def test_images_of_other_sizes_are_named_or_resized_and_split_folders_used(tmp_path):
    root = _images(tmp_path / "train", {"cat": [(6, 5), (8, 8)], "dog": [(6, 5)] * 2})
    with pytest.raises(DataError, match=r"1\.png is 8×8 pixels, the first image 6×5; set data.image_size"):
        load_data(DataConfig(name="images", path=root))
    test = _images(tmp_path / "test", {"cat": [(3, 3)] * 2, "dog": [(3, 3)]}, mode="RGB")
    splits = load_data(DataConfig(name="images", path=root, image_size=[4, 4], test_path=test, val_fraction=0.25))
    assert splits.input_shape == (1, 4, 4) and len(splits.test) == 3  # RGB test images made grayscale like training
    bad = _images(tmp_path / "bad", {"bird": [(6, 5)]})
    with pytest.raises(DataError, match=r"class folder\(s\) \['bird'\] that the training folder lacks"):
        load_data(DataConfig(name="images", path=root, image_size=[4, 4], test_path=bad))


def test_an_npz_file_of_arrays_with_its_own_test_file(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    np.savez(tmp_path / "train.npz", inputs=x, labels=y, class_names=np.array(["no", "yes"]))
    np.savez(tmp_path / "test.npz", inputs=x[:6], labels=y[:6])
    splits = load_data(DataConfig(name="npz", path=tmp_path / "train.npz", test_path=tmp_path / "test.npz"))
    assert splits.class_names == ["no", "yes"] and len(splits.test) == 6 and len(splits.train) == 36
    np.savez(tmp_path / "bad.npz", inputs=x, targets=y)
    with pytest.raises(DataError, match=r"bad.npz has arrays \['inputs', 'targets'\]; it needs \['labels'\]"):
        load_data(DataConfig(name="npz", path=tmp_path / "bad.npz"))
    np.savez(tmp_path / "nan.npz", inputs=np.full((4, 2), np.nan), labels=np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="nan.npz: inputs hold NaN"):
        load_data(DataConfig(name="npz", path=tmp_path / "nan.npz"))


def test_a_class_label_keeps_the_datasets_own_ids_and_an_unlabelled_split_is_cut_from_train(tmp_path, tok_dir):
    names = ["World", "Sports", "Business"]  # not alphabetical: ids must stay the dataset's own
    features = datasets.Features({"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=names)})
    texts = [t for t, _ in ROWS] * 6
    train = datasets.Dataset.from_dict({"review": texts, "sentiment": [i % 3 for i in range(len(texts))]},
                                       features=features)
    unlabelled = datasets.Dataset.from_dict({"review": texts[:5], "sentiment": [-1] * 5}, features=features)
    datasets.DatasetDict(train=train, test=unlabelled).save_to_disk(str(tmp_path / "news"))
    splits = load_data(text_cfg(tok_dir, name="hf", path=tmp_path / "news", test_fraction=0.25))
    assert splits.class_names == names and len(splits.test) == 6  # cut from train, not the -1 rows
    assert sorted(set(splits.train.labels.tolist())) == [0, 1, 2]
