"""A teacher behind an OpenAI-compatible endpoint (`distill serve` here) fills the same top-k cache
as the local teacher: the same signal, resumable when the server dies midway, clear errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import TEXT, make_llama, make_tokenizer  # noqa: E402

from distill.data.tokens import pack_text  # noqa: E402
from distill.serve.server import make_server  # noqa: E402
from distill.teachers import cache as sharded  # noqa: E402
from distill.teachers.endpoint import EndpointTopK  # noqa: E402
from distill.teachers.text import TeacherUnavailable  # noqa: E402
from distill.teachers.tokens import TopKCache  # noqa: E402

K = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    tok = make_tokenizer(root)
    model = make_llama(root, tok).eval()
    server = make_server(str(root), port=0, model_name="teacher")
    server.start_background()
    yield server, model, tok
    server.shutdown()


def identity(tok, k=K):
    return {"teacher": "tiny", "tokenizer": "t", "k": k, "vocab": len(tok)}


def test_the_served_teacher_fills_the_cache_the_local_one_would(served, tmp_path, monkeypatch):
    server, model, tok = served
    monkeypatch.setattr(sharded, "IN_MEMORY_BYTES", 2**30)
    blocks = pack_text([TEXT] * 3, tok, seq_len=16)
    local = TopKCache.build_or_open(model, blocks, tmp_path / "local", identity=identity(tok), quiet=True)
    remote = EndpointTopK(f"{server.url}/v1", "teacher", k=K, vocab=len(tok), concurrency=2)
    cache = TopKCache.build_or_open(remote, blocks, tmp_path / "remote", identity=identity(tok), quiet=True)
    batch = blocks.batch(torch.arange(len(blocks)))
    a, b, mask = local.signal(batch), cache.signal(batch), batch["loss_mask"]
    assert torch.equal(a.topk_indices[mask][:, 0], b.topk_indices[mask][:, 0])  # top-1 identical everywhere
    assert (a.topk_logprobs.float() - b.topk_logprobs.float())[mask].abs().max() < 2e-2  # float16 storage
    assert (a.tail_logprob.float() - b.tail_logprob.float())[mask].abs().max() < 5e-2


def test_a_build_whose_server_dies_resumes_with_nothing_lost_or_twice(served, tmp_path, monkeypatch):
    server, model, tok = served
    monkeypatch.setattr("distill.teachers.tokens.SHARD_ROWS", 4)
    blocks = pack_text([TEXT] * 3, tok, seq_len=16)
    remote = EndpointTopK(f"{server.url}/v1", "teacher", k=K, vocab=len(tok), concurrency=1, max_retries=0)
    real, calls = remote.block, []

    def dies(ids, seq_len):
        calls.append(1)
        if len(calls) > 6:
            raise TeacherUnavailable("the server went away")
        return real(ids, seq_len)

    monkeypatch.setattr(remote, "block", dies)
    with pytest.raises(TeacherUnavailable, match="went away"):
        TopKCache.build_or_open(remote, blocks, tmp_path / "c", identity=identity(tok), quiet=True)
    monkeypatch.setattr(remote, "block", real)
    cache = TopKCache.build_or_open(remote, blocks, tmp_path / "c", identity=identity(tok), quiet=True)
    shards = cache.manifest["shards"]
    assert [s["start"] for s in shards] == list(range(0, len(blocks), 4)) and cache.manifest["complete"]
    local = TopKCache.build_or_open(model, blocks, tmp_path / "local", identity=identity(tok), quiet=True)
    batch = blocks.batch(torch.arange(len(blocks)))
    mask = batch["loss_mask"]
    assert torch.equal(cache.signal(batch).topk_indices[mask][:, 0], local.signal(batch).topk_indices[mask][:, 0])


def test_an_endpoint_that_cannot_give_k_alternatives_is_named(served, tmp_path):
    server, model, tok = served
    blocks = pack_text([TEXT], tok, seq_len=16)
    remote = EndpointTopK(f"{server.url}/v1", "teacher", k=101, vocab=len(tok), max_retries=0)
    with pytest.raises(TeacherUnavailable, match=r"logprobs.*100"):
        TopKCache.build_or_open(remote, blocks, tmp_path / "c", identity=identity(tok, 101), quiet=True)
    wrong = EndpointTopK(f"{server.url}/v1", "gpt-4o", k=K, vocab=len(tok), max_retries=0)
    with pytest.raises(TeacherUnavailable, match="model_not_found|does not exist"):
        TopKCache.build_or_open(wrong, blocks, tmp_path / "d", identity=identity(tok), quiet=True)


def test_distill_lm_builds_its_cache_through_the_endpoint_then_needs_no_server(capsys, tmp_path):
    import warnings

    from distill.cli import main
    from distill.recipes.lm.config import load_lm_config

    root = tmp_path / "teacher"
    tok = make_tokenizer(root)
    make_llama(root, tok)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    server = make_server(str(root), port=0, model_name="teacher")
    server.start_background()
    common = [f"teacher.model={root}", f"output_dir={tmp_path / 'runs'}", "name=remote", "data.corpus=text",
              f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2", "student.layers=[0]",
              "train.steps=4", "train.batch_size=2", f"teacher.top_k={K}", "quiet=true", "device=cpu",
              "teacher.adapt=null", "baseline=false"]
    endpoint = f"teacher.endpoint={{url: '{server.url}/v1', model: teacher, concurrency: 2}}"
    try:
        assert main(["lm-cache", *common, endpoint]) == 0
    finally:
        server.shutdown()  # from here on the server is gone: the run must read the cache only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny teacher's unknown licence
        assert main(["lm", *common, endpoint]) == 0
    said = capsys.readouterr().out.splitlines()  # the job's last words: verdict, runtime, report
    assert said[-2].startswith("Took ") and said[-1] == f"Report: {tmp_path / 'runs' / 'remote' / 'report.md'}"
    assert "student" in said[-3] and "**" not in said[-3]
    caches = list((tmp_path / "runs" / "remote" / "teacher_cache").glob("*/manifest.json"))
    assert len(caches) == 2 and all("served as teacher at" in p.read_text() for p in caches)
    import json

    from distill.eval.lm import evaluate_lm
    from distill.recipes.lm.data import load_text

    report = json.loads((tmp_path / "runs" / "remote" / "report.json").read_text())
    served_row = report["models"]["teacher"]
    assert served_row["served"].startswith("teacher at http") and "forward_ms" not in served_row
    here = evaluate_lm(make_llama(tmp_path / "again", tok), load_text(load_lm_config(None, common), tok).val, len(tok))
    assert served_row["ppl"] == pytest.approx(here["ppl"], rel=1e-3)  # the server's log-probs, kept by lm-cache
    assert "it never ran in this process" in (tmp_path / "runs" / "remote" / "report.md").read_text()
    with pytest.raises(Exception, match="it needs teacher.signal=cached"):
        load_lm_config(None, [*common, endpoint, "teacher.signal=live"])
    with pytest.raises(Exception, match="adapt the teacher where it is served"):
        load_lm_config(None, [*common, endpoint, "teacher.adapt={steps: 2}"])


def test_with_an_endpoint_distill_lm_never_loads_the_teacher_for_a_student_built_from_config(served, tmp_path,
                                                                                              monkeypatch):
    import warnings

    from distill.models import causal_lm
    from distill.recipes.lm.config import load_lm_config
    from distill.recipes.lm.pipeline import run_lm

    server, model, tok = served
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    loaded = []
    real = causal_lm.load_causal_lm
    monkeypatch.setattr(causal_lm, "load_causal_lm", lambda source, *a, **kw: loaded.append(source) or real(source, *a, **kw))
    root = tmp_path / "tok"
    make_tokenizer(root)
    make_llama(root, tok)  # the same tokenizer and config as the served teacher (seeded alike)
    cfg = load_lm_config(None, [f"teacher.model={root}", f"output_dir={tmp_path / 'runs'}", "name=served",
                                "data.corpus=text", f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2",
                                "student.layers=null", "student.config={num_hidden_layers: 1}", "train.steps=2",
                                "train.batch_size=2", f"teacher.top_k={K}", "quiet=true", "device=cpu",
                                "teacher.adapt=null", f"teacher.endpoint={{url: '{server.url}/v1', model: teacher}}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = run_lm(cfg)
    assert loaded == []  # neither for the student (built from config) nor for the teacher's evaluation
    import json

    report = json.loads((run_dir / "report.json").read_text())
    assert report["models"]["teacher"]["params"] == sum(p.numel() for p in model.parameters())
    assert {"baseline", "distilled"} <= set(report["models"]) and "speedup" not in report["summary"]


def test_another_teacher_behind_an_endpoint_fills_its_own_cache(served, tmp_path):
    import json
    import warnings

    import distill

    server, model, tok = served
    local = tmp_path / "local"
    tok.save_pretrained(local)
    make_llama(local, tok, seed=5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny teachers' unknown licence
        result = distill.lm(overrides={
            "teacher.model": str(local), "teacher.adapt": None, "teacher.top_k": K, "output_dir": str(tmp_path / "runs"),
            "name": "two", "data.corpus": "text", "data.path": str(corpus), "data.seq_len": 16,
            "data.val_fraction": 0.2, "student.layers": [0], "train.steps": 2, "train.batch_size": 2, "quiet": True,
            "device": "cpu", "baseline": False, "teacher.weighting": "confidence",
            "teacher.others": [{"name": "far", "model": str(local), "endpoint": {"url": f"{server.url}/v1",
                                                                                "model": "teacher"}}]})
    manifest = json.loads((result.run_dir / "teacher_cache" / "others" / "far" / "train" / "manifest.json").read_text())
    assert manifest["teacher"].endswith(f"served as teacher at {server.url}/v1")
    assert set(result.report["models"]) == {"teacher", "distilled"}  # the served teacher is not evaluated here
    assert result.report["teachers"]["weighting"] == "confidence"
