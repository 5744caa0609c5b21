import pytest
import torch

from deepmetric import registry
from deepmetric.miners import AllPairsMiner, CrossBatchMemoryMiner, SemiHardMiner
from miner_reference import pair_sets, relations, triplet_set


def batch(seed, size=6, dim=4, num_classes=3):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(size, dim, generator=generator, dtype=torch.float64),
            torch.randint(0, num_classes, (size,), generator=generator))


def test_memory_is_a_fifo_queue():
    xbm = CrossBatchMemoryMiner(memory_size=10)
    seen_embeddings, seen_labels = [], []
    for step in range(5):
        embeddings, labels = batch(step, size=4)
        xbm(embeddings, labels)
        seen_embeddings.append(embeddings)
        seen_labels.append(labels)
        everything, all_labels = torch.cat(seen_embeddings), torch.cat(seen_labels)
        n = min(len(everything), 10)
        assert len(xbm.ref_embeddings) == n
        # slot of item t is t mod 10; the memory holds exactly the last 10 items
        last = torch.arange(len(everything))[-n:]
        assert torch.equal(xbm.ref_embeddings[last % 10], everything[last])
        assert torch.equal(xbm.ref_labels[last % 10], all_labels[last])
    assert xbm.ref_embeddings.dtype == torch.float64


def test_mines_batch_against_memory_without_self_pairs():
    xbm = CrossBatchMemoryMiner(memory_size=9)
    for step in range(3):
        embeddings, labels = batch(step)
        pairs = xbm(embeddings, labels)
        slots = [(step * 6 + i) % 9 for i in range(6)]
        positives, negatives = relations(labels, xbm.ref_labels)
        expected_pos = {(a, p) for a, ps in enumerate(positives) for p in ps if p != slots[a]}
        expected_neg = {(a, n) for a, ns in enumerate(negatives) for n in ns}
        assert pair_sets(pairs) == (expected_pos, expected_neg)


def test_inner_miner_sees_the_memory():
    inner = SemiHardMiner(margin=0.5, fallback_to_hardest=True)
    xbm = CrossBatchMemoryMiner(memory_size=64, miner=inner)
    for step in range(4):
        embeddings, labels = batch(step, size=12)
        triplets = xbm(embeddings, labels)
    direct = inner(embeddings, labels, xbm.ref_embeddings, xbm.ref_labels)
    slots = {a: 36 + a for a in range(12)}
    assert triplet_set(triplets) == {t for t in triplet_set(direct) if t[1] != slots[t[0]]}
    assert len(triplets) > 0


def test_reference_embeddings_are_enqueued_instead():
    xbm = CrossBatchMemoryMiner(memory_size=20)
    embeddings, labels = batch(0)
    keys = embeddings + 0.01
    pairs = xbm(embeddings, labels, keys, labels)
    assert torch.equal(xbm.ref_embeddings, keys)
    # each item's own key is a positive (a second view), nothing removed
    assert {(i, i) for i in range(6)} <= pair_sets(pairs)[0]


def test_batch_larger_than_memory_keeps_the_last_items():
    xbm = CrossBatchMemoryMiner(memory_size=4)
    embeddings, labels = batch(1, size=10)
    pairs = xbm(embeddings, labels)
    assert torch.equal(xbm.ref_embeddings, embeddings[6:])
    # items 6..9 sit in slots 0..3 and are not paired with themselves; items 0..5 have no slot
    positive_pairs = pair_sets(pairs)[0]
    assert not {(a, a - 6) for a in range(6, 10)} & positive_pairs
    positives, _ = relations(labels, labels[6:])
    assert positive_pairs == {(a, p) for a, ps in enumerate(positives) for p in ps if p != a - 6}


def test_state_dict_round_trip_with_lazy_allocation():
    xbm = CrossBatchMemoryMiner(memory_size=8, miner={"name": "all_pairs"})
    xbm(*batch(0))
    restored = CrossBatchMemoryMiner(memory_size=8)
    restored.load_state_dict(xbm.state_dict())
    assert torch.equal(restored.ref_embeddings, xbm.ref_embeddings)
    assert int(restored.next_slot) == 6
    with pytest.raises(RuntimeError, match="size mismatch"):
        CrossBatchMemoryMiner(memory_size=5).load_state_dict(xbm.state_dict())
    xbm.reset()
    assert len(xbm.ref_embeddings) == 0


def test_training_step_with_a_loss_backpropagates():
    if "contrastive" not in registry.names("loss"):
        pytest.skip("contrastive loss not available")
    loss_fn = registry.build({"name": "contrastive", "args": {"neg_margin": 1.0}}, "loss")
    xbm = registry.build({"name": "cross_batch_memory", "args": {"memory_size": 32, "miner": {"name": "all_pairs"}}},
                         "miner", embedding_dim=4)
    assert xbm.memory_embeddings.shape == (32, 4)
    for step in range(3):
        embeddings, labels = batch(step)
        embeddings.requires_grad_(True)
        mined = xbm(embeddings, labels)
        loss = loss_fn(embeddings, labels, mined=mined, ref_embeddings=xbm.ref_embeddings, ref_labels=xbm.ref_labels)
        loss.backward()
        assert torch.isfinite(loss) and embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
    assert not xbm.ref_embeddings.requires_grad


def test_bad_arguments():
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemoryMiner(memory_size=0)
    with pytest.raises(TypeError, match="miner must be a BaseMiner"):
        CrossBatchMemoryMiner(memory_size=4, miner="all_pairs")
    with pytest.raises(TypeError, match="cross_batch_memory"):
        CrossBatchMemoryMiner(memory_size=4, miner=CrossBatchMemoryMiner(memory_size=4))
    xbm = CrossBatchMemoryMiner(memory_size=4, embedding_dim=3, miner=AllPairsMiner())
    with pytest.raises(ValueError, match="dimension 4, the memory holds 3"):
        xbm(*batch(0))
