"""Does llama.cpp run a GGUF export as PyTorch runs the student? Checked by llama.cpp itself.

    gguf_agreement("student-q8_0.gguf", student, tokenizer, texts, block=128, teacher=teacher)
    # {"tokenization_match", "top1_agreement", "teacher_top1_agreement",
    #  "torch_teacher_top1_agreement", "positions"}

The file is loaded by `llama-cpp-python` (llama.cpp's Python binding; `pip install
'distill[gguf]'`, which builds llama.cpp from source). Held-out texts are tokenized by both
tokenizers (the share of texts whose token ids are identical), then the same token blocks are run
through llama.cpp and through the PyTorch student: the share of positions whose next-token
arg-max is the same. With a teacher, the same share against the teacher's arg-max: how much of
the student's agreement with its teacher survives quantization.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.errors import ModelError


def load_llama_cpp(path: Path | str, n_ctx: int, threads: int | None = None) -> Any:
    """A llama.cpp model (all positions' logits kept) from a GGUF file."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ModelError("llama-cpp-python is not installed: pip install 'distill[gguf]' (it builds "
                         "llama.cpp from source, a few minutes).") from None
    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                 n_threads=threads or max(1, (os.cpu_count() or 1)))


@torch.no_grad()
def gguf_agreement(path: Path | str, student: Any, tokenizer: Any, texts: list[str], *, block: int = 128,
                   teacher: Any = None, threads: int | None = None) -> dict[str, float]:
    """Tokenization and top-1 next-token agreement of llama.cpp on `path` with `student` (and `teacher`)."""
    llm = load_llama_cpp(path, n_ctx=block + 8, threads=threads)
    same_tokens, blocks = 0, []
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        same_tokens += list(theirs) == list(ours)
        blocks += [ours[i:i + block] for i in range(0, len(ours) - 1, block) if len(ours[i:i + block]) > 1]
    agree = teacher_agree = torch_teacher_agree = positions = 0
    for ids in blocks:
        llm.reset()
        llm.eval(ids)
        theirs = np.asarray(llm.scores[:len(ids)]).argmax(-1)  # (T,)
        x = torch.tensor([ids])
        ours = student(input_ids=x).logits[0].argmax(-1).numpy()
        agree += int((theirs == ours).sum())
        if teacher is not None:
            taught = teacher(input_ids=x).logits[0].argmax(-1).numpy()
            teacher_agree += int((theirs == taught).sum())
            torch_teacher_agree += int((ours == taught).sum())
        positions += len(ids)
    out = {"tokenization_match": same_tokens / max(len(texts), 1), "top1_agreement": agree / max(positions, 1),
           "positions": float(positions)}
    if teacher is not None:  # the student's agreement with its teacher: in llama.cpp, and in PyTorch
        out["teacher_top1_agreement"] = teacher_agree / max(positions, 1)
        out["torch_teacher_top1_agreement"] = torch_teacher_agree / max(positions, 1)
    return out
