"""PartialFC with the class centres sharded across processes: 2 and 3 gloo processes on loopback equal the
single-process full head (losses, embedding and centre gradients, centre updates) for every margin, the
sampled cross-entropy equals a plain log-softmax over the kept classes, the sampler keeps every positive
and draws the same classes whatever the number of processes, and a run checkpointed by 2 processes
continues on 1 and on 3 exactly as an uninterrupted run."""

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from deepmetric.io import load_weights, save_weights
from deepmetric.losses.classification import ArcFaceLoss
from deepmetric.losses.heads import ClassCentreHead, adacos_dynamic_scale
from deepmetric.losses.margins import annealed_sphere_psi, arc_margin, combined_margin, cosine_margin
from deepmetric.losses.partial_fc import ShardedClassCentreHead, kept_classes, load_centres, save_centres, shard_range
from deepmetric.train.checkpoint import load_checkpoint_state, save_checkpoint
from deepmetric.train.distributed import exclude_sharded_heads, sum_gradients

DIM, CLASSES, BATCH, SEED = 6, 37, 9, 3
# Samples per process: uneven, and one process with none.
COUNTS = {"even": (5, 4), "empty_rank": (9, 0)}
PER_CLASS_MARGIN = 0.2 + 0.3 * torch.arange(CLASSES, dtype=torch.float32) / CLASSES


def margin_of(name):
    return {
        "softmax": lambda cos, labels: cos,
        "arcface": lambda cos, labels: arc_margin(cos, 0.5),
        "cosface": lambda cos, labels: cosine_margin(cos, 0.35),
        "sphereface": lambda cos, labels: annealed_sphere_psi(cos, 4, 3.0),
        "combined": lambda cos, labels: combined_margin(cos, 0.9, 0.4, 0.15),
        "dynamic": lambda cos, labels: arc_margin(cos, PER_CLASS_MARGIN[labels]),
        "subcenter": lambda cos, labels: arc_margin(cos, 0.5),
        "adacos": lambda cos, labels: cos,
        "sampled": lambda cos, labels: arc_margin(cos, 0.5),
        "sparse": lambda cos, labels: arc_margin(cos, 0.5),
        "underflow": lambda cos, labels: cos,
    }[name]


# name: (num_subcenters, bias, normalised, scale, sample_rate, counts)
SCENARIOS = {
    "softmax": (1, True, False, 1.0, 1.0, "even"),
    "arcface": (1, False, True, 30.0, 1.0, "even"),
    "cosface": (1, False, True, 30.0, 1.0, "empty_rank"),
    "sphereface": (1, False, True, "norms", 1.0, "even"),
    "combined": (1, False, True, 20.0, 1.0, "even"),
    "dynamic": (1, False, True, 30.0, 1.0, "even"),
    "subcenter": (3, False, True, 30.0, 1.0, "empty_rank"),
    "adacos": (1, False, True, "adacos", 1.0, "even"),
    "sampled": (2, False, True, 30.0, 0.4, "even"),
    "sparse": (2, False, True, 30.0, 0.4, "empty_rank"),  # the same with a sparse centre gradient
    "underflow": (1, True, False, 1.0, 1.0, "even"),  # exp(logit - bound) underflows: the exact fallback
}


def global_batch(name):
    """Float64, so that the comparisons see the algebra rather than the rounding of float32 sums."""
    generator = torch.Generator().manual_seed(list(SCENARIOS).index(name))
    features = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    labels[:3] = labels[3]  # a class with several samples
    if name == "underflow":  # orthogonal to class 0's huge centre (see make_head): all logits << the bound
        features[:, 0] = 0.0
        labels = labels.clamp(min=1)
    return features, labels


def make_head(name, group=None):
    k, bias, normalised, _, rate, _ = SCENARIOS[name]
    head = ShardedClassCentreHead(embedding_dim=DIM, num_classes=CLASSES, num_subcenters=k, bias=bias,
                                  normalize_weight=normalised, sample_rate=rate, chunk_size=4, seed=SEED,
                                  process_group=group, sparse_gradient=name == "sparse")
    with torch.no_grad():
        if bias:
            head.bias.copy_(0.1 * torch.arange(head.class_start, head.class_stop, dtype=torch.float32).cos())
        if name == "underflow" and head.class_start == 0:  # the largest centre norm, on process 0 only
            head.weight[0] = 0.0
            head.weight[0, 0] = 1e3
    return head


def head_losses(head, features, labels, name):
    _, _, normalised, scale, _, _ = SCENARIOS[name]
    inputs = F.normalize(features, dim=1) if normalised else features
    extra = {}
    if scale == "norms":  # a per-sample scale that receives a gradient
        row_scale = 10.0 * torch.linalg.vector_norm(features, dim=1)
    elif scale == "adacos":  # the scale from the head's own statistics, as AdaCos computes it
        rest = head.nontarget_logsumexp(inputs.detach(), labels, row_scale=10.0)
        target = head.target_cosines(inputs.detach(), labels)
        row_scale = adacos_dynamic_scale(rest, target)
        extra = {"rest": rest, "target": target}
    else:
        row_scale = scale
    out = head(inputs, labels, row_scale=row_scale, margin=margin_of(name))
    return out.losses, extra


def run_scenario(name, rank, world_size, group=None):
    """This process's share: its losses (global batch), gradients and updated rows."""
    torch.manual_seed(0)
    features, labels = global_batch(name)
    counts = COUNTS[SCENARIOS[name][5]] if world_size > 1 else (BATCH,)
    start = sum(counts[:rank])
    local = features[start:start + counts[rank]].clone().requires_grad_(True)
    head = make_head(name, group).double()
    if name == "arcface":  # inference logits of the global batch over every process's classes
        extra_logits = {"logits": head.logits(F.normalize(local.detach(), dim=1), row_scale=30.0)}
    head.train()
    losses, extra = head_losses(head, local, labels[start:start + counts[rank]], name)
    if name == "arcface":
        extra = {**extra, **extra_logits}
    losses.mean().backward()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    assert head.weight.grad.is_sparse == (name == "sparse")
    grads = {"weight_grad": head.weight.grad.to_dense()}
    if head.bias is not None:
        grads["bias_grad"] = head.bias.grad.clone()
    optimizer.step()
    return {"losses": losses.detach(), "input_grad": local.grad.clone(), "weight": head.weight.detach().clone(),
            **grads, **extra}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join(rank, world_size, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


# -- training and resuming ------------------------------------------------------------------------------

STEPS, RESUME_AT, TRAIN_BATCH, TRAIN_CLASSES = 6, 3, 10, 23


class Backbone(torch.nn.Module):
    """A linear embedding with the model-folder ``save`` that checkpoints call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.linear = torch.nn.Linear(5, DIM)

    def forward(self, features):
        return F.normalize(self.linear(features), dim=1)

    def save(self, folder):
        Path(folder).mkdir(parents=True)
        save_weights(Path(folder) / "model.safetensors", self.state_dict())


class Step(torch.nn.Module):
    """Backbone and sharded head in one module, as a trainer wraps them in DistributedDataParallel."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, features, labels):
        return self.head(self.backbone(features), labels, row_scale=16.0,
                         margin=lambda cos, labels: arc_margin(cos, 0.3)).losses


def training_parts(group=None):
    backbone = Backbone()
    head = ShardedClassCentreHead(embedding_dim=DIM, num_classes=TRAIN_CLASSES, num_subcenters=2, sample_rate=0.5,
                                  chunk_size=3, seed=11, process_group=group)
    return (backbone, head, torch.optim.SGD(backbone.parameters(), lr=0.3, momentum=0.9),
            torch.optim.Adam(head.parameters(), lr=0.05))


def train(parts, steps, rank, world_size):
    backbone, head, backbone_optimizer, head_optimizer = parts
    step_module = Step(backbone, head)
    if world_size > 1:  # DDP on the backbone only, summing: each process has its samples' exact share
        assert exclude_sharded_heads(step_module) == ["head.weight"]
        step_module = torch.nn.parallel.DistributedDataParallel(step_module, process_group=head.process_group)
        sum_gradients(step_module)
    for step in steps:
        generator = torch.Generator().manual_seed(100 + step)
        features = torch.randn(TRAIN_BATCH, 5, generator=generator)
        labels = torch.randint(0, TRAIN_CLASSES, (TRAIN_BATCH,), generator=generator)
        start, stop = shard_range(TRAIN_BATCH, world_size, rank)
        backbone_optimizer.zero_grad()
        head_optimizer.zero_grad()
        step_module(features[start:stop], labels[start:stop]).mean().backward()
        backbone_optimizer.step()
        head_optimizer.step()


def resume(parts, checkpoint):
    backbone, head, backbone_optimizer, head_optimizer = parts
    backbone.load_state_dict(load_weights(Path(checkpoint) / "model" / "model.safetensors"))
    backbone_optimizer.load_state_dict(load_checkpoint_state(checkpoint)["backbone_optimizer"])
    load_centres(checkpoint, head, head_optimizer)


def save(parts, folder, rank):
    backbone, head, backbone_optimizer, head_optimizer = parts
    if rank == 0:
        save_checkpoint(folder, model=backbone, state={"backbone_optimizer": backbone_optimizer.state_dict()},
                        config_text="", extra=lambda tmp: save_centres(tmp, head, head_optimizer))
    else:
        save_centres(None, head, head_optimizer)


def worker(rank, world_size, port, output):
    """Processes 0 and 1 (a group of 2) run the scenarios and train, writing a checkpoint; then all 3
    resume it (one spawn for both: starting processes is most of the time)."""
    join(rank, world_size, port)
    try:
        pair = dist.new_group([0, 1])
        if rank < 2:
            for name in SCENARIOS:
                save_weights(Path(output) / f"{name}.{rank}.safetensors", run_scenario(name, rank, 2, pair))
            parts = training_parts(pair)
            train(parts, range(RESUME_AT), rank, 2)
            save(parts, Path(output) / "checkpoint", rank)
        dist.barrier()
        parts = training_parts()
        resume(parts, Path(output) / "checkpoint")
        train(parts, range(RESUME_AT, STEPS), rank, world_size)
        save(parts, Path(output) / "resumed_on_3", rank)
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    output = tmp_path_factory.mktemp("partial_fc")
    mp.spawn(worker, args=(3, free_port(), str(output)), nprocs=3, join=True)
    return output


def shards(output, name, key):
    return torch.cat([load_weights(output / f"{name}.{rank}.safetensors")[key] for rank in range(2)])


def full_head_reference(name):
    """The single-process full head on the global batch, with the same initial centres."""
    k, bias, normalised, _, _, _ = SCENARIOS[name]
    one = make_head(name)
    full = ClassCentreHead(embedding_dim=DIM, num_classes=CLASSES, num_subcenters=k, bias=bias,
                           normalize_weight=normalised, chunk_size=5)
    full.load_state_dict(one.state_dict())
    full.double()
    features, labels = global_batch(name)
    features = features.clone().requires_grad_(True)
    logits = {"logits": full.logits(F.normalize(features.detach(), dim=1), row_scale=30.0)} if name == "arcface" else {}
    losses, extra = head_losses(full, features, labels, name)
    extra = {**extra, **logits}
    losses.mean().backward()
    result = {"losses": losses.detach(), "input_grad": features.grad, "weight_grad": full.weight.grad.clone()}
    if bias:
        result["bias_grad"] = full.bias.grad.clone()
    torch.optim.SGD(full.parameters(), lr=0.5).step()
    return {**result, "weight": full.weight.detach(), **extra}


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in SCENARIOS if SCENARIOS[name][4] == 1.0])
def test_two_processes_equal_the_full_head(distributed_runs, name):
    expected = full_head_reference(name)
    for rank in range(2):
        got = load_weights(distributed_runs / f"{name}.{rank}.safetensors")
        torch.testing.assert_close(got["losses"], expected["losses"], rtol=1e-9, atol=1e-10)
        for key in ("rest", "target", "logits"):
            if key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=1e-9, atol=1e-10)
    for key in ("input_grad", "weight_grad", "weight", "bias_grad"):
        if key in expected:
            torch.testing.assert_close(shards(distributed_runs, name, key), expected[key], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["sampled", "sparse"])
def test_sampled_cross_entropy_equals_a_plain_log_softmax(distributed_runs, name):
    """Two processes, sample rate 0.4, two sub-centres: a log-softmax over the kept classes' logits; the
    centres' gradient (dense, or sparse over the kept rows) and the SGD update agree with it."""
    head = make_head(name)
    features, labels = global_batch(name)
    kept = kept_classes(0, CLASSES, labels, 0.4, seed=SEED, draw=0)
    assert 0 < kept.numel() < CLASSES
    weight = head.weight.detach().double().requires_grad_(True)
    inputs = F.normalize(features, dim=1).requires_grad_(True)
    cosines = (inputs @ F.normalize(weight, dim=1).T).view(BATCH, CLASSES, 2).amax(dim=2)
    target = cosines.gather(1, labels[:, None]).squeeze(1)
    logits = 30.0 * cosines.scatter(1, labels[:, None], arc_margin(target, 0.5)[:, None])
    masked = torch.full_like(logits, -math.inf)
    masked[:, kept] = logits[:, kept]
    losses = F.cross_entropy(masked, labels, reduction="none")
    losses.mean().backward()
    torch.testing.assert_close(shards(distributed_runs, name, "losses")[:BATCH], losses.detach(), rtol=1e-9, atol=1e-10)
    # inputs = normalize(features): chain the reference's gradient through the normalisation
    input_grad = torch.autograd.grad(F.normalize(features.requires_grad_(True), dim=1), features, inputs.grad)[0]
    torch.testing.assert_close(shards(distributed_runs, name, "input_grad"), input_grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(shards(distributed_runs, name, "weight_grad"), weight.grad, rtol=1e-9, atol=1e-10)
    not_kept = torch.ones(CLASSES, dtype=torch.bool)
    not_kept[kept] = False
    assert not shards(distributed_runs, name, "weight_grad").view(CLASSES, 2, DIM)[not_kept].any()
    torch.testing.assert_close(shards(distributed_runs, name, "weight"), weight.detach() - 0.5 * weight.grad)


def test_sampler_keeps_every_positive_and_ignores_the_number_of_processes():
    positives = torch.tensor([0, 3, 3, 999_999, 500_000, 131_071, 131_072])
    whole = kept_classes(0, 1_000_000, positives, 0.1, seed=7, draw=4)
    assert torch.isin(positives, whole).all()
    assert abs(whole.numel() / 1_000_000 - 0.1) < 0.003
    assert torch.equal(whole, torch.unique(whole))
    for world_size in (2, 3, 7):
        parts = [kept_classes(*shard_range(1_000_000, world_size, rank), positives, 0.1, seed=7, draw=4)
                 for rank in range(world_size)]
        assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(kept_classes(0, 1_000_000, positives, 0.1, seed=7, draw=5), whole)
    assert torch.equal(kept_classes(10, 20, positives, 1e-9, seed=7, draw=4), torch.empty(0, dtype=torch.long))


def uninterrupted():
    parts = training_parts()
    train(parts, range(STEPS), 0, 1)
    return parts


def test_checkpoint_of_two_processes_resumes_on_one_and_on_three(distributed_runs, tmp_path):
    reference = uninterrupted()
    assert reference[1].draws == STEPS
    # resumed on 1 process, without torch.distributed
    parts = training_parts()
    resume(parts, distributed_runs / "checkpoint")
    assert parts[1].draws == RESUME_AT
    train(parts, range(RESUME_AT, STEPS), 0, 1)
    for got, expected in zip(parts[:2], reference[:2]):
        for (key, value), (_, reference_value) in zip(got.state_dict().items(), expected.state_dict().items()):
            torch.testing.assert_close(value, reference_value, rtol=1e-5, atol=1e-6, msg=key)
    # resumed on 3 processes; their centres and Adam moments, written by class id, read back on 1
    on_three = training_parts()
    load_centres(distributed_runs / "resumed_on_3", on_three[1], on_three[3])
    torch.testing.assert_close(on_three[1].weight, reference[1].weight, rtol=1e-5, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(on_three[3].state[on_three[1].weight][key],
                                   reference[3].state[reference[1].weight][key], rtol=1e-5, atol=1e-7)
    backbone = load_weights(distributed_runs / "resumed_on_3" / "model" / "model.safetensors")
    for key, value in reference[0].state_dict().items():
        torch.testing.assert_close(backbone[key], value, rtol=1e-5, atol=1e-6)


def test_checkpoint_refuses_another_head(distributed_runs):
    head = ShardedClassCentreHead(embedding_dim=DIM, num_classes=TRAIN_CLASSES + 1, num_subcenters=2)
    with pytest.raises(ValueError, match="num_classes"):
        load_centres(distributed_runs / "checkpoint", head)


def test_one_process_loss_class_with_the_sharded_head_equals_the_full_one():
    torch.manual_seed(0)
    sharded = ArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES, head="sharded", sample_rate=1.0)
    full = ArcFaceLoss(embedding_dim=DIM, num_classes=CLASSES)
    full.load_state_dict(sharded.state_dict())
    features, labels = global_batch("arcface")
    torch.testing.assert_close(sharded(features, labels), full(features, labels))
    with pytest.raises(ValueError, match="class_index must contain"):
        sharded.head(F.normalize(features, dim=1), labels, class_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be in"):
        sharded(features, labels + CLASSES)
