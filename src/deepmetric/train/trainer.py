"""The training loop: batches from a P x K sampler -> embeddings -> [miner] -> loss -> optimizer step, with
periodic evaluation on held-out classes, best/last checkpoints, exact resume, logs and a clean Ctrl-C.

It reads top to bottom: ``fit`` runs ``_train_step`` until the step budget is spent; everything that makes a
run resumable (sampler position, RNGs, optimizer, scheduler, loss/miner state) lives in ``_state_dict``. What a
step computes is ``train.computation``, the resumable batches ``train.data``, the schedule sized to a time
budget ``train.budget``, the logs ``train.logs`` and the device and out-of-memory handling ``train.device``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepmetric.train.budget import BudgetPlanner
from deepmetric.train.checkpoint import (
    MODEL_DIR,
    load_checkpoint_state,
    load_module_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from deepmetric.train.computation import LossComputation
from deepmetric.train.data import SeededBatches, SeededDataset, batch_transform_of
from deepmetric.train.device import (
    TrainingOutOfMemory,
    batch_size_of,
    is_out_of_memory,
    out_of_memory_message,
    resolve_device,
)
from deepmetric.train.distributed import DistributedContext
from deepmetric.train.logs import CsvLog, tensorboard_writer
from deepmetric.train.schedules import SchedulePlan

log = logging.getLogger(__name__)


@dataclass
class TrainProgress:
    """Counters that say where training is; all of it goes into the checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_seconds: float = 0.0
    sampler_epoch_state: Any = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns: where the model is, how far it got, the last and best metrics."""

    output_dir: Path
    model_dir: Path
    steps: int
    interrupted: bool
    metrics: dict[str, float]
    best_metric: float | None
    best_step: int | None
    seconds: float


class Trainer:
    """Train ``model`` with ``loss`` on batches from ``batch_sampler`` over ``train_dataset``.

    Args:
        config: the resolved experiment config (``deepmetric.config.load_config``); its ``train``,
            ``optimizer``, ``scheduler``, ``eval`` and ``seed`` sections drive the loop, and it is saved
            beside every checkpoint.
        model: an ``Embedder`` (needs ``save(model_dir)``).
        loss: a loss module; if it sets ``has_class_centres`` its parameters get ``train.class_centre_lr``.
        train_dataset: a data set of ``(image, label)`` items (``(first, second, same)`` in pairs mode).
        batch_sampler: yields lists of indices (e.g. ``PKSampler``); ``set_epoch`` and ``state_dict`` are
            used when present.
        miner: optional miner called on each batch.
        eval_dataset: held-out classes for periodic evaluation (optional): ``(image, label)`` items, a ``labels``
            attribute, and optionally ``is_query`` / ``is_gallery`` flags per item.
        evaluate: ``(embeddings, labels, **flags) -> dict[str, float]``, called with the data set's
            ``is_query`` / ``is_gallery`` flags when it has them; must contain ``config["eval"]
            ["primary_metric"]`` (higher is better).
        device: where to train; default from ``config["device"]``.
        context: the distributed context (single process by default).
        step_callbacks: called as ``callback(trainer)`` after each optimizer step (tests, custom logs).
        min_steps: with ``train.max_minutes``, train at least this many steps even if the budget runs out.
        choose_threads: with ``train.max_minutes`` on a CPU, time a few steps with 2 and with 1 compute threads
            and keep the faster (see ``train.budget``).
        raw_features: give the loss the embeddings before L2 normalisation (see ``LossComputation``).

    With ``train.max_minutes`` the schedule is sized to the steps that fit in it (at most ``train.steps``),
    from the step time measured after a few steps. Image data sets that can (``uint8_item`` and
    ``batch_transform``) are augmented a whole batch at a time after collation; those already in memory
    are loaded in the main process.
    """

    def __init__(self, config: Mapping[str, Any], *, model: nn.Module, loss: nn.Module,
                 train_dataset: torch.utils.data.Dataset, batch_sampler: Any, miner: nn.Module | None = None,
                 eval_dataset: torch.utils.data.Dataset | None = None,
                 evaluate: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
                 device: torch.device | None = None, context: DistributedContext | None = None,
                 step_callbacks: list[Callable[[Trainer], None]] | None = None, min_steps: int = 0,
                 choose_threads: bool = False, raw_features: bool = False) -> None:
        from deepmetric import registry
        from deepmetric.config import dump_config

        self.config = dict(config)
        self.settings = dict(config["train"])
        self.context = context or DistributedContext()
        self.device = device or resolve_device(config.get("device", "auto"))
        self.output_dir = Path(config["output_dir"])
        self.config_text = dump_config(config)
        self.model = model.to(self.device)
        self.loss = loss.to(self.device)
        self.miner = miner.to(self.device) if miner is not None else None
        self.train_dataset = train_dataset
        if eval_dataset is not None and getattr(eval_dataset, "labels", None) is None:
            raise ValueError(f"the evaluation data set {type(eval_dataset).__name__} has no 'labels' attribute; "
                             f"periodic evaluation needs one label per item")
        self.eval_dataset = eval_dataset
        self.evaluate_fn = evaluate
        self.batch_sampler = batch_sampler
        self.step_callbacks = list(step_callbacks or [])
        self.progress = TrainProgress()
        self.on_cuda = self.device.type == "cuda"
        self.mixed_precision = bool(self.settings["mixed_precision"]) and self.on_cuda
        if self.settings["channels_last"] and self.on_cuda:
            self.model.to(memory_format=torch.channels_last)

        self.computation = LossComputation(self.model, self.loss, miner=self.miner, mode=self.settings["mode"],
                                           mixed_precision=self.mixed_precision,
                                           world_size=self.context.world_size,
                                           memory_weight=self.settings["memory_weight"], raw_features=raw_features)
        self.step_module: nn.Module = self.computation
        if self.context.enabled:
            ids = [self.device.index or 0] if self.on_cuda else None
            self.step_module = nn.parallel.DistributedDataParallel(self.computation, device_ids=ids)

        optimizer_factory = registry.build(config["optimizer"], "optimizer")
        self.optimizer = optimizer_factory.create(self._param_groups(optimizer_factory.lr))
        schedule_factory = registry.build(config["scheduler"], "scheduler")
        self.schedule_plan = SchedulePlan(int(self.settings["steps"]))
        self.scheduler = schedule_factory.create(self.optimizer, self.schedule_plan)
        self.planner: BudgetPlanner | None = None
        if self.settings["max_minutes"] is not None:
            self.planner = BudgetPlanner(self.schedule_plan, budget_seconds=self.settings["max_minutes"] * 60,
                                         max_steps=int(self.settings["steps"]),
                                         configured_warmup=int(getattr(schedule_factory, "warmup_steps", 0)),
                                         min_steps=min_steps, choose_threads=choose_threads and not self.on_cuda)
        self.min_steps = int(min_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.mixed_precision)

        self.seeded_batches = SeededBatches(batch_sampler, seed=config["seed"], rank=self.context.rank)
        self.batch_transform = batch_transform_of(train_dataset) if self.settings["mode"] == "labels" else None
        workers = int(config["data"]["num_workers"])
        if workers > 0 and self.batch_transform is not None and getattr(train_dataset, "in_memory", False):
            # Items are slices of one array and augmentation runs on the batch: worker processes would only
            # take cores from the compute threads.
            log.info("the training set is in memory and augmented per batch: loading in the main process "
                     "(data.num_workers=%d not needed)", workers)
            workers = 0
        self.loader = torch.utils.data.DataLoader(
            SeededDataset(train_dataset, batched=self.batch_transform is not None),
            batch_sampler=self.seeded_batches, num_workers=workers,
            # Workers keep their own copy of the data set: one that redraws itself each epoch (pairs) needs
            # fresh workers every epoch.
            persistent_workers=workers > 0 and not hasattr(train_dataset, "set_epoch"), pin_memory=self.on_cuda,
            generator=torch.Generator())  # a private generator: loaders must not consume the global RNG
        self._stop_requested = False
        self._last_saved_step: int | None = None
        self.train_log = CsvLog(self.output_dir / "train_log.csv",
                                ["step", "epoch", "loss", "lr", "grad_norm", "seconds"])
        self.eval_log: CsvLog | None = None
        self.last_metrics: dict[str, float] = {}

    # -------------------------------------------------------------------------------- set-up helpers

    def _param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                                         "name": "model"}]
        loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        if loss_params:
            lr = base_lr
            if getattr(self.loss, "has_class_centres", False) and self.settings["class_centre_lr"] is not None:
                lr = float(self.settings["class_centre_lr"])
            groups.append({"params": loss_params, "lr": lr, "name": "loss"})
        return groups

    # -------------------------------------------------------------------------------- state

    def _state_dict(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "step": progress.step, "epoch": progress.epoch, "batch_in_epoch": progress.batch_in_epoch,
            "best_metric": progress.best_metric, "best_step": progress.best_step,
            "elapsed_seconds": progress.elapsed_seconds, "sampler_epoch_state": progress.sampler_epoch_state,
            "schedule_steps": self.schedule_plan.total_steps, "schedule_warmup": self.schedule_plan.warmup_steps,
            "history": progress.history, "world_size": self.context.world_size,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "loss": self.loss.state_dict(), "miner": self.miner.state_dict() if self.miner is not None else {},
        }

    def _load_state_dict(self, state: Mapping[str, Any], model_dir: Path) -> None:
        from deepmetric.models import Embedder

        saved = Embedder.load(model_dir, device=self.device)
        load_module_state(self.model, saved.state_dict(), "model")
        load_module_state(self.loss, state["loss"], "loss")
        if self.miner is not None:
            load_module_state(self.miner, state["miner"], "miner")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.progress = TrainProgress(
            step=int(state["step"]), epoch=int(state["epoch"]), batch_in_epoch=int(state["batch_in_epoch"]),
            best_metric=state["best_metric"], best_step=state["best_step"],
            elapsed_seconds=float(state["elapsed_seconds"]), sampler_epoch_state=state["sampler_epoch_state"],
            history=list(state.get("history", [])))
        if state.get("schedule_steps") is not None:  # a schedule sized to a time budget keeps its length
            self.schedule_plan.total_steps = int(state["schedule_steps"])
            self.schedule_plan.warmup_steps = state.get("schedule_warmup")
        if self.progress.sampler_epoch_state is not None and hasattr(self.batch_sampler, "load_state_dict"):
            self.batch_sampler.load_state_dict(self.progress.sampler_epoch_state)

    def resume(self, checkpoint: str | Path) -> None:
        """Continue from a checkpoint folder written by this trainer (``output_dir/checkpoints/last``)."""
        checkpoint = Path(checkpoint)
        state = load_checkpoint_state(checkpoint)
        if int(state.get("world_size", 1)) != self.context.world_size:
            raise ValueError(f"checkpoint {checkpoint} was written by {state.get('world_size')} processes; "
                             f"resume it with the same number (now {self.context.world_size})")
        self._load_state_dict(state, checkpoint / MODEL_DIR)
        self.train_log.truncate_after(self.progress.step)
        if self.eval_log_path.is_file():
            self._eval_log().truncate_after(self.progress.step)
        log.info("resumed from %s at step %d", checkpoint, self.progress.step)

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def eval_log_path(self) -> Path:
        return self.output_dir / "eval_log.csv"

    def save_checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` (model folder + training state + config), atomically."""
        if name == "last":
            self._last_saved_step = self.progress.step
        return save_checkpoint(self.checkpoint_dir / name, model=self.model, state=self._state_dict(),
                               config_text=self.config_text)

    # -------------------------------------------------------------------------------- the loop

    def _batches(self) -> Iterator[Any]:
        """Endless batches, epoch after epoch, counting the position for resume."""
        resumed = self.progress.batch_in_epoch > 0
        while True:
            for part in (self.batch_sampler, self.train_dataset):
                if hasattr(part, "set_epoch"):
                    part.set_epoch(self.progress.epoch)
            if not resumed and hasattr(self.batch_sampler, "state_dict"):
                self.progress.sampler_epoch_state = self.batch_sampler.state_dict()
            resumed = False
            self.seeded_batches.epoch = self.progress.epoch
            self.seeded_batches.skip = self.progress.batch_in_epoch
            empty = True
            for batch in self.loader:
                empty = False
                self.progress.batch_in_epoch += 1
                yield batch
            if empty and self.progress.batch_in_epoch == 0:
                raise ValueError("the batch sampler produced no batches: the training set has too few classes or "
                                 "samples for sampler.args (classes_per_batch x samples_per_class)")
            self.progress.epoch += 1
            self.progress.batch_in_epoch = 0

    def _to_device(self, batch: Any) -> list[torch.Tensor]:
        if self.batch_transform is not None:  # (uint8 images, labels, seeds) -> (augmented images, labels)
            images, labels, seeds = batch
            images = self.batch_transform(torch.as_tensor(images).to(self.device, non_blocking=True),
                                          seed=int(seeds[0]))
            batch = (images, labels)
        out = []
        for part in batch:
            tensor = torch.as_tensor(part).to(self.device, non_blocking=True)
            if self.on_cuda and self.settings["channels_last"] and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            out.append(tensor)
        return out

    def _train_step(self, batches: Iterator[Any]) -> tuple[float, float]:
        """One optimizer step over ``accumulation_steps`` micro-batches; returns (loss, gradient norm)."""
        accumulation = int(self.settings["accumulation_steps"])
        self.computation.memory_active = self.progress.step >= self.settings["memory_start_step"]
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accumulation):
            batch = self._to_device(next(batches))
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last or not self.context.enabled else self.step_module.no_sync()
            try:
                with sync:
                    value = self.step_module(*batch) / accumulation
                    self.scaler.scale(value).backward()
            except (RuntimeError, MemoryError) as error:
                if is_out_of_memory(error):
                    raise TrainingOutOfMemory(out_of_memory_message(batch_size_of(batch), self.device)) from error
                raise
            if not torch.isfinite(value):
                raise FloatingPointError(f"the loss became {value.item()} at step {self.progress.step}; lower "
                                         f"optimizer.args.lr or set train.grad_clip_norm (e.g. 5.0)")
            total += float(value.detach())
        self.scaler.unscale_(self.optimizer)
        if self.computation.gather:
            for param in self.loss.parameters():
                if param.grad is not None:
                    param.grad.div_(self.context.world_size)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        clip = self.settings["grad_clip_norm"]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return total, float(norm)

    def _agree_on_steps(self, total_steps: int) -> int:
        """Every process trains as many steps as rank 0 planned (their clocks differ)."""
        if not self.context.enabled:
            return total_steps
        value = torch.tensor([total_steps, self.schedule_plan.warmup_steps or 0], dtype=torch.int64,
                             device=self.device if self.on_cuda else "cpu")
        torch.distributed.broadcast(value, src=0)
        self.schedule_plan.total_steps = int(value[0])
        self.schedule_plan.warmup_steps = int(value[1]) or None
        return self.schedule_plan.total_steps

    def _eval_log(self) -> CsvLog:
        if self.eval_log is None:
            fields = ["step"] + sorted(self.last_metrics) if self.last_metrics else ["step"]
            if self.eval_log_path.is_file():
                with open(self.eval_log_path, newline="") as handle:
                    fields = next(csv.reader(handle), fields)
            self.eval_log = CsvLog(self.eval_log_path, fields)
        return self.eval_log

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current model on the held-out data set (empty without one)."""
        if self.eval_dataset is None or self.evaluate_fn is None:
            return {}
        limit = self.config["data"].get("max_eval_samples")
        rows = np.arange(len(self.eval_dataset))
        if limit is not None and limit < len(rows):
            rows = np.sort(np.random.default_rng(self.config["seed"]).permutation(len(rows))[:limit])
        subset = torch.utils.data.Subset(self.eval_dataset, rows.tolist())
        embeddings = self.model.encode(subset, batch_size=self.config["data"]["eval_batch_size"], device=self.device,
                                       mixed_precision=self.mixed_precision)
        if len(embeddings) == 0:
            raise ValueError(f"cannot evaluate on an empty data set ({type(self.eval_dataset).__name__} has no items)")
        # A table's is_query / is_gallery columns say which rows are queries and which the gallery.
        flags = {name: np.asarray(getattr(self.eval_dataset, name))[rows] for name in ("is_query", "is_gallery")
                 if getattr(self.eval_dataset, name, None) is not None}
        labels = np.asarray(self.eval_dataset.labels)[rows]
        metrics = {k: float(v) for k, v in self.evaluate_fn(embeddings, labels, **flags).items()}
        primary = self.config["eval"]["primary_metric"]
        if primary not in metrics:
            raise ValueError(f"eval.primary_metric {primary!r} is not among the computed metrics {sorted(metrics)}")
        return metrics

    def _after_eval(self, metrics: dict[str, float], writer: Any) -> None:
        self.last_metrics = metrics
        self.progress.history.append({"step": self.progress.step, **metrics})
        self._eval_log().append({"step": self.progress.step, **metrics})
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(f"eval/{key}", value, self.progress.step)
        score = metrics[self.config["eval"]["primary_metric"]]
        if self.progress.best_metric is None or score > self.progress.best_metric:
            self.progress.best_metric, self.progress.best_step = score, self.progress.step
            self.save_checkpoint("best")

    @contextlib.contextmanager
    def _sigint_finishes_step(self) -> Iterator[None]:
        """First Ctrl-C: finish the current step, save, stop. A second one interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            self._stop_requested = True
            signal.signal(signal.SIGINT, previous)
            log.warning("Ctrl-C: finishing the current step, saving a checkpoint, then stopping "
                        "(press Ctrl-C again to abort without saving)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def request_stop(self) -> None:
        """Stop after the current step with a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    def fit(self) -> TrainResult:
        """Train until ``train.steps`` (or ``train.max_minutes``) and return where everything is."""
        settings = self.settings
        main = self.context.is_main
        total_steps = self.schedule_plan.total_steps
        budget = settings["max_minutes"] * 60 if settings["max_minutes"] is not None else math.inf
        writer = tensorboard_writer(self.output_dir / "tensorboard") if main and settings["tensorboard"] else None
        progress_bar = None
        if main and settings["progress"]:
            from tqdm.auto import tqdm

            progress_bar = tqdm(total=total_steps, initial=self.progress.step, desc="train", unit="step",
                                dynamic_ncols=True)
        self.computation.train()
        batches = self._batches()
        started = time.perf_counter() - self.progress.elapsed_seconds
        running_loss: float | None = None
        try:
            with self._sigint_finishes_step():
                while self.progress.step < total_steps and not self._stop_requested:
                    loss_value, grad_norm = self._train_step(batches)
                    self.progress.step += 1
                    self.progress.elapsed_seconds = time.perf_counter() - started
                    step = self.progress.step
                    if self.planner is not None and main:
                        self.planner.after_step(step, self.progress.elapsed_seconds)
                        total_steps = self._agree_on_steps(self.schedule_plan.total_steps)
                        if progress_bar is not None and progress_bar.total != total_steps:
                            progress_bar.total = total_steps
                            progress_bar.refresh()
                    elif self.planner is not None:
                        total_steps = self._agree_on_steps(self.schedule_plan.total_steps)
                    running_loss = loss_value if running_loss is None else 0.9 * running_loss + 0.1 * loss_value
                    if main and (step % settings["log_every"] == 0 or step == total_steps):
                        lr = self.optimizer.param_groups[0]["lr"]
                        self.train_log.append({"step": step, "epoch": self.progress.epoch, "loss": f"{loss_value:.6g}",
                                               "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.6g}",
                                               "seconds": f"{self.progress.elapsed_seconds:.2f}"})
                        if writer is not None:
                            writer.add_scalar("train/loss", loss_value, step)
                            writer.add_scalar("train/lr", lr, step)
                    if progress_bar is not None:
                        progress_bar.update(1)
                        progress_bar.set_postfix(loss=f"{running_loss:.4f}", epoch=self.progress.epoch)
                    for callback in self.step_callbacks:
                        callback(self)
                    out_of_time = self.progress.elapsed_seconds >= budget and step >= self.min_steps
                    finished = step >= total_steps or out_of_time
                    if main and (step % settings["eval_every"] == 0 or finished or self._stop_requested):
                        metrics = self.evaluate()
                        if metrics:
                            self._after_eval(metrics, writer)
                            if progress_bar is not None:
                                progress_bar.write(f"step {step}: " + ", ".join(
                                    f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
                    if main and (step % settings["checkpoint_every"] == 0 or finished or self._stop_requested):
                        self.save_checkpoint("last")
                    if out_of_time:
                        log.info("train.max_minutes reached at step %d", step)
                        break
        finally:
            if progress_bar is not None:
                progress_bar.close()
            if writer is not None:
                writer.close()
        return self._finish(interrupted=self._stop_requested)

    def _finish(self, *, interrupted: bool) -> TrainResult:
        """Publish the best checkpoint's model (or the last one without evaluation) as ``output_dir/model``."""
        import shutil

        from deepmetric.io import atomic_directory, write_json
        from deepmetric.models.embedder import is_model_folder

        model_dir = self.output_dir / "model"
        if self.context.is_main:
            if self._last_saved_step != self.progress.step:
                self.save_checkpoint("last")
            source = self.checkpoint_dir / ("best" if self.progress.best_step is not None else "last") / MODEL_DIR
            with atomic_directory(model_dir, kind="model", legacy=is_model_folder) as tmp:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
            write_json(self.output_dir / "metrics.json", {
                "step": self.progress.step, "interrupted": interrupted, "last": self.last_metrics,
                "best_step": self.progress.best_step, "best_metric": self.progress.best_metric,
                "primary_metric": self.config["eval"]["primary_metric"], "history": self.progress.history,
                "seconds": self.progress.elapsed_seconds})
        return TrainResult(output_dir=self.output_dir, model_dir=model_dir, steps=self.progress.step,
                           interrupted=interrupted, metrics=self.last_metrics, best_metric=self.progress.best_metric,
                           best_step=self.progress.best_step, seconds=self.progress.elapsed_seconds)
