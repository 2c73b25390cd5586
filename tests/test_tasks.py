"""Prompt datasets, task success, and the on-policy pieces: students answering prompts, teachers
reading those answers after their own prompts."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import make_llama, make_tokenizer  # noqa: E402

from distill.core.errors import ConfigError, DataError  # noqa: E402
from distill.data.tasks import TaskPrompt, encode_prompts, prompt_ids, read_task_prompts  # noqa: E402
from distill.eval.task import TaskScore  # noqa: E402


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prompt_rows_from_chat_and_prompt_rows_with_their_answers_and_context(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]},
        {"id": "b", "messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
        {"prompt": "4+4?", "answer": 8, "context": "Add the numbers."},
    ])
    a, b, c = read_task_prompts(path, key="data.path")
    assert (a.id, a.reference, [m["role"] for m in a.messages]) == ("1", None, ["system", "user"])
    assert (b.id, b.reference, b.messages) == ("b", "6", [{"role": "user", "content": "3+3?"}])
    assert (c.reference, c.messages, c.context) == ("8", [{"role": "user", "content": "4+4?"}], "Add the numbers.")
    assert c.teacher_messages() == [{"role": "system", "content": "Add the numbers."}, *c.messages]
    with_system = TaskPrompt("x", a.messages, context="Use digits.")
    assert with_system.teacher_messages()[0] == {"role": "system", "content": "Use digits.\n\nBe brief."}
    assert a.teacher_messages() is a.messages  # no context: the student's prompt


@pytest.mark.parametrize("row, says", [
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "line 2: `tools`"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "line 2: messages[0].content must be text"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "answer": "c"},
     "given twice"),
    ({"messages": [{"role": "system", "content": "a"}]}, "must end with a user message"),
    ({"prompt": "", "answer": "x"}, "non-empty string `prompt`"),
    ({"prompt": "q", "answer": ["x"]}, "`answer` must be text"),
    ({"id": 1, "prompt": "q"}, "the id '1' is also the id of line 1"),
])
def test_a_bad_prompt_row_is_refused_naming_its_line_and_what_to_fix(tmp_path, row, says):
    path = _jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "fine"}, row])
    with pytest.raises(DataError, match="data.path") as e:
        read_task_prompts(path, key="data.path")
    assert says in str(e.value)


def test_prompt_rows_from_a_saved_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+1?", "answer": "3"}]).save_to_disk(
        str(tmp_path / "ds"))
    rows = read_task_prompts(tmp_path / "ds", key="data.path")
    assert [(r.id, r.reference) for r in rows] == [("1", "2"), ("2", "3")]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), extra_words=("2+2?", "4", "Be", "brief."))


def test_encoded_prompts_train_only_on_the_answer_and_its_end(tok):
    rows = [TaskPrompt("a", [{"role": "user", "content": "And God said"}], reference="Let there be light"),
            TaskPrompt("b", [{"role": "user", "content": "darkness"}])]
    blocks = encode_prompts(rows, tok, 24, source="data.path", responses=[rows[0].reference, None])
    p0 = prompt_ids(tok, rows[0].messages)
    assert int(blocks.prompt_len[0]) == len(p0) and int(blocks.prompt_len[1]) == len(prompt_ids(tok, rows[1].messages))
    targets = blocks.input_ids[0, 1:][blocks.loss_mask[0, :-1]]  # the tokens the loss predicts
    assert tok.decode(targets) == "Let there be light </s>"
    assert not blocks.loss_mask[1].any() and int(blocks.attention_mask[1].sum()) == int(blocks.prompt_len[1])
    assert blocks.batch(torch.tensor([1]))["prompt_len"].tolist() == [int(blocks.prompt_len[1])]


def test_a_prompt_longer_than_the_context_is_an_error_naming_the_row(tok):
    rows = [TaskPrompt("long one", [{"role": "user", "content": "And God said " * 10}])]
    with pytest.raises(DataError, match=r"row 'long one': its prompt is \d+ tokens.*student.seq_len=8"):
        encode_prompts(rows, tok, 8, source="data.path")


def is_even(row, output):
    return int(output) % 2 == 0


def says_maybe(row, output):
    return "maybe"


def test_task_scores_exact_regex_rouge_and_the_users_check():
    row = TaskPrompt("r1", [{"role": "user", "content": "2+2?"}], reference="The answer is 4.")
    assert TaskScore("exact")(row, "  the answer IS 4 ") == 1.0
    assert TaskScore("exact")(row, "The answer is 5.") == 0.0
    regex = TaskScore("regex", pattern=r"answer is (\d+)")
    assert regex(row, "First 2, then 2 more: answer is 3, no: answer is 4") == 1.0  # the last match
    assert regex(row, "no number here") == 0.0
    assert TaskScore("regex", pattern=r"\d+")(TaskPrompt("r2", row.messages, reference="4"), "so 4") == 1.0
    assert TaskScore("rouge")(row, "the answer is 4") == pytest.approx(1.0)
    assert 0 < TaskScore("rouge")(row, "answer 4") < 1
    assert TaskScore("check", check="test_tasks:is_even")(row, "12") == 1.0
    with pytest.raises(DataError, match=r"raised ValueError on prompt row 'r1'"):
        TaskScore("check", check="test_tasks:is_even")(row, "twelve")
    with pytest.raises(DataError, match=r"returned 'maybe' \(str\) on prompt row 'r1'; it must return True or False"):
        TaskScore("check", check="test_tasks:says_maybe")(row, "x")
    with pytest.raises(DataError, match="no reference answer"):
        TaskScore("exact")(TaskPrompt("r3", row.messages), "4")
    with pytest.raises(ConfigError, match="task.pattern"):
        TaskScore("regex", pattern="(")
    with pytest.raises(ConfigError, match="task.check='nope' must look like"):
        TaskScore("check", check="nope")


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    from test_generation import varied

    d = tmp_path_factory.mktemp("lms")
    tok = make_tokenizer(d)
    student = varied(make_llama(d / "s", tok, layers=1)).eval()
    teacher = varied(make_llama(d / "t", tok, layers=2, seed=1)).eval()
    return tok, student, teacher


def _prompt_batch(tok, texts, seq_len=40):
    rows = [TaskPrompt(str(i), [{"role": "user", "content": t}]) for i, t in enumerate(texts)]
    return rows, encode_prompts(rows, tok, seq_len, source="test")


def test_the_student_answers_each_prompt_in_place_and_only_its_answer_is_trained(lms):
    from distill.training.config import OnPolicyConfig
    from distill.training.lm import sample_responses

    tok, student, _ = lms
    _, blocks = _prompt_batch(tok, ["In the beginning God", "And", "darkness was upon the face of the deep"])
    batch = blocks.batch(torch.arange(3))
    cfg = OnPolicyConfig(fraction=1.0, max_new_tokens=6, temperature=1.0)
    out = sample_responses(student, batch, cfg, tok.pad_token_id, seed=3)
    for r in range(3):
        n, end = int(batch["prompt_len"][r]), int(out["attention_mask"][r].sum())
        assert torch.equal(out["input_ids"][r, :n], batch["input_ids"][r, :n])  # the prompt is kept
        assert 1 <= end - n <= 6
        assert out["loss_mask"][r].nonzero().flatten().tolist() == list(range(n - 1, end - 1))
    again = sample_responses(student, batch, cfg, tok.pad_token_id, seed=3)
    other = sample_responses(student, batch, cfg, tok.pad_token_id, seed=4)
    assert torch.equal(again["input_ids"], out["input_ids"])  # seeded: a resumed run samples alike
    assert not torch.equal(other["input_ids"], out["input_ids"])


def test_a_teacher_with_privileged_context_scores_the_same_answer_tokens_after_its_own_prompt(lms):
    from distill.teachers.responses import ResponseTeacher, live_scorer
    from distill.teachers.tokens import teacher_logits

    tok, _, teacher = lms
    rows, blocks = _prompt_batch(tok, ["And God said", "darkness"])
    answers = ["Let there be light", "was upon the face of the deep"]
    blocks = encode_prompts(rows, tok, 40, source="test", responses=answers)
    context = [prompt_ids(tok, TaskPrompt(r.id, r.messages, context="In the beginning God created the heaven and "
                                         "the earth").teacher_messages()) for r in rows]
    batch = blocks.batch(torch.arange(2))
    signal = ResponseTeacher(live_scorer(teacher, len(tok)), context, tok.pad_token_id).signal(batch)
    for r in range(2):
        n, end = int(batch["prompt_len"][r]), int(batch["attention_mask"][r].sum())
        answer = batch["input_ids"][r, n:end].tolist()
        full = torch.tensor([context[r] + answer])
        alone = teacher_logits(teacher, {"input_ids": full, "attention_mask": torch.ones_like(full)}, len(tok))[0]
        k = len(context[r])
        assert len(context[r]) > n  # the teacher's prompt is longer
        torch.testing.assert_close(signal.logits[r, n - 1: end - 1], alone[k - 1: k - 1 + len(answer)])
    plain = ResponseTeacher(live_scorer(teacher, len(tok)), [prompt_ids(tok, r.messages) for r in rows],
                            tok.pad_token_id).signal(batch)  # the same prompt: what a live teacher reads
    live = teacher_logits(teacher, batch, len(tok))
    mask = batch["loss_mask"]
    torch.testing.assert_close(plain.logits[mask], live[mask])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny 2-layer Llama (with a generation config naming its EOS) and a prompt file in its words."""
    from test_generation import varied

    d = tmp_path_factory.mktemp("tiny_task")
    tok = make_tokenizer(d / "teacher")
    model = varied(make_llama(d / "teacher", tok, layers=2))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(d / "teacher")
    words = "And God said Let there be light and there was light".split()
    rows = [{"id": f"p{i}", "prompt": " ".join(words[i % 5: i % 5 + 3]), "answer": words[(i % 5) + 3],
             **({"context": "In the beginning God created the heaven and the earth"} if i % 2 else {})}
            for i in range(16)]
    return d / "teacher", _jsonl(d / "prompts.jsonl", rows)


def _task_config(tmp_path, teacher_dir, prompts, **extra):
    from distill.recipes.task.config import load_task_config

    cfg = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "device": "cpu", "quiet": True,
           "teacher": {"backend": "local", "model": str(teacher_dir)},
           "data": {"source": str(prompts), "train_examples": 12, "eval_examples": 4},
           "task": {"score": "exact"}, "student": {"layers": [0], "seq_len": 48},
           "arms": ["answer_sft", "seq_kd", "on_policy", "mixed"],
           "on_policy": {"max_new_tokens": 6}, "sampling": {"max_tokens": 6, "temperature": 1.0}, "answer_tokens": 6,
           "seeds": [0, 1], "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "save_every": 2}}
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return load_task_config(cfg)


def test_the_task_job_trains_every_arm_from_one_start_scores_them_and_resumes(tmp_path, tiny_teacher):
    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher
    cfg = _task_config(tmp_path, teacher, prompts)
    run_dir = run_task(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["arms"]) == {"answer_sft", "seq_kd", "on_policy", "mixed"}
    on_policy, sft = report["arms"]["on_policy"], report["arms"]["answer_sft"]
    assert on_policy["tokens_generated"] > 0 and sft["tokens_generated"] == 0  # only on-policy writes its own
    assert [c["step"] for c in on_policy["curves"][0]] == [0, 2, 4] and len(on_policy["curves"]) == 2  # 2 seeds
    assert on_policy["curves"][0][0]["success"] == report["student_before"]  # every curve starts untrained
    assert report["arms"]["mixed"]["tokens_generated"] < on_policy["tokens_generated"]  # λ = 0.5 of the steps
    assert set(report["verdicts"]) == {"seq_kd vs answer_sft", "on_policy vs answer_sft", "on_policy vs seq_kd",
                                       "mixed vs answer_sft", "mixed vs seq_kd", "mixed vs on_policy"}
    assert report["context"]["prompt_tokens_saved"] > 0  # half the rows carry context only the teacher reads
    text = (run_dir / "report.md").read_text()
    assert text.startswith("# Task: tiny\n\n**") and "held-out success" in text.splitlines()[2]
    assert (run_dir / "plots" / "success.png").is_file()
    card = (run_dir / "students" / "on_policy-s0" / "model" / "README.md").read_text()
    assert "on-policy distillation: it answered the training prompts itself" in card and "on_policy vs seq_kd" not in card
    assert "between on_policy and seq_kd" in card or "on_policy beats seq_kd" in card or "worse than seq_kd" in card
    first = json.loads((run_dir / "students" / "on_policy-s0" / "eval.json").read_text())
    # a student learns from the same initialisation whatever its arm: the same seed, the same weights at start
    again = run_task(cfg, resume=True)  # everything done: read back, nothing trained again
    assert json.loads((again / "students" / "on_policy-s0" / "eval.json").read_text()) == first


def test_the_task_job_refuses_what_it_cannot_do_before_any_compute(tmp_path, tiny_teacher):
    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher
    with pytest.raises(ConfigError, match=r"student.seq_len=16 is too short.*set student.seq_len=1[89]"):
        run_task(_task_config(tmp_path, teacher, prompts, student={"layers": [0], "seq_len": 16},
                              on_policy={"max_new_tokens": 12}))
    no_answers = _jsonl(tmp_path / "no_answers.jsonl", [{"prompt": "And God said"}] * 1 + [
        {"id": f"q{i}", "prompt": "light"} for i in range(8)])
    with pytest.raises(DataError, match="task.score=exact compares answers with references"):
        run_task(_task_config(tmp_path, teacher, no_answers))
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_student_of_another_vocabulary_learns_on_policy_from_a_local_teacher_reading_its_text(tmp_path, tiny_teacher):
    from lm_helpers import make_bpe_tokenizer

    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher  # a word-level vocabulary; the student writes byte-level BPE
    other = tmp_path / "other"
    student = make_llama(other, make_bpe_tokenizer(other), layers=1)
    student.generation_config.eos_token_id = 2  # <|im_end|>
    student.save_pretrained(other)
    cfg = _task_config(tmp_path, teacher, prompts, student={"model": str(other), "layers": [0], "seq_len": 64},
                       arms=["on_policy"], seeds=[0], teacher={"backend": "local", "model": str(teacher), "top_k": 8})
    run_dir = run_task(cfg)
    history = json.loads((run_dir / "students" / "on_policy-s0" / "eval.json").read_text())["history"]
    assert history[-1]["tokens_generated"] > 0 and history[-1]["train_kd"] > 0
    with pytest.raises(ConfigError, match="ask the served teacher to score.*different vocabularies.*backend=local"):
        run_task(_task_config(tmp_path / "served", teacher, prompts, student={"model": str(other), "layers": [0]},
                              arms=["on_policy"], teacher={"backend": "serve", "model": str(teacher)}))


def test_the_cross_vocabulary_teacher_speaks_at_the_answer_positions_both_have_read_alike(lms, tmp_path):
    from lm_helpers import make_bpe_tokenizer

    from distill.data.alignment import vocab_map
    from distill.teachers.responses import CrossResponseTeacher

    words, _, teacher = lms
    bpe = make_bpe_tokenizer(tmp_path / "bpe")
    rows = [TaskPrompt("a", [{"role": "user", "content": "And God said"}])]
    blocks = encode_prompts(rows, bpe, 48, source="test", responses=["Let there be light"])
    batch = blocks.batch(torch.arange(1))
    cross = CrossResponseTeacher(teacher, words, bpe, vocab_map(words, bpe), [prompt_ids(words, rows[0].messages)],
                                 k=len(words), vocab=len(words), teacher_eos={words.eos_token_id})  # every token
    out = cross.signal(batch)
    n, end = int(batch["prompt_len"][0]), int(batch["attention_mask"][0].sum())
    spoken = out.valid[0].nonzero().flatten().tolist()
    assert spoken[0] == n - 1 and spoken[-1] == end - 2  # from the prompt's end to the token before the answer's end
    assert all(n - 1 <= p <= end - 2 for p in spoken)  # only where the answer is predicted
    assert (out.topk_indices[0, end - 2] == bpe.eos_token_id).any()  # the teacher's end of turn, in the student's id


def test_the_sampled_token_estimate_has_the_gradient_of_reverse_kl_in_expectation():
    from distill.losses.divergences import token_divergence
    from distill.losses.tokens import sampled_reverse_kl

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, generator=gen, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(1, 6, generator=gen), -1)
    exact, = torch.autograd.grad(token_divergence(logits, kind="reverse_kl", teacher_logits=teacher), logits)
    q = torch.softmax(logits.detach(), -1)[0]
    expected = torch.zeros_like(logits)
    for x in range(6):  # E_{x ~ q}: every token the student may write, at its probability
        label = torch.tensor([x])
        g, = torch.autograd.grad(sampled_reverse_kl(logits, label, teacher[:, x]).sum(), logits)
        expected += q[x] * g
    torch.testing.assert_close(expected, exact)
    value = sampled_reverse_kl(logits, torch.tensor([2]), teacher[:, 2])
    torch.testing.assert_close(value, torch.log_softmax(logits, -1)[:, 2] - teacher[:, 2])  # log q − log p


@pytest.mark.parametrize("logprobs", ["top_k", "sampled"])
def test_the_on_policy_arm_learns_from_a_served_teacher(tmp_path, tiny_teacher, logprobs):
    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher
    cfg = _task_config(tmp_path, teacher, prompts, teacher={"backend": "serve", "model": str(teacher),
                       "top_k": 8, "logprobs": logprobs}, arms=["on_policy"], seeds=[0],
                       train={"steps": 2, "batch_size": 4, "eval_every": 2, "save_every": 2},
                       kd={"divergence": "reverse_kl", "ratio": 1.0})  # the estimator's divergence
    run_dir = run_task(cfg)
    history = json.loads((run_dir / "students" / "on_policy-s0" / "eval.json").read_text())["history"]
    assert history[-1]["tokens_generated"] > 0 and history[-1]["train_kd"] == history[-1]["train_loss"]
    if logprobs == "sampled":  # the estimate of reverse KL on the student's own tokens: log q − log p, any sign
        assert abs(history[-1]["train_kd"]) > 0
    else:
        assert history[-1]["train_kd"] > 0  # a KL over top-k + tail


def test_sampled_log_probs_train_only_the_on_policy_arm_by_reverse_kl(tmp_path, tiny_teacher):
    teacher, prompts = tiny_teacher
    with pytest.raises(ConfigError, match="teacher.logprobs=sampled estimates reverse KL"):
        _task_config(tmp_path, teacher, prompts, teacher={"backend": "serve", "model": str(teacher),
                     "logprobs": "sampled"}, arms=["on_policy", "mixed"]).check_teacher()
    with pytest.raises(ConfigError, match="a local teacher gives every token's"):
        _task_config(tmp_path, teacher, prompts, teacher={"backend": "local", "model": str(teacher),
                     "logprobs": "sampled"}, arms=["on_policy"]).check_teacher()


@pytest.fixture
def served_teacher(tiny_teacher):
    from distill.serve.server import make_server

    server = make_server(str(tiny_teacher[0]), port=0, model_name="teacher")
    server.start_background()
    yield server
    server.shutdown()


def _remote(tmp_path, tiny_teacher, server, **extra):
    teacher, prompts = tiny_teacher
    return _task_config(tmp_path, teacher, prompts, teacher={"backend": "openai", "model": "teacher", "top_k": 8,
                        "base_url": f"{server.url}/v1", "api_key_env": None}, student={"model": str(teacher),
                        "layers": [0], "seq_len": 48}, arms=["on_policy"], seeds=[0], **extra)


def test_a_served_teacher_that_dies_mid_run_loses_nothing_and_the_run_resumes(tmp_path, tiny_teacher,
                                                                              served_teacher, monkeypatch):
    from distill.recipes.task.pipeline import run_task
    from distill.teachers.endpoint import EndpointTopK
    from distill.teachers.text import TeacherUnavailable

    real, calls = EndpointTopK.rows, []

    def dies_at_step_3(self, ids, lengths):  # call 1 is the probe, calls 2-3 the first two steps
        calls.append(1)
        if len(calls) == 4:
            raise TeacherUnavailable("connection refused")
        return real(self, ids, lengths)

    monkeypatch.setattr(EndpointTopK, "rows", dies_at_step_3)
    cfg = _remote(tmp_path, tiny_teacher, served_teacher,
                  train={"steps": 4, "batch_size": 4, "eval_every": 2, "save_every": 1})
    with pytest.raises(TeacherUnavailable, match=r"(?s)connection refused.*on_policy \(seed 0\) stopped.*--resume"):
        run_task(cfg)
    stage = tmp_path / "runs" / "tiny" / "students" / "on_policy-s0"
    assert [json.loads(r)["step"] for r in (stage / "metrics.jsonl").read_text().splitlines()] == [2]
    monkeypatch.setattr(EndpointTopK, "rows", real)
    scored = []
    monkeypatch.setattr(EndpointTopK, "rows", lambda self, ids, lengths: scored.append(1) or real(self, ids, lengths))
    run_dir = run_task(cfg, resume=True)
    history = json.loads((run_dir / "students" / "on_policy-s0" / "eval.json").read_text())["history"]
    assert [r["step"] for r in history] == [2, 4]
    assert len(scored) == 1 + 2  # the probe and steps 3 and 4: the two saved steps were not trained again


def test_a_server_that_gives_no_log_probs_is_refused_before_a_student_trains_saying_what_still_works(
        tmp_path, tiny_teacher, served_teacher, monkeypatch):
    from distill.recipes.task.pipeline import run_task
    from distill.teachers.endpoint import EndpointTopK
    from distill.teachers.text import TeacherUnavailable

    def no_logprobs(self, ids, lengths):
        raise TeacherUnavailable("Teacher endpoint x returned no prompt log-probs")

    monkeypatch.setattr(EndpointTopK, "rows", no_logprobs)
    with pytest.raises(TeacherUnavailable, match=r"(?s)no prompt log-probs.*What still works: teacher.logprobs="
                                                  r"sampled.*arms=\[answer_sft, seq_kd\]"):
        run_task(_remote(tmp_path, tiny_teacher, served_teacher))
    assert not list((tmp_path / "runs" / "tiny" / "students").glob("*-s*"))  # no arm started


def test_a_prompt_beyond_the_teachers_context_and_a_check_that_fails_are_refused_before_any_compute(
        tmp_path, tiny_teacher):
    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher  # its context window: 256 tokens (max_position_embeddings)
    long = _jsonl(tmp_path / "long.jsonl", [{"id": "huge", "prompt": "And", "answer": "God",
                                             "context": "And God said " * 100}] + [
        {"id": f"r{i}", "prompt": "light", "answer": "was"} for i in range(8)])
    with pytest.raises(DataError, match=r"prompt row 'huge': the teacher reads \d+ prompt tokens.*context window of 256"):
        run_task(_task_config(tmp_path, teacher, long))
    with pytest.raises(DataError, match="task.check=test_tasks:is_even raised ValueError"):
        run_task(_task_config(tmp_path, teacher, prompts, task={"score": "check", "check": "test_tasks:is_even"}))
    assert not (tmp_path / "runs").exists()


def test_prefetched_answers_are_written_by_the_weights_before_the_step_that_trains_on_them(lms):
    from distill.losses.config import TokenKDConfig
    from distill.teachers.responses import ResponseTeacher, live_scorer
    from distill.training.config import LMTrainConfig, OnPolicyConfig, OptimizerConfig
    from distill.training.lm import _BatchOrder, fit_lm, sample_responses

    tok, student, teacher = lms
    rows, blocks = _prompt_batch(tok, ["In the beginning God", "And", "darkness was upon", "And God said"] * 2)
    scorer = ResponseTeacher(live_scorer(teacher, len(tok)), [prompt_ids(tok, r.messages) for r in rows],
                             tok.pad_token_id)
    scored = []

    class Recording:
        def signal(self, batch):
            scored.append(batch["input_ids"].clone())
            return scorer.signal(batch)

    on_policy = OnPolicyConfig(fraction=1.0, max_new_tokens=5, prefetch=True)
    train = LMTrainConfig(steps=3, batch_size=4, eval_every=3, save_every=3, seed=0, warmup_steps=0,
                          scheduler="none", optimizer=OptimizerConfig(lr=0.05))  # steps that change what it writes
    start = copy.deepcopy(student)
    fit_lm(copy.deepcopy(student), blocks, train=train, kd=TokenKDConfig(divergence="reverse_kl", ratio=1.0),
           vocab=len(tok), teacher=Recording(), on_policy=on_policy, pad_id=tok.pad_token_id, device="cpu", quiet=True)
    assert len(scored) == 3  # one batch per step, none twice
    order = _BatchOrder(len(blocks), 4, 1, 0, 0)
    for step in (0, 1):  # step 0 in place and step 1 ahead: both from the weights the run started with
        expected = sample_responses(start, blocks.batch(order.indices(step)), on_policy, tok.pad_token_id,
                                    seed=step)
        assert torch.equal(scored[step], expected["input_ids"])
    late = sample_responses(start, blocks.batch(order.indices(2)), on_policy, tok.pad_token_id, seed=2)
    assert not torch.equal(scored[2], late["input_ids"])  # step 2's came from the weights after step 0


def test_the_mixed_arm_may_take_its_written_half_from_the_references_of_the_answered_prompts(tmp_path, tiny_teacher):
    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher
    cfg = _task_config(tmp_path, teacher, prompts, arms=["mixed"], seeds=[0], data={"answered": 8},
                       on_policy={"max_new_tokens": 6, "off_policy": "reference"})
    run_dir = run_task(cfg)
    assert not (run_dir / "generated" / "train.jsonl").exists()  # the teacher wrote no training answers
    history = json.loads((run_dir / "students" / "mixed-s0" / "eval.json").read_text())["history"]
    assert history[-1]["tokens_generated"] > 0 and history[-1]["train_kd"] > 0


def test_a_bfloat16_teacher_scores_answers_about_as_the_float32_one_does(lms):
    from distill.teachers.responses import ResponseTeacher, live_scorer

    tok, _, teacher = lms
    rows, blocks = _prompt_batch(tok, ["And God said", "darkness"])
    blocks = encode_prompts(rows, tok, 40, source="test", responses=["Let there be light", "was upon the deep"])
    batch = blocks.batch(torch.arange(2))
    prompts = [prompt_ids(tok, r.messages) for r in rows]
    full = ResponseTeacher(live_scorer(copy.deepcopy(teacher), len(tok)), prompts, tok.pad_token_id).signal(batch)
    half = ResponseTeacher(live_scorer(copy.deepcopy(teacher).to(torch.bfloat16), len(tok)), prompts,
                           tok.pad_token_id).signal(batch)
    mask = batch["loss_mask"]
    a, b = (torch.log_softmax(s.logits[mask].float(), -1) for s in (full, half))
    assert half.logits.dtype == torch.float32  # the loss reads float32 whatever the weights
    assert (a.exp() * (a - b)).sum(-1).max() < 1e-2  # KL(fp32 ‖ bf16) per answer token


def test_empty_teacher_answers_are_left_out_of_what_seq_kd_trains_on(tmp_path, tiny_teacher, monkeypatch):
    from distill.recipes.task import pipeline

    teacher, prompts = tiny_teacher
    real = pipeline._teacher_answers

    def one_empty(cfg, model, rows, run_dir, split, *, greedy):
        answers = real(cfg, model, rows, run_dir, split, greedy=greedy)
        return {**answers, rows[0].id: "  "} if split == "train" else answers

    monkeypatch.setattr(pipeline, "_teacher_answers", one_empty)
    run_dir = pipeline.run_task(_task_config(tmp_path, teacher, prompts, arms=["answer_sft", "seq_kd"], seeds=[0]))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["arms"]["seq_kd"]["train_rows"] == 11 and report["arms"]["answer_sft"]["train_rows"] == 12
    assert "| seq_kd |" in (run_dir / "report.md").read_text()


def test_the_built_in_tasks_are_seeded_disjoint_and_their_answers_right():
    import re

    from distill.data.builtin_tasks import ANSWER_PATTERN, addition_working, builtin_task, glossary

    assert addition_working(47, 85) == "7+5=12, write 2 carry 1. 4+8+1=13, write 13. Answer: 132"
    for row in builtin_task("addition", 50, seed=3):
        a, b = map(int, re.findall(r"\d+", row.messages[0]["content"]))
        assert int(re.findall(ANSWER_PATTERN, row.reference, re.IGNORECASE)[-1]) == a + b
    held, train = builtin_task("addition", 20, 0), builtin_task("addition", 20, 0, offset=20)
    assert not {r.id for r in held} & {r.id for r in train} and builtin_task("addition", 20, 0) == held
    words = glossary(0)
    assert len(set(words.values())) == 40 and glossary(1) != words  # an invented word each, another per seed
    asked = builtin_task("glossary", 80, 0)
    assert all(r.reference == words[w] for r in asked for w in words if f" {w}" in " " + r.messages[0]["content"])
    assert all(r.context and words["bread"] in r.context for r in asked)
    phrasing = {r.messages[0]["content"].replace(w, "W") for r in asked for w in words if w in r.messages[0]["content"]}
    trained = {r.messages[0]["content"].replace(w, "W") for r in builtin_task("glossary", 80, 0, offset=80)
               for w in words if w in r.messages[0]["content"]}
    assert not phrasing & trained  # held-out questions are worded as no training question is
    with pytest.raises(ConfigError, match="no such built-in task"):
        builtin_task("sorting", 5, 0)


def _arm_report(correct: dict[str, list[list[int]]]) -> dict:
    """A task report's arms and verdicts from each arm's per-prompt correctness, one row per seed."""
    from distill.recipes.task.report import verdicts

    students = {f"{arm}-s{s}": {"arm": arm, "seed": s, "per_row": row}
                for arm, rows in correct.items() for s, row in enumerate(rows)}
    arms = {arm: {"success": {"mean": sum(map(sum, rows)) / sum(map(len, rows))}} for arm, rows in correct.items()}
    return {"arms": arms, "teacher": {"success": 0.95}, "verdicts": verdicts(list(correct), students)}


def test_the_task_headline_names_a_best_arm_only_when_the_paired_test_can_tell_it_apart():
    from distill.recipes.task.report import headline

    g = torch.Generator().manual_seed(0)
    strong = (torch.rand(3, 200, generator=g) < 0.8).int().tolist()
    weak = (torch.rand(3, 200, generator=g) < 0.4).int().tolist()
    # answer_sft (written answers) far ahead of on_policy: the win is told though answer_sft is the "a" of its pair
    line = headline(_arm_report({"answer_sft": strong, "on_policy": weak}))[0]
    assert line.startswith("**answer_sft did the task best") and "It beats on_policy by +" in line
    # two arms within noise of each other (4 of 600 answers flipped): the highest mean is not called best
    close = [[v if i % 50 else 1 - v for i, v in enumerate(row)] for row in strong]
    line = headline(_arm_report({"answer_sft": strong, "on_policy": close}))[0]
    assert line.startswith("**No arm did the task detectably better")
    # a third, weaker arm: the best beats it, and the tie is said
    line = headline(_arm_report({"answer_sft": strong, "on_policy": close, "seq_kd": weak}))[0]
    assert "did the task best" in line and "It beats seq_kd by +" in line and line.endswith("by the paired test.")


def test_on_policy_with_a_start_learns_the_teachers_answers_first_then_its_own(tmp_path, tiny_teacher):
    from distill.recipes.task.pipeline import run_task

    teacher, prompts = tiny_teacher
    cfg = _task_config(tmp_path, teacher, prompts, arms=["on_policy"], seeds=[0], on_policy={"start": 0.5})
    report = json.loads((run_task(cfg) / "report.json").read_text())
    curve = report["arms"]["on_policy"]["curves"][0]
    assert [c["tokens_generated"] for c in curve][:2] == [0, 0] and curve[-1]["tokens_generated"] > 0
    assert curve[1]["tokens_trained"] > 0  # its first steps learnt the teacher's written answers
    assert "for the first 50% of the steps" in (tmp_path / "runs" / "tiny" / "report.md").read_text()
    with pytest.raises(ConfigError, match="on_policy.start=0"):
        _task_config(tmp_path, teacher, prompts, arms=["on_policy"], on_policy={"start": 0.5},
                     teacher={"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "t",
                              "logprobs": "sampled"}, kd={"divergence": "reverse_kl"}).check_teacher()
