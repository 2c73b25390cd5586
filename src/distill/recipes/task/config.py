"""Typed config of a task job (`distill task`): teach a small model a task from prompts, by the
arms that learn from written answers (answer_sft, seq_kd) and from its own (on_policy, mixed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from distill.core.config import (
    Strict,
    builtin_config,
    read_raw,
    read_yaml,
    source_name,
    validate_section,
)
from distill.core.errors import ConfigError
from distill.losses.config import TokenKDConfig
from distill.recipes.textkd.config import SamplingConfig, TextTeacherConfig, TextTeacherJob
from distill.training.config import LMTrainConfig

Arm = Literal["answer_sft", "seq_kd", "on_policy", "mixed"]
ARMS_TEXT = ("answer_sft: SFT on the reference answers; seq_kd: SFT on the teacher's answers to the training "
             "prompts; on_policy: the student answers the prompts and the teacher scores every token of its "
             "answers (forward KL by default, kd.divergence); mixed: on_policy for a share on_policy.mix of the "
             "steps and the teacher's answers, scored by the teacher, for the rest (GKD's λ).")


class TaskTeacherConfig(TextTeacherConfig):
    top_k: int = Field(20, ge=1, description="serve/openai: log-probs of the k most likely tokens the server "
                       "returns for each answer token (OpenAI's API allows up to 20; vLLM and distill serve more); "
                       "the rest of the mass is one bin.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "local: the teacher's weights when it scores the students' answers. auto: bfloat16 where the hardware "
        "multiplies it fast (a CUDA GPU with bf16, a CPU with AMX or AVX-512 BF16: 0.43× a float32 forward "
        "there, benchmarks/bf16_teacher.py), else float32."))
    logprobs: Literal["top_k", "sampled"] = Field("top_k", description=(
        "serve/openai: what the server returns for each answer token: top_k alternatives, or only the sampled "
        "token's log-prob (sampled: the on_policy arm then learns by the one-sample estimate of reverse KL)."))


class TaskDataConfig(Strict):
    source: str = Field("builtin:addition", description="The prompts: builtin:addition (sums of 2-3 digit "
                        "numbers, answered with the working), a JSONL file of prompt rows, or a `datasets` source "
                        "(saved directory, data file, hub id).")
    eval_source: str | None = Field(None, description="Held-out prompts (same formats); default: eval_examples "
                                    "rows of `source` that training never sees.")
    train_examples: int = Field(400, ge=1, description="Training prompts (the first N of source, after the "
                                "held-out ones when eval_source is not given).")
    eval_examples: int = Field(100, ge=1, description="Held-out prompts with references: teacher and students "
                               "answer them greedily and are scored.")
    answered: int | None = Field(None, ge=1, description="Training prompts whose reference answers the job may "
                                 "use (the first N; None: every one that has one). answer_sft and teacher.finetune "
                                 "learn from those; the other arms learn from every training prompt, as when "
                                 "answers are costly and prompts are not.")
    seed: int = Field(0, description="builtin tasks: the seed of the generated prompts.")


class ScoreConfig(Strict):
    score: Literal["exact", "regex", "check", "rouge"] = Field("regex", description=(
        "How an answer is scored against the row's reference: exact (normalised), regex (the answer `pattern` "
        "extracts), check (your function), rouge (ROUGE-L F1, for free text)."))
    pattern: str | None = Field(r"answer:\s*(-?\d+)", description="regex: the answer in a text (group 1, last match).")
    check: str | None = Field(None, description="check: module:function(row, output) -> bool.")


class TaskStudentConfig(Strict):
    model: str | None = Field(None, description="The model whose layers build the student (dir, hub id, builtin); "
                              "default teacher.model. Required with an openai teacher.")
    layers: list[int] = Field(default_factory=lambda: [0], description="Teacher layers the student is built from.")
    seq_len: int = Field(160, ge=16, description="Longest prompt + answer a training row may have (tokens).")


class OnPolicySettings(Strict):
    mix: float = Field(0.5, gt=0, lt=1, description="mixed arm: share of steps on the student's own answers (λ).")
    off_policy: Literal["teacher", "reference"] = Field("teacher", description=(
        "mixed arm: the written answers of its other steps, the teacher's (every training prompt) or the "
        "references (the answered prompts only), each scored by the teacher."))
    start: float = Field(0.0, ge=0, lt=1, description=(
        "Share of train.steps before the student's first own answer: until then the on_policy and mixed arms "
        "learn written answers (on_policy.off_policy's), scored token by token by the teacher, the supervised "
        "start on-policy distillation is usually given (0: on-policy from the first step). With reverse_kl or jsd, "
        "set kd.warm_start to the same steps: CE on those answers (reverse KL on them from an untrained student "
        "does not learn)."))
    max_new_tokens: int = Field(64, ge=1, description="Longest answer the student writes in training.")
    temperature: float = Field(1.0, gt=0, description="The student's sampling temperature for its own answers.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens up to this mass.")
    prefetch: bool = Field(False, description="Write and score the next step's answers while this step trains "
                           "(one step behind strictly on-policy): hides a teacher server's latency.")


class TaskConfig(TextTeacherJob):
    name: str = Field("addition", min_length=1, description="The run directory's name under output_dir.")
    teacher: TaskTeacherConfig = Field(default_factory=lambda: TaskTeacherConfig(backend="local"))
    student: TaskStudentConfig = Field(default_factory=TaskStudentConfig)
    data: TaskDataConfig = Field(default_factory=TaskDataConfig)
    task: ScoreConfig = Field(default_factory=ScoreConfig)
    arms: list[Arm] = Field(default_factory=lambda: ["answer_sft", "seq_kd", "on_policy"], description=ARMS_TEXT)
    on_policy: OnPolicySettings = Field(default_factory=OnPolicySettings)
    kd: TokenKDConfig = Field(default_factory=lambda: TokenKDConfig(divergence="forward_kl", ratio=1.0),
                              description="on_policy and mixed: the divergence to the teacher on every answer token "
                              "and its share of the loss (the rest: CE on the tokens, which on the student's own "
                              "answers teaches nothing: keep ratio 1). forward_kl by default: reverse KL and JSD "
                              "weigh each token by the student's own probability, so a student that cannot yet "
                              "write an answer barely moves (a 30-step check on bbc_topics and addition: forward KL "
                              "reached the answers' form, reverse KL did not; README).")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=64), description=(
        "How the teacher writes seq_kd's (and mixed's) answers to the training prompts."))
    answer_tokens: int = Field(64, ge=1, description="Longest answer teacher and students write when scored.")
    concurrency: int = Field(8, ge=1, description="Teacher requests in flight (a local or served teacher decodes up "
                             "to teacher.max_batch of them as one batch).")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Each arm (kind) trains once per seed; "
                             "verdicts weigh every seed.")
    train: LMTrainConfig = Field(default_factory=lambda: LMTrainConfig(steps=200, batch_size=8, eval_every=50,
                                                                     save_every=50))

    @model_validator(mode="after")
    def _arms(self) -> TaskConfig:
        if not self.arms:
            raise ValueError("arms is empty: name at least one of answer_sft, seq_kd, on_policy, mixed")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms names one twice ({self.arms}); each arm runs once per seed")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"seeds must be distinct and at least one ({self.seeds})")
        return self

    def learns_written(self, arm: str) -> bool:
        """Whether an arm scored by the teacher also learns written answers: mixed on its off-policy
        steps, on_policy during its supervised start (on_policy.start)."""
        return arm == "mixed" or (arm == "on_policy" and self.on_policy.start > 0)

    def check_teacher(self) -> None:
        """What the teacher settings cannot do, refused before any compute."""
        if self.teacher.logprobs == "sampled":
            if self.teacher.backend == "local":
                raise ConfigError("teacher.logprobs=sampled is for servers that return only the sampled token's "
                                  "log-prob; a local teacher gives every token's: set teacher.logprobs=top_k.")
            if "mixed" in self.arms or self.on_policy.start or self.kd.divergence != "reverse_kl" or \
                    self.kd.ratio != 1.0:
                raise ConfigError("teacher.logprobs=sampled estimates reverse KL from the tokens the student "
                                  "wrote, so it trains the on_policy arm only, with kd.divergence=reverse_kl and "
                                  "kd.ratio=1 and on_policy.start=0 (written answers are not the student's samples); "
                                  f"arms are {self.arms}, on_policy.start={self.on_policy.start}, kd.divergence={self.kd.divergence}, kd.ratio={self.kd.ratio}.")
        self.check_finetune()

    def scoring_dtype(self) -> str:
        """The local teacher's weights when it scores answers (`teacher.dtype` resolved): float32 | bfloat16."""
        from distill.core.distributed import fast_bfloat16

        if self.teacher.dtype == "auto":
            return "bfloat16" if fast_bfloat16(self.device) else "float32"
        return self.teacher.dtype


def load_task_config(path: str | Path | dict[str, Any] | None = None,
                     overrides: list[str] | None = None) -> TaskConfig:
    """Read a task job's YAML config (a file, a mapping, or None: the built-in addition job), apply
    overrides, validate."""
    raw = read_raw(path, overrides, lambda: read_yaml(builtin_config("task_addition.yaml")))
    return validate_section(TaskConfig, raw, source_name(path, "built-in addition task job"), overrides)
