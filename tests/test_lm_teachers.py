"""Several LM teachers: per-token mixing of their divergences, confidence weights, routing by a JSONL
key, their caches, the `distill lm` job with `teacher.others`, and the bad input it refuses."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from lm_helpers import TEXT, make_bpe_tokenizer, make_llama, make_tokenizer  # noqa: E402

from distill.core.errors import ConfigError, DataError, ModelError  # noqa: E402
from distill.data.tokens import RoutedBlocks, blocks_subset, encode_rows, pack_text  # noqa: E402
from distill.eval.lm import evaluate_lm  # noqa: E402
from distill.losses.config import TokenKDConfig  # noqa: E402
from distill.losses.tokens import lm_loss  # noqa: E402
from distill.teachers.mixture import MixedLMTeacher, next_token_prob  # noqa: E402
from distill.teachers.output import TeacherOutput  # noqa: E402
from distill.teachers.tokens import LiveLMTeacher, topk_of  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """One tokenizer, two different tiny teachers sharing it, a student, and 16-token blocks."""
    root = tmp_path_factory.mktemp("teachers")
    tok = make_tokenizer(root / "tok")
    a = make_llama(root / "a", tok, seed=1).eval()
    b = make_llama(root / "b", tok, seed=2).eval()
    student = make_llama(root / "student", tok, layers=1, seed=3)
    return {"root": root, "tok": tok, "a": a, "b": b, "student": student,
            "blocks": pack_text([TEXT] * 2, tok, seq_len=16), "vocab": len(tok)}


def _batch(blocks, n=4):
    return blocks.batch(torch.arange(n))


class Fixed:
    """A teacher whose output is given."""

    def __init__(self, out):
        self.out = out

    def signal(self, batch):
        return self.out


def test_a_mixture_weighs_each_teachers_divergence_per_token(lm):
    batch = _batch(lm["blocks"])
    cfg = TokenKDConfig(ratio=1.0)
    outs = [LiveLMTeacher(lm[name], lm["vocab"]).signal(batch) for name in ("a", "b")]
    single = [float(lm_loss(lm["student"], batch, out, cfg, lm["vocab"])["kd"]) for out in outs]
    mixed = TeacherOutput.mixture(outs, torch.tensor([0.3, 0.7]).expand(*batch["input_ids"].shape, 2))
    assert float(lm_loss(lm["student"], batch, mixed, cfg, lm["vocab"])["kd"]) == pytest.approx(
        0.3 * single[0] + 0.7 * single[1], rel=1e-5)
    assert single[0] != pytest.approx(single[1], rel=1e-3)  # the two teachers really differ
    one = TeacherOutput.mixture([outs[0], outs[1]], torch.tensor([1.0, 0.0]).expand(*batch["input_ids"].shape, 2))
    assert float(lm_loss(lm["student"], batch, one, cfg, lm["vocab"])["kd"]) == pytest.approx(single[0], rel=1e-5)


def test_a_mixture_of_top_k_caches_gives_gradients_like_its_parts(lm):
    batch = _batch(lm["blocks"], 2)
    cfg = TokenKDConfig(ratio=0.5)
    outs = []
    for name in ("a", "b"):
        lp, idx, tail = topk_of(LiveLMTeacher(lm[name], lm["vocab"]).signal(batch).logits, 8)
        outs.append(TeacherOutput(topk_logprobs=lp, topk_indices=idx, tail_logprob=tail))
    w = torch.zeros(*batch["input_ids"].shape, 2)
    w[0, :, 0], w[1, :, 1] = 1, 1  # row 0 from teacher a, row 1 from teacher b
    loss = lm_loss(lm["student"], batch, TeacherOutput.mixture(outs, w), cfg, lm["vocab"])["kd"]
    per_row = []
    for row, out in enumerate(outs):
        part = TeacherOutput(topk_logprobs=out.topk_logprobs[row:row + 1], topk_indices=out.topk_indices[row:row + 1],
                             tail_logprob=out.tail_logprob[row:row + 1])
        rows = {k: v[row:row + 1] for k, v in batch.items()}
        per_row.append(float(lm_loss(lm["student"], rows, part, cfg, lm["vocab"])["kd"]) * float(rows["loss_mask"].sum()))
    assert float(loss) == pytest.approx(sum(per_row) / float(batch["loss_mask"].sum()), rel=1e-5)


def test_routes_pick_one_teacher_and_the_rest_keep_the_weights(lm):
    batch = _batch(lm["blocks"], 2)
    route = torch.full_like(batch["input_ids"], -1)
    route[0, :5], route[1, 3:] = 1, 0
    mixed = MixedLMTeacher({"a": LiveLMTeacher(lm["a"], lm["vocab"]), "b": LiveLMTeacher(lm["b"], lm["vocab"])},
                           {"a": 1.0, "b": 3.0}).signal({**batch, "teacher_route": route})
    w = mixed.part_weights
    assert torch.equal(w[0, :5], torch.tensor([[0.0, 1.0]] * 5))
    assert torch.equal(w[1, 3:], torch.tensor([[1.0, 0.0]] * 13))
    assert torch.allclose(w[0, 5:], torch.tensor([0.25, 0.75]))


def test_confidence_weights_favour_the_teacher_that_predicted_the_text(lm):
    batch = _batch(lm["blocks"], 1)
    nxt = torch.roll(batch["input_ids"], -1, dims=1)
    v = lm["vocab"]
    sure = torch.full((1, 16, v), -5.0).scatter(-1, nxt[..., None], 5.0)  # puts the actual next token first
    unsure = torch.zeros(1, 16, v)  # uniform
    mixed = MixedLMTeacher({"sure": Fixed(TeacherOutput(logits=sure)), "flat": Fixed(TeacherOutput(logits=unsure))},
                           {"sure": 1.0, "flat": 1.0}, weighting="confidence").signal(batch)
    assert bool((mixed.part_weights[..., 0] > 0.9).all())
    lp, idx, tail = topk_of(unsure, 4)
    bound = next_token_prob(TeacherOutput(topk_logprobs=lp, topk_indices=idx, tail_logprob=tail), batch["input_ids"])
    assert torch.allclose(bound, torch.full_like(bound, 1 / v))  # a uniform teacher gave 1/V, top-k or not


def test_held_out_kl_to_several_teachers_is_weighed_as_in_training(lm):
    blocks = blocks_subset(lm["blocks"], torch.arange(4))
    a, b = (LiveLMTeacher(lm[n], lm["vocab"]) for n in ("a", "b"))
    kl = [evaluate_lm(lm["student"], blocks, lm["vocab"], teacher=t)["kl_teacher"] for t in (a, b)]
    mixed = evaluate_lm(lm["student"], blocks, lm["vocab"], teacher=MixedLMTeacher({"a": a, "b": b}, {"a": 1, "b": 1}))
    assert mixed["kl_teacher"] == pytest.approx((kl[0] + kl[1]) / 2, rel=1e-5)


def test_routed_rows_carry_their_teacher_on_every_token_when_packed(lm):
    rows = [{"text": "And God said"}, {"text": "let there be light"}, {"text": "and there was light"}]
    plain = encode_rows(rows, lm["tok"], 8, response_only=True, packing=True, source="rows.jsonl")
    routed = encode_rows(rows, lm["tok"], 8, response_only=True, packing=True, source="rows.jsonl", route=[1, -1, 0])
    assert isinstance(routed, RoutedBlocks) and torch.equal(routed.input_ids, plain.input_ids)
    lengths = [len(lm["tok"](r["text"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
    expected = [1] * lengths[0] + [-1] * lengths[1] + [0] * lengths[2]
    flat = routed.teacher_route.flatten().tolist()
    assert flat[: len(expected)] == expected and set(flat[len(expected):]) <= {-1}
    part = blocks_subset(routed, torch.tensor([1]))
    assert isinstance(part, RoutedBlocks) and torch.equal(part.batch(torch.tensor([0]))["teacher_route"][0],
                                                          routed.teacher_route[1])


def _job(lm, tmp_path, rows, **extra):
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"teacher.model": str(lm["root"] / "a"), "teacher.name": "a", "output_dir": str(tmp_path / "runs"),
            "name": "t", "data.corpus": "jsonl", "data.path": str(corpus), "data.seq_len": 16, "data.packing": True,
            "data.val_fraction": 0.25, "student.layers": [0], "train.steps": 3, "train.batch_size": 2,
            "teacher.top_k": 8, "quiet": True, "device": "cpu", "teacher.adapt": None, "baseline": False,
            "teacher.others": [{"name": "b", "model": str(lm["root"] / "b"), "weight": 1.0}], **extra}


ROWS = [{"text": TEXT[i * 40: i * 40 + 120], "domain": "a" if i % 2 else "b"} for i in range(12)]


def test_the_lm_job_learns_from_several_routed_teachers_and_reports_them(lm, tmp_path):
    import distill

    with pytest.warns(UserWarning, match="licence"):
        result = distill.lm(overrides=_job(lm, tmp_path, ROWS, **{"teacher.route": "domain", "teacher.weight": 0.0}))
    report, run_dir = result.report, result.run_dir
    assert set(report["models"]) == {"teacher", "distilled", "teacher_b"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["other_teachers"]["b"]["model"] == str(lm["root"] / "b")
    assert manifest["other_teachers"]["b"]["licence_warning"].startswith("the teacher's licence is unknown")
    assert "kl_teacher" not in report["models"]["teacher_b"] and "kl_teacher" in report["models"]["distilled"]
    assert report["teachers"]["route"] == "domain" and report["teachers"]["weights"] == {"a": 0.0, "b": 1.0}
    # the summary compares the student with the heaviest teacher, not with a first teacher of weight 0
    assert report["summary"]["teacher"] == "teacher_b"
    assert report["summary"]["ppl_ratio"] == pytest.approx(report["models"]["distilled"]["ppl"] / report["models"]["teacher_b"]["ppl"])
    assert "× `teacher_b`'s parameters" in (run_dir / "report.md").read_text()
    assert (run_dir / "teacher_cache" / "others" / "b" / "train" / "manifest.json").is_file()
    manifest = json.loads((run_dir / "teacher_cache" / "others" / "b" / "train" / "manifest.json").read_text())
    assert manifest["teacher"] == str(lm["root"] / "b")
    assert "Teachers: a (" in (run_dir / "report.md").read_text() and "`domain` key names" in (run_dir / "report.md").read_text()


def test_a_row_naming_an_unknown_teacher_is_refused_before_any_compute(lm, tmp_path):
    import distill

    rows = [*ROWS[:5], {"text": "light", "domain": "code"}, *ROWS[5:]]
    with pytest.raises(DataError, match=r"rows.jsonl, row 6: `domain` \(teacher.route\) is 'code'.*\['a', 'b'\]"):
        distill.lm(overrides=_job(lm, tmp_path, rows, **{"teacher.route": "domain"}))
    assert not (tmp_path / "runs").exists()


def test_another_teacher_with_another_tokenizer_is_refused_naming_it(lm, tmp_path):
    import distill

    bpe = make_bpe_tokenizer(tmp_path / "bpe")
    make_llama(tmp_path / "other", bpe)
    overrides = _job(lm, tmp_path, ROWS)
    overrides["teacher.others"] = [{"name": "c", "model": str(tmp_path / "other")}]
    with pytest.raises(ModelError, match=r"teacher.others\[0\].model .*teacher 'c'.* another tokenizer"):
        distill.lm(overrides=overrides)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    ({"teacher.route": "domain", "teacher.others": []}, "teacher.route picks among several teachers"),
    ({"teacher.others": [{"name": "a", "model": "x"}]}, "teacher names must differ"),
    ({"teacher.weight": 0, "teacher.others": [{"name": "b", "model": "x", "weight": 0}]}, "every teacher weight is 0"),
    ({"teacher.others": [{"name": "b", "model": "x", "weight": -1}]}, "greater than or equal to 0"),
    ({"data.corpus": "text", "teacher.route": "domain"}, "teacher.route names a row key"),
])
def test_bad_teacher_settings_are_named(lm, tmp_path, extra, message):
    from distill.recipes.lm.config import load_lm_config

    overrides = {**_job(lm, tmp_path, ROWS), **extra}
    with pytest.raises(ConfigError, match=message):
        load_lm_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def test_an_on_policy_sample_learns_from_the_teacher_of_its_prompts_row(lm):
    from distill.training.config import OnPolicyConfig
    from distill.training.lm import sample_continuations

    batch = _batch(lm["blocks"], 2)
    route = torch.full_like(batch["input_ids"], -1)
    route[0, :6], route[1, :6] = 1, 0  # the prompts' rows
    torch.manual_seed(0)
    sampled = sample_continuations(lm["student"], {**batch, "teacher_route": route},
                                   OnPolicyConfig(fraction=1.0, prompt_tokens=4, max_new_tokens=6), lm["tok"].pad_token_id)
    assert sampled["teacher_route"].tolist() == [[1] * 16, [0] * 16]
