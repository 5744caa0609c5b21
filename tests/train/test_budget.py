"""train.max_minutes sizes the schedule to the steps that fit, from measured step times; the trainer augments
whole batches of uint8 items and keeps resume exact."""

import time

import numpy as np
import pytest
import torch

from deepmetric.config import load_config
from deepmetric.io import load_weights
from deepmetric.train.budget import BudgetPlanner, sized_warmup, steps_that_fit
from deepmetric.train.pipelines import train
from deepmetric.train.schedules import SchedulePlan


def test_steps_that_fit_and_the_sized_warmup():
    assert steps_that_fit(done=10, remaining_seconds=30.0, step_seconds=0.25, max_steps=10**6) == 130
    assert steps_that_fit(done=10, remaining_seconds=30.0, step_seconds=0.25, max_steps=50) == 50
    assert steps_that_fit(done=10, remaining_seconds=1.0, step_seconds=0.25, max_steps=10**6, min_steps=100) == 100
    assert steps_that_fit(done=10, remaining_seconds=-5.0, step_seconds=0.25, max_steps=10**6) == 11
    with pytest.raises(ValueError, match="step_seconds"):
        steps_that_fit(done=1, remaining_seconds=1.0, step_seconds=0.0, max_steps=10)
    assert sized_warmup(100, 2000) == 100 and sized_warmup(100, 300) == 30 and sized_warmup(100, 5) == 1


class FakeClock:
    """time.perf_counter that advances only when told: every training step then takes ``seconds``."""

    def __init__(self, seconds):
        self.now, self.seconds = 1000.0, seconds

    def __call__(self):
        return self.now

    def tick(self, _trainer=None):
        self.now += self.seconds


def test_planner_sizes_the_plan_then_checks_it_again(monkeypatch):
    clock = FakeClock(0.5)
    monkeypatch.setattr(time, "perf_counter", clock)
    plan = SchedulePlan(10**6)
    planner = BudgetPlanner(plan, budget_seconds=60.0, max_steps=10**6, configured_warmup=100)
    for step in range(1, 8):
        planner.after_step(step, elapsed_seconds=0.5 * step)
        clock.tick()
    assert plan.total_steps == 10**6 and not planner.sized  # 2 skipped + 6 timed steps are needed
    planner.after_step(8, elapsed_seconds=4.0)
    assert planner.sized and plan.total_steps == 8 + 112 and plan.warmup_steps == 12
    clock.seconds = 1.0  # steps got slower: 18 steps later (3 x 6) the mean since then shortens the plan
    for step in range(9, 27):
        clock.tick()
        planner.after_step(step, elapsed_seconds=4.0 + (step - 8) * 1.0)
        assert plan.total_steps == (120 if step < 26 else 26 + int(60 - 22))


def test_planner_keeps_the_faster_thread_count(monkeypatch):
    clock = FakeClock(1.0)
    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        planner = BudgetPlanner(SchedulePlan(10**6), budget_seconds=60.0, max_steps=10**6, configured_warmup=10,
                                choose_threads=True)
        assert torch.get_num_threads() == 2
        for step in range(1, 11):
            if torch.get_num_threads() == 1:
                clock.seconds = 0.4  # one thread is faster on these busy cores
            clock.tick()
            planner.after_step(step, elapsed_seconds=float(step))
        assert planner.threads == 1 and torch.get_num_threads() == 1 and not planner.sized
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
        kept = BudgetPlanner(SchedulePlan(10), budget_seconds=1.0, max_steps=10, configured_warmup=1,
                             choose_threads=True)
        assert kept.threads == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_max_minutes_sizes_the_schedule_so_the_rate_decays_by_the_end_of_the_budget(digits_config, monkeypatch):
    """Steps of 0.25 s on the fake clock and a budget of 30 s: the trainer measures the step time, sizes the
    cosine schedule to the 121 steps that fit (warm-up cut to a tenth), and ends there with the learning rate
    at its minimum, instead of stopping early in a schedule of train.steps = 100000."""
    clock = FakeClock(0.25)
    monkeypatch.setattr(time, "perf_counter", clock)
    config = load_config(digits_config(steps=100_000, max_minutes=0.5, log_every=1),
                         ["scheduler.args.warmup_steps=50", "scheduler.args.min_lr_ratio=0.01"])
    result = train(config, step_callbacks=[clock.tick])
    assert result.steps == 121
    rows = (config["output_dir"] + "/train_log.csv")
    lrs = np.loadtxt(rows, delimiter=",", skiprows=1, usecols=3)
    base = config["optimizer"]["args"]["lr"]
    # Row k logs the rate of the step after step k: the schedule ends exactly at its minimum.
    assert lrs[-1] == pytest.approx(0.01 * base, rel=1e-3)
    assert lrs[-2] == pytest.approx(base * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (120 - 12) / (121 - 12)))),
                                    rel=1e-3)
    assert lrs.max() == pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("loss", [{"name": "triplet", "args": {"margin": 0.2}}, {"name": "normalized_softmax"}])
def test_batch_augmented_training_resumes_exactly(tmp_path, digits_config, loss):
    """With training augmentations on, the trainer collates uint8 items and augments the batch under the
    batch's seed: stopping at step 3 and resuming gives the weights of an uninterrupted run."""
    from deepmetric.train.trainer import Trainer

    seen = []
    base = digits_config()
    base["data"]["train"]["args"]["augment"] = True
    base["data"]["num_workers"] = 2  # in memory: the trainer loads in the main process anyway
    base["loss"], base["miner"] = loss, None

    def watch(trainer: Trainer):
        seen.append(trainer.batch_transform is not None and trainer.loader.num_workers == 0)
        if trainer.progress.step == 3 and "split" in str(trainer.output_dir) and len(seen) < 5:
            trainer.request_stop()

    first = train(load_config(base, [f"output_dir={tmp_path / 'straight'}"]), step_callbacks=[watch])
    split = load_config(base, [f"output_dir={tmp_path / 'split'}"])
    train(split, step_callbacks=[watch])
    second = train(split, resume=True)
    assert all(seen) and first.steps == second.steps == 6
    a = load_weights(tmp_path / "straight" / "checkpoints" / "last" / "model" / "model.safetensors")
    b = load_weights(tmp_path / "split" / "checkpoints" / "last" / "model" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
