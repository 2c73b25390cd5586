"""Tiny distributed jobs for tests/test_distributed.py, one per trainer family.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_fit.py classic OUT 64 [EPOCHS LIMIT]
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_fit.py lm OUT 8
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_fit.py run OUT CONFIG.yaml

`classic` and `lm` take the *global* batch: each of the N processes takes `global / N` of it
(`batch_size` is per process in distill). Rank r writes OUT/<job>-rank<r>.json: the world size, each
run's history and final weights, and the dataset rows its teacher signal served. The test calls the
same functions in one process with the whole global batch and compares. `run` is `distill run
CONFIG.yaml`, noting every file each rank writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: lm_helpers

from distill.core.distributed import process_state  # noqa: E402
from distill.data.config import DataConfig  # noqa: E402
from distill.data.datasets import load_data  # noqa: E402
from distill.losses.methods import (
    KD,  # noqa: E402
    Method,  # noqa: E402
)
from distill.models.config import ModelConfig
from distill.models.zoo import build_model  # noqa: E402
from distill.teachers.signals import CachedTeacher, LiveTeacher  # noqa: E402
from distill.training.classify import ClassifierTask, fit
from distill.training.config import TrainConfig

HINT = [{"kind": "hint", "student": "net.2", "teacher": "net.2"}, {"kind": "kd", "weight": 0.5},
        {"kind": "ce", "weight": 0.5}]  # a feature method: its learned adapter is trained under DDP too


class Recorder:
    """A teacher signal (classifier or LM) that notes which dataset rows it served."""

    def __init__(self, inner: Any):
        self.inner, self.rows = inner, []

    def signal(self, batch):
        self.rows.append(batch["index"].tolist())
        return self.inner.signal(batch)


class _Interrupt(Exception):
    pass


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def setup(per_process_batch: int, epochs: int = 2, limit: int = 256) -> tuple[Any, TrainConfig, nn.Module]:
    """Digits, the training config and a (random, frozen) MLP teacher: the same in every process."""
    data = load_data(DataConfig(name="digits", limit=limit))
    cfg = TrainConfig(epochs=epochs, batch_size=per_process_batch, precision="no", optimizer={"lr": 0.01})
    teacher = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [32]}), data.input_shape, 10, seed=1)
    return data, cfg, teacher


def fit_student(data: Any, cfg: TrainConfig, objective: Any, signal: Any, ckpt: Path | None = None,
                resume: bool = False) -> dict[str, Any]:
    student = build_model(ModelConfig(arch="mlp", kwargs={"hidden": [16]}), data.input_shape, 10, seed=0)
    r = fit(student, data.train, objective=objective, config=cfg, num_classes=10, teacher=signal,
            val_data=data.val, checkpoint_dir=ckpt, resume=resume, quiet=True, device="cpu")
    return {"history": r.history, "weights": weights_hash(r.model),
            "state": {k: v.tolist() for k, v in r.model.state_dict().items()}}


def classic(out: Path, global_batch: int, epochs: int = 2, limit: int = 256) -> dict[str, Any]:
    """Logit KD from a live (replicated) teacher, a feature method, KD from a cached teacher, and a run
    interrupted in its second epoch (its checkpoint is resumed elsewhere, on another world size)."""
    state = process_state("cpu")
    data, cfg, teacher = setup(global_batch // state.num_processes, epochs, limit)
    record: dict[str, Any] = {"world": state.num_processes, "rank": state.process_index,
                              "train_size": len(data.train), "val_size": len(data.val),
                              "batch_size": cfg.batch_size}
    record["kd"] = fit_student(data, cfg, KD(), LiveTeacher(teacher), out / "kd")
    record["hint"] = fit_student(data, cfg, Method(HINT), LiveTeacher(teacher))
    with state.main_process_first():  # one process builds the cache, the others read it
        table = CachedTeacher.build_or_load(teacher, data.train, out / "cache", quiet=True)
    cached = Recorder(table)
    record["cached"] = fit_student(data, cfg, KD(), cached)
    record["cached"]["rows"] = cached.rows
    real_epoch = ClassifierTask.begin_epoch

    def stop_in_second_epoch(self, epoch):
        if epoch == 1:
            raise _Interrupt  # every rank stops at the same point, before any collective of epoch 2
        return real_epoch(self, epoch)

    ClassifierTask.begin_epoch = stop_in_second_epoch
    try:
        fit_student(data, cfg, KD(), LiveTeacher(teacher), out / "interrupted")
    except _Interrupt:
        pass
    finally:
        ClassifierTask.begin_epoch = real_epoch
    return record


def lm(out: Path, global_batch: int, steps: int = 4, shard: str = "none", interrupt: bool = False) -> dict[str, Any]:
    """Token-level KD from a top-k cache, and plain CE (what sequence-level KD trains with) on a tiny Llama;
    with shard="fsdp", the student's weights and optimizer state are split across the processes; with
    `interrupt`, each run stops after its step-2 checkpoint and is resumed from it."""
    from lm_helpers import TEXT, make_llama, make_tokenizer

    from distill.data.tokens import pack_text
    from distill.losses.config import TokenKDConfig
    from distill.models.causal_lm import tokenizer_fingerprint
    from distill.teachers.tokens import TopKCache
    from distill.training.config import LMTrainConfig
    from distill.training.lm import fit_lm

    state = process_state("cpu")
    assets = out / f"assets-rank{state.process_index}"  # each rank builds the same models (same seeds)
    tok = make_tokenizer(assets / "tok")
    teacher = make_llama(assets / "teacher", tok, layers=2, seed=0).eval()
    blocks = pack_text([TEXT] * 4, tok, seq_len=16)
    identity = {"teacher": "tiny", "tokenizer": tokenizer_fingerprint(tok), "k": 8, "vocab": len(tok)}
    with state.main_process_first():
        cache = Recorder(TopKCache.build_or_open(teacher, blocks, out / "topk", identity=identity, quiet=True))
    train = LMTrainConfig(steps=steps, batch_size=global_batch // state.num_processes, warmup_steps=0,
                          eval_every=2, save_every=2, precision="no", shard=shard)
    record: dict[str, Any] = {"world": state.num_processes, "rank": state.process_index, "blocks": len(blocks)}
    from distill.training import sharding

    shards, real_shard = [], sharding.shard
    sharding.shard = lambda module, device: shards.append(type(module).__name__) or real_shard(module, device)
    for name, signal in (("topk", cache), ("ce", None)):
        def train_once(resume: bool) -> Any:
            student = make_llama(assets / f"student-{name}", tok, layers=1, seed=1)
            return fit_lm(student, blocks, train=train, kd=TokenKDConfig(), vocab=len(tok), teacher=signal,
                          checkpoint_dir=out / f"lm-{name}", resume=resume, quiet=True, device="cpu")

        if interrupt:  # the finiteness check runs on every process before each metrics row and save
            from distill.training import engine

            real_check, calls = engine._Steps.check_finite, []

            def stop_at_step_4(self, done):
                real_check(self, done)  # its collective first: no process stops with gloo work in flight
                calls.append(done)
                if done == 4 and calls.count(4) == 1:
                    raise _Stop

            engine._Steps.check_finite, stopped = stop_at_step_4, False
            try:
                train_once(resume=False)
            except _Stop:
                stopped = True
            r = train_once(resume=True)
            engine._Steps.check_finite = real_check
        else:
            r, stopped = train_once(resume=False), False
        record[name] = {"history": r.history, "weights": weights_hash(r.model), "returned": type(r.model).__name__,
                        "sharded": shards[:], "stopped": stopped}
        shards.clear()
    sharding.shard = real_shard
    record["topk"]["rows"] = cache.rows
    return record


class _Stop(Exception):
    """A simulated crash."""


def run(out: Path, config: str) -> dict[str, Any]:
    """`distill run CONFIG`, with every file this process writes atomically (os.replace) noted."""
    from distill.cli import main as cli

    written: list[str] = []
    real_replace = os.replace

    def noting_replace(src, dst, *args, **kwargs):
        written.append(str(dst))
        return real_replace(src, dst, *args, **kwargs)

    os.replace = noting_replace
    try:
        code = cli(["run", config])
    finally:
        os.replace = real_replace
    state = process_state("cpu")
    return {"world": state.num_processes, "rank": state.process_index, "exit": code, "written": written}


def main() -> None:
    job, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if job == "run":
        record = run(out, sys.argv[3])
    else:
        jobs = {"classic": classic, "lm": lm, "lm_fsdp": lambda *a: lm(*a, shard="fsdp"),
                "lm_fsdp_resume": lambda *a: lm(*a, shard="fsdp", interrupt=True)}
        record = jobs[job](out, *map(int, sys.argv[3:]))
    (out / f"{job}-rank{process_state('cpu').process_index}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():  # gloo's threads left running at exit abort now and then
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
