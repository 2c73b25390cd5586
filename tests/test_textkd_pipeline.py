"""`distill textkd` end to end on tiny models: an OpenAI-compatible endpoint writes rationales,
students are trained three ways and scored; a second run resumes from the files."""

from __future__ import annotations

import json

import pytest
from lm_helpers import make_llama, make_tokenizer
from textkd_helpers import start_fake_endpoint

from distill.cli import main
from distill.core.errors import ConfigError, DataError
from distill.recipes.textkd.config import load_textkd_config
from distill.recipes.textkd.pipeline import run_textkd

LABELS = ["business", "sports", "tech"]


@pytest.fixture()
def job(tmp_path):
    words = tuple(LABELS) + ("Reason:", "Answer:", "it", "is", "about", "[label]", "[rationale]", "Article:", "Topic:")
    tok = make_tokenizer(tmp_path / "student", extra_words=words)
    make_llama(tmp_path / "student", tok, layers=4)
    rows = [{"id": f"r{i}", "input": f"light and darkness {i}", "label": LABELS[i % 3]} for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server, url = start_fake_endpoint()
    overrides = [f"output_dir={tmp_path / 'runs'}", "teacher.backend=openai", f"teacher.base_url={url}",
                 "teacher.model=fake", f"student.model={tmp_path / 'student'}", "student.layers=[0,2]",
                 "student.seq_len=64", "data.source=jsonl", f"data.path={tmp_path / 'rows.jsonl'}",
                 "data.train_examples=6", "data.eval_examples=3", "prompt.shots=[]", "prompt.system=null",
                 "teacher.finetune=null", "data.unlabeled_examples=0", "kinds=[label_only, seq_kd, step_by_step]",
                 "train.steps=3", "train.batch_size=4", "train.eval_every=3", "train.save_every=3",
                 "device=cpu", "quiet=true", "teacher.price_prompt=1.0", "teacher.price_completion=0", "concurrency=2"]
    endpoint = {"server": server}
    yield overrides, endpoint
    if endpoint["server"] is not None:
        server.shutdown()


def test_textkd_trains_three_ways_scores_them_and_resumes(job, tmp_path):
    import distill

    job, endpoint = job
    result = distill.textkd(load_textkd_config(None, job))  # the Python entry point of `distill textkd`
    run_dir, report = result.run_dir, result.report
    assert report["filter"]["total"] == 6 and report["filter"]["kept"] == 6 and report["examples"] == 6
    assert report["teacher"]["metrics"]["accuracy"] == 0.0  # eval prompts carry no topic hint
    assert report["teacher"]["metrics"]["cost_per_1k"] == pytest.approx(1000 * 12 / 1e6)
    assert set(report["students"]) == {"label_only", "seq_kd", "step_by_step"}
    assert "similarity" in report["students"]["seq_kd"] and "similarity" not in report["students"]["label_only"]
    for kind in report["students"]:
        assert (run_dir / "students" / f"{kind}-s0" / "model" / "config.json").is_file()
    assert "| step_by_step |" in (run_dir / "report.md").read_text()
    generated = (run_dir / "generated" / "train.jsonl").read_text()
    assert generated.count("\n") == 6 and "Reason: it is about" in generated
    endpoint["server"].shutdown()  # resuming a finished run needs no teacher at all
    endpoint["server"].server_close()
    endpoint["server"] = None
    assert main(["textkd", *job, "--resume"]) == 0  # every stage is found done
    assert (run_dir / "generated" / "train.jsonl").read_text() == generated


def test_student_layers_the_model_lacks_are_refused_before_the_teacher_is_asked(job, tmp_path):
    from distill.core.errors import ModelError

    job, _ = job
    with pytest.raises(ModelError, match=r"`student.layers`: \[9\] are not layers of .*\(0..3\)"):
        run_textkd(load_textkd_config(None, [*job, "student.layers=[0, 9]"]))
    assert not (tmp_path / "runs").exists()  # nothing generated, nothing written


def test_black_box_teacher_needs_a_student_source(tmp_path):
    cfg = load_textkd_config(None, ["teacher.backend=openai", "teacher.base_url=http://127.0.0.1:1/v1",
                                    f"output_dir={tmp_path}", "teacher.finetune=null"])
    with pytest.raises(ConfigError, match="student.model is required"):
        run_textkd(cfg)
    assert not (tmp_path / cfg.name).exists()  # refused before anything was written


def test_generate_cli_answers_a_prompt_file_and_a_rerun_adds_nothing(tmp_path, capsys):
    server, url = start_fake_endpoint()
    try:
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "Topic: tech"}]}) + "\n"
                           + json.dumps({"input": "goals", "label": "sports"}) + "\n")
        out = tmp_path / "out.jsonl"
        args = ["generate", "--output", str(out), "--prompts", str(prompts), "teacher.backend=openai",
                f"teacher.base_url={url}", "teacher.model=fake", "prompt.shots=[]", "prompt.system=null",
                "--quiet"]
        assert main(args) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted((r["id"], r["response"].split("Answer: ")[1]) for r in rows) == [("a", "tech"), ("row-2", "sports")]
        assert main(args) == 0 and out.read_text().count("\n") == 2
        assert main([*args, "prompt.template=Title {headline}"]) == 2
        assert "uses {headline}" in capsys.readouterr().err
    finally:
        server.shutdown()


def test_generate_against_a_dead_endpoint_fails_clearly_naming_the_url(tmp_path, capsys):
    args = ["generate", "--output", str(tmp_path / "o.jsonl"), "teacher.backend=openai",
            "teacher.base_url=http://127.0.0.1:9/v1", "teacher.model=x", "teacher.max_retries=1",
            "data.source=jsonl", f"data.path={tmp_path / 'rows.jsonl'}", "data.train_examples=1",
            "data.eval_examples=1", "--quiet"]
    (tmp_path / "rows.jsonl").write_text('{"id": 1, "input": "x", "label": "a"}\n{"id": 2, "input": "y", "label": "b"}\n')
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9/v1/chat/completions" in err and "Kept 0 of 1" in err


def test_token_kd_needs_the_teachers_logprobs():
    with pytest.raises(ConfigError, match="set sampling.top_logprobs"):
        load_textkd_config(None, ["kinds=[seq_kd, token_kd]"])
    assert load_textkd_config(None, ["kinds=[token_kd]", "sampling.top_logprobs=5"]).kinds == ["token_kd"]


def test_the_teachers_answers_on_an_unlabelled_pool_train_every_kind_but_label_only(job, tmp_path):
    job, _ = job
    pool = [{"id": f"p{i}", "input": f"night Topic: {LABELS[i % 3]} {i}", "label": LABELS[(i + 1) % 3]}
            for i in range(4)] + [{"id": "p-none", "input": "nothing to say"}]  # last: no answer
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    cfg = load_textkd_config(None, [*job, f"data.unlabeled_path={tmp_path / 'pool.jsonl'}",
                                    "kinds=[label_only, pseudo_label]"])
    run_dir = run_textkd(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train_examples"] == {"label_only": 6, "pseudo_label": 10}  # 6 labelled + 4 answered pool rows
    assert report["pool"]["counts"]["kept"] == 4 and report["pool"]["counts"]["unparsable"] == 1
    assert report["pool"]["label_accuracy"] == 0.0  # the fake teacher's topics are never the file's labels
    prompts = [json.loads(line)["messages"][-1]["content"]
               for line in (run_dir / "generated" / "pool.jsonl").read_text().splitlines()]
    assert all(p.endswith("Topic:") for p in prompts)  # the eval template: the pool's labels are never shown
    assert "labels match the held-back gold labels" in (run_dir / "report.md").read_text()


def test_pseudo_label_without_a_pool_and_finetune_of_an_endpoint_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.unlabeled_examples"):
        load_textkd_config(None, ["kinds=[label_only, pseudo_label]", "data.unlabeled_examples=0"])
    endpoint = load_textkd_config(None, ["teacher.backend=openai", "teacher.base_url=http://127.0.0.1:1/v1",
                                         "student.model=x", f"output_dir={tmp_path}"])  # the built-in job fine-tunes
    with pytest.raises(ConfigError, match="teacher.finetune needs the teacher's weights"):
        run_textkd(endpoint)
    assert not (tmp_path / endpoint.name).exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="keep one"):
        load_textkd_config(None, ["data.unlabeled_examples=5", "data.unlabeled_path=pool.jsonl"])


def test_a_random_pool_is_drawn_from_the_examples_no_split_holds(tmp_path):
    from distill.recipes.textkd.sampling import sample_examples

    rows = [{"id": f"r{i}", "input": f"text {i}", "label": LABELS[i % 3]} for i in range(30)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["data.source=jsonl", f"data.path={tmp_path / 'rows.jsonl'}", "data.train_examples=6",
            "data.eval_examples=6", "data.unlabeled_examples=0", "kinds=[label_only]"]
    without = sample_examples(load_textkd_config(None, base))
    out = sample_examples(load_textkd_config(None, [*base, "data.unlabeled_examples=10"]))
    assert out["train"] == without["train"] and out["eval"] == without["eval"]  # adding a pool moves nothing
    ids = {r["id"] for r in out["train"] + out["eval"]}
    assert len(out["pool"]) == 10 and not ids & {r["id"] for r in out["pool"]}
    assert all("label" not in r and r["gold"] in LABELS for r in out["pool"])
    with pytest.raises(DataError, match="only 18 examples are left"):
        sample_examples(load_textkd_config(None, [*base, "data.unlabeled_examples=19"]))


def test_the_finetuned_teacher_learns_the_reply_format_and_is_reused(tmp_path):
    import torch

    from distill.models.causal_lm import load_causal_lm
    from distill.recipes.textkd.finetune import finetune_rows, finetuned_teacher

    words = tuple(LABELS) + ("Reason:", "Answer:", "it", "is", "about", "Article:", "Topic:")
    tok = make_tokenizer(tmp_path / "teacher", extra_words=words)
    make_llama(tmp_path / "teacher", tok, layers=2)
    cfg = load_textkd_config(None, ["teacher.backend=local", f"teacher.model={tmp_path / 'teacher'}",
                                    "student.seq_len=64", "prompt.system=null", "device=cpu", "quiet=true",
                                    "teacher.finetune={steps: 4, batch_size: 2, warmup_steps: 0, "
                                    "eval_every: 4, save_every: 4, optimizer: {lr: 0.01}}"])
    examples = [{"id": f"r{i}", "input": f"it is {LABELS[i % 3]}", "label": LABELS[i % 3],
                 "rationale": "it is about it"} for i in range(4)]
    row = finetune_rows(cfg.prompt, examples)[0]["messages"]
    assert row[-1] == {"role": "assistant", "content": "Reason: it is about it\nAnswer: business"}
    assert row[0]["content"] == "Article: it is business\nTopic:"  # asked as at eval: no gold topic, no shots
    torch.manual_seed(0)
    tuned = finetuned_teacher(cfg, examples, tmp_path / "run")
    before = load_causal_lm(str(tmp_path / "teacher")).state_dict()
    after = load_causal_lm(tuned).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    stamp = (tmp_path / "run" / "teacher" / "model" / "config.json").stat().st_mtime_ns
    assert finetuned_teacher(cfg, examples, tmp_path / "run") == tuned  # found done: not trained again
    assert (tmp_path / "run" / "teacher" / "model" / "config.json").stat().st_mtime_ns == stamp


def test_a_finetuned_teacher_answers_the_eval_set_and_the_pool_without_shots(tmp_path, monkeypatch):
    import contextlib

    from textkd_helpers import EchoTeacher

    from distill.recipes.textkd import pipeline

    words = tuple(LABELS) + ("Reason:", "Answer:", "it", "is", "about", "[label]", "Article:", "Topic:")
    tok = make_tokenizer(tmp_path / "teacher", extra_words=words)
    make_llama(tmp_path / "teacher", tok, layers=2)
    rows = [{"id": f"r{i}", "input": f"light Topic: {LABELS[i % 3]} {i}", "label": LABELS[i % 3]} for i in range(20)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked: dict[str, list] = {}

    @contextlib.contextmanager
    def recording(t, served_as=None):  # the echo teacher, standing in for whichever model the job opens
        teacher = EchoTeacher()
        original = teacher.complete
        teacher.complete = lambda messages, sampling: (asked.setdefault(t.model, []).append(messages),
                                                       original(messages, sampling))[1]
        yield teacher

    monkeypatch.setattr(pipeline, "open_teacher", recording)
    cfg = load_textkd_config(None, [
        f"output_dir={tmp_path / 'runs'}", "teacher.backend=local", f"teacher.model={tmp_path / 'teacher'}",
        "student.layers=[0]", "student.seq_len=64", "data.source=jsonl", f"data.path={tmp_path / 'rows.jsonl'}",
        "data.train_examples=6", "data.eval_examples=3", "data.unlabeled_examples=4", "prompt.system=null",
        "kinds=[label_only, pseudo_label]", "train.steps=2", "train.batch_size=4", "train.eval_every=2",
        "train.save_every=2", "device=cpu", "quiet=true",
        "teacher.finetune={steps: 2, batch_size: 2, warmup_steps: 0, eval_every: 2, save_every: 2}"])
    run_dir = run_textkd(cfg)
    tuned = str(run_dir / "teacher" / "model")
    assert set(asked) == {str(tmp_path / "teacher"), tuned}
    assert len(asked[str(tmp_path / "teacher")]) == 6  # the base model rationalises the labelled examples
    assert len(asked[tuned]) == 3 + 4  # the fine-tuned one answers the eval set and the pool
    assert all(len(m) == 1 and m[0]["content"].endswith("Topic:") for m in asked[tuned])  # no shots, no topic
    report = json.loads((run_dir / "report.json").read_text())
    assert report["teacher_finetune_steps"] == 2 and report["pool"]["label_accuracy"] == 1.0
    assert report["train_examples"] == {"label_only": 6, "pseudo_label": 10}
    assert "fine-tuned 2 steps" in (run_dir / "report.md").read_text()


def test_a_teacher_served_under_a_name_is_identified_by_it_not_by_its_path(tmp_path):
    from distill.recipes.textkd.config import TextTeacherConfig
    from distill.recipes.textkd.pipeline import open_teacher

    t = TextTeacherConfig(backend="local", model=str(tmp_path / "run" / "teacher" / "model"))
    with open_teacher(t, served_as="base fine-tuned") as teacher:  # local: nothing loads until asked
        assert teacher.identity == {"backend": "local", "model": "base fine-tuned"}
    with open_teacher(t) as teacher:
        assert teacher.identity["model"] == t.model


def _report(teacher: float, accs: dict[str, list[float]], pool: bool, n: int = 300) -> dict:
    """A report whose students answered `n` eval examples, the first acc × n of them right (so the
    better student is right wherever the worse one is), one list entry per seed."""
    import statistics

    from distill.recipes.textkd.report import paired_verdicts

    raw = {f"{k}-s{i}": {"kind": k, "seed": i, "predictions": [
        {"label": "a", "predicted": "a" if j < round(a * n) else "b"} for j in range(n)]}
        for k, v in accs.items() for i, a in enumerate(v)}
    students = {k: {"accuracy": {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}}
                for k, v in accs.items()}
    return {"teacher": {"metrics": {"accuracy": teacher}}, "students": students,
            "seeds": list(range(len(next(iter(accs.values()))))), "pool": {"counts": {}} if pool else None,
            "verdicts": paired_verdicts(list(accs), raw)}


def test_the_report_says_first_whether_the_teacher_helped_by_a_paired_test_and_if_not_why():
    from distill.recipes.textkd.report import _verdict

    won = _verdict(_report(0.88, {"label_only": [0.80, 0.79, 0.82], "pseudo_label": [0.90, 0.86, 0.89],
                                  "step_by_step": [0.90, 0.85, 0.89]}, pool=True))[0]
    assert won.startswith("**pseudo_label beats label-only training**") and "88.3% vs label-only 80.3%, +8.00 points (95% interval" in won
    assert "95% interval" in won and "3 seeds" in won
    weak = _verdict(_report(0.51, {"label_only": [0.72, 0.71, 0.73], "step_by_step": [0.57, 0.63, 0.52]},
                            pool=False))[0]
    assert weak.startswith("**No student") and "teacher.finetune" in weak and ": worse." in weak
    # +7.3 points on average, but one seed in three behind by 13: the seeds' spread refuses the claim
    noisy = _verdict(_report(0.88, {"label_only": [0.63, 0.58, 0.77], "pseudo_label": [0.83, 0.73, 0.64]},
                             pool=True))[0]
    assert noisy.startswith("**No student") and ": no detectable difference." in noisy and "train.steps" in noisy
    no_pool = _verdict(_report(0.9, {"label_only": [0.8, 0.8], "step_by_step": [0.79, 0.8]}, pool=False))[0]
    assert "data.unlabeled_examples" in no_pool
    # +5 points on one seed of 300 examples: within what a seed alone moves accuracy by
    one_seed = _verdict(_report(0.9, {"label_only": [0.8], "pseudo_label": [0.85]}, pool=True))[0]
    assert one_seed.startswith("**No student") and "more `seeds`" in one_seed
    assert _verdict(_report(0.9, {"label_only": [0.8]}, pool=False)) == []  # nothing to compare
