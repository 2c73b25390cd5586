"""Typed config of a teacher-generated-data run (`distill textkd`) and of `distill generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from distill.core.config import (
    RunHeader,
    Strict,
    builtin_config,
    read_raw,
    read_yaml,
    source_name,
    validate_section,
)
from distill.core.credentials import one_source
from distill.core.errors import ConfigError
from distill.losses.config import TokenKDConfig
from distill.training.config import LMTrainConfig


class TextTeacherConfig(Strict):
    backend: Literal["local", "openai", "serve"] = Field(
        "serve", description="local: this process; openai: any OpenAI-compatible endpoint at base_url; "
        "serve: start `distill serve` on 127.0.0.1 and call it over HTTP.")
    model: str = Field("builtin:smollm2-135m-instruct", description="Model dir/hub id/builtin (local, serve); "
                       "the endpoint's model name (openai).")
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Env var holding the API key (never the key).")
    api_key_file: Path | None = Field(None, description="File holding only the API key (e.g. a Docker/Kubernetes "
                                      "secret), instead of api_key_env.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one request may take before it is retried.")
    max_retries: int = Field(4, ge=0, description="Retries of a failed request (backing off) before the run stops.")
    requests_per_s: float | None = Field(None, gt=0, description="Client-side rate limit.")
    max_batch: int = Field(8, ge=1, description="local/serve: requests decoded together.")
    price_prompt: float = Field(0.0, ge=0, description="Price per 1M prompt tokens.")
    price_completion: float = Field(0.0, ge=0, description="Price per 1M completion tokens.")
    finetune: LMTrainConfig | None = Field(
        None, description="Fine-tune the teacher (local weights) on the kept labelled examples before it "
        "answers the eval set and the unlabelled pool: e.g. {steps: 60, batch_size: 8}. None: as it is.")

    @model_validator(mode="after")
    def _url(self) -> TextTeacherConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("teacher.base_url is required with teacher.backend=openai")
        return self

    @model_validator(mode="after")
    def _one_key_source(self) -> TextTeacherConfig:
        """A key file replaces the default variable; naming both explicitly is an error."""
        if self.api_key_file is not None:
            explicit_env = self.api_key_env if "api_key_env" in self.model_fields_set else None
            one_source(explicit_env, self.api_key_file, "teacher.api_key_env", "teacher.api_key_file")
            self.api_key_env = None
        return self


class SamplingConfig(Strict):
    max_tokens: int = Field(48, ge=1, description="Longest response the teacher writes (tokens).")
    temperature: float = Field(0.0, ge=0, description="0: greedy; above: sampled.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this mass.")
    n: int = Field(1, ge=1, description="Responses per prompt.")
    seed: int | None = Field(0, description="Sent with each request (per prompt and sample), so sampled answers "
                             "repeat; null: none sent.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Also keep the top-k log-probs of each token.")


class Shot(Strict):
    input: str = Field(description="The example's input, as the template's {input}.")
    rationale: str = Field(description="The reasoning the teacher is shown for it.")
    label: str = Field(description="Its answer.")


class PromptConfig(Strict):
    """How the teacher is asked: a system message, few-shot turns, then the filled template."""

    system: str | None = Field(None, description="The system message (none: the chat template's default).")
    shots: list[Shot] = Field(default_factory=list, description="Worked examples, each a user turn and the "
                              "reply response_format writes.")
    template: str = Field("{input}", description="The user turn; fields of the data row, e.g. {input}.")
    eval_template: str | None = Field(None, description="Template for the eval set (default: template).")
    response_format: str = Field("Reason: {rationale}\nAnswer: {label}", description="Format of shot replies.")


class TextDataConfig(Strict):
    source: Literal["bbc_news", "jsonl"] = Field("bbc_news", description="bbc_news: the built-in BBC News "
                                                 "articles; jsonl: your rows at data.path.")
    path: Path | None = Field(None, description="bbc_news: the data folder (default: the package); "
                              "jsonl: rows with `id`, `input`, `label`.")
    train_examples: int = Field(150, ge=1, description="Labelled training examples (stratified draw).")
    eval_examples: int = Field(100, ge=1, description="Held-out examples every student and the teacher answer.")
    max_words: int = Field(40, ge=1, description="Inputs are cut to their first N words.")
    unlabeled_examples: int = Field(0, ge=0, description="A pool of further inputs, drawn at random from the "
                                    "rest of the source, whose labels no student sees: the teacher labels "
                                    "(and rationalises) them. Their gold labels only score the teacher's.")
    unlabeled_path: Path | None = Field(None, description="A pool from a JSONL file of rows with `id` and "
                                        "`input` (no labels needed), instead of unlabeled_examples.")
    seed: int = Field(0, description="Seeds the draw of training, held-out and pool examples.")

    @model_validator(mode="after")
    def _one_pool(self) -> TextDataConfig:
        if self.unlabeled_path is not None and self.unlabeled_examples:
            raise ValueError("data.unlabeled_examples and data.unlabeled_path both name an unlabelled pool; "
                             "keep one")
        return self


class TextStudentConfig(Strict):
    model: str | None = Field(None, description="The model whose layers build the student (dir, hub id, "
                              "builtin); default teacher.model. Required with an openai teacher.")
    layers: list[int] = Field(default_factory=lambda: [0, 10, 20, 29],
                              description="Teacher layers the student is built from.")
    seq_len: int = Field(160, ge=16, description="Longest prompt + response a training row may have (tokens).")
    price_prompt: float = Field(0.0, ge=0, description="The student's serving price per 1M prompt tokens (for "
                                "the report's cost comparison).")
    price_completion: float = Field(0.0, ge=0, description="The student's serving price per 1M completion tokens.")


class TextTeacherJob(RunHeader):
    """What the jobs with a text teacher share (`distill textkd`, `distill task`): where the student's
    weights come from, and what an endpoint teacher cannot do."""

    def check_finetune(self) -> None:
        """Refused before any compute (`distill generate` never fine-tunes)."""
        if self.teacher.finetune is not None and self.teacher.backend == "openai":  # type: ignore[attr-defined]
            raise ConfigError("teacher.finetune needs the teacher's weights, which an openai endpoint does not "
                              "give: set teacher.finetune=null, or use backend local or serve with a local model.")

    @property
    def student_source(self) -> str:
        teacher, student = self.teacher, self.student  # type: ignore[attr-defined]
        if teacher.backend == "openai" and student.model is None:
            raise ConfigError("student.model is required with teacher.backend=openai: an endpoint gives "
                              "text, not weights to build the student from. Name a local model.")
        return student.model or teacher.model


class TextKDConfig(TextTeacherJob):
    """The whole job; `distill generate` reads only teacher, data, prompt, sampling, concurrency."""

    name: str = Field("bbc-step-by-step", min_length=1, description="The run directory's name under output_dir.")
    renamed = {"logit_loss": "kd.divergence", "logit_ratio": "kd.ratio"}
    teacher: TextTeacherConfig = Field(default_factory=TextTeacherConfig)
    data: TextDataConfig = Field(default_factory=TextDataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    concurrency: int = Field(4, ge=1, description="Teacher requests in flight.")
    check: str | None = Field(None, description="module:function deciding if a record is kept (default: "
                              "the parsed answer equals the gold label).")
    student: TextStudentConfig = Field(default_factory=TextStudentConfig)
    kinds: list[Literal["label_only", "pseudo_label", "seq_kd", "step_by_step", "token_kd"]] = Field(
        default_factory=lambda: ["label_only", "seq_kd", "step_by_step"],
        description="label_only: the gold labels of the labelled examples alone; pseudo_label: those and the "
        "teacher's answers on the unlabelled pool; seq_kd, step_by_step and token_kd learn from the teacher's "
        "text on both. token_kd: seq_kd plus a divergence to the teacher's top-k log-probs (needs "
        "sampling.top_logprobs > 0 and a student sharing the teacher's tokenizer).")
    kd: TokenKDConfig = Field(default_factory=TokenKDConfig, description="token_kd: the divergence to the "
                              "teacher's top-k log-probs and its share of the loss (the rest: CE on its text).")
    rationale_weight: float = Field(1.0, ge=0, description="λ of step-by-step: L_label + λ·L_rationale.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Each arm (kind) trains once per seed; "
                             "verdicts weigh every seed.")
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)
    label_max_tokens: int = Field(8, ge=1, description="Tokens a [label]-task student may generate.")

    @model_validator(mode="after")
    def _pool_for_pseudo_label(self) -> TextKDConfig:
        if "pseudo_label" in self.kinds and not (self.data.unlabeled_examples or self.data.unlabeled_path):
            raise ValueError("kinds has pseudo_label, which learns from the teacher's answers on an unlabelled "
                             "pool: set data.unlabeled_examples (e.g. 1000) or data.unlabeled_path")
        return self

    @model_validator(mode="after")
    def _logprobs_for_token_kd(self) -> TextKDConfig:
        if "token_kd" in self.kinds and self.kd.ratio == 0:
            raise ValueError("kinds has token_kd with kd.ratio 0, which is seq_kd under another name: set kd.ratio "
                             "> 0 (0.5 is the default), or train seq_kd")
        if "token_kd" in self.kinds and self.sampling.top_logprobs == 0:
            raise ValueError("kinds has token_kd, which trains on the teacher's log-probs: set "
                             "sampling.top_logprobs (e.g. 5)")
        return self


def load_textkd_config(path: str | Path | dict[str, Any] | None = None,
                       overrides: list[str] | None = None) -> TextKDConfig:
    """Read a text-KD YAML config (a file, a mapping, or None: the built-in BBC News job), apply overrides,
    validate."""
    raw = read_raw(path, overrides, lambda: read_yaml(builtin_config("bbc_step_by_step.yaml")))
    return validate_section(TextKDConfig, raw, source_name(path, "built-in BBC News step-by-step job"), overrides)
