"""Which dataset to load and how to split it: built-in or CSV, label budget, transfer set, text tokenization."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from distill.core.config import Strict


SPLIT_NAMES = ("train", "training", "data", "all", "full")  # file names that say nothing of the data


class DataConfig(Strict):
    name: Literal["digits", "mnist5k", "fashion_mnist", "spoken_digits", "bbc_news", "csv", "jsonl", "hf", "npz",
                  "images"] = Field("digits", description=(
        "A built-in dataset (digits, mnist5k, fashion_mnist, spoken_digits, bbc_news) or the format of your own "
        "at data.path (csv, jsonl, hf, npz, images)."))
    path: Path | None = Field(None, description=(
        "Directory (fashion_mnist, bbc_news; images: <class>/*.png folders) or file (csv, jsonl; npz with "
        "`inputs` and `labels`): the training data, or all of it when no split files are given; hf: a dataset "
        "saved with save_to_disk, a .csv/.json/.jsonl/.parquet file, or a hub id."))
    val_path: Path | None = Field(None, description="csv and jsonl texts, npz, images: your own validation "
                                  "split (same columns, arrays or class folders); else data.val_fraction of "
                                  "data.path.")
    test_path: Path | None = Field(None, description="Your own test split, as data.val_path; else "
                                   "data.test_fraction of data.path.")
    image_size: list[int] | None = Field(None, min_length=2, max_length=2, description=(
        "images: resize every image to [H, W]; without it they must all have the same size."))
    label_column: str | int = Field(-1, description="CSV column holding the label (name or position).")
    text_column: str | None = Field(None, description="csv, jsonl: the column (key) holding each example's "
                                    "text, for text classification (the label column may then hold class names "
                                    "or ids).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the training data held out for "
                                "validation when no val_path is given (stratified).")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Used when no test split ships.")
    limit: int | None = Field(None, gt=0, description="Use only this many training examples.")
    label_fraction: float = Field(1.0, gt=0, le=1, description=(
        "Keep labels on this stratified share of the training and validation splits; the rest of the "
        "training split becomes unlabelled inputs that the teacher scores (a transfer set)."))
    unlabeled: Path | None = Field(None, description=(
        "Extra inputs without labels, scored by the teacher (a transfer set): .npy / .npz (array "
        "`inputs`) in the units of the dataset's files, or .txt with one text per line for text data."))
    tokenizer: str | None = Field(None, description="Text data: tokenizer dir or hub id; default "
                                  "sentence-transformers/all-MiniLM-L6-v2.")
    max_length: int = Field(128, ge=2, description="Text data: tokens per example (padded or truncated).")
    seed: int = Field(0, description="Seeds the splits, the label subset and the data's shuffles.")

    @property
    def title(self) -> str:
        """What the data is called in reports and run names: the user's file or dataset, else the built-in name."""
        if self.name in USER_DATA and self.path is not None:
            path = Path(str(self.path).rstrip("/"))
            stem = re.sub(r"-[0-9a-f]{16}$", "", path.stem)  # a dataset saved by distill.run(dataset=)
            if stem.lower() in SPLIT_NAMES and path.parent.name:  # data/flowers/train.csv: "flowers"
                stem = path.parent.name
            return stem or self.name
        return self.name

    @model_validator(mode="after")
    def _text_column_is_for_tables(self) -> DataConfig:
        if self.text_column is not None and self.name not in USER_DATA:
            raise ValueError(f"data.text_column names a column of a CSV or JSONL file or a dataset; data.name is "
                             f"{self.name}: set data.name=csv, jsonl or hf (with data.path), or remove "
                             "data.text_column")
        if self.name in ("jsonl", "hf") and self.text_column is None:
            raise ValueError(f"data.name={self.name} reads texts: set data.text_column (and data.label_column) "
                             "to the names of each row's text and label")
        for key in ("val_path", "test_path"):
            text_table = self.name in ("csv", "jsonl") and self.text_column is not None
            if getattr(self, key) is not None and not (text_table or self.name in ("npz", "images")):
                raise ValueError(f"data.{key} is a split file of a CSV or JSONL text table (with data.text_column), "
                                 "an npz file or an image folder; a hf dataset brings its own splits")
        if self.image_size is not None and (self.name != "images" or min(self.image_size) < 1):
            raise ValueError("data.image_size is [H, W] in pixels (both >= 1), for data.name=images")
        return self


USER_DATA = ("csv", "jsonl", "hf", "npz", "images")
