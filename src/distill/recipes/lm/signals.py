"""What the students of a `distill lm` job learn from: the teacher's top-k cache (built in this process
or asked from `teacher.endpoint`) or the live teacher, and with `teacher.others` every teacher's signal
mixed per token (`distill.teachers.mixture`), each teacher's cache in its own folder.

    teacher_cache/train, teacher_cache/val                  the teacher (`teacher.model`)
    teacher_cache/others/<name>/train, .../val              each of `teacher.others`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from distill.core.distributed import process_state
from distill.core.errors import ModelError
from distill.core.files import atomic_write_text
from distill.data.tokens import TextSplits, TokenBlocks
from distill.models import causal_lm as lm_models
from distill.recipes.lm.config import LMRunConfig, TeacherEndpointConfig
from distill.teachers.mixture import MixedLMTeacher
from distill.teachers.output import Teacher
from distill.teachers.tokens import LiveLMTeacher, TopKCache


def teacher_cache(cfg: LMRunConfig, teacher: nn.Module | None, blocks: TokenBlocks, tokenizer: Any, vocab: int,
                  directory: Path, *, model: str | None = None, endpoint: TeacherEndpointConfig | None = None,
                  adapted: bool | None = None) -> TopKCache:
    """The top-k cache of `blocks`, computed by `teacher`, or asked from `endpoint` when set. `model`,
    `endpoint`, `adapted`: of `teacher.model` unless given (another teacher: its own)."""
    primary = model is None
    model = cfg.teacher.model if primary else model
    e = cfg.teacher.endpoint if primary else endpoint
    adapted = cfg.teacher.adapt is not None if adapted is None else adapted
    served = f" served as {e.model} at {e.url}" if e is not None else ""  # its own cache: the server's word
    identity = {"teacher": model + (f" adapted {directory.parent.name}" if adapted else "") + served,
                "k": cfg.teacher.top_k, "vocab": vocab, "tokenizer": lm_models.tokenizer_fingerprint(tokenizer)}
    if e is not None:
        teacher = endpoint_teacher(cfg, e, vocab)
    return TopKCache.build_or_open(teacher, blocks, directory, identity=identity, batch_size=cfg.teacher.batch_size,
                                   rebuild=cfg.teacher.cache_rebuild, quiet=cfg.quiet,
                                   device=process_state(cfg.device).device)


def endpoint_teacher(cfg: LMRunConfig, e: TeacherEndpointConfig, vocab: int) -> Any:
    """The `distill.teachers.endpoint.EndpointTopK` asking the server `e` for top-`teacher.top_k` log-probs."""
    from distill.teachers.endpoint import EndpointTopK

    return EndpointTopK(e.url, e.model, k=cfg.teacher.top_k, vocab=vocab, concurrency=e.concurrency,
                        api_key_env=e.api_key_env, timeout_s=e.timeout_s, max_retries=e.max_retries)


def served_logprobs(cfg: LMRunConfig, blocks: TokenBlocks, directory: Path, vocab: int) -> list[list[float]]:
    """The served teacher's log-prob of every real token of `blocks` (its held-out perplexity), asked
    once and kept in `directory` beside its cache, so a later run needs no server either."""
    e = cfg.teacher.endpoint
    assert e is not None
    path, key = directory / "token_logprobs.json", {"corpus": blocks.fingerprint(), "served": f"{e.model} at {e.url}"}
    if path.is_file():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in key} == key:
            return saved["logprobs"]
    scored = endpoint_teacher(cfg, e, vocab).token_logprobs(blocks.input_ids, blocks.attention_mask.sum(-1))
    if process_state(cfg.device).is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**key, "logprobs": scored}))
    return scored


def load_others(cfg: LMRunConfig, tokenizer: Any) -> dict[str, nn.Module | None]:
    """`teacher.others` by name: each model loaded here (None for one behind an endpoint), after checking
    that it shares the teacher's tokenizer, before any compute."""
    out: dict[str, nn.Module | None] = {}
    for i, other in enumerate(cfg.teacher.others):
        key = f"teacher.others[{i}].model"
        theirs = lm_models.load_tokenizer(other.model, key)
        if lm_models.tokenizer_fingerprint(theirs) != lm_models.tokenizer_fingerprint(tokenizer):
            raise ModelError(f"{key} ({other.model}, teacher {other.name!r}) has another tokenizer than "
                             f"teacher.model ({cfg.teacher.model}): several teachers mix token by token, so they "
                             "share one tokenizer. Give a teacher of the same family, or teach with it alone.")
        model = None
        if other.endpoint is None:
            model = lm_models.load_causal_lm(other.model, key).to(process_state(cfg.device).device)
            lm_models.shared_vocab(tokenizer, model)
        out[other.name] = model
    return out


def teacher_signals(cfg: LMRunConfig, teacher: nn.Module | None, data: TextSplits, tokenizer: Any, vocab: int,
                    root: Path, others: dict[str, nn.Module | None] | None = None,
                    others_root: Path | None = None) -> tuple[Teacher, Teacher]:
    """Training signal (live, or the top-k cache) and the validation signal (cached the same way), in
    `root`; with `others` (`load_others`), every teacher's, mixed (their caches in `others_root`/<name>)."""
    signals = {cfg.teacher.name: _signals(cfg, teacher, data, tokenizer, vocab, root)}
    for o in cfg.teacher.others:
        signals[o.name] = _signals(cfg, (others or {}).get(o.name), data, tokenizer, vocab,
                                   Path(others_root or root / "others") / o.name, model=o.model,
                                   endpoint=o.endpoint, adapted=False)
    if len(signals) == 1:
        return signals[cfg.teacher.name]
    train, val = ({name: pair[i] for name, pair in signals.items()} for i in (0, 1))
    return (MixedLMTeacher(train, cfg.teacher.weights, cfg.teacher.weighting),
            MixedLMTeacher(val, cfg.teacher.weights, cfg.teacher.weighting))


def _signals(cfg: LMRunConfig, teacher: nn.Module | None, data: TextSplits, tokenizer: Any, vocab: int,
             root: Path, **who: Any) -> tuple[Teacher, Teacher]:
    """One teacher's (training, validation) signals."""
    live = LiveLMTeacher(teacher, vocab) if teacher is not None else None
    if cfg.teacher.signal == "live" and cfg.on_policy.fraction > 0:
        return live, live  # type: ignore[return-value]
    caches = {}
    with process_state(cfg.device).main_process_first():  # one process builds, the others open it
        for split in ("train", "val"):
            if split == "val" or cfg.teacher.signal == "cached":
                caches[split] = teacher_cache(cfg, teacher, getattr(data, split), tokenizer, vocab, root / split,
                                              **who)
    return caches.get("train", live), caches["val"]  # type: ignore[return-value]
