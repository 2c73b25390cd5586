"""The pieces of `distill serve`'s answers: response ids and usage, a choice's text as its tokens
come (incremental detokenization with stop sequences), and the log-probability formats of chat
and text completions."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from distill.serve.protocol import GenRequest


def response_head(app: Any, req: GenRequest, chunk: bool = False) -> dict[str, Any]:
    if req.kind == "chat":
        kind, prefix = ("chat.completion.chunk" if chunk else "chat.completion"), "chatcmpl"
    else:
        kind, prefix = "text_completion", "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": app.model_name}


def usage(req: GenRequest, completion_tokens: int) -> dict[str, int]:
    prompt = sum(len(p) for p in req.prompts)  # each prompt once, however many choices share it
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class ChoiceText:
    """Text pieces of one choice's growing token list; their concatenation is the decoded answer,
    cut before the first stop sequence.

    A token alone may be part of a multi-byte character or merge with its neighbours, so the whole
    list is decoded each time and the new suffix sent; an unfinished character waits, and so does
    a tail that may be the start of a stop sequence.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop_sequences = tokenizer, stop
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False  # a stop sequence was found: later tokens are ignored

    def push(self, token: int) -> str:
        """The text that `token` adds and that can be sent now."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self._decode()
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text, final=False)

    def finish(self, ids: list[int]) -> str:
        """The rest of the answer once its tokens are all known."""
        if not self.stopped:
            self.ids = list(ids)
            return self._advance(self._decode(), final=True)
        return ""

    def whole(self, ids: list[int]) -> str:
        """The whole answer decoded at once from `ids`, cut before the first stop sequence."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [i for s in self.stop_sequences if (i := text.find(s)) >= 0]
        return text[:min(cuts)] if cuts else text

    @property
    def text(self) -> str:
        return self.sent

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _advance(self, text: str, final: bool) -> str:
        cut = self._stop_at(text)
        if cut is not None:
            self.stopped = True
            text = text[:cut]
        elif not final:
            text = text[:len(text) - self._held(text)]
        if text.startswith(self.sent):
            piece = text[len(self.sent):]
        else:  # the tokenizer rewrote text already sent (e.g. cleaned up a space): send what follows the part
            piece = text[len(os.path.commonprefix([text, self.sent])):]  # both agree on, and carry on from there
        self.sent = text
        return piece

    def _stop_at(self, text: str) -> int | None:
        """Where the first stop sequence starts in `text` (searching only where a new one can be)."""
        found = [i for s in self.stop_sequences
                 if (i := text.find(s, max(0, len(self.sent) - len(s) + 1))) >= 0]
        return min(found) if found else None

    def _held(self, text: str) -> int:
        """How many trailing characters of `text` may begin a stop sequence."""
        longest = 0
        for s in self.stop_sequences:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest


def chat_logprobs(tokenizer: Any, g: Any, k: int) -> dict[str, Any]:
    """Chat's `logprobs`: each generated token, its log-probability, the top-k alternatives."""
    from distill.models.generation import logprob_rows

    return {"content": logprob_rows(tokenizer, g, k)}


def text_logprobs(tokenizer: Any, g: Any, k: int, token_ids: bool = False, start: int = 0) -> dict[str, Any]:
    """Text completion's `logprobs`: tokens, their log-probabilities, top-k maps and text offsets
    (counted from `start`); `token_ids` names tokens "token_id:N", as vLLM's option does."""
    name = (lambda i: f"token_id:{i}") if token_ids else (lambda i: tokenizer.decode([i]))
    tokens = [name(t) for t in g.token_ids]
    tops = [{name(i): lp for i, lp in top[:k]} for top in (g.top_logprobs or [])]
    return {"tokens": tokens, "token_logprobs": list(g.token_logprobs or []), "top_logprobs": tops,
            "text_offset": _offsets(tokenizer, g.token_ids, start)}


def echoed_logprobs(tokenizer: Any, prompt: list[int], scored: Any, completion: dict[str, Any], k: int,
                    token_ids: bool = False) -> dict[str, Any]:
    """`logprobs` of an echoed prompt followed by its completion's: the prompt's first token has none
    (nothing predicts it), as OpenAI answers."""
    name = (lambda i: f"token_id:{i}") if token_ids else (lambda i: tokenizer.decode([i]))
    tops = [None] + [{name(i): lp for i, lp in top[:k]} for top in scored.top_logprobs[1:]]
    prompt_chars = len(tokenizer.decode(prompt, skip_special_tokens=True))
    shifted = [prompt_chars + o for o in completion["text_offset"]]
    return {"tokens": [name(t) for t in prompt] + completion["tokens"],
            "token_logprobs": list(scored.token_logprobs) + completion["token_logprobs"],
            "top_logprobs": tops + completion["top_logprobs"],
            "text_offset": _offsets(tokenizer, prompt, 0) + shifted}


def _offsets(tokenizer: Any, ids: list[int], start: int) -> list[int]:
    """Where each token's text starts, counted in characters of the decoded text from `start`."""
    offsets, at = [], start
    for i in ids:
        offsets.append(at)
        at += len(tokenizer.decode([i]))
    return offsets
