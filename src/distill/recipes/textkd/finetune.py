"""The teacher fine-tuned on the labelled examples before it answers: the task-specific stage that
turns a general instruct model into a teacher better than label-only training of the student.

Its training rows are the kept labelled examples as the teacher will later be asked: the system
message and the eval template (no few-shot turns: fine-tuning replaces them), answered in
`prompt.response_format` with the example's rationale and gold label. The fine-tuned teacher then
answers the eval set and labels (and rationalises) the unlabelled pool. The stage is resumable
(`fit_lm` checkpoints) and its result, `teacher/model/`, is a plain Hugging Face directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.data.prompts import render
from distill.recipes.textkd.config import PromptConfig, TextKDConfig
from distill.training.config import LMTrainConfig


def finetune_rows(p: PromptConfig, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat rows: system, the eval-style question, and the response the teacher should give."""
    template = p.eval_template or p.template
    head = [{"role": "system", "content": p.system}] if p.system else []
    rows = []
    for e in examples:
        where = f"labelled example {e['id']!r}"
        fields = {**e, "rationale": e.get("rationale") or ""}
        reply = render(p.response_format, fields, where, "prompt.response_format")
        rows.append({"messages": head + [{"role": "user", "content": render(template, e, where, "prompt.template")},
                                         {"role": "assistant", "content": reply.strip()}]})
    return rows


def finetuned_teacher(cfg: TextKDConfig, examples: list[dict[str, Any]], run_dir: Path) -> str:
    """The fine-tuned teacher's directory (trained now, resumed, or reused when already saved)."""
    assert cfg.teacher.finetune is not None
    return finetune_on_rows(cfg.teacher.model, finetune_rows(cfg.prompt, examples), cfg.teacher.finetune,
                            seq_len=cfg.student.seq_len, stage=run_dir / "teacher", device=cfg.device,
                            quiet=cfg.quiet, keep_state=cfg.keep_state,
                            source="teacher.finetune rows (the kept labelled examples)",
                            tracking=(cfg.report_to, cfg.name))


def finetune_on_rows(model_source: str, rows: list[dict[str, Any]], train: LMTrainConfig, *, seq_len: int,
                     stage: Path, device: str, quiet: bool, keep_state: bool, source: str,
                     tracking: tuple[list[str], str] | None = None) -> str:
    """`model_source` fine-tuned on chat rows (trained on the assistant turns) into `stage/model/`, a
    Hugging Face directory; resumed from `stage`'s checkpoint, or reused when already saved."""
    from distill.core.checkpoint import drop_training_state
    from distill.data.tokens import encode_rows
    from distill.losses.config import TokenKDConfig
    from distill.models import causal_lm as lm_models
    from distill.models.causal_lm import save_pretrained_atomic
    from distill.training.lm import fit_lm

    done = stage / "model"
    if (done / "config.json").is_file():
        return str(done)
    tokenizer = lm_models.load_tokenizer(model_source)
    model = lm_models.load_causal_lm(model_source)
    blocks = encode_rows(rows, tokenizer, seq_len, response_only=True, packing=False, source=source)
    width = int(blocks.attention_mask.sum(1).max())  # cut to the longest row, as the students' blocks are
    blocks = type(blocks)(blocks.input_ids[:, :width], blocks.attention_mask[:, :width], blocks.loss_mask[:, :width])
    out = fit_lm(model, blocks, train=train, kd=TokenKDConfig(ratio=0.0), vocab=len(tokenizer),
                 pad_id=tokenizer.pad_token_id, checkpoint_dir=stage, resume=True, device=device,
                 quiet=quiet, name="teacher fine-tune", tracking=tracking[0] if tracking else None,
                 project=tracking[1] if tracking else None)
    save_pretrained_atomic(out.model, tokenizer, done)
    drop_training_state(stage, keep=keep_state)
    return str(done)
