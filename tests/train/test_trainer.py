import json
import os
import signal

import numpy as np
import pytest
import torch

from deepmetric.config import load_config
from deepmetric.io import FOLDER_MARKER, load_weights
from deepmetric.train.checkpoint import load_checkpoint_state
from deepmetric.train.data import SeededBatches, SeededDataset
from deepmetric.train.device import TrainingOutOfMemory
from deepmetric.train.pipelines import build_experiment, retrieval_metrics, train
from deepmetric.train.trainer import Trainer


def weights(folder):
    return load_weights(folder / "model" / "model.safetensors")


def stop_at(step):
    def callback(trainer):
        if trainer.progress.step == step:
            trainer.request_stop()
    return callback


@pytest.mark.parametrize(("loss", "miner", "accumulation"), [
    ({"name": "triplet", "args": {"margin": 0.2}}, {"name": "batch_hard"}, 1),
    ({"name": "proxy_anchor", "args": {}}, None, 2),
    ({"name": "contrastive", "args": {}}, {"name": "cross_batch_memory", "args": {"memory_size": 48}}, 1),
])
def test_resume_is_exact(tmp_path, digits_config, loss, miner, accumulation):
    """N steps straight == N/2 steps, stop, resume, N/2 steps: identical weights, optimizer and loss state."""
    base = digits_config(accumulation_steps=accumulation, class_centre_lr=0.01, grad_clip_norm=1.0,
                         memory_start_step=2)
    base.update(loss=loss, miner=miner)
    straight = load_config(base, [f"output_dir={tmp_path / 'straight'}"])
    split = load_config(base, [f"output_dir={tmp_path / 'split'}"])
    first = train(straight)
    half = train(split, step_callbacks=[stop_at(3)])
    assert half.interrupted and half.steps == 3
    state = load_checkpoint_state(tmp_path / "split" / "checkpoints" / "last")
    assert state["step"] == 3 and state["epoch"] * 2 + state["batch_in_epoch"] == 3 * accumulation
    second = train(split, resume=True)
    assert first.steps == second.steps == 6 and not second.interrupted
    a = weights(tmp_path / "straight" / "checkpoints" / "last")
    b = weights(tmp_path / "split" / "checkpoints" / "last")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = load_checkpoint_state(tmp_path / "straight" / "checkpoints" / "last")
    sb = load_checkpoint_state(tmp_path / "split" / "checkpoints" / "last")
    for key in sa["loss"]:
        assert torch.equal(sa["loss"][key], sb["loss"][key]), key
    for key in sa["miner"]:
        assert torch.equal(sa["miner"][key], sb["miner"][key]), key
    for group_a, group_b in zip(sa["optimizer"]["param_groups"], sb["optimizer"]["param_groups"]):
        assert group_a["lr"] == group_b["lr"]
    log_rows = (tmp_path / "split" / "train_log.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in log_rows[1:]] == [str(i) for i in range(1, 7)]


def test_class_centres_get_their_own_learning_rate(tmp_path, digits_config):
    config = load_config(digits_config(class_centre_lr=0.5),
                         ["loss.name=proxy_anchor", "loss.args={}", "miner=null", "optimizer.args.lr=0.001"])
    experiment = build_experiment(config)
    trainer = Trainer(config, model=experiment.model, loss=experiment.loss, train_dataset=experiment.train_dataset,
                      batch_sampler=experiment.batch_sampler)
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert groups["loss"]["initial_lr"] == 0.5 and groups["model"]["initial_lr"] == 0.001
    assert {id(p) for p in groups["loss"]["params"]} == {id(p) for p in experiment.loss.parameters()}


def test_checkpoint_holds_no_pickles_and_resume_refuses_to_mix_runs(tmp_path, digits_config):
    config = load_config(digits_config(steps=2))
    train(config)
    last = tmp_path / "run" / "checkpoints" / "last"
    names = sorted(str(p.relative_to(last)) for p in last.rglob("*") if p.is_file() and p.name != FOLDER_MARKER)
    assert names == ["experiment.yaml", "model/config.json", "model/model.safetensors",
                     "training_state.json", "training_state.safetensors"]
    meta = json.loads((last / "training_state.json").read_text())
    assert meta["state"]["step"] == 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    with pytest.raises(FileExistsError, match="--resume"):
        train(config)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(load_config(digits_config(), [f"output_dir={tmp_path / 'other'}"]), resume=True)


def test_ctrl_c_finishes_the_step_and_saves(tmp_path, digits_config):
    def interrupt(trainer):
        if trainer.progress.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when run as a background job
    result = train(load_config(digits_config()), step_callbacks=[interrupt])
    assert result.interrupted and result.steps == 2
    assert load_checkpoint_state(tmp_path / "run" / "checkpoints" / "last")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handler is gone again


def test_out_of_memory_says_to_use_a_smaller_batch(tmp_path, digits_config):
    config = load_config(digits_config())
    experiment = build_experiment(config)

    def explode(images):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    experiment.model.forward = explode
    trainer = Trainer(config, model=experiment.model, loss=experiment.loss, train_dataset=experiment.train_dataset,
                      batch_sampler=experiment.batch_sampler)
    with pytest.raises(TrainingOutOfMemory, match=r"batch of 16 items.*classes_per_batch"):
        trainer.fit()


class NoisyItems(torch.utils.data.Dataset):
    """Items drawn from the global torch RNG, like a random augmentation."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.rand(3) + index, index % 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_seeded_items_do_not_depend_on_workers_or_skipping(num_workers):
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]

    def load(skip):
        sampler = SeededBatches(batches, seed=5)
        sampler.skip = skip
        loader = torch.utils.data.DataLoader(SeededDataset(NoisyItems()), batch_sampler=sampler,
                                             num_workers=num_workers, generator=torch.Generator())
        return [items for items, _ in loader]

    full, resumed = load(0), load(2)
    torch.manual_seed(0)
    assert len(full) == 3 and len(resumed) == 1
    assert torch.equal(full[2], resumed[0])
    assert not torch.equal(full[0], full[1] - 4)  # different seeds per batch


def test_empty_training_set_is_named(tmp_path, digits_config):
    config = load_config(digits_config(), ["data.train.args.classes=[]"])
    with pytest.raises(ValueError, match=r"classes|empty"):
        train(config)


def test_periodic_evaluation_encodes_with_the_model_and_honours_query_and_gallery_flags(tmp_path, digits_config):
    """The trainer's evaluation is ``Embedder.encode`` + the retrieval evaluator on the table's is_query rows
    against its is_gallery rows; it differs from every row against every other."""
    from PIL import Image

    from deepmetric import registry

    rng = np.random.default_rng(1)
    rows = ["path,label,is_query,is_gallery"]
    for i in range(36):
        label = i % 4
        pixels = np.clip(rng.normal(60 * label, 40, size=(16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},{int(i % 3 != 0)},{int(i % 3 != 1)}")
    (tmp_path / "eval.csv").write_text("\n".join(rows) + "\n")
    config = load_config(digits_config())
    config["data"]["eval"] = {"name": "csv", "args": {"table": str(tmp_path / "eval.csv"), "image_size": 16,
                                                      "channels": 1}}
    experiment = build_experiment(config)
    trainer = Trainer(config, model=experiment.model, loss=experiment.loss, train_dataset=experiment.train_dataset,
                      batch_sampler=experiment.batch_sampler, miner=experiment.miner,
                      eval_dataset=experiment.eval_dataset, evaluate=retrieval_metrics([1, 5]))
    metrics = trainer.evaluate()
    dataset = registry.build(config["data"]["eval"], "dataset")
    embeddings = experiment.model.encode(dataset, batch_size=7)
    evaluator = retrieval_metrics([1, 5])
    expected = evaluator(embeddings, dataset.labels, is_query=dataset.is_query, is_gallery=dataset.is_gallery)
    assert metrics == pytest.approx(expected)
    assert metrics["retrieval/num_queries"] == 24
    assert evaluator(embeddings, dataset.labels)["retrieval/num_queries"] == 36


def test_periodic_evaluation_keeps_the_best_checkpoint(tmp_path, digits_config):
    config = digits_config(eval_every=2)
    config["data"]["eval"] = {"name": "digits", "args": {"split": "test", "classes": "6-9", "image_size": 16}}
    result = train(load_config(config))
    rows = (tmp_path / "run" / "eval_log.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert "retrieval/map@r" in header and [row.split(",")[0] for row in rows[1:]] == ["2", "4", "6"]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = [entry["retrieval/map@r"] for entry in summary["history"]]
    assert summary["best_metric"] == max(history) == result.best_metric
    assert summary["best_step"] == 2 * (int(np.argmax(history)) + 1)
    best = load_checkpoint_state(tmp_path / "run" / "checkpoints" / "best")
    assert best["step"] == summary["best_step"]
    published = load_weights(tmp_path / "run" / "model" / "model.safetensors")  # output_dir/model is the best
    best_weights = weights(tmp_path / "run" / "checkpoints" / "best")
    assert torch.equal(published["neck.linear.weight"], best_weights["neck.linear.weight"])


def test_loss_computation_mode_is_one_of_the_three_batch_kinds():
    from deepmetric.losses import ContrastiveLoss
    from deepmetric.train.computation import LossComputation

    model, loss = torch.nn.Linear(2, 2), ContrastiveLoss()
    assert LossComputation(model, loss, mode="pairs").mode == "pairs"
    with pytest.raises(ValueError, match=r"mode must be one of \[.*\], got 'pair'\. Did you mean 'pairs'"):
        LossComputation(model, loss, mode="pair")
    with pytest.raises(TypeError, match=r"mode must be one of .*got NoneType: None"):
        LossComputation(model, loss, mode=None)
