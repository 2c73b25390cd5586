"""Token blocks from text, JSONL prompt/response and chat rows: masks, packing, bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import TEXT, make_tokenizer  # noqa: E402

from distill.core.errors import DataError  # noqa: E402
from distill.data.tokens import encode_rows, pack_text, read_jsonl, read_kjv, split_blocks  # noqa: E402


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_pack_text_cuts_full_blocks_and_masks_only_the_last_position(tok):
    blocks = pack_text([TEXT, TEXT], tok, seq_len=16)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(blocks) == (2 * len(ids)) // 16
    assert blocks.input_ids[0].tolist() == ids[:16]
    assert blocks.attention_mask.all()
    assert blocks.loss_mask[:, :-1].all() and not blocks.loss_mask[:, -1].any()


def test_pack_text_respects_max_blocks_and_rejects_a_too_short_corpus(tok):
    assert len(pack_text([TEXT] * 10, tok, seq_len=8, max_blocks=3)) == 3
    with pytest.raises(DataError, match="fewer than one block"):
        pack_text(["light"], tok, seq_len=64)


def test_response_only_mask_covers_exactly_the_response_tokens(tok):
    rows = [{"prompt": "And God said", "response": "Let there be light"}]
    blocks = encode_rows(rows, tok, 32, response_only=True, packing=False, source="rows.jsonl")
    targets = blocks.input_ids[0][torch.roll(blocks.loss_mask[0], 1)]  # the tokens being predicted
    assert tok.decode(targets) == "Let there be light </s>"
    everything = encode_rows(rows, tok, 32, response_only=False, packing=False, source="rows.jsonl")
    assert everything.loss_mask.sum() == everything.attention_mask.sum() - 1
    assert not blocks.attention_mask[0, int(blocks.attention_mask[0].sum()):].any()  # padding is masked


def test_chat_rows_use_the_chat_template_and_train_on_the_assistant_turn(tok):
    rows = [{"messages": [{"role": "user", "content": "the earth"},
                          {"role": "assistant", "content": "was without form"}]}]
    blocks = encode_rows(rows, tok, 32, response_only=True, packing=False, source="chat.jsonl")
    ids = blocks.input_ids[0][blocks.attention_mask[0]]
    assert tok.decode(ids).startswith("<|user|> the earth </s> <|assistant|>")
    targets = blocks.input_ids[0][torch.roll(blocks.loss_mask[0], 1)]
    assert tok.decode(targets) == "was without form </s>"


def test_packing_rows_keeps_each_response_mask(tok):
    rows = [{"prompt": "And God said", "response": "Let there be light"}] * 5
    packed = encode_rows(rows, tok, 16, response_only=True, packing=True, source="x")
    padded = encode_rows(rows, tok, 16, response_only=True, packing=False, source="x")
    assert len(packed) < len(padded)
    assert packed.loss_mask.sum() <= padded.loss_mask.sum()  # block ends may cut one target each
    assert packed.loss_mask.sum() >= padded.loss_mask.sum() - len(packed)
    assert not (packed.loss_mask & ~packed.attention_mask).any()


def test_a_prompt_longer_than_the_context_is_named(tok):
    rows = [{"prompt": "short", "response": "light"}, {"prompt": "And " * 40, "response": "light"}]
    with pytest.raises(DataError, match=r"data.jsonl, row 2: its prompt is \d+ tokens, longer than the context "
                                        r"data.seq_len=16"):
        encode_rows(rows, tok, 16, response_only=True, packing=False, source="data.jsonl")


def test_an_empty_response_is_rejected(tok):
    with pytest.raises(DataError, match="row 1: the response is empty"):
        encode_rows([{"messages": [{"role": "user", "content": "light"}, {"role": "assistant", "content": ""}]}],
                    tok, 32, response_only=True, packing=False, source="x")
    with pytest.raises(DataError, match="must end with an assistant message"):
        encode_rows([{"messages": [{"role": "user", "content": "light"}]}], tok, 32, response_only=True,
                    packing=False, source="x")


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{not json\n")
    with pytest.raises(DataError, match="d.jsonl, line 2: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"question": "a"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: expected .* got keys \['question'\]"):
        read_jsonl(path)


def test_read_kjv_strips_references(tmp_path):
    path = tmp_path / "kjv.txt"
    path.write_text("Ge1:1 In the beginning God created the heaven and the earth.\n"
                    "Ge1:2 And the earth was without form, and void.\n")
    assert read_kjv(path) == ["In the beginning God created the heaven and the earth.",
                              "And the earth was without form, and void."]


def test_split_blocks_is_seeded_and_disjoint(tok):
    blocks = pack_text([TEXT] * 4, tok, seq_len=8)
    a, b = split_blocks(blocks, 0.25, seed=1), split_blocks(blocks, 0.25, seed=1)
    assert torch.equal(a.val.input_ids, b.val.input_ids)
    assert len(a.train) + len(a.val) == len(blocks)
    assert a.train.fingerprint() != a.val.fingerprint()


def _docs_cfg(tmp_path, corpus_text, **data):
    from distill.recipes.lm.config import load_lm_config

    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text)
    items = ["data.corpus=text", f"data.path={path}", "data.seq_len=8", "data.val_fraction=0.25",
             "data.val_blocks=null", *[f"data.{k}={v}" for k, v in data.items()]]
    return load_lm_config(None, items)


def test_whole_documents_are_held_out_so_no_held_out_text_was_trained_on(tmp_path):
    from distill.recipes.lm.data import load_text

    names = ["Adam", "Noah", "Abram", "Sarai", "Lot", "Isaac", "Jacob", "Esau"]
    docs = [f"{name} {name} said " + " ".join([name] * 20) for name in names]
    tok = make_tokenizer(tmp_path / "tok", extra_words=tuple(names))
    corpus = "\n<|doc|>\n".join(docs)
    cfg = _docs_cfg(tmp_path, corpus, document_separator="'<|doc|>'")
    data = load_text(cfg, tok)
    words = lambda blocks: {tok.convert_ids_to_tokens(i) for i in blocks.input_ids.flatten().tolist()}  # noqa: E731
    train_names, val_names = words(data.train) & set(names), words(data.val) & set(names)
    assert len(val_names) == 2 and not train_names & val_names  # 25% of 8 documents, none shared
    blocks = load_text(_docs_cfg(tmp_path, corpus, holdout="blocks"), tok)
    assert words(blocks.train) & words(blocks.val) & set(names)  # random blocks do share documents


def test_jsonl_rows_sharing_a_group_are_held_out_together(tmp_path):
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.data import load_text

    tok = make_tokenizer(tmp_path / "tok")
    rows = [{"prompt": "And God said", "response": "Let there be light", "book": i % 4} for i in range(16)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_lm_config(None, ["data.corpus=jsonl", f"data.path={path}", "data.seq_len=16",
                                "data.val_fraction=0.25", "data.group_column=book", "data.val_blocks=null"])
    data = load_text(cfg, tok)
    assert len(data.val) == 4 and len(data.train) == 12  # one of the four books, all its rows
    bad = load_lm_config(None, ["data.corpus=jsonl", f"data.path={path}", "data.group_column=chapter"])
    with pytest.raises(DataError, match="no `chapter` key"):
        load_text(bad, tok)


def test_a_one_document_text_holds_out_its_last_part(tmp_path):
    from distill.recipes.lm.data import load_text

    tok = make_tokenizer(tmp_path / "tok")
    data = load_text(_docs_cfg(tmp_path, TEXT), tok)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    head = data.train.input_ids.flatten().tolist()
    assert data.holdout == "tail" and head == ids[:len(head)]  # the training blocks are the text's start
    assert len(data.val) >= 1 and len(head) < 0.8 * len(ids)
    with pytest.raises(DataError, match="too short to hold out"):
        load_text(_docs_cfg(tmp_path, "light"), tok)


def test_an_openai_fine_tuning_row_trains_on_every_weighted_assistant_message(tok):
    row = {"messages": [{"role": "developer", "content": "Answer briefly."},
                        {"role": "user", "content": "And God said"},
                        {"role": "assistant", "content": "Let there be light", "weight": 0},
                        {"role": "user", "content": [{"type": "text", "text": "and there was"}]},
                        {"role": "assistant", "content": "light"}]}
    blocks = encode_rows([row], tok, 64, response_only=True, packing=False, source="ft.jsonl")
    ids, mask = blocks.input_ids[0], blocks.loss_mask[0]
    targets = [tok.convert_ids_to_tokens(int(i)) for i, m in zip(ids.tolist(), mask.tolist()) if m]
    assert "light" in targets and "Let" not in targets  # weight 0: shown as context, not trained on
    row["messages"][2]["weight"] = 1
    both = encode_rows([row], tok, 64, response_only=True, packing=False, source="ft.jsonl")
    both_targets = [tok.convert_ids_to_tokens(int(i)) for i, m in zip(both.input_ids[0].tolist(),
                                                                       both.loss_mask[0].tolist()) if m]
    assert "Let" in both_targets and both.loss_mask.sum() > blocks.loss_mask.sum()


@pytest.mark.parametrize(("change", "words"), [
    (lambda r: r.update(tools=[{"type": "function"}]), "tool and function calls are not supported"),
    (lambda r: r["messages"].insert(1, {"role": "tool", "content": "42", "tool_call_id": "a"}), "messages[1]: tool"),
    (lambda r: r["messages"][1].update(weight=2), "messages[1].weight must be 0 or 1"),
    (lambda r: r["messages"][1].update(weight=0), "every assistant message has weight 0"),
    (lambda r: r["messages"][0].update(content=[{"type": "image_url"}]), "messages[0].content must be text"),
    (lambda r: r["messages"][0].update(role="narrator"), "messages[0].role is 'narrator'"),
])
def test_openai_rows_a_text_student_cannot_learn_from_are_named(tok, change, words):
    row = {"messages": [{"role": "user", "content": "And God said"}, {"role": "assistant", "content": "light"}]}
    change(row)
    with pytest.raises(DataError, match=r"ft.jsonl, row 1: .*" + re.escape(words)):
        encode_rows([row], tok, 64, response_only=True, packing=False, source="ft.jsonl")


def test_blocks_are_drawn_across_documents_and_the_report_counts_them(tmp_path):
    from distill.recipes.lm.data import load_text

    names = [f"Name{i}" for i in range(20)]
    # the first document is as long as the other 19 together: taking blocks in file order would train on it alone
    docs = [" ".join(["Name0"] * 400)] + [" ".join([n] * 20) for n in names[1:]]
    tok = make_tokenizer(tmp_path / "tok", extra_words=tuple(names))
    cfg = _docs_cfg(tmp_path, "\n<|doc|>\n".join(docs), document_separator="'<|doc|>'", max_blocks=12,
                    val_fraction=0.2)
    data = load_text(cfg, tok)
    assert len(data.train) == 12 and data.train.documents >= 6  # from file order: 1 document
    assert data.val.documents == 4  # 20% of 20 documents, every held-out one represented
    again = load_text(cfg, tok)
    assert torch.equal(again.train.input_ids, data.train.input_ids)  # seeded: the same draw every time


def test_asking_for_more_held_out_blocks_than_exist_names_both_numbers(tmp_path):
    from distill.recipes.lm.data import load_text

    tok = make_tokenizer(tmp_path / "tok")
    cfg = _docs_cfg(tmp_path, TEXT, holdout="blocks", val_blocks=500, val_fraction=0.1)
    with pytest.warns(UserWarning, match=r"data.val_blocks=500 asks for more held-out blocks than there are: \d+"):
        data = load_text(cfg, tok)
    assert 0 < len(data.val) < 500
