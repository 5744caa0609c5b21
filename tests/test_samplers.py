from collections import Counter

import numpy as np
import pytest
import torch

from deepmetric import registry
from deepmetric.samplers import DistributedPKSampler, PKSampler


def imbalanced_labels(seed=0, num_classes=30):
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(num_classes), rng.integers(1, 25, num_classes))


def check_batch(batch, labels, classes_per_batch, samples_per_class):
    assert len(batch) == classes_per_batch * samples_per_class
    counts = Counter(labels[batch].tolist())
    assert len(counts) == classes_per_batch and set(counts.values()) == {samples_per_class}


def test_every_batch_has_p_classes_with_k_samples():
    labels = imbalanced_labels()
    sampler = PKSampler(labels, classes_per_batch=6, samples_per_class=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        check_batch(batch, labels, 6, 4)
        # a class with at least K items never repeats an item inside a batch
        for cls in set(labels[batch].tolist()):
            if (labels == cls).sum() >= 4:
                assert len({i for i in batch if labels[i] == cls}) == 4


def test_epoch_visits_almost_every_item_and_spreads_large_classes():
    labels = np.repeat(np.arange(20), 16)
    labels = np.concatenate([labels, np.full(64, 20)])  # one class with 4x the items
    sampler = PKSampler(labels, classes_per_batch=5, samples_per_class=4, seed=0)
    batches = list(sampler)
    seen = {i for batch in batches for i in batch}
    assert len(seen) >= 0.9 * len(labels)
    big = [any(labels[i] == 20 for i in batch) for batch in batches]
    # the big class is spread over the epoch, not crammed at the end
    assert sum(big) >= 15 and sum(big[: len(big) // 2]) >= len(big) // 2 - 2


def test_small_and_single_sample_classes():
    labels = np.array([0] * 8 + [1] * 8 + [2] * 2 + [3])
    sampler = PKSampler(labels, classes_per_batch=3, samples_per_class=4, seed=0, num_batches=20)
    used = Counter()
    for batch in sampler:
        check_batch(batch, labels, 3, 4)
        used.update(labels[batch].tolist())
        class2 = [i for i in batch if labels[i] == 2]
        if class2:  # two items drawn with replacement up to K = 4
            assert set(class2) == {16, 17}
    assert used[3] == 0 and used[2] > 0
    with_singletons = PKSampler(labels, classes_per_batch=4, samples_per_class=4, skip_single_sample_classes=False)
    assert any(labels[batch].tolist().count(3) == 4 for batch in with_singletons)
    with pytest.raises(ValueError, match="needs 3 classes with >= 4 samples, but labels have 2"):
        PKSampler(labels, classes_per_batch=3, samples_per_class=4, drop_small_classes=True)
    dropped = PKSampler(labels, classes_per_batch=2, samples_per_class=4, drop_small_classes=True, num_batches=10)
    assert {int(labels[i]) for batch in dropped for i in batch} == {0, 1}


def test_deterministic_and_set_epoch_reshuffles():
    labels = imbalanced_labels(1)
    first = list(PKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=7))
    again = list(PKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=7))
    other_seed = list(PKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=8))
    assert first == again and first != other_seed
    sampler = PKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=7)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != first
    sampler.set_epoch(1)
    assert list(sampler) == epoch1 == sampler.batches(1)
    # iterating again without set_epoch moves to the next epoch
    assert list(sampler) == sampler.batches(2)


def test_state_dict_resumes_exactly_mid_epoch():
    labels = imbalanced_labels(2)
    sampler = PKSampler(labels, classes_per_batch=4, samples_per_class=2, seed=3)
    sampler.set_epoch(2)
    full = sampler.batches()
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(3)]
    state = sampler.state_dict()
    resumed = PKSampler(labels, classes_per_batch=4, samples_per_class=2, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a trainer re-selecting the same epoch keeps the position
    assert head + list(resumed) == full
    assert resumed.epoch == 3 and resumed.position == 0
    with pytest.raises(ValueError, match="labels_fingerprint"):
        PKSampler(labels[::-1].copy(), classes_per_batch=4, samples_per_class=2).load_state_dict(state)
    with pytest.raises(ValueError, match="position"):
        resumed.load_state_dict({**state, "position": 10**6})


def test_dataloader_batch_sampler():
    labels = np.repeat(np.arange(6), 5)
    dataset = torch.utils.data.TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    sampler = PKSampler(torch.as_tensor(labels), classes_per_batch=3, samples_per_class=2)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    for items, batch_labels in loader:
        assert items.shape == (6,)
        assert sorted(Counter(batch_labels.tolist()).values()) == [2, 2, 2]


def test_distributed_ranks_get_different_classes_and_equal_lengths():
    labels = imbalanced_labels(3, num_classes=40)
    ranks = [DistributedPKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=5, num_replicas=3, rank=r)
             for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    for sampler in ranks:
        sampler.set_epoch(4)
    per_rank = [list(r) for r in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    for step in zip(*per_rank):
        for batch in step:
            check_batch(batch, labels, 4, 3)
        classes = [set(labels[batch].tolist()) for batch in step]
        assert len(set().union(*classes)) == 12  # disjoint across ranks
    single = PKSampler(labels, classes_per_batch=4, samples_per_class=3, seed=5)
    assert len(ranks[0]) < len(single)


def test_distributed_needs_world_or_explicit_rank():
    with pytest.raises(ValueError, match="num_replicas and rank must be given"):
        DistributedPKSampler([0, 0, 1, 1], classes_per_batch=1, samples_per_class=2)
    with pytest.raises(ValueError, match=r"^rank must be an integer in \[0, 1\], got 2$"):
        DistributedPKSampler([0, 0, 1, 1], classes_per_batch=1, samples_per_class=2, num_replicas=2, rank=2)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="labels must be integers"):
        PKSampler([0.5, 1.5], classes_per_batch=1, samples_per_class=2)
    with pytest.raises(ValueError, match="labels must be a non-empty 1-D"):
        PKSampler([], classes_per_batch=1, samples_per_class=2)
    with pytest.raises(ValueError, match=r"^samples_per_class must be an integer >= 1, got 0$"):
        PKSampler([0, 0], classes_per_batch=1, samples_per_class=0)
    with pytest.raises(TypeError, match=r"^samples_per_class must be an integer >= 1, got float: 2\.0$"):
        PKSampler([0, 0], classes_per_batch=1, samples_per_class=2.0)
    with pytest.raises(TypeError, match=r"^seed must be an integer, got str: '1'$"):
        PKSampler([0, 0], classes_per_batch=1, samples_per_class=2, seed="1")
    with pytest.raises(ValueError, match="num_batches"):
        PKSampler([0, 0], classes_per_batch=1, samples_per_class=2, num_batches=0)


@pytest.mark.parametrize("name", ["pk", "distributed_pk"])
def test_registry_builds_from_example_and_with_labels(name):
    sampler = registry.build({"name": name, "args": registry.example("sampler", name)}, "sampler")
    assert len(list(sampler)) == len(sampler) > 0
    args = {k: v for k, v in registry.example("sampler", name).items() if k != "labels"}
    built = registry.build({"name": name, "args": args}, "sampler", labels=np.repeat(np.arange(4), 3))
    assert all(len(batch) == built.batch_size for batch in built)
