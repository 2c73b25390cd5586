"""Which dataset to load and how to split it: built-in or CSV, label budget, transfer set, text tokenization."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from distill.core.config import Strict


class DataConfig(Strict):
    name: Literal["digits", "mnist5k", "fashion_mnist", "spoken_digits", "bbc_news", "csv", "jsonl"] = "digits"
    path: Path | None = Field(None, description="Directory (fashion_mnist, bbc_news) or file (csv, jsonl).")
    label_column: str | int = Field(-1, description="CSV column holding the label (name or position).")
    text_column: str | None = Field(None, description="csv, jsonl: the column (key) holding each example's "
                                    "text, for text classification (the label column may then hold class names "
                                    "or ids).")
    val_fraction: float = Field(0.1, gt=0, lt=1)
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
    seed: int = 0

    @model_validator(mode="after")
    def _text_column_is_for_tables(self) -> DataConfig:
        if self.text_column is not None and self.name not in ("csv", "jsonl"):
            raise ValueError(f"data.text_column names a column of a CSV or JSONL file; data.name is {self.name}: "
                             "set data.name=csv or jsonl (with data.path), or remove data.text_column")
        if self.name == "jsonl" and self.text_column is None:
            raise ValueError("data.name=jsonl reads texts: set data.text_column (and data.label_column) to the "
                             "keys of each row's text and label")
        return self
