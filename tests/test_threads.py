"""The CPU threads a job runs with: a choice already made is kept, else the physical cores per process."""

from __future__ import annotations

import pytest
import torch

from distill.core import threads


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_CHOSEN", {})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield
    torch.set_num_threads(before)


def test_the_physical_cores_are_shared_among_the_processes_of_this_machine(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)  # 8 logical CPUs, 2 per core
    torch.set_num_threads(8)  # torch's start value: one per logical CPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    chosen = threads.choose_threads()
    assert chosen["threads"] == 2 and torch.get_num_threads() == 2
    assert "shared by 2 processes" in threads.threads_line(chosen)


def test_a_number_set_before_the_job_is_kept_and_said(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    torch.set_num_threads(3)
    chosen = threads.choose_threads()
    assert (chosen["threads"], chosen["why"]) == (3, "torch.set_num_threads, as set before the job")
    assert torch.get_num_threads() == 3


def test_omp_num_threads_is_honoured(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert threads.threads_line(threads.choose_threads()) == "Ran with 1 CPU thread (OMP_NUM_THREADS=1)."


def test_physical_cores_never_exceed_the_cpus_this_process_may_use(monkeypatch):
    import psutil

    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 64 if logical else 32)
    assert threads.physical_cores() == 1  # 2 allowed CPUs of a 2-way SMT machine: one core


def test_a_build_that_starts_at_the_physical_cores_is_not_said_to_be_set_by_the_user(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    torch.set_num_threads(4)  # some torch builds start at one thread per physical core
    chosen = threads.choose_threads()
    assert chosen["threads"] == 4 and chosen["why"].startswith("the physical cores")
