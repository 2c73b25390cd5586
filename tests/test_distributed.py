"""Distributed training on CPU: 2 processes (torchrun, gloo) against 1 process with the same global batch.

Each job runs once under `torchrun --standalone --nproc_per_node=2` (tests/scripts/ddp_fit.py); the
1-process reference calls the same function in this process with the whole global batch.

Tolerance. The two runs see the same global batches in the same order (`_shard` deals each epoch's
order out round-robin, so rank r's i-th batch is every 2nd example of the 1-process i-th batch), so
they differ only in float32 rounding: DDP averages two half-batch gradient means where one process
takes one mean, a few ulps (~1e-7) per step; over these 16 steps the largest difference measured is
6e-8. TOL = 1e-5 on every logged metric and every weight leaves 100x headroom, while a real mismatch
moves them much more: the same run with another data order differs by 7e-4 to 2e-3 in the losses and
6e-2 in the weights. Accuracy may differ by one validation example (an argmax tie broken by
rounding). Models without BatchNorm only: under DDP each process normalises with its own half batch
unless the model uses SyncBatchNorm.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.core.checkpoint import read_metadata

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
TOL = 1e-5
GLOBAL_BATCH = 64

pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed next to this Python")


def _job():
    """tests/scripts/ddp_fit.py as a module, for the 1-process reference runs."""
    spec = importlib.util.spec_from_file_location("ddp_fit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GLOO_EXIT_ABORT = "terminate called without an active exception"  # upstream: a gloo thread destroyed while joinable


def torchrun(job: str, out: Path, *args: object, timeout: int = 300) -> list[dict]:
    """Run `job` in 2 CPU processes; the records of rank 0 and rank 1. Fails with both outputs' tails.

    A worker killed by gloo's own abort (GLOO_EXIT_ABORT, SIGABRT from a C++ thread of torch's gloo
    backend, seen now and then on this 2-core machine in a loaded test run and never alone) after
    both ranks wrote their records (the last thing a job does: its work is done) is accepted; one
    killed before is retried once in a clean directory; any other failure fails at once."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(SCRIPT), job, str(out), *map(str, args)]
    for attempt in range(2):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        code, stdout, stderr = _launch(cmd, job, timeout)
        finished = all((out / f"{job}-rank{r}.json").is_file() for r in (0, 1))
        if code != 0 and GLOO_EXIT_ABORT in stderr and finished:
            code = 0  # the abort came in teardown, after both records were written
        if code == 0 or GLOO_EXIT_ABORT not in stderr:
            break
    if code != 0:
        pytest.fail(f"torchrun {job} exited {code} (attempt {attempt + 1}): {' '.join(cmd)}\n--- stdout\n"
                    f"{stdout[-3000:]}\n--- stderr\n{stderr[-5000:]}")
    records = [json.loads((out / f"{job}-rank{r}.json").read_text()) for r in (0, 1)]
    records[0]["stdout"] = stdout
    return records


def _launch(cmd: list[str], job: str, timeout: int) -> tuple[int, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group: a timeout ends the workers too
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun {job} took over {timeout} s\n--- stdout\n{stdout[-3000:]}"
                    f"\n--- stderr\n{stderr[-3000:]}")
    return proc.returncode, stdout, stderr


def assert_same_run(two: dict, one: dict, val_size: int) -> float:
    """Histories and final weights agree within TOL (accuracy within one example); the largest difference."""
    assert len(two["history"]) == len(one["history"])
    worst = 0.0
    for r2, r1 in zip(two["history"], one["history"]):
        assert r2.keys() == r1.keys()
        for k in r1:
            diff = abs(r2[k] - r1[k])
            limit = 1 / val_size + 1e-9 if k == "val_accuracy" else TOL
            assert diff <= limit, f"{k} differs by {diff:.3g} (epoch/step {r1.get('epoch', r1.get('step'))})"
            worst = max(worst, diff if k != "val_accuracy" else 0.0)
    for name, w1 in one.get("state", {}).items():
        diff = float((torch.tensor(two["state"][name]) - torch.tensor(w1)).abs().max())
        assert diff <= TOL, f"weight {name} differs by {diff:.3g}"
        worst = max(worst, diff)
    return worst


@pytest.fixture(scope="module")
def classic(tmp_path_factory) -> dict:
    """The 2-process records of the classic job, and the 1-process reference with the whole global batch."""
    root = tmp_path_factory.mktemp("ddp")
    two = torchrun("classic", root / "two", GLOBAL_BATCH)
    one = _job().classic(root / "one", GLOBAL_BATCH)
    return {"root": root, "two": two, "one": one}


def test_two_processes_train_like_one_with_the_same_global_batch(classic):
    (rank0, rank1), one = classic["two"], classic["one"]
    assert (rank0["world"], rank1["world"], one["world"]) == (2, 2, 1)  # really two processes
    assert rank0["batch_size"] * 2 == one["batch_size"] == GLOBAL_BATCH
    for run in ("kd", "hint", "cached"):  # logits from a live teacher, a feature method, a cached teacher
        assert rank0[run]["history"] == rank1[run]["history"], run  # metrics reduced: every rank agrees
        assert rank0[run]["weights"] == rank1[run]["weights"], run  # gradients synchronised
        assert_same_run(rank0[run], one[run], one["val_size"])


def test_teacher_cache_is_read_by_rank(classic):
    (rank0, rank1), one = classic["two"], classic["one"]
    # the first read is the shape check on rows [0, 1]; then one read per training step
    steps0, steps1, steps = rank0["cached"]["rows"][1:], rank1["cached"]["rows"][1:], one["cached"]["rows"][1:]
    assert len(steps0) == len(steps1) == len(steps) == 2 * math.ceil(one["train_size"] / GLOBAL_BATCH)
    for mine, theirs, whole in zip(steps0, steps1, steps):
        assert len(mine) == len(theirs) == len(whole) // 2
        assert not set(mine) & set(theirs)  # each process reads only its half of the global batch
        assert sorted(mine + theirs) == sorted(whole)


def test_checkpoint_written_by_two_processes_resumes_in_one(classic, tmp_path):
    ckpt = classic["root"] / "two" / "interrupted"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.safetensors", "last.safetensors", "metrics.jsonl"]
    state = read_metadata(ckpt / "last.safetensors")["state"]
    assert state["step"] == state["history"][0]["step"] and len(state["history"]) == 1  # stopped in epoch 2 of 2
    shutil.copytree(ckpt, tmp_path / "ckpt")
    job = _job()
    rank0 = classic["two"][0]
    data, cfg, teacher = job.setup(rank0["batch_size"])  # the same config: train.batch_size is per process
    resumed = job.fit_student(data, cfg, job.KD(), job.LiveTeacher(teacher), tmp_path / "ckpt", resume=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == rank0["kd"]["history"][0]  # epoch 1 as the two processes logged it
    assert all(math.isfinite(v) for v in resumed["history"][1].values())
    # one process takes twice the steps per epoch; the schedule went on from the end of epoch 1
    steps_per_epoch = math.ceil(rank0["train_size"] / cfg.batch_size)
    scheduler = read_metadata(tmp_path / "ckpt" / "last.safetensors")["scheduler"]
    assert scheduler["last_epoch"] == 2 * steps_per_epoch


@pytest.mark.slow
def test_longer_two_process_run_stays_within_tolerance(tmp_path):
    two = torchrun("classic", tmp_path / "two", GLOBAL_BATCH, 4, 1024, timeout=600)
    one = _job().classic(tmp_path / "one", GLOBAL_BATCH, 4, 1024)
    for run in ("kd", "hint", "cached"):
        assert two[0][run]["weights"] == two[1][run]["weights"]
        assert_same_run(two[0][run], one[run], one["val_size"])


@pytest.mark.slow
def test_lm_trainer_under_two_processes_matches_one_and_reads_the_cache_by_rank(tmp_path):
    pytest.importorskip("transformers")
    rank0, rank1 = torchrun("lm", tmp_path / "two", 8)
    one = _job().lm(tmp_path / "one", 8)
    assert (rank0["world"], one["world"]) == (2, 1)
    for run in ("topk", "ce"):  # token-level KD from the top-k cache; plain CE as in sequence-level KD
        assert rank0[run]["history"] == rank1[run]["history"], run  # losses reduced across processes
        assert rank0[run]["weights"] == rank1[run]["weights"], run
        assert_same_run(rank0[run], one[run], val_size=1)
    for mine, theirs, whole in zip(rank0["topk"]["rows"], rank1["topk"]["rows"], one["topk"]["rows"]):
        assert not set(mine) & set(theirs) and sorted(mine + theirs) == sorted(whole)


@pytest.mark.slow
def test_distill_run_under_two_processes_writes_each_file_from_one_process(run_config, tmp_path):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config))
    rank0, rank1 = torchrun("run", tmp_path / "out", config, timeout=600)
    assert rank0["exit"] == rank1["exit"] == 0
    assert rank0["stdout"].count("Report:") == 1  # only the main process prints
    assert rank1["written"] == []  # checkpoints, stage weights, teacher cache, report: all by rank 0
    run_dir = Path(run_config["output_dir"]) / run_config["name"]
    assert rank0["written"].count(str(run_dir / "report.json")) == 1
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "baseline", "distilled"}
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]  # no half-written files
    for stage in ("teacher", "baseline", "distilled"):
        assert (run_dir / stage / "model.safetensors").is_file()


def test_lm_trainer_sharded_with_fsdp_matches_one_process_and_its_checkpoint_loads_in_one(tmp_path):
    """train.shard=fsdp: the student's weights and optimizer state split over 2 processes (FSDP2 on
    gloo) train like 1 process with the whole batch; the checkpoint holds the whole model and
    optimizer state, and loads without FSDP."""
    pytest.importorskip("transformers")
    from distill.core.checkpoint import load_training_state
    from distill.training.config import OptimizerConfig
    from distill.training.optim import make_optimizer

    rank0, rank1 = torchrun("lm_fsdp", tmp_path / "two", 8)
    job = _job()
    one = job.lm(tmp_path / "one", 8)
    for run in ("topk", "ce"):
        assert rank0[run]["history"] == rank1[run]["history"], run
        assert rank0[run]["weights"] == rank1[run]["weights"], run  # both handed back the whole model
        assert rank0[run]["sharded"] == ["_StepLoss"] and one[run]["sharded"] == []  # FSDP in 2 processes only
        assert rank0[run]["returned"] == "LlamaForCausalLM"  # handed back whole, not as FSDP shards
        assert_same_run(rank0[run], one[run], val_size=1)
    from lm_helpers import make_llama, make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    fresh = make_llama(tmp_path / "fresh", tok, layers=1, seed=7)
    optimizer = make_optimizer(fresh, type("T", (), {"optimizer": OptimizerConfig(lr=5e-4)})())
    state = load_training_state(tmp_path / "two" / "lm-topk" / "last.safetensors", model=fresh,
                                optimizer=optimizer, scheduler=None)
    assert state["step"] == 4 and job.weights_hash(fresh) == rank0["topk"]["weights"]
    resumed = torchrun("lm_fsdp_resume", tmp_path / "resumed", 8)[0]  # stopped after step 2, resumed sharded
    for run in ("topk", "ce"):
        assert resumed[run]["stopped"] and not rank0[run]["stopped"]
        assert resumed[run]["weights"] == rank0[run]["weights"], run
        assert resumed[run]["history"] == rank0[run]["history"], run
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert len(moments) == len(list(fresh.parameters())) and all(m.abs().sum() > 0 for m in moments)
