"""Finished batches go to a writer thread: in order, overlapping the next batch, failures kept apart."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import diffsampler.runs as runs
from diffsampler.handoff import BatchHandoff
from diffsampler.runs import RunConfig, execute, plan_run


def test_batches_arrive_in_order_as_cpu_float32_on_another_thread():
    got, threads = [], set()

    def keep(batch: int, x: torch.Tensor) -> None:
        got.append((batch, x.dtype, x.device.type, float(x[0])))
        threads.add(threading.current_thread().name)

    with BatchHandoff(keep) as handoff:
        for k in range(6):
            handoff.put(k, torch.full((3,), k, dtype=torch.float64))
    assert got == [(k, torch.float32, "cpu", float(k)) for k in range(6)]
    assert threads == {"diffsampler-writer"}


def test_writing_a_batch_overlaps_sampling_the_next(monkeypatch):
    """The callback for batch 0 waits until batch 1's noise is drawn: only possible if the
    sampling loop goes on while batch 0 is being written."""
    second_started = threading.Event()
    real = runs.seed_noise

    def noise(seeds, *args, **kwargs):
        if min(seeds) >= 2:
            second_started.set()
        return real(seeds, *args, **kwargs)

    monkeypatch.setattr(runs, "seed_noise", noise)
    overlapped = []

    def slow_writer(batch, x):
        if batch.index == 0:
            overlapped.append(second_started.wait(timeout=30))

    plan = plan_run(RunConfig(model="gmm", model_options={"shape": (2, 4, 4)}, nfe=3, seeds=range(4), batch=2))
    execute(plan, on_batch=slow_writer)
    assert overlapped == [True]
    # and the same samples as without the writer thread
    a, b = [], []
    execute(plan, on_batch=lambda batch, x: a.append(x.numpy()))
    execute(plan, on_batch=lambda batch, x: b.append(x.numpy()), overlap=False)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))


def test_a_failing_writer_stops_the_run_with_its_own_error():
    sampled = []

    class Full(OSError):
        pass

    def writer(batch, x):
        if batch == 1:
            raise Full("disk full")

    with pytest.raises(Full, match="disk full"), BatchHandoff(writer, depth=1) as handoff:
        for k in range(50):
            handoff.put(k, torch.zeros(1))
            sampled.append(k)
    assert len(sampled) < 50  # it stopped early instead of sampling everything in vain


def test_a_sampling_error_still_writes_the_finished_batches():
    written = []
    with pytest.raises(RuntimeError, match="batch 3"), BatchHandoff(lambda b, x: written.append(b)) as handoff:
        for k in range(5):
            if k == 3:
                raise RuntimeError("batch 3 went non-finite")
            handoff.put(k, torch.zeros(1))
    assert written == [0, 1, 2]
