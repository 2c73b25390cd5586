"""Teacher-generated data: prompts, resumable generation, filtering, training rows, scoring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from textkd_helpers import EchoTeacher

from distill.core.errors import CheckpointError, ConfigError, DataError
from distill.data.prompts import match_label, parse_response, render
from distill.eval.text import Prices, metrics_of, rouge_l
from distill.recipes.textkd import examples as ex
from distill.recipes.textkd.filters import filter_records
from distill.teachers.generate import PromptRow, completed_keys, generate, read_records
from distill.teachers.text import Sampling, TeacherUnavailable

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def prompts(n: int) -> list[PromptRow]:
    return [PromptRow(id=f"p{i}", messages=[{"role": "user", "content": f"Article {i}\nTopic: {LABELS[i % 5]}"}],
                      fields={"label": LABELS[i % 5]}) for i in range(n)]


# --------------------------------------------------------------------------- prompts


def test_render_names_the_missing_field_the_row_and_the_key():
    assert render("A: {input}", {"input": "x"}, "row 1") == "A: x"
    with pytest.raises(ConfigError, match=r"generate.template uses \{topic\}.*row 3.*has: input"):
        render("A: {input} {topic}", {"input": "x"}, "row 3")


def test_parse_response_takes_the_last_answer_and_maps_it_onto_the_labels():
    p = parse_response("Reason: sport and money. Answer: no\nAnswer: Sport.", LABELS)
    assert p is not None and p.label == "sports" and p.rationale.startswith("sport and money")
    assert parse_response("It is about football.", LABELS) is None
    assert parse_response("Answer:   ", LABELS) is None
    assert parse_response("Answer: aviation", LABELS).label is None


def test_match_label_is_exact_first_and_refuses_ambiguity():
    assert match_label("Technology", LABELS) == "tech"
    assert match_label("business", LABELS) == "business"
    assert match_label("business or sports", LABELS) is None
    assert match_label("economy", LABELS) is None


# --------------------------------------------------------------------------- generate


def test_generate_writes_every_sample_once_and_records_its_settings(tmp_path):
    out = tmp_path / "gen.jsonl"
    stats = generate(EchoTeacher(), prompts(7), out, sampling=Sampling(n=2), template="T", concurrency=3, quiet=True)
    recs = read_records(out)
    assert stats.generated == 14 and len(recs) == 14
    assert sorted((r["id"], r["sample"]) for r in recs) == sorted((f"p{i}", s) for i in range(7) for s in (0, 1))
    assert all(r["response"].endswith(r["label"]) for r in recs)
    meta = json.loads((tmp_path / "gen.jsonl.meta.json").read_text())
    assert meta["teacher"] == {"backend": "echo", "model": "echo-1"} and meta["sampling"]["n"] == 2
    assert meta["template"] == "T"


def test_rerun_skips_what_is_done_and_trims_a_cut_off_line(tmp_path):
    out = tmp_path / "gen.jsonl"
    generate(EchoTeacher(), prompts(5), out, sampling=Sampling(), quiet=True)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10])  # a crash in the middle of the 4th line
    teacher = EchoTeacher()
    stats = generate(teacher, prompts(5), out, sampling=Sampling(), quiet=True)
    assert stats.already_done == 3 and stats.generated == 2 and teacher.calls == 2
    assert sorted(r["id"] for r in read_records(out)) == [f"p{i}" for i in range(5)]


def test_endpoint_failure_keeps_what_was_generated_and_says_how_to_continue(tmp_path):
    out = tmp_path / "gen.jsonl"
    with pytest.raises(TeacherUnavailable, match=r"(?s)did not answer.*Kept 4 of 10.*re-run the same command"):
        generate(EchoTeacher(fail_after=4), prompts(10), out, sampling=Sampling(), concurrency=1, quiet=True)
    assert len(completed_keys(out)) == 4
    generate(EchoTeacher(), prompts(10), out, sampling=Sampling(), concurrency=1, quiet=True)
    assert len(read_records(out)) == 10


def test_a_different_teacher_or_sampling_is_refused_on_resume(tmp_path):
    out = tmp_path / "gen.jsonl"
    generate(EchoTeacher(), prompts(2), out, sampling=Sampling(), quiet=True)
    before = out.read_bytes()
    with pytest.raises(CheckpointError, match="different sampling"):
        generate(EchoTeacher(), prompts(2), out, sampling=Sampling(temperature=0.7), quiet=True)
    assert out.read_bytes() == before


def test_duplicate_prompt_ids_and_foreign_files_are_refused(tmp_path):
    rows = prompts(2) + prompts(1)
    with pytest.raises(DataError, match="'p0' appears twice"):
        generate(EchoTeacher(), rows, tmp_path / "a.jsonl", sampling=Sampling(), quiet=True)
    foreign = tmp_path / "b.jsonl"
    foreign.write_text('{"x": 1}\n')
    with pytest.raises(CheckpointError, match="not started by `distill generate`"):
        generate(EchoTeacher(), prompts(1), foreign, sampling=Sampling(), quiet=True)
    assert foreign.read_text() == '{"x": 1}\n'


KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from textkd_helpers import EchoTeacher
from distill.teachers.generate import PromptRow, generate
from distill.teachers.text import Sampling
rows = [PromptRow(id=f"p{{i}}", messages=[{{"role": "user", "content": f"Topic: sports {{i}}"}}], fields={{}})
        for i in range(40)]
generate(EchoTeacher(delay_s=float(sys.argv[2])), rows, Path(sys.argv[1]), sampling=Sampling(n=2),
         concurrency=4, quiet=True)
"""


def test_sigkill_mid_run_then_rerun_gives_every_prompt_exactly_once(tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0.05"])
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 10):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(completed_keys(out))
    assert 10 <= partial < 80
    subprocess.run([sys.executable, str(script), str(out), "0"], check=True, timeout=120)
    keys = [(r["id"], r["sample"]) for r in read_records(out)]
    assert len(keys) == len(set(keys)) == 80


# --------------------------------------------------------------------------- filter


def test_filter_counts_every_reason_and_keeps_parsed_rationales():
    base = {"finish_reason": "stop", "label": "sports"}
    records = [
        {**base, "id": "a", "response": "Reason: a match.\nAnswer: sports"},
        {**base, "id": "a", "response": "Reason:  a match.\nAnswer: sports"},  # same text: duplicate
        {**base, "id": "b", "response": "  "},
        {**base, "id": "c", "response": "Reason: long", "finish_reason": "length"},
        {**base, "id": "d", "response": "It is sport."},
        {**base, "id": "e", "response": "Answer: politics"},
        {**base, "id": "f", "response": "Reason: goals.\nAnswer: Sport"},
    ]
    out = filter_records(records, labels=LABELS)
    assert out.counts == {"total": 7, "kept": 2, "empty": 1, "overlong": 1, "unparsable": 1, "wrong": 1,
                          "duplicate": 1}
    assert [r["rationale"] for r in out.kept] == ["a match.", "goals."]
    assert out.kept[1]["answer"] == "sports" and out.kept_fraction == pytest.approx(2 / 7)


def test_a_user_check_decides_instead_of_the_gold_label():
    rec = {"id": "a", "response": "Reason: x\nAnswer: tech", "finish_reason": "stop", "label": "sports"}
    assert filter_records([rec], labels=LABELS, check=lambda r: r["answer"] == "tech").counts["kept"] == 1


# --------------------------------------------------------------------------- training rows


EXAMPLES = [{"id": "1", "input": "Goals galore", "label": "sports", "response": "Reason: goals.\nAnswer: sports",
             "rationale": "goals."}]


def test_task_rows_per_kind():
    assert ex.task_rows(EXAMPLES, "label_only") == [{"prompt": "[label] Goals galore", "response": "sports",
                                                     "weight": 1.0}]
    assert ex.task_rows(EXAMPLES, "seq_kd")[0]["response"] == "Reason: goals.\nAnswer: sports"
    sbs = ex.task_rows(EXAMPLES, "step_by_step", rationale_weight=0.5)
    assert [(r["prompt"], r["response"], r["weight"]) for r in sbs] == [
        ("[label] Goals galore", "sports", 1.0), ("[rationale] Goals galore", "goals.", 0.5)]
    assert ex.task_rows(EXAMPLES, "pseudo_label") == ex.task_rows(EXAMPLES, "label_only")  # its pool differs
    with pytest.raises(ConfigError, match="label_only, pseudo_label, seq_kd, step_by_step"):
        ex.task_rows(EXAMPLES, "rationale_only")


def test_encoded_rows_weigh_each_example_by_its_task_weight(tmp_path):
    from lm_helpers import make_tokenizer

    tok = make_tokenizer(tmp_path, extra_words=("Goals", "galore", "sports", "goals", "[label]", "[rationale]"))
    blocks = ex.encode_weighted(ex.task_rows(EXAMPLES, "step_by_step", 0.5), tok, 64, "rows")
    assert blocks.loss_mask.dtype == torch.float32
    torch.testing.assert_close(blocks.loss_mask.sum(1), torch.tensor([1.0, 0.5]))
    assert (blocks.loss_mask[~blocks.attention_mask] == 0).all()


def test_weighted_mask_makes_the_loss_a_weighted_mean_of_example_means():
    from distill.losses.divergences import chunked_token_sum

    hidden = torch.randn(2, 3, 4)
    weight = torch.randn(5, 4)
    labels = torch.tensor([[1, 2, 3], [0, 4, 1]])
    mask = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.0, 2.0]])
    ce = lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="none")  # noqa: E731
    total = chunked_token_sum(hidden, weight, ce, [labels], mask, chunk_size=2)
    per = torch.nn.functional.cross_entropy((hidden @ weight.T).reshape(-1, 5), labels.reshape(-1),
                                            reduction="none").view(2, 3)
    torch.testing.assert_close(total, 0.5 * per[0, 1] + 0.5 * per[0, 2] + 2.0 * per[1, 2])


# --------------------------------------------------------------------------- scoring


def test_rouge_l():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("a b c d", "a x c y") == pytest.approx(0.5)
    assert rouge_l("", "x") == 0.0


def test_metrics_score_answers_and_price_the_tokens():
    rows = [{"label": "sports", "output": "Reason: goals\nAnswer: sports", "latency_s": 0.2, "prompt_tokens": 100,
             "completion_tokens": 20},
            {"label": "tech", "output": "Answer: business", "latency_s": 0.4, "prompt_tokens": 300,
             "completion_tokens": 40}]
    m = metrics_of(rows, LABELS, "answer", Prices(prompt=1.0, completion=2.0))
    assert m["accuracy"] == 0.5 and m["parsed"] == 1.0 and m["exact_match"] == 0.0
    assert m["cost_per_1k"] == pytest.approx(1000 * (200 * 1.0 + 30 * 2.0) / 1e6)
    assert m["latency_p50_ms"] == pytest.approx(300)
    assert metrics_of([{**rows[0], "output": "Sports"}], LABELS, "label")["exact_match"] == 1.0
