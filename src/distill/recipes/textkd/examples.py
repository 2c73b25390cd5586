"""Training data from teacher text: sequence-level KD and distilling step-by-step are dataset
transforms followed by ordinary training (`distill.training.lm.fit_lm` with plain CE).

Each kind turns examples (`{"id", "input", "label", "response", "rationale"}`) into prompt/response
rows for the student:
  label_only    "[label] <input>" → the label (plain fine-tuning: no teacher text);
  pseudo_label  the same rows, where a pool example's label is the teacher's answer;
  seq_kd        "<input>" → the teacher's whole response (rationale and answer);
  step_by_step  "[label] <input>" → the label, and "[rationale] <input>" → the teacher's rationale
                with weight λ: loss = L_label + λ·L_rationale (Hsieh et al., 2023). At inference only
                the `[label]` task runs, so rationales cost nothing at serving time.

Every row's target tokens share its weight equally (a per-example mean), so a 40-token rationale
does not drown a 1-token label.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.core.errors import ConfigError
from distill.data.tokens import TokenBlocks, encode_rows

KINDS = ("label_only", "pseudo_label", "seq_kd", "step_by_step")  # token_kd: distill.teachers.logprobs
LABEL_TASK = "[label] "
RATIONALE_TASK = "[rationale] "


def task_rows(examples: list[dict[str, Any]], kind: str, rationale_weight: float = 1.0) -> list[dict[str, Any]]:
    """Prompt/response rows (with a `weight`) that train a student the `kind` way."""
    if kind in ("label_only", "pseudo_label"):  # the same task; pseudo_label's examples include the pool
        return [label_row(e) for e in examples]
    if kind == "seq_kd":
        return [{"prompt": e["input"], "response": e["response"], "weight": 1.0} for e in examples]
    if kind == "step_by_step":
        return [label_row(e) for e in examples] + [
            {"prompt": RATIONALE_TASK + e["input"], "response": e["rationale"], "weight": rationale_weight}
            for e in examples if e.get("rationale")]
    raise ConfigError(f"Unknown training kind {kind!r}; choose one of {', '.join(KINDS)}.")


def label_row(example: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": label_prompt(example["input"]), "response": example["label"], "weight": 1.0}


def label_prompt(text: str) -> str:
    """What a `[label]`-task student is asked at inference (label_only and step_by_step)."""
    return LABEL_TASK + text


def encode_weighted(rows: list[dict[str, Any]], tokenizer: Any, seq_len: int, source: str) -> TokenBlocks:
    """Rows → padded blocks whose float `loss_mask` gives each row's targets weight/len each.

    Blocks are cut to the longest row, so short rows do not pay for `seq_len` (the limit).
    """
    blocks = encode_rows(rows, tokenizer, seq_len, response_only=True, packing=False, source=source)
    width = int(blocks.attention_mask.sum(1).max())
    mask = blocks.loss_mask[:, :width].float()  # (N, L)
    weights = torch.tensor([float(r.get("weight", 1.0)) for r in rows])  # (N,)
    mask = mask * (weights / mask.sum(1).clamp_min(1)).unsqueeze(1)
    return TokenBlocks(blocks.input_ids[:, :width], blocks.attention_mask[:, :width], mask)
