"""The README's path off a hosted fine-tuning API, end to end on a tiny model: an OpenAI chat
fine-tuning JSONL → `distill lm` → `distill serve --model-name` answering the official client under
the hosted model's name → `distill monitor --recorded` against the recorded answers."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from lm_helpers import make_llama, make_tokenizer  # noqa: E402

import distill  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.serve.server import make_server  # noqa: E402

QUESTIONS = ["And God said", "Let there be light", "the waters", "God saw the light", "In the beginning",
             "the face of the deep", "God divided the light", "the earth was without form"]


def test_a_fine_tuning_file_becomes_a_student_served_under_the_same_name(tmp_path, capsys):
    tok = make_tokenizer(tmp_path / "tok")
    make_llama(tmp_path / "teacher", tok)
    rows = [{"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": q},
                          {"role": "assistant", "content": "and there was light", "weight": i % 2},
                          {"role": "user", "content": "and then"},
                          {"role": "assistant", "content": "God saw the light, that it was good"}]}
            for i, q in enumerate(QUESTIONS * 2)]
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny teacher's unknown licence
        result = distill.lm(overrides={
            "data.corpus": "jsonl", "data.path": str(recorded), "data.seq_len": 64, "data.val_fraction": 0.25,
            "teacher.model": str(tmp_path / "teacher"), "teacher.adapt": None, "teacher.top_k": 8,
            "name": "support-bot", "output_dir": str(tmp_path / "runs"), "train.steps": 4,
            "train.batch_size": 2, "train.eval_every": 4, "quiet": True, "device": "cpu", "baseline": False})
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["data"]["holdout"] == "documents" and report["data"]["val_blocks"] == 4  # whole conversations
    server = make_server(str(result.run_dir / "distilled" / "model"), port=0, model_name="gpt-4o-mini",
                         max_tokens_limit=16)
    server.start_background()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="gpt-4o-mini", max_tokens=8, temperature=0,
                                                messages=[{"role": "user", "content": "And God said"}])
        assert answer.model == "gpt-4o-mini" and answer.choices[0].finish_reason in ("stop", "length")
        code = main(["monitor", "--recorded", str(recorded), "--endpoint", f"{server.url}/v1", "--sample", "1",
                     "--window", "8", "--max-tokens", "16", "--json"])
    finally:
        server.shutdown()
    windows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [w["n"] for w in windows] == [8, 8] and all(0 <= w["f1"] <= 1 for w in windows)
    assert code == (3 if any(w["alert"] for w in windows) else 0)
