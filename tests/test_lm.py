"""LM distillation on tiny random Llamas: student building, tokenizer/vocab checks, the objective,
the top-k teacher cache, training (resume, on-policy), the `distill lm` job and its bad input."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from lm_helpers import TEXT, make_llama, make_tokenizer  # noqa: E402

from distill.core.errors import CheckpointError, ConfigError, ModelError  # noqa: E402
from distill.data.tokens import pack_text  # noqa: E402
from distill.eval.lm import evaluate_lm  # noqa: E402
from distill.losses.tokens import (
    TokenKDConfig,
    lm_loss,  # noqa: E402
)
from distill.models import causal_lm as lm_models  # noqa: E402
from distill.recipes.lm.config import load_lm_config
from distill.teachers import tokens as lm_signals  # noqa: E402
from distill.teachers.tokens import LiveLMTeacher, TopKCache, topk_of  # noqa: E402
from distill.training.config import LMTrainConfig, OnPolicyConfig  # noqa: E402
from distill.training.lm import _on_policy_key, fit_lm, sample_continuations  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tokenizer, a 4-layer teacher saved in HF layout, and 16-token blocks of text."""
    root = tmp_path_factory.mktemp("lm")
    tok = make_tokenizer(root / "tok")
    teacher = make_llama(root / "teacher", tok).eval()
    blocks = pack_text([TEXT] * 4, tok, seq_len=16)
    return {"root": root, "tok": tok, "teacher": teacher, "blocks": blocks, "vocab": len(tok)}


def _identity(lm, k=8):
    return {"teacher": "tiny", "tokenizer": lm_models.tokenizer_fingerprint(lm["tok"]), "k": k, "vocab": lm["vocab"]}


# --------------------------------------------------------------------------- models


def test_student_from_chosen_teacher_layers_copies_their_weights(lm):
    teacher = lm["teacher"]
    student = lm_models.student_from_teacher(teacher, layers=[0, 3])
    assert student.config.num_hidden_layers == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    assert torch.equal(s_sd["model.layers.1.mlp.up_proj.weight"], t_sd["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(s_sd["model.layers.0.self_attn.q_proj.weight"], t_sd["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(s_sd["model.embed_tokens.weight"], t_sd["model.embed_tokens.weight"])
    with pytest.raises(ModelError, match=r"`student.layers`: \[7\] are out of range: `model.layers` has 4 layers"):
        lm_models.student_from_teacher(teacher, layers=[0, 7])


def test_a_narrow_student_from_scratch_is_smaller_and_runs(lm):
    student = lm_models.student_from_teacher(lm["teacher"], overrides={"hidden_size": 16, "num_hidden_layers": 1})
    assert lm_models.count_parameters(student) < lm_models.count_parameters(lm["teacher"]) / 2
    out = student(input_ids=lm["blocks"].input_ids[:2]).logits
    assert out.shape == (2, 16, lm["vocab"])
    with pytest.raises(ModelError, match="student.hidden_sise"):
        lm_models.student_from_teacher(lm["teacher"], overrides={"hidden_sise": 16})


def test_different_tokenizers_are_refused_naming_both(lm, tmp_path):
    other = make_tokenizer(tmp_path, extra_words=("zebra", "quasar"))
    with pytest.raises(ModelError, match=r"different tokenizers: teacher T .*\d+ tokens.* vs student S"):
        lm_models.check_same_tokenizer(lm["tok"], other, "T", "S")
    lm_models.check_same_tokenizer(lm["tok"], lm["tok"], "T", "S")


def test_padded_vocabularies_are_sliced_to_the_tokenizer(lm, tmp_path):
    padded = make_llama(tmp_path / "padded", lm["tok"], layers=1, vocab=lm["vocab"] + 24)
    assert lm_models.shared_vocab(lm["tok"], lm["teacher"], padded) == lm["vocab"]
    batch = lm["blocks"].batch(torch.arange(2))
    parts = lm_loss(padded, batch, LiveLMTeacher(lm["teacher"], lm["vocab"]).signal(batch), TokenKDConfig(), lm["vocab"])
    assert torch.isfinite(parts["loss"])
    small = make_llama(tmp_path / "small", lm["tok"], layers=1, vocab=lm["vocab"] - 3)
    with pytest.raises(ModelError, match="cannot score every token"):
        lm_models.shared_vocab(lm["tok"], lm["teacher"], small)


def test_a_missing_model_dir_and_an_offline_hub_id_are_explained(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="`teacher.model`: .*nowhere does not exist"):
        lm_models.load_causal_lm(str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub client read the variable when it was imported: tell it too, or it spends ~45 s on retries
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="offline .* cannot be downloaded.*--local-dir DIR"):
        lm_models.load_causal_lm("no-such-org/no-such-model")


def test_the_licence_is_read_from_the_model_card_and_restrictive_ones_warn(lm, tmp_path):
    d = tmp_path / "m"
    make_llama(d, lm["tok"], layers=1)
    assert lm_models.licence_of(str(d)) is None
    (d / "README.md").write_text("---\nlicense: llama2\n---\n# a model\n")
    assert lm_models.licence_of(str(d)) == "llama2"
    with pytest.warns(UserWarning, match="restricts training on its outputs"):
        lm_models.warn_licence("llama2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm_models.warn_licence("apache-2.0")


# --------------------------------------------------------------------------- objective


def test_ce_part_equals_the_models_own_next_token_loss(lm):
    student = lm_models.student_from_teacher(lm["teacher"], layers=[1])
    batch = lm["blocks"].batch(torch.arange(3))
    ours = lm_loss(student, batch, None, TokenKDConfig(ratio=0.0), lm["vocab"])["loss"]
    theirs = student(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    assert torch.allclose(ours, theirs, rtol=1e-5)


def test_chunked_objective_equals_one_chunk_in_value_and_gradient(lm):
    batch = lm["blocks"].batch(torch.arange(3))
    signal = LiveLMTeacher(lm["teacher"], lm["vocab"]).signal(batch)
    results = []
    for chunk in (5, 10_000):
        student = lm_models.student_from_teacher(lm["teacher"], layers=[2], seed=0)
        loss = lm_loss(student, batch, signal, TokenKDConfig(divergence="jsd", ratio=0.7, chunk_tokens=chunk), lm["vocab"])
        loss["loss"].backward()
        results.append((loss["loss"].detach(), student.model.embed_tokens.weight.grad.clone()))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, rtol=1e-5)
    assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_identical_teacher_and_student_give_zero_divergence(lm):
    batch = lm["blocks"].batch(torch.arange(2))
    signal = LiveLMTeacher(lm["teacher"], lm["vocab"]).signal(batch)
    for kind in ("forward_kl", "reverse_kl", "jsd", "tvd"):
        kd = lm_loss(lm["teacher"], batch, signal, TokenKDConfig(divergence=kind), lm["vocab"])["kd"]
        assert float(kd) == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(lm_signals, "SHARD_ROWS", 4)


def test_cache_holds_the_teachers_top_k_compactly(lm, tmp_path, small_shards):
    blocks = lm["blocks"]
    cache = TopKCache.build_or_open(lm["teacher"], blocks, tmp_path / "c", identity=_identity(lm), quiet=True)
    assert len(cache.manifest["shards"]) == -(-len(blocks) // 4)
    assert 4 * 8 + 2 <= cache.bytes_per_token < 4 * 8 + 2 + 40  # + each shard's header
    batch = blocks.batch(torch.tensor([5, 1]))
    expect_lp, expect_idx, expect_tail = topk_of(LiveLMTeacher(lm["teacher"], lm["vocab"]).signal(batch).logits, 8)
    got = cache.signal(batch)
    assert torch.equal(got.topk_indices, expect_idx)
    assert torch.allclose(got.topk_logprobs.float(), expect_lp, atol=1e-2)
    assert torch.allclose(got.tail_logprob.float(), expect_tail, atol=1e-2)


def test_bits_per_byte_count_the_bytes_of_the_target_text(lm):
    from distill.eval.lm import target_bytes

    tok, blocks = lm["tok"], lm["blocks"]
    whole = tok.decode(torch.roll(blocks.input_ids, -1, 1)[blocks.loss_mask].tolist(), skip_special_tokens=True)
    n_bytes = target_bytes(blocks, tok)
    assert abs(n_bytes - len(whole.encode())) <= len(blocks)  # per-block decoding: at most a space a block apart
    out = evaluate_lm(lm["teacher"], blocks, lm["vocab"], text_bytes=n_bytes)
    tokens = int(blocks.loss_mask.sum())
    assert out["bpb"] == pytest.approx(out["ce"] * tokens / math.log(2) / n_bytes, rel=1e-6)
    assert "bpb" not in evaluate_lm(lm["teacher"], blocks, lm["vocab"])


@pytest.mark.parametrize("in_memory", [True, False])
def test_padding_is_never_cached_and_reads_back_as_the_live_teacher(lm, tmp_path, small_shards, monkeypatch,
                                                                      in_memory):
    from distill.data.tokens import encode_rows
    from distill.teachers import cache as sharded

    if not in_memory:
        monkeypatch.setattr(sharded, "IN_MEMORY_BYTES", 0)  # memory-mapped, row by row
    rows = [{"prompt": "And God said", "response": " ".join(["light"] * (1 + i % 5))} for i in range(10)]
    blocks = encode_rows(rows, lm["tok"], 32, response_only=True, packing=False, source="rows.jsonl")
    real = int(blocks.attention_mask.sum())
    assert real < blocks.attention_mask.numel() // 2  # mostly padding: the case this is for
    cache = TopKCache.build_or_open(lm["teacher"], blocks, tmp_path / "c", identity=_identity(lm), quiet=True)
    assert cache.manifest["layout"] == "ragged" and cache.manifest["real_tokens"] == real
    assert cache.cache.nbytes < 0.6 * (4 * 8 + 2) * blocks.attention_mask.numel()  # a dense cache's bytes
    batch = blocks.batch(torch.tensor([7, 0, 3]))
    lp, idx, tail = topk_of(LiveLMTeacher(lm["teacher"], lm["vocab"]).signal(batch).logits, 8)
    got, mask = cache.signal(batch), batch["attention_mask"]
    assert torch.equal(got.topk_indices[mask], idx[mask])
    assert torch.allclose(got.topk_logprobs.float()[mask], lp[mask], atol=1e-2)
    assert torch.allclose(got.tail_logprob.float()[mask], tail[mask], atol=1e-2)
    assert torch.isfinite(got.topk_logprobs.float()).all() and torch.isfinite(got.tail_logprob.float()).all()
    full = TopKCache.build_or_open(lm["teacher"], blocks, tmp_path / "full", quiet=True,
                                   identity=_identity(lm, k=lm["vocab"]))  # every id: the exact distribution
    student = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    live = lm_loss(student, batch, LiveLMTeacher(lm["teacher"], lm["vocab"]).signal(batch), TokenKDConfig(),
                   lm["vocab"])["kd"]
    cached = lm_loss(student, batch, full.signal(batch), TokenKDConfig(), lm["vocab"])["kd"]
    assert float(cached) == pytest.approx(float(live), rel=2e-3)  # the filler of padded positions counts for nothing


def test_a_cache_with_k_equal_vocab_gives_the_full_loss(lm, tmp_path, small_shards):
    blocks, vocab = lm["blocks"], lm["vocab"]
    cache = TopKCache.build_or_open(lm["teacher"], blocks, tmp_path / "c", identity=_identity(lm, k=vocab), quiet=True)
    batch = blocks.batch(torch.arange(3))
    student = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    full = lm_loss(student, batch, LiveLMTeacher(lm["teacher"], vocab).signal(batch), TokenKDConfig(), vocab)["kd"]
    sparse = lm_loss(student, batch, cache.signal(batch), TokenKDConfig(), vocab)["kd"]
    assert float(sparse) == pytest.approx(float(full), rel=2e-3)


@pytest.mark.parametrize("field", ["teacher", "tokenizer", "k"])
def test_a_cache_built_for_something_else_is_refused_then_rebuilt_on_request(lm, tmp_path, field):
    TopKCache.build_or_open(lm["teacher"], lm["blocks"], tmp_path / "c", identity=_identity(lm), quiet=True)
    other = {**_identity(lm), field: {"teacher": "other", "tokenizer": "0" * 16, "k": 4}[field]}
    with pytest.raises(CheckpointError, match=f"was built for something else \\({field}: cache"):
        TopKCache.build_or_open(lm["teacher"], lm["blocks"], tmp_path / "c", identity=other, quiet=True)
    rebuilt = TopKCache.build_or_open(lm["teacher"], lm["blocks"], tmp_path / "c", identity=other, rebuild=True,
                                      quiet=True)
    assert rebuilt.manifest[field] == other[field]


def test_a_cache_for_another_corpus_is_refused(lm, tmp_path):
    TopKCache.build_or_open(lm["teacher"], lm["blocks"], tmp_path / "c", identity=_identity(lm), quiet=True)
    other = pack_text([TEXT[::-1]] * 4, lm["tok"], seq_len=16)
    with pytest.raises(CheckpointError, match="corpus: cache"):
        TopKCache.build_or_open(lm["teacher"], other, tmp_path / "c", identity=_identity(lm), quiet=True)


def test_a_truncated_shard_is_named_and_rebuilt_alone(lm, tmp_path, small_shards):
    d = tmp_path / "c"
    first = TopKCache.build_or_open(lm["teacher"], lm["blocks"], d, identity=_identity(lm), quiet=True)
    batch = lm["blocks"].batch(torch.arange(len(lm["blocks"])))
    before = first.signal(batch)
    shard = d / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    untouched = (d / "shard-00000.safetensors").stat().st_mtime_ns
    with pytest.raises(CheckpointError, match="shard-00001.safetensors fails its sha256 check"):
        TopKCache.build_or_open(lm["teacher"], lm["blocks"], d, identity=_identity(lm), quiet=True)
    again = TopKCache.build_or_open(lm["teacher"], lm["blocks"], d, identity=_identity(lm), rebuild=True, quiet=True)
    assert (d / "shard-00000.safetensors").stat().st_mtime_ns == untouched
    assert torch.equal(again.signal(batch).topk_logprobs, before.topk_logprobs)


def test_an_interrupted_cache_build_resumes_without_recomputing_finished_shards(lm, tmp_path, small_shards,
                                                                               monkeypatch):
    calls = []
    real = lm_signals.teacher_logits

    def counting(model, batch, vocab):
        calls.append(len(batch["input_ids"]))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the crash, in the middle of the second shard
        return real(model, batch, vocab)

    monkeypatch.setattr(lm_signals, "teacher_logits", counting)
    with pytest.raises(KeyboardInterrupt):
        TopKCache.build_or_open(lm["teacher"], lm["blocks"], tmp_path / "c", identity=_identity(lm),
                                batch_size=2, quiet=True)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and not manifest["complete"]
    calls.clear()
    monkeypatch.setattr(lm_signals, "teacher_logits", real)
    cache = TopKCache.build_or_open(lm["teacher"], lm["blocks"], tmp_path / "c", identity=_identity(lm),
                                    batch_size=2, quiet=True)
    assert cache.manifest["complete"] and len(cache.manifest["shards"]) == -(-len(lm["blocks"]) // 4)


# --------------------------------------------------------------------------- training


def _train(steps=12, **kw):
    return LMTrainConfig(**{"steps": steps, "batch_size": 2, "eval_every": steps, "save_every": 4, "warmup_steps": 0,
                            "precision": "no", **kw})


def test_distillation_brings_the_student_closer_to_the_teacher(lm):
    blocks, vocab = lm["blocks"], lm["vocab"]
    live = LiveLMTeacher(lm["teacher"], vocab)
    student = lm_models.student_from_teacher(lm["teacher"], overrides={"num_hidden_layers": 1}, seed=1)
    before = evaluate_lm(student, blocks, vocab, teacher=live)["kl_teacher"]
    cfg = _train(steps=20)
    cfg.optimizer.lr = 3e-3
    out = fit_lm(student, blocks, train=cfg, kd=TokenKDConfig(ratio=1.0), vocab=vocab, teacher=live, quiet=True,
                 device="cpu")
    after = evaluate_lm(out.model, blocks, vocab, teacher=live)["kl_teacher"]
    assert after < 0.5 * before


def test_an_interrupted_run_resumes_to_the_same_weights(lm, tmp_path):
    blocks, vocab = lm["blocks"], lm["vocab"]
    live = LiveLMTeacher(lm["teacher"], vocab)

    def student():
        return lm_models.student_from_teacher(lm["teacher"], layers=[0, 1])

    whole = fit_lm(student(), blocks, train=_train(), kd=TokenKDConfig(), vocab=vocab, teacher=live, quiet=True,
                   device="cpu", checkpoint_dir=tmp_path / "a")

    class Crash:
        calls = 0

        def signal(self, batch):
            Crash.calls += 1
            if Crash.calls == 7:
                raise KeyboardInterrupt
            return live.signal(batch)

    with pytest.raises(KeyboardInterrupt):
        fit_lm(student(), blocks, train=_train(), kd=TokenKDConfig(), vocab=vocab, teacher=Crash(), quiet=True,
               device="cpu", checkpoint_dir=tmp_path / "b")
    resumed = fit_lm(student(), blocks, train=_train(), kd=TokenKDConfig(), vocab=vocab, teacher=live, quiet=True,
                     device="cpu", checkpoint_dir=tmp_path / "b", resume=True)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history == whole.history  # the row after the resume point counts the steps before it too
    with pytest.raises(CheckpointError, match="different training settings"):
        fit_lm(student(), blocks, train=_train(), kd=TokenKDConfig(divergence="jsd"), vocab=vocab, teacher=live,
               quiet=True, device="cpu", checkpoint_dir=tmp_path / "b", resume=True)


def test_on_policy_batches_train_only_on_the_students_samples(lm):
    blocks, vocab, tok = lm["blocks"], lm["vocab"], lm["tok"]
    student = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    cfg = OnPolicyConfig(fraction=1.0, prompt_tokens=4, max_new_tokens=6)
    torch.manual_seed(0)
    batch = sample_continuations(student, blocks.batch(torch.arange(2)), cfg, tok.pad_token_id)
    assert torch.equal(batch["input_ids"][:, :4], blocks.input_ids[:2, :4])
    assert batch["loss_mask"][:, 3:9].all() and batch["loss_mask"].sum() == 2 * 6
    assert not batch["attention_mask"][:, 10:].any()

    seen = []

    class Recording:
        def signal(self, batch):
            seen.append(batch["loss_mask"].sum().item())
            return LiveLMTeacher(lm["teacher"], vocab).signal(batch)

    fit_lm(student, blocks, train=_train(steps=3), kd=TokenKDConfig(), vocab=vocab, teacher=Recording(),
           on_policy=cfg, pad_id=tok.pad_token_id, quiet=True, device="cpu")
    assert seen == [12, 12, 12]


def test_on_policy_rounds_can_start_late_in_training(lm):
    blocks, vocab, tok = lm["blocks"], lm["vocab"], lm["tok"]
    student = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    seen = []

    class Recording:
        def signal(self, batch):
            seen.append(batch["loss_mask"].sum().item())
            return LiveLMTeacher(lm["teacher"], vocab).signal(batch)

    late = OnPolicyConfig(fraction=1.0, start=0.5, prompt_tokens=4, max_new_tokens=6)
    fit_lm(student, blocks, train=_train(steps=4), kd=TokenKDConfig(), vocab=vocab, teacher=Recording(),
           on_policy=late, pad_id=tok.pad_token_id, quiet=True, device="cpu")
    assert seen[2:] == [12, 12] and 12 not in seen[:2]  # the corpus's blocks first, the student's samples after
    assert "start" not in _on_policy_key(OnPolicyConfig(fraction=0.5))  # earlier runs keep their fingerprint
    assert _on_policy_key(late)["start"] == 0.5


def test_the_teacher_is_asked_only_after_the_warm_start(lm):
    blocks, vocab = lm["blocks"], lm["vocab"]
    asked = []

    class Recording:
        def signal(self, batch):
            asked.append(len(asked))
            return LiveLMTeacher(lm["teacher"], vocab).signal(batch)

    student = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    out = fit_lm(student, blocks, train=_train(steps=5, eval_every=1), kd=TokenKDConfig(ratio=0.5, warm_start=3),
                 vocab=vocab, teacher=Recording(), quiet=True, device="cpu")
    assert len(asked) == 2  # steps 4 and 5
    assert ["train_kd" in row for row in out.history] == [False, False, False, True, True]


# --------------------------------------------------------------------------- config and the job


def test_lm_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="needs the teacher to score student samples"):
        load_lm_config(None, ["on_policy.fraction=0.5"])
    with pytest.raises(ConfigError, match="exactly one of student.model, student.layers or student.config"):
        load_lm_config(None, ["student.config={hidden_size: 64}"])
    with pytest.raises(ConfigError, match=r"`kd.divergnce`: unknown key. Did you mean `divergence`"):
        load_lm_config(None, ["kd.divergnce=jsd"])
    with pytest.raises(ConfigError, match="kd.ratio is 0: the 'distilled' student would learn from next-token CE"):
        load_lm_config(None, ["kd.ratio=0"])
    with pytest.raises(ConfigError, match=r"kd.warm_start \(200\) must be below train.steps \(200\)"):
        load_lm_config(None, ["kd.warm_start=200", "train.steps=200"])
    with pytest.raises(ConfigError, match="teacher.adapt.lr"):
        load_lm_config(None, ["teacher.adapt={lr: 0}"])
    with pytest.raises(ConfigError, match="`data.path`: required when data.corpus is jsonl"):
        load_lm_config(None, ["data.corpus=jsonl"])
    assert load_lm_config(None, ["kd.divergence=jsd"]).kd.divergence == "jsd"


def test_the_lm_job_trains_evaluates_reports_and_exports(lm, tmp_path):
    """Through the Python entry point `distill.lm` (the same job as `distill lm`)."""
    from transformers import AutoModelForCausalLM

    import distill

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    overrides = {"teacher.model": str(lm["root"] / "teacher"), "output_dir": str(tmp_path / "runs"), "name": "t",
                 "data.corpus": "text", "data.path": str(corpus), "data.seq_len": 16, "data.val_fraction": 0.2,
                 "student.layers": [0], "train.steps": 4, "train.batch_size": 2, "teacher.top_k": 8, "quiet": True,
                 "device": "cpu", "student.lora": {"r": 2}, "teacher.adapt": None}
    with pytest.warns(UserWarning, match="licence is unknown"):
        result = distill.lm(overrides=overrides)
    run_dir, report = result.run_dir, result.report
    assert set(report["models"]) == {"teacher", "baseline", "distilled"}
    assert report["teacher"]["licence"] is None
    assert json.loads((run_dir / "manifest.json").read_text())["licence_warning"].startswith("the teacher's licence is unknown")
    markdown = (run_dir / "report.md").read_text()
    assert "KL to teacher" in markdown
    assert "![learning curves](plots/lm_curves.png)" in markdown
    assert (run_dir / "plots" / "lm_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["data"]["steps"] == 4 and 0 < report["data"]["tokens_seen"] <= 4 * 2 * 16
    assert all(m["bpb"] > 0 for m in report["models"].values()) and "bits per byte" in (run_dir / "report.md").read_text()
    verdict = report["verdict"]  # a paired bootstrap over the held-out blocks (one text: no documents)
    assert verdict["units"] == "blocks" and verdict["n"] == report["data"]["val_blocks"]
    assert verdict["outcome"] == "no detectable difference" or verdict["n"] >= 5  # a handful of blocks claims nothing
    assert "forward_ms_low" in report["models"]["distilled"] and isinstance(report["timing_notes"], list)
    from distill.cli import main

    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0  # `distill report` redraws an LM run too
    assert (run_dir / "report.md").read_text() == markdown
    assert markdown.index(report["doctor"]["verdict"]) < markdown.index("Teacher `")  # the verdict first
    card = (run_dir / "distilled" / "model" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "distillation" in front["tags"] and "license" not in front
    assert "| distilled (this model) |" in card and f"{report['models']['distilled']['ppl']:.2f}" in card
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "distilled" / "model")
    assert exported.config.num_hidden_layers == 1 and not hasattr(exported, "peft_config")
    assert (run_dir / "teacher_cache" / "train" / "manifest.json").is_file()
    from transformers import AutoTokenizer

    from distill.recipes.lm.data import load_text

    held_out = load_text(load_lm_config(run_dir / "config.yaml"),
                         AutoTokenizer.from_pretrained(run_dir / "distilled" / "model")).val
    round_trip = evaluate_lm(exported, held_out, lm["vocab"])["ppl"]  # the folder answers as the run measured
    assert round_trip == pytest.approx(report["models"]["distilled"]["ppl"], rel=1e-4)


def test_a_student_that_cannot_be_built_leaves_no_run_directory(lm, tmp_path):
    from distill.core.errors import DistillError
    from distill.recipes.lm.pipeline import run_lm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    cfg = load_lm_config(None, [f"teacher.model={lm['root'] / 'teacher'}", f"output_dir={tmp_path / 'runs'}",
                                "name=t", "data.corpus=text", f"data.path={corpus}", "data.seq_len=16",
                                "student.layers=[99]", "quiet=true", "device=cpu", "teacher.adapt=null"])
    with warnings.catch_warnings(), pytest.raises(DistillError, match="student.layers"):
        warnings.simplefilter("ignore")  # the tiny teacher's unknown licence
        run_lm(cfg)
    assert not (tmp_path / "runs" / "t").exists()  # so the corrected command starts clean


def test_an_adapted_teacher_is_trained_once_then_teaches_and_is_reported(lm, tmp_path):
    from distill.recipes.lm.pipeline import run_lm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    common = [f"teacher.model={lm['root'] / 'teacher'}", f"output_dir={tmp_path / 'runs'}", "data.corpus=text",
              f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2", "student.layers=[0]",
              "train.steps=4", "train.batch_size=2", "teacher.top_k=8", "quiet=true", "device=cpu",
              f"teacher.cache_dir={tmp_path / 'cache'}", "baseline=false"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny teacher's unknown licence
        run_dir = run_lm(load_lm_config(None, [*common, "name=a", "teacher.adapt={steps: 6, lr: 0.003}"]))
        (adapted,) = (tmp_path / "cache").glob("adapted-*")
        report = json.loads((run_dir / "report.json").read_text())
        assert list(report["models"]) == ["teacher", "teacher_adapted", "distilled"]
        assert report["models"]["teacher_adapted"]["ppl"] < report["models"]["teacher"]["ppl"]
        assert report["models"]["teacher_adapted"]["kl_teacher"] < 1e-2  # the caches are the adapted teacher's
        assert (adapted / "model" / "config.json").is_file() and (adapted / "train" / "manifest.json").is_file()
        assert not (adapted / "last.safetensors").exists()  # its training state is not kept
        assert "fine-tuned on the training blocks (6 steps" in (run_dir / "report.md").read_text()
        stamp = (adapted / "model" / "model.safetensors").stat().st_mtime_ns
        run_lm(load_lm_config(None, [*common, "name=b", "teacher.adapt={steps: 6, lr: 0.003}"]))
        assert (adapted / "model" / "model.safetensors").stat().st_mtime_ns == stamp  # shared, not retrained
        run_lm(load_lm_config(None, [*common, "name=c", "teacher.adapt={steps: 5, lr: 0.003}"]))
        assert len(list((tmp_path / "cache").glob("adapted-*"))) == 2  # other settings: another teacher


def test_a_frozen_teacher_is_adapted_and_the_given_one_left_untouched(lm, tmp_path):
    from distill.data.tokens import split_blocks
    from distill.recipes.lm.config import LMRunConfig, LMTeacherConfig, TeacherAdaptConfig
    from distill.recipes.lm.pipeline import adapt_teacher

    teacher = LiveLMTeacher(lm["teacher"], lm["vocab"]).model  # frozen in place, as a live signal leaves it
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = LMRunConfig(teacher=LMTeacherConfig(adapt=TeacherAdaptConfig(steps=3, lr=1e-3)), device="cpu", quiet=True,
                      train=LMTrainConfig(batch_size=2, precision="no"))
    adapted = adapt_teacher(cfg, teacher, lm["tok"], split_blocks(lm["blocks"], 0.25), lm["vocab"], tmp_path, False)
    assert any(not torch.equal(a, before[k]) for k, a in adapted.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_the_lm_command_reports_bad_input_without_a_traceback(capsys, tmp_path):
    from distill.cli import main

    assert main(["lm", "kd.divergnce=jsd"]) == 2
    assert "`kd.divergnce`: unknown key. Did you mean `divergence`?" in capsys.readouterr().err
    assert main(["lm", f"teacher.model={tmp_path / 'missing'}", f"output_dir={tmp_path}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(lm, tmp_path):
    from distill.core.errors import TrainingDiverged

    blocks, vocab = lm["blocks"], lm["vocab"]
    live = LiveLMTeacher(lm["teacher"], vocab)

    class Poisoned:
        calls = 0

        def signal(self, batch):
            Poisoned.calls += 1
            out = live.signal(batch)
            if Poisoned.calls == 6:
                out.logits = torch.full_like(out.logits, float("nan"))
            return out

    student = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    with pytest.raises(TrainingDiverged, match="NaN/inf at step 5"):
        fit_lm(student, blocks, train=_train(), kd=TokenKDConfig(), vocab=vocab, teacher=Poisoned(), quiet=True,
               device="cpu", checkpoint_dir=tmp_path)
    from distill.core.checkpoint import (
        load_training_state,  # the step-4 checkpoint is intact and finite
    )
    fresh = lm_models.student_from_teacher(lm["teacher"], layers=[0])
    opt = torch.optim.AdamW(fresh.parameters())
    state = load_training_state(tmp_path / "last.safetensors", model=fresh, optimizer=opt, scheduler=None)
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_fsdp_refuses_what_a_sharded_student_cannot_run(tmp_path):
    from distill.training.lm import _check_shardable

    tok = make_tokenizer(tmp_path / "tok")
    student = make_llama(tmp_path / "s", tok, layers=1)
    with pytest.raises(ConfigError, match="on_policy.fraction > 0.*train.shard=none"):
        _check_shardable(student, OnPolicyConfig(fraction=0.5))
    copy = _check_shardable(student, OnPolicyConfig(fraction=0.0))  # the whole model, handed back at the end
    assert copy is not student and torch.equal(copy.lm_head.weight, student.lm_head.weight)
    student.peft_config = {"default": None}  # what a PEFT (LoRA) model carries
    with pytest.raises(ConfigError, match="LoRA student"):
        _check_shardable(student, None)


def test_tokens_seen_counts_the_blocks_drawn_without_their_padding():
    from distill.data.tokens import TokenBlocks
    from distill.training.lm import tokens_seen

    attention = torch.zeros(5, 8, dtype=torch.bool)
    attention[:, :3] = True  # 3 real tokens, 5 of padding, in every block
    blocks = TokenBlocks(torch.ones(5, 8, dtype=torch.long), attention, attention.clone())
    train = LMTrainConfig(steps=7, batch_size=2)
    assert tokens_seen(blocks, train) == 7 * 2 * 3  # not 7 × 2 × 8
    assert tokens_seen(blocks, train, processes=2) == 7 * 4 * 3  # the batch size is per process


def test_a_model_card_names_the_teacher_its_licence_and_the_measured_quality():
    from distill.export.card import lm_card

    model = {"ppl": 101.3, "kl_teacher": 1.98, "agreement": 0.398, "params": 31.85e6, "forward_ms": 51.0}
    report = {"name": "lm-kjv", "date": "2026-12-05", "machine": "2 CPU cores", "teacher_signal": "cached", "top_k": 64,
              "teacher": {"model": "builtin:smollm2-135m-instruct", "licence": "apache-2.0", "licence_warning": None},
              "data": {"corpus": "kjv", "train_blocks": 600, "seq_len": 128, "tokens_seen": 76800, "val_blocks": 32},
              "kd": {"ratio": 0.5, "divergence": "forward_kl", "temperature": 1.0},
              "models": {"teacher": {"ppl": 31.4, "params": 134.5e6, "forward_ms": 229.9},
                         "baseline": {**model, "ppl": 128.8}, "distilled": model}}
    card = lm_card(report)
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "0.24× the teacher" in card and "4.5× faster" in card
    assert "0.5 × forward_kl (T = 1) to the teacher + 0.5 × next-token CE" in card
    assert "| baseline | 31.9M | 128.80 |" in card and "| distilled (this model) | 31.9M | 101.30 |" in card


def test_loading_and_saving_a_model_shows_no_transformers_bars_and_leaves_them_as_they_were(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from distill.models.causal_lm import load_causal_lm, save_pretrained_atomic

    tok = make_tokenizer(tmp_path / "tok")
    make_llama(tmp_path / "m", tok)
    capfd.readouterr()
    save_pretrained_atomic(load_causal_lm(str(tmp_path / "m")), tok, tmp_path / "out")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.is_progress_bar_enabled()  # the caller's own transformers use keeps its bars
