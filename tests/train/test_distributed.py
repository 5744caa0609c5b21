"""Two CPU processes (gloo) with the distributed P x K sampler and gathered embeddings train the same model
as one process on the same global batches."""

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from deepmetric.config import resolve_config
from deepmetric.io import load_weights, save_weights
from deepmetric.models import build_embedder
from deepmetric.samplers import DistributedPKSampler, PKSampler
from deepmetric.train.distributed import cleanup, init_distributed
from deepmetric.train.trainer import Trainer

CLASSES_PER_RANK, SAMPLES_PER_CLASS, STEPS, WORLD = 2, 3, 4, 2


class Vectors(torch.utils.data.Dataset):
    """60 six-dimensional vectors of 10 classes: class mean plus noise."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.labels = np.repeat(np.arange(10), 6)
        means = rng.normal(size=(10, 6))
        self.vectors = (means[self.labels] + 0.7 * rng.normal(size=(60, 6))).astype(np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.from_numpy(self.vectors[index]), int(self.labels[index])


def make_config(output_dir, loss, steps):
    return resolve_config({
        "output_dir": str(output_dir), "device": "cpu", "seed": 1,
        "data": {"train": {"name": "digits"}, "num_workers": 0},
        "model": {"backbone": {"name": "mlp", "args": {"input_dim": 6}}},
        "loss": loss, "miner": {"name": "batch_hard"} if loss["name"] == "triplet" else None,
        "optimizer": {"name": "sgd", "args": {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.0}},
        "scheduler": {"name": "constant"},
        "train": {"steps": max(steps, 1), "progress": False, "tensorboard": False, "eval_every": 1000,
                  "checkpoint_every": 1000},
    })


def run(output_dir, loss, sampler, context=None, steps=STEPS):
    torch.manual_seed(0)
    model = build_embedder({"backbone": {"name": "mlp", "args": {"input_dim": 6}}, "embedding_dim": 4,
                            "neck": {"batch_norm": False}})
    from deepmetric import registry

    loss_module = registry.build(loss, "loss", embedding_dim=4, num_classes=10)
    config = make_config(output_dir, loss, steps)
    miner = registry.build(config["miner"], "miner") if config["miner"] else None
    trainer = Trainer(config, model=model, loss=loss_module, train_dataset=Vectors(), batch_sampler=sampler,
                      miner=miner, device=torch.device("cpu"), context=context)
    if steps:
        trainer.fit()
    return {**{f"model.{k}": v for k, v in model.state_dict().items()},
            **{f"loss.{k}": v for k, v in loss_module.state_dict().items()}}


LOSSES = {
    "triplet_gathered": {"name": "triplet", "args": {"margin": 0.2}},  # a pair/triplet loss on the global batch
    "proxy_anchor_centres": {"name": "proxy_anchor", "args": {}},  # class centres: their gradient rescaled
}


def worker(rank, port, output_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = init_distributed(torch.device("cpu"))
    try:
        for key, loss in LOSSES.items():
            sampler = DistributedPKSampler(Vectors().labels, classes_per_batch=CLASSES_PER_RANK,
                                           samples_per_class=SAMPLES_PER_CLASS, seed=1)
            state = run(output_dir / key, loss, sampler, context)
            if rank == 0:
                save_weights(output_dir / f"{key}.safetensors", state)
    finally:
        cleanup()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    # One spawn for both losses: starting the processes costs more than the training.
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    for key, loss in LOSSES.items():
        distributed = load_weights(tmp_path / f"{key}.safetensors")
        sampler = PKSampler(Vectors().labels, classes_per_batch=CLASSES_PER_RANK * WORLD,
                            samples_per_class=SAMPLES_PER_CLASS, seed=1)
        single = run(tmp_path / f"single_{key}", loss, sampler)
        untrained = run(tmp_path / f"untrained_{key}", loss, sampler, steps=0)
        assert distributed.keys() == single.keys()
        for name, value in single.items():
            torch.testing.assert_close(distributed[name], value, rtol=1e-5, atol=1e-6, msg=f"{key}: {name}")
        # The comparison is not vacuous: training moved the weights.
        assert not torch.allclose(single["model.neck.linear.weight"], untrained["model.neck.linear.weight"])
