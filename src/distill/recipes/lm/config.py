"""Typed config of an LM distillation run (`distill lm`): YAML keys and `key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.core.config import (
    RunHeader,
    Strict,
    builtin_config,
    read_raw,
    read_yaml,
    source_name,
    validate_section,
)
from distill.core.errors import ConfigError
from distill.losses.config import TokenKDConfig
from distill.training.config import LMTrainConfig, OnPolicyConfig


class LoraConfig(Strict):
    r: int = Field(8, ge=1, description="LoRA rank of each adapter.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(None, description="Default: all linear layers.")


class TeacherAdaptConfig(Strict):
    """Fine-tune the teacher on the training blocks (next-token CE) before it teaches: the task-specific
    stage of DistilBERT and TinyBERT. A teacher that knows the corpus gives targets closer to it."""

    steps: int = Field(60, ge=1, description="Fine-tuning steps on the training blocks (next-token CE).")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the teacher's fine-tuning.")
    lora: LoraConfig | None = Field(None, description="Train adapters only (merged afterwards).")
    seed: int = Field(0, description="Fixed apart from train.seed, so students of every seed share one teacher.")


class TeacherEndpointConfig(Strict):
    """The teacher's top-k log-probs asked from an OpenAI-compatible server (`distill serve`, vLLM) that
    serves `teacher.model`, instead of computed in this process; they fill the same cache."""

    url: str = Field(description="The server's base URL with its API prefix, e.g. http://10.0.0.5:8000/v1.")
    model: str = Field(description="The model name the server knows the teacher by.")
    api_key_env: str | None = Field(None, description="Environment variable holding the server's key.")
    concurrency: int = Field(4, ge=1, description="Blocks asked at once.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one request may take before it is retried.")
    max_retries: int = Field(4, ge=0, description="Retries of a failed request (backing off) before the run stops.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"teacher.endpoint.url {v!r} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
        return v


class OtherTeacherConfig(Strict):
    """One more teacher (`teacher.others`): same tokenizer as `teacher.model`, used as given (no adapt)."""

    name: str = Field(min_length=1, description="What `teacher.route` values and the report call it.")
    model: str = Field(description="Model dir, hub id, or builtin:NAME (with endpoint: its tokenizer).")
    weight: float = Field(1.0, ge=0, description="Its share of the mix (normalised over all teachers).")
    endpoint: TeacherEndpointConfig | None = Field(None, description="Ask its top-k from a server instead.")


class LMTeacherConfig(Strict):
    model: str = Field("builtin:smollm2-135m-instruct", description="Model dir, hub id, or builtin:NAME.")
    name: str = Field("teacher", min_length=1, description="What `teacher.route` values call this teacher.")
    weight: float = Field(1.0, ge=0, description="Its share of the mix when there are `teacher.others`.")
    others: list[OtherTeacherConfig] = Field(default_factory=list, description=(
        "More teachers with the same tokenizer: each token learns from all of them, each divergence at its "
        "weight (teacher.weighting), or from the one its row names (teacher.route)."))
    weighting: Literal["fixed", "confidence"] = Field("fixed", description=(
        "fixed: the weights; confidence: weights × each teacher's probability of the actual next token."))
    route: str | None = Field(None, description=(
        "jsonl: the row key naming each row's teacher (teacher.name or an others' name); rows without it "
        "(or null) learn from the mix."))
    signal: Literal["live", "cached"] = Field("cached", description="cached: top-k log-probs computed once.")
    top_k: int = Field(64, ge=1, description="Tokens kept per position in the cache (4k + 2 bytes/token).")
    cache_dir: Path | None = Field(None, description="Default: <output_dir>/<name>/teacher_cache.")
    cache_rebuild: bool = Field(False, description="Replace a mismatched cache / recompute bad shards.")
    batch_size: int = Field(8, ge=1, description="Blocks per teacher forward when caching and evaluating.")
    adapt: TeacherAdaptConfig | None = Field(None, description="Fine-tune the teacher on the corpus first.")
    endpoint: TeacherEndpointConfig | None = Field(None, description=(
        "Build the top-k cache from a server instead of this process (`distill lm-cache` then never loads "
        "the teacher; the cache is kept, so later runs need no server)."))

    @model_validator(mode="after")
    def _endpoint(self) -> LMTeacherConfig:
        served = self.endpoint is not None or any(o.endpoint is not None for o in self.others)
        if served and self.signal != "cached":
            raise ValueError("teacher.endpoint fills the top-k cache: it needs teacher.signal=cached")
        if self.endpoint is not None and self.adapt is not None:
            raise ValueError("teacher.endpoint with teacher.adapt: adapt the teacher where it is served")
        return self

    @model_validator(mode="after")
    def _several(self) -> LMTeacherConfig:
        names = [self.name] + [o.name for o in self.others]
        if len(set(names)) < len(names):
            raise ValueError(f"teacher names must differ (teacher.name and teacher.others[].name): {names}")
        if self.others and self.weight + sum(o.weight for o in self.others) <= 0:
            raise ValueError("every teacher weight is 0 (teacher.weight, teacher.others[].weight): give one > 0")
        if self.route is not None and not self.others:
            raise ValueError("teacher.route picks among several teachers: add teacher.others")
        return self

    @property
    def weights(self) -> dict[str, float]:
        """Each teacher's configured weight, by name."""
        return {self.name: self.weight, **{o.name: o.weight for o in self.others}}


class LMStudentConfig(Strict):
    model: str | None = Field(None, description="A model dir/id; default: built from the teacher.")
    tokenizer: str | None = Field(None, description=(
        "The student's own tokenizer (dir, hub id, or builtin:gemma3-270m) when it differs from the teacher's: "
        "the student is built from student.config with this vocabulary and taught at aligned positions (kd.cross)."))
    layers: list[int] | None = Field(None, description="Teacher layers to copy (DistilBERT-style init).")
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="Teacher-config overrides for a student from scratch, "
                                   "e.g. {num_hidden_layers: 4, hidden_size: 256}.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters on the student instead of all its "
                                    "weights (with student.model).")

    @model_validator(mode="after")
    def _one_way(self) -> LMStudentConfig:
        ways = [self.model is not None, self.layers is not None, bool(self.config)]
        if sum(ways) != 1:
            raise ValueError("give exactly one of student.model, student.layers or student.config")
        return self


class LMDataConfig(Strict):
    """The corpus and how it is cut into training and held-out blocks."""

    corpus: Literal["kjv", "text", "jsonl"] = Field("kjv", description="kjv: the built-in KJV Bible; text: a "
                                                    "plain text file; jsonl: text, prompt/response or chat rows.")
    path: Path | None = Field(None, description="Text file (text, kjv) or JSONL file (jsonl).")
    seq_len: int = Field(128, ge=8, description="Tokens per training block.")
    packing: bool = Field(False, description="jsonl: pack rows end to end instead of one row per block.")
    response_only: bool = Field(True, description="jsonl prompt/response and chat: loss on responses only.")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="Share of the corpus held out for evaluation.")
    holdout: Literal["documents", "blocks"] | None = Field(None, description=(
        "What is held out for evaluation: whole documents (text: pieces between data.document_separator, "
        "or the file's last part without one; "
        "jsonl: rows, or rows sharing data.group_column; kjv: verses), so no held-out text was trained on, "
        "or random blocks of the packed corpus. Null: documents for text and jsonl, blocks for kjv (the "
        "built-in job's verses are one line each; its benchmarks held out random blocks)."))
    document_separator: str | None = Field(None, min_length=1, description=(
        "text corpus: what separates documents (e.g. a line `<|doc|>`), each ended by EOS in training; "
        "without it the file is one text, and its last val_fraction is held out."))
    group_column: str | None = Field(None, description="jsonl: rows with the same value of this key are one "
                                     "document (held out together).")
    max_blocks: int | None = Field(None, ge=2, description=(
        "Use at most this many blocks of the corpus, drawn at random: with holdout=blocks the held-out "
        "val_fraction is taken from them (training gets the rest); with documents, all train."))
    val_blocks: int | None = Field(64, ge=1, description="Evaluate on at most this many held-out blocks.")
    seed: int = Field(0, description="Seeds which documents or blocks are held out and which blocks train.")

    @property
    def held_out_by(self) -> str:
        """`holdout`, or its default for the corpus."""
        return self.holdout or ("blocks" if self.corpus == "kjv" else "documents")


class LMRunConfig(RunHeader):
    name: str = Field("lm", min_length=1, description="The run directory's name under output_dir.")
    renamed = {"loss.kind": "kd.divergence", "loss.beta": "kd.jsd_beta", "loss.alpha": "kd.skew", "loss": "kd"}
    teacher: LMTeacherConfig = Field(default_factory=LMTeacherConfig)
    student: LMStudentConfig = Field(default_factory=lambda: LMStudentConfig(layers=[0]))
    data: LMDataConfig = Field(default_factory=LMDataConfig)
    kd: TokenKDConfig = Field(default_factory=TokenKDConfig)
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)
    baseline: bool = Field(True, description="Also train the student with plain next-token CE.")

    @model_validator(mode="after")
    def _checks(self) -> LMRunConfig:
        if self.on_policy.fraction > 0 and self.teacher.signal == "cached":
            raise ValueError("on_policy.fraction > 0 needs the teacher to score student samples: "
                             "set teacher.signal=live")
        if self.kd.ratio == 0:
            raise ValueError("kd.ratio is 0: the 'distilled' student would learn from next-token CE alone, as the "
                             "baseline does, and the report would call it distilled; set kd.ratio > 0 (0.5 is "
                             "the measured default)")
        if self.kd.warm_start >= self.train.steps:
            raise ValueError(f"kd.warm_start ({self.kd.warm_start}) must be below train.steps "
                             f"({self.train.steps}), or the divergence never starts")
        if self.teacher.route is not None and self.data.corpus != "jsonl":
            raise ValueError(f"teacher.route names a row key: it needs data.corpus=jsonl (not {self.data.corpus})")
        if self.on_policy.fraction > 0 and self.on_policy.prompt_tokens >= self.data.seq_len:
            raise ValueError("on_policy.prompt_tokens must be shorter than data.seq_len")
        return self


def load_lm_config(path: str | Path | dict[str, Any] | None = None,
                   overrides: list[str] | None = None) -> LMRunConfig:
    """Read an LM YAML config (a file, a mapping, or None: the built-in KJV job), apply overrides, validate."""
    raw = read_raw(path, overrides, lambda: read_yaml(builtin_config("lm_kjv.yaml")))
    cfg = validate_section(LMRunConfig, raw, source_name(path, "built-in LM default"), overrides)
    if cfg.data.corpus in ("text", "jsonl") and cfg.data.path is None:
        raise ConfigError(f"`data.path`: required when data.corpus is {cfg.data.corpus}.")
    if cfg.data.path is not None and not Path(cfg.data.path).is_file():
        raise ConfigError(f"`data.path`: {cfg.data.path} does not exist. Fix the path or remove the key.")
    return cfg
