"""Cross-tokenizer pieces: positions aligned by character offsets, a shared-vocabulary map, and the
ULD and matched-KL losses on the teacher's top-k signal."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import TEXT, make_bpe_tokenizer, make_tokenizer  # noqa: E402

from distill.data.alignment import aligned_positions, vocab_map, with_ends  # noqa: E402
from distill.losses.cross_tokenizer import matched_kl, uld  # noqa: E402
from distill.losses.divergences import per_token_divergence  # noqa: E402
from distill.teachers.tokens import topk_of  # noqa: E402


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    return make_tokenizer(root / "words"), make_bpe_tokenizer(root / "bpe", vocab_size=300)


def test_aligned_positions_have_read_the_same_characters(tokenizers):
    words, bpe = tokenizers
    text = TEXT[:200]
    s, t = with_ends(words, text), with_ends(bpe, text)
    pairs = aligned_positions(s, t)
    assert len(pairs) >= 0.5 * len(s.ids)  # most word ends are also BPE token ends
    assert all(s.ends[j] == t.ends[i] for j, i in pairs)
    assert [j for j, _ in pairs] == sorted(j for j, _ in pairs) and [i for _, i in pairs] == sorted(i for _, i in pairs)
    same = aligned_positions(t, t)
    assert same == [(i, i) for i in range(len(t.ids))]  # one tokenizer aligns with itself everywhere


def test_the_vocabulary_map_pairs_identical_spellings_once(tokenizers):
    words, bpe = tokenizers
    mapping = vocab_map(bpe, bpe)
    assert bool((mapping[mapping >= 0] == torch.arange(len(bpe))[mapping >= 0]).all())
    cross = vocab_map(bpe, words)
    matched = cross[cross >= 0]
    assert len(matched) > 0 and len(set(matched.tolist())) == len(matched)  # injective
    for teacher_id in (cross >= 0).nonzero().flatten()[:10].tolist():
        assert bpe.decode([teacher_id]) == words.decode([int(cross[teacher_id])])


def test_uld_ignores_which_token_is_which_and_sees_the_shape():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    lp, idx, tail = topk_of(logits, 10)
    permuted = logits[:, torch.randperm(50)]  # another vocabulary order: the same sorted probabilities
    assert uld(permuted, lp, tail).abs().max() < 1e-5
    flatter = uld(logits / 3, lp, tail)
    assert (flatter > 0.1).all()
    student = torch.zeros(4, 30, requires_grad=True)  # a smaller vocabulary is fine
    uld(student, lp, tail).sum().backward()
    assert student.grad.abs().sum() > 0


def test_matched_kl_is_the_forward_kl_when_every_token_matches():
    torch.manual_seed(1)
    teacher, student = torch.randn(5, 40) * 2, torch.randn(5, 40)
    lp, idx, tail = topk_of(teacher, 40)  # k = vocab: nothing outside
    got = matched_kl(student, lp, tail, idx)
    full = per_token_divergence(student[:, None], kind="forward_kl", teacher_logits=teacher[:, None])[:, 0]
    assert torch.allclose(got, full, atol=1e-4)
    none = matched_kl(student, lp, tail, torch.full_like(idx, -1))  # nothing shared: one bin each, KL 0
    assert torch.allclose(none, torch.zeros(5), atol=1e-5)
    some = matched_kl(student, *topk_of(teacher, 8)[::2], topk_of(teacher, 8)[1])
    assert torch.isfinite(some).all() and (some >= -1e-6).all() and math.isfinite(float(some.sum()))


def test_cross_blocks_hold_each_chunk_in_both_tokenizations_aligned(tokenizers):
    from distill.data.cross_blocks import _chunks, cross_blocks

    words, bpe = tokenizers
    documents = [TEXT[:300], TEXT[300:520]]
    blocks = cross_blocks(documents, words, bpe, seq_len=12)
    chunks = [c for d in documents for c in _chunks(d, words, 10)]
    assert len(blocks) == len(chunks) and "".join(chunks[:len(_chunks(documents[0], words, 10))]) == documents[0]
    assert blocks.student.input_ids.shape[1] == 12 and blocks.teacher.input_ids.shape[1] == 24
    for n, chunk in enumerate(chunks):
        s, t = with_ends(words, chunk), with_ends(bpe, chunk)
        assert blocks.student.input_ids[n, :len(s.ids)].tolist() == s.ids
        for j, i in enumerate(blocks.teacher_position[n].tolist()):
            if i >= 0:  # aligned: both have read up to the same character
                assert s.ends[j] == t.ends[i]
    assert 0.5 < blocks.aligned_share <= 1.0
    last = blocks.student.attention_mask.sum(1) - 1  # a block's last token predicts nothing inside it
    assert not blocks.student.loss_mask[torch.arange(len(blocks)), last].any()
    assert bool((blocks.student.loss_mask.sum(1) == last).all())


def test_a_student_with_another_tokenizer_learns_from_the_cached_teacher_at_aligned_positions(tokenizers, tmp_path):
    """Cross blocks + a top-k cache over the teacher's blocks + CrossLMTeacher + lm_loss: finite, with
    gradients, and KD from aligned positions only (a student whose positions align nowhere gets none)."""
    from lm_helpers import make_llama

    from distill.data.cross_blocks import cross_blocks
    from distill.losses.config import TokenKDConfig
    from distill.losses.tokens import lm_loss
    from distill.teachers.cross import CrossLMTeacher
    from distill.teachers.tokens import TopKCache

    words, bpe = tokenizers
    teacher = make_llama(tmp_path / "teacher", bpe, layers=2, hidden=32).eval()
    student = make_llama(tmp_path / "student", words, layers=1, hidden=32, seed=3)
    blocks = cross_blocks([TEXT[:400]], words, bpe, seq_len=16)
    cache = TopKCache.build_or_open(teacher, blocks.teacher, tmp_path / "cache", quiet=True,
                                    identity={"teacher": "t", "tokenizer": "bpe", "k": 8, "vocab": len(bpe)})
    signal = CrossLMTeacher(cache, vocab_map(bpe, words))
    index = torch.arange(4)
    batch = {**blocks.student.batch(index), "teacher_position": blocks.teacher_position[index]}
    for method in ("uld", "matched", "matched_uld"):
        parts = lm_loss(student, batch, signal.signal(batch), TokenKDConfig(cross=method), len(words))
        assert torch.isfinite(parts["loss"]) and parts["kd"] > 0, method
    parts["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    nowhere = {**batch, "teacher_position": torch.full_like(batch["teacher_position"], -1)}
    assert float(lm_loss(student, nowhere, signal.signal(nowhere), TokenKDConfig(), len(words))["kd"]) == 0.0


def test_distill_lm_teaches_a_student_with_another_tokenizer(tokenizers, tmp_path):
    import json

    words, bpe = tokenizers
    result = _cross_job(tmp_path, bpe, words, **{"kd.cross": "uld", "train.steps": 4})
    report = json.loads((result.run_dir / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "baseline", "distilled"}
    assert all(m["bpb"] > 0 for m in report["models"].values())  # one scale across the two vocabularies
    assert "kl_teacher" not in report["models"]["distilled"]  # no KL across vocabularies
    assert report["cross_tokenizer"]["method"] == "uld" and 0.5 < report["cross_tokenizer"]["aligned_share"] <= 1
    saved = result.run_dir / "distilled" / "model"
    assert json.loads((saved / "config.json").read_text())["vocab_size"] == len(words)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["student_tokenizer"]["size"] == len(words) and manifest["tokenizer"] != \
        manifest["student_tokenizer"]["fingerprint"] and "licence" in manifest
    assert (saved / "tokenizer.json").is_file()
    markdown = (result.run_dir / "report.md").read_text()
    assert "bits per byte are" in markdown and "where both had read the same text" in markdown


def test_a_tokenizer_without_offsets_is_named_when_its_tokens_do_not_spell_the_text():
    from distill.core.errors import DataError

    class Slow:
        def __call__(self, text, **kw):
            if kw.get("return_offsets_mapping"):
                raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
            return {"input_ids": [1, 2]}

        def decode(self, ids, **kw):  # lowercases: not the text it read
            return "some text"[: 4 * len(ids)]

    with pytest.raises(DataError, match="Slow gives no character offsets and its tokens do not decode back.*"
                                        "no kd.cross method can align.*fast version"):
        with_ends(Slow(), "Some Text")


def test_a_slow_tokenizer_is_aligned_by_decoding_its_tokens(tokenizers, tmp_path):
    """GPT-2's Python (slow) BPE has no offsets; its tokens spell the text back, so the ends come from
    decoding them, and equal the fast tokenizer's offsets."""
    import json

    from transformers import GPT2Tokenizer

    _, bpe = tokenizers
    model = json.loads(bpe.backend_tokenizer.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    slow = GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = TEXT[:300] + " naïve café"
    fast_ends, slow_ends = with_ends(bpe, text), with_ends(slow, text)
    assert slow_ends.ids == fast_ends.ids and slow_ends.ends == fast_ends.ends


def test_the_live_cross_teacher_reads_the_students_text_and_matches_the_cache(tokenizers, tmp_path):
    """On the data's own blocks the live teacher (what on-policy rounds use) finds the same aligned
    positions and gives the same top-k as the cache built over the teacher's blocks."""
    from lm_helpers import make_llama

    from distill.data.cross_blocks import cross_blocks
    from distill.teachers.cross import CrossLiveTeacher, CrossLMTeacher
    from distill.teachers.tokens import TopKCache

    words, bpe = tokenizers  # the student writes byte-level BPE (lossless text); the teacher reads words
    teacher = make_llama(tmp_path / "teacher", words, layers=2, hidden=32).eval()
    blocks = cross_blocks([TEXT[:400]], bpe, words, seq_len=16)
    cache = TopKCache.build_or_open(teacher, blocks.teacher, tmp_path / "cache", quiet=True,
                                    identity={"teacher": "t", "tokenizer": "words", "k": 8, "vocab": len(words)})
    to_student = vocab_map(words, bpe)
    index = torch.arange(4)
    batch = {**blocks.student.batch(index), "teacher_position": blocks.teacher_position[index]}
    cached = CrossLMTeacher(cache, to_student).signal(batch)
    live = CrossLiveTeacher(teacher, words, bpe, to_student, k=8, vocab=len(words),
                            teacher_len=blocks.teacher.seq_len).signal(batch)
    assert torch.equal(live.valid, cached.valid) and live.valid.float().mean() > 0.3
    v = live.valid
    assert torch.equal(live.topk_indices[v], cached.topk_indices[v])
    assert torch.allclose(live.topk_logprobs[v], cached.topk_logprobs[v].float(), atol=2e-3)  # the cache is float16


def test_a_student_with_another_tokenizer_learns_on_policy_from_the_live_teacher(tokenizers, tmp_path, monkeypatch):
    import json

    from distill.training import lm as lm_training

    sampled = []
    real = lm_training.sample_continuations
    monkeypatch.setattr(lm_training, "sample_continuations", lambda *a, **kw: sampled.append(1) or real(*a, **kw))
    words, bpe = tokenizers
    result = _cross_job(tmp_path, words, bpe, baseline=False, **{
        "teacher.signal": "live", "on_policy": {"fraction": 1.0, "prompt_tokens": 4, "max_new_tokens": 8}})
    metrics = [json.loads(line) for line in (result.run_dir / "distilled" / "metrics.jsonl").read_text().splitlines()]
    assert len(sampled) == 3 and metrics[-1]["train_kd"] > 0  # every step: the student's samples, scored
    assert not (result.run_dir / "teacher_cache" / "train").exists()  # no cache: the teacher read the samples


def test_a_student_of_another_family_with_its_own_tokenizer_is_built_from_config_and_trained(tokenizers, tmp_path):
    """A Llama teacher, a Gemma 3 student with a byte-level BPE vocabulary: from config alone."""
    import json

    words, bpe = tokenizers
    result = _cross_job(tmp_path, words, bpe, baseline=False, **{
        "student.config": {"model_type": "gemma3_text", "num_hidden_layers": 2, "hidden_size": 32,
                           "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                           "head_dim": 8, "sliding_window": 8}})
    saved = json.loads((result.run_dir / "distilled" / "model" / "config.json").read_text())
    assert saved["model_type"] == "gemma3_text" and saved["vocab_size"] == len(bpe)
    assert saved["eos_token_id"] == bpe.eos_token_id and result.report["models"]["distilled"]["bpb"] > 0


def test_jsonl_text_rows_teach_a_student_with_another_tokenizer_and_other_rows_are_named(tokenizers, tmp_path):
    import json

    from distill.core.errors import ConfigError

    words, bpe = tokenizers
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": TEXT[i:i + 150]}) + "\n" for i in range(0, 600, 50)))
    jsonl = {"data.corpus": "jsonl", "data.path": str(rows), "data.val_fraction": 0.25, "baseline": False}
    result = _cross_job(tmp_path, words, bpe, **jsonl)
    assert result.report["data"]["holdout"] == "documents" and result.report["cross_tokenizer"]["aligned_share"] > 0.3
    rows.write_text(json.dumps({"prompt": "Let there be", "response": "light"}) + "\n")
    with pytest.raises(ConfigError, match="has no `text`"):
        _cross_job(tmp_path, words, bpe, name="chat", **jsonl)


def test_the_cross_tokenizer_loss_in_chunks_equals_it_in_one(tokenizers, tmp_path):
    """Chunked memory: the student's logits a few tokens at a time give the same loss and gradients."""
    from lm_helpers import make_llama

    from distill.data.cross_blocks import cross_blocks
    from distill.losses.config import TokenKDConfig
    from distill.losses.tokens import lm_loss
    from distill.teachers.cross import CrossLMTeacher
    from distill.teachers.tokens import TopKCache

    words, bpe = tokenizers
    teacher = make_llama(tmp_path / "teacher", bpe, layers=2, hidden=32).eval()
    student = make_llama(tmp_path / "student", words, layers=1, hidden=32, seed=3)
    blocks = cross_blocks([TEXT[:400]], words, bpe, seq_len=16)
    cache = TopKCache.build_or_open(teacher, blocks.teacher, tmp_path / "cache", quiet=True,
                                    identity={"teacher": "t", "tokenizer": "bpe", "k": 8, "vocab": len(bpe)})
    batch = {**blocks.student.batch(torch.arange(4)), "teacher_position": blocks.teacher_position[:4]}
    signal = CrossLMTeacher(cache, vocab_map(bpe, words)).signal(batch)
    results = []
    for chunk in (4096, 5):
        student.zero_grad()
        loss = lm_loss(student, batch, signal, TokenKDConfig(cross="matched_uld", chunk_tokens=chunk), len(words))["loss"]
        loss.backward()
        results.append((float(loss), [p.grad.clone() for p in student.parameters() if p.grad is not None]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def _cross_job(tmp_path, teacher_tok, student_tok, **overrides):
    """`distill lm` of a tiny Llama teacher (`teacher_tok`) and a 1-layer student with `student_tok`,
    on TEXT (or `data.path`), with `overrides` on top; returns its result."""
    import warnings

    import distill
    from lm_helpers import make_llama

    make_llama(tmp_path / "teacher", teacher_tok, layers=2, hidden=32)
    student_tok.save_pretrained(tmp_path / "student_tok")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 4)
    settings = {"teacher.model": str(tmp_path / "teacher"), "teacher.adapt": None, "teacher.top_k": 8,
                "student.tokenizer": str(tmp_path / "student_tok"), "student.layers": None,
                "student.config": {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32},
                "output_dir": str(tmp_path / "runs"), "name": "cross", "data.corpus": "text",
                "data.path": str(corpus), "data.seq_len": 16, "data.val_fraction": 0.2, "train.steps": 3,
                "train.batch_size": 2, "quiet": True, "device": "cpu", **overrides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny teacher's unknown licence
        return distill.lm(overrides=settings)
