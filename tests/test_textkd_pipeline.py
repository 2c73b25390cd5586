"""`distill textkd` end to end on tiny models: an OpenAI-compatible endpoint writes rationales,
students are trained three ways and scored; a second run resumes from the files."""

from __future__ import annotations

import json

import pytest

from distill.cli import main
from distill.errors import ConfigError
from distill.textkd.config import load_textkd_config
from distill.textkd.pipeline import run_textkd
from lm_helpers import make_llama, make_tokenizer
from textkd_helpers import start_fake_endpoint

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
                 "train.steps=3", "train.batch_size=4", "train.eval_every=3", "train.save_every=3",
                 "device=cpu", "quiet=true", "teacher.price_prompt=1.0", "teacher.price_completion=0", "concurrency=2"]
    endpoint = {"server": server}
    yield overrides, endpoint
    if endpoint["server"] is not None:
        server.shutdown()


def test_textkd_trains_three_ways_scores_them_and_resumes(job, tmp_path):
    job, endpoint = job
    run_dir = run_textkd(load_textkd_config(None, job))
    report = json.loads((run_dir / "report.json").read_text())
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


def test_black_box_teacher_needs_a_student_source(tmp_path):
    cfg = load_textkd_config(None, ["teacher.backend=openai", "teacher.base_url=http://127.0.0.1:1/v1",
                                    f"output_dir={tmp_path}"])
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
