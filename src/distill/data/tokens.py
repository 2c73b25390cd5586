"""Text data for causal-LM distillation: corpora → fixed-length token blocks with masks.

Every example is a row of three (L,) tensors:
  input_ids       token ids (padding uses the tokenizer's pad id);
  attention_mask  true on real tokens;
  loss_mask       true at position t when the prediction of token t+1 counts in the loss
                  (all real next tokens for plain text; response tokens only with `response_only`).

Sources: the KJV Bible (Debian `bible-kjv`, the default corpus), a plain text file, and JSONL with
`{"text"}`, `{"prompt", "response"}` or chat `{"messages": [...]}` rows (formatted by the
tokenizer's chat template). Plain text is packed into blocks; prompt/response rows are padded,
one per block, or packed end to end with `packing: true`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from distill.core.errors import DataError

KJV_COMMAND = ["bible", "-f", "gen1:1-rev22:21"]


@dataclass
class TokenBlocks(Dataset):
    """Fixed-length token blocks; item i is a dict of (L,) tensors plus its `index`."""

    input_ids: torch.Tensor  # (N, L) int64
    attention_mask: torch.Tensor  # (N, L) bool
    loss_mask: torch.Tensor  # (N, L) bool
    document: torch.Tensor | None = None  # (N,) int64: the corpus document each block begins in, where known

    @property
    def documents(self) -> int | None:
        """How many documents the blocks come from (None where not recorded)."""
        return None if self.document is None else int(self.document.unique().numel())

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                "loss_mask": self.loss_mask[i], "index": torch.tensor(i)}

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "loss_mask": self.loss_mask[index], "index": index}

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def fingerprint(self) -> str:
        """Hash of the tokens and masks: a teacher cache is valid only for this exact corpus."""
        h = hashlib.sha256()
        for t in (self.input_ids.to(torch.int64), self.attention_mask, self.loss_mask):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class RoutedBlocks(TokenBlocks):
    """Blocks whose every token names the teacher of its row (`teacher.route`): an index into the job's
    teachers, or -1 where the row names none (and padding); batches carry it as `teacher_route`."""

    teacher_route: torch.Tensor = None  # type: ignore[assignment]  # (N, L) int64

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().batch(index), "teacher_route": self.teacher_route[index]}


@dataclass
class PromptBlocks(TokenBlocks):
    """Blocks that each hold one prompt (and perhaps a response after it): `prompt_len` (N,) says where
    every row's prompt ends, so a student can answer it in place of the response (on-policy)."""

    prompt_len: torch.Tensor = None  # type: ignore[assignment]  # (N,) int64

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().batch(index), "prompt_len": self.prompt_len[index]}


@dataclass
class TextSplits:
    train: TokenBlocks
    val: TokenBlocks
    holdout: str = "blocks"  # what was held out: "documents", "tail" (of a one-document text) or "blocks"


# --------------------------------------------------------------------------- reading corpora


def read_kjv(path: Path | None = None) -> list[str]:
    """KJV verses (references stripped), from `path` (the `bible -f` output saved to a file) or the `bible` command."""
    if path is not None:
        lines = Path(path).read_text(errors="replace").splitlines()
    elif shutil.which("bible"):
        lines = subprocess.run(KJV_COMMAND, capture_output=True, text=True, check=True).stdout.splitlines()
    else:
        raise DataError("The KJV corpus needs Debian's bible-kjv (`sudo apt-get install bible-kjv`), or "
                        "`data.path` pointing at its text (`bible -f gen1:1-rev22:21 > kjv.txt`).")
    verses = [line.split(" ", 1)[1].strip() for line in lines if " " in line and line[:1].isalnum()]
    if not verses:
        raise DataError(f"No verses found in {path or 'the output of ' + ' '.join(KJV_COMMAND)}.")
    return verses


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    from distill.data.corpora import read_json_lines

    def problem(row: dict[str, Any]) -> str | None:
        if {"text"} <= row.keys() or {"prompt", "response"} <= row.keys() or "messages" in row:
            return None
        return f"expected {{'text'}}, {{'prompt', 'response'}} or {{'messages'}}, got keys {sorted(row)}"

    rows = read_json_lines(path, "data.path", problem)
    if not rows:
        raise DataError(f"{path} has no rows.")
    return rows


# --------------------------------------------------------------------------- tokenizing


SAMPLE_POOL = 20  # with max_blocks, tokenize documents (in seeded random order) up to this many times the blocks asked


def pack_text(texts: list[str], tokenizer: Any, seq_len: int, max_blocks: int | None = None,
              seed: int = 0) -> TokenBlocks:
    """Concatenate documents (separated by EOS) and cut them into full blocks of `seq_len` tokens; each
    block records the document it begins in. With `max_blocks`, the blocks are drawn at random (seeded)
    across the corpus, not taken from its start: documents are read in a seeded random order until
    SAMPLE_POOL × `max_blocks` blocks' worth of tokens (or all of them), and `max_blocks` of those
    blocks are drawn at random."""
    eos = special_id(tokenizer, "eos")
    ids: list[int] = []
    starts: list[int] = []  # where each document read begins in `ids`
    order = (torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
             if max_blocks is not None else range(len(texts)))
    read: list[int] = []
    for i in order:
        text = texts[i]
        if not isinstance(text, str):
            raise DataError(f"Document {i + 1} of the corpus is a {type(text).__name__}, not text.")
        starts.append(len(ids))
        read.append(i)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
        if max_blocks is not None and len(ids) >= SAMPLE_POOL * max_blocks * seq_len:
            break
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"The corpus has {len(ids)} tokens, fewer than one block of data.seq_len={seq_len}.")
    input_ids = id_tensor(ids[: n * seq_len], "the corpus").view(n, seq_len)
    attention = torch.ones_like(input_ids, dtype=torch.bool)
    loss = attention.clone()
    loss[:, -1] = False  # the last position has no next token inside the block
    first = torch.arange(n) * seq_len
    document = torch.tensor(read)[torch.searchsorted(torch.tensor(starts), first, right=True) - 1]
    blocks = TokenBlocks(input_ids, attention, loss, document)
    if max_blocks is not None and n > max_blocks:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:max_blocks].sort().values
        blocks = blocks_subset(blocks, pick)
    return blocks


def encode_rows(rows: list[dict[str, Any]], tokenizer: Any, seq_len: int, *, response_only: bool,
                packing: bool, source: str, route: list[int] | None = None,
                document: list[int] | None = None) -> TokenBlocks:
    """Prompt/response or chat rows → blocks; `response_only` trains on response tokens only. With
    `route` (per row: a teacher's index, or -1), `RoutedBlocks` whose tokens carry their row's; with
    `document` (per row: its document's index), each block records the document it begins in."""
    if not rows:
        raise DataError(f"{source} has no rows to train on.")
    pad_id = special_id(tokenizer, "pad")
    pieces = [_encode_row(row, tokenizer, response_only, f"{source}, row {n}") for n, row in enumerate(rows, 1)]
    for n, (ids, targets) in enumerate(pieces, 1):
        if len(ids) > seq_len and not packing:
            prompt_len = targets.index(True)
            what = (f"its prompt is {prompt_len} tokens" if prompt_len >= seq_len
                    else f"prompt + response is {len(ids)} tokens")
            raise DataError(f"{source}, row {n}: {what}, longer than the context data.seq_len={seq_len}. "
                            "Raise data.seq_len, shorten or drop the row, or set data.packing=true.")
    layout = _pack_rows if packing else _pad_rows
    blocks = layout(pieces, pad_id, seq_len)
    if document is not None:  # laid out like the tokens: a block's first token's document
        blocks.document = layout([([d] * len(ids), t) for d, (ids, t) in zip(document, pieces)], 0, seq_len).input_ids[:, 0]
    if route is None:
        return blocks
    tags = [([r + 1] * len(ids), targets) for r, (ids, targets) in zip(route, pieces)]  # laid out alike
    return RoutedBlocks(blocks.input_ids, blocks.attention_mask, blocks.loss_mask, blocks.document,
                        teacher_route=layout(tags, 0, seq_len).input_ids - 1)


def special_id(tokenizer: Any, kind: str) -> int:
    """The tokenizer's EOS or padding token id, which every block needs."""
    value = getattr(tokenizer, f"{kind}_token_id", None)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise DataError(f"The tokenizer has no {kind.upper()} token ({kind}_token_id is "
                        f"{value!r}); set tokenizer.{kind}_token, or use a tokenizer that has one.")
    return value


def id_tensor(ids: list[Any], where: str) -> torch.Tensor:
    """Token ids as an int64 tensor; ids no tokenizer gives (negative, not integers) are refused."""
    try:
        t = torch.tensor(ids, dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        t = None
    if t is None or bool((t < 0).any()):
        bad = next((i for i in ids if not isinstance(i, int) or not 0 <= i < 2**63), ids)
        raise DataError(f"{where}: the tokenizer gave the token id {bad!r}; ids are integers >= 0. "
                        "Check the tokenizer (data.tokenizer, teacher.model).")
    return t


def _encode_row(row: dict[str, Any], tokenizer: Any, response_only: bool, where: str) -> tuple[list[int], list[bool]]:
    """Token ids and, per token, whether it counts as a target."""
    problem = _row_problem(row)
    if problem:
        raise DataError(f"{where}: {problem}.")
    eos = special_id(tokenizer, "eos")
    if "text" in row:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [eos]
        return ids, [True] * len(ids)
    response = message_text(row["messages"][-1].get("content")) if row.get("messages") else row.get("response", "")
    if not str(response or "").strip():
        raise DataError(f"{where}: the response is empty, so no token would be trained on; "
                        "drop the row or fill its response.")
    if "messages" in row:
        return _encode_chat(row, tokenizer, response_only, where)
    prompt_msgs = [{"role": "user", "content": row["prompt"]}]
    if getattr(tokenizer, "chat_template", None):
        prompt = chat_ids(tokenizer, prompt_msgs, add_generation_prompt=True)
        full = chat_ids(tokenizer, prompt_msgs + [{"role": "assistant", "content": row["response"]}], False)
    else:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        full = prompt + tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [eos]
    if full[: len(prompt)] != prompt:
        prompt = full[: common_prefix(prompt, full)]
    targets = [not response_only or i >= len(prompt) for i in range(len(full))]
    if not any(targets[1:]):
        raise DataError(f"{where}: the response is empty, so no token would be trained on; "
                        "drop the row or fill its response.")
    return full, targets


def _encode_chat(row: dict[str, Any], tokenizer: Any, response_only: bool, where: str
                 ) -> tuple[list[int], list[bool]]:
    """A conversation (an OpenAI chat fine-tuning row): trained on every assistant message whose
    `weight` is not 0, as OpenAI's fine-tuning does; the conversation must end with one."""
    messages = [{"role": ROLES[m["role"]], "content": message_text(m["content"])} for m in row["messages"]]
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: a chat row must end with an assistant message (the response).")
    full = chat_ids(tokenizer, messages, add_generation_prompt=False)
    trained = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant" and m.get("weight", 1) != 0]
    if not trained:
        raise DataError(f"{where}: every assistant message has weight 0, so no token would be trained on; "
                        "set weight 1 on one, or drop the row.")
    targets = [not response_only] * len(full)
    for i in trained if response_only else []:
        start = common_prefix(chat_ids(tokenizer, messages[:i], add_generation_prompt=True), full)
        end = common_prefix(chat_ids(tokenizer, messages[:i + 1], add_generation_prompt=False), full)
        targets[start:end] = [True] * (end - start)
    if not any(targets[1:]):
        raise DataError(f"{where}: the response is empty, so no token would be trained on; "
                        "drop the row or fill its response.")
    return full, targets


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with the shape of a row's values, if anything (JSONL rows are the user's)."""
    if "text" in row:
        text = row["text"]
        return None if isinstance(text, str) else f"`text` must be a string, not {text!r:.40}"
    if "messages" in row:
        return chat_problem(row)
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
        return "a row needs a string `text`, string `prompt` and `response`, or `messages`"
    return None


def chat_problem(row: dict[str, Any]) -> str | None:
    """What an OpenAI-style chat row has that a text student cannot learn from, if anything."""
    m = row["messages"]
    if not isinstance(m, list) or not m:
        return "`messages` must be a non-empty list of {role, content} messages"
    for key in ("tools", "functions"):
        if row.get(key):
            return f"`{key}`: tool and function calls are not supported (distill trains text students); drop the row"
    for i, message in enumerate(m):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(message, dict) or role in ("tool", "function") or message.get("tool_calls") \
                or message.get("function_call"):
            return (f"messages[{i}]: " + ("must be a {role, content} object" if not isinstance(message, dict)
                                           else "tool and function calls are not supported; drop the row"))
        if role not in ROLES:
            return f"messages[{i}].role is {role!r}; use system, developer, user or assistant"
        if message_text(message.get("content")) is None:
            return f"messages[{i}].content must be text (a string, or a list of text parts)"
        if message.get("weight", 1) not in (0, 1):
            return f"messages[{i}].weight must be 0 or 1, got {message['weight']!r}"
    return None


def message_text(content: Any) -> str | None:
    """A message's text: a string, or the concatenated text parts of a list (None if anything else)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("Chat rows need a tokenizer with a chat template; this tokenizer has none. "
                        "Use {'prompt', 'response'} rows instead.")
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _pad_rows(pieces: list[tuple[list[int], list[bool]]], pad_id: int, seq_len: int) -> TokenBlocks:
    n = len(pieces)
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.int64)
    attention = torch.zeros((n, seq_len), dtype=torch.bool)
    loss = torch.zeros((n, seq_len), dtype=torch.bool)
    for i, (ids, targets) in enumerate(pieces):
        input_ids[i, : len(ids)] = id_tensor(ids, f"row {i + 1}")
        attention[i, : len(ids)] = True
        loss[i, : len(ids) - 1] = torch.tensor(targets[1:])  # position t predicts token t+1
    return TokenBlocks(input_ids, attention, loss)


def _pack_rows(pieces: list[tuple[list[int], list[bool]]], pad_id: int, seq_len: int) -> TokenBlocks:
    ids = [t for p, _ in pieces for t in p]
    targets = [c for _, cs in pieces for c in cs]
    n = -(-len(ids) // seq_len)
    pad = n * seq_len - len(ids)
    input_ids = id_tensor(ids + [pad_id] * pad, "the rows").view(n, seq_len)
    attention = torch.tensor([True] * len(ids) + [False] * pad).view(n, seq_len)
    shifted = torch.tensor(targets[1:] + [False] * (pad + 1)).view(n, seq_len)
    shifted[:, -1] = False  # the next token of a block's last position lies in the next block
    return TokenBlocks(input_ids, attention, shifted & attention)


# --------------------------------------------------------------------------- splits


def split_blocks(blocks: TokenBlocks, val_fraction: float, seed: int = 0) -> TextSplits:
    """Hold out a seeded random `val_fraction` of the blocks (at least one)."""
    n = len(blocks)
    if n < 2:
        raise DataError(f"Only {n} block of text: need at least 2 to hold one out for validation.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * val_fraction)))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return TextSplits(train=blocks_subset(blocks, train), val=blocks_subset(blocks, val))


def split_documents(documents: list[Any], val_fraction: float, seed: int, source: str
                    ) -> tuple[list[Any], list[Any]]:
    """Hold out a seeded random `val_fraction` of the documents (at least one), in corpus order; a
    corpus that is one text holds out its last `val_fraction` instead (cut at a space), so nothing
    held out was trained on either way."""
    n = len(documents)
    if n == 1 and isinstance(documents[0], str):
        text = documents[0]
        cut = text.find(" ", int(len(text) * (1 - val_fraction)))
        if cut <= 0:
            raise DataError(f"{source} is one text too short to hold out its last {val_fraction:.0%}; give more "
                            "text or set data.holdout=blocks.")
        return [text[:cut]], [text[cut + 1:]]
    if n < 2:
        raise DataError(f"{source} has {n} document: need at least 2 to hold one out; set data.holdout=blocks.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * val_fraction)))
    held = set(order[:n_val].tolist())
    return ([doc for i, doc in enumerate(documents) if i not in held],
            [doc for i, doc in enumerate(documents) if i in held])


def blocks_subset(blocks: TokenBlocks, index: torch.Tensor) -> TokenBlocks:
    """The blocks at `index`, of the same kind (every per-block tensor taken along)."""
    return type(blocks)(**{f.name: None if getattr(blocks, f.name) is None else getattr(blocks, f.name)[index]
                           for f in fields(blocks)})
