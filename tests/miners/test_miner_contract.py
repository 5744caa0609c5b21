"""Every registered miner: builds from its registry example, returns valid index tuples for float32 and
float64, handles degenerate batches with empty results, and feeds a loss that back-propagates."""

import pytest
import torch

from deepmetric import registry
from deepmetric.types import Pairs, Triplets

MINERS = registry.names("miner")
TRIPLET_MINERS = {"all_triplets", "hard", "batch_hard", "semi_hard", "distance_weighted"}


def build(name):
    return registry.build({"name": name, "args": registry.example("miner", name)}, "miner")


def test_every_key_of_the_issue_is_registered():
    assert set(MINERS) >= {"all_pairs", "all_triplets", "hard", "semi_hard", "batch_hard", "distance_weighted",
                           "pair_ratio", "cross_batch_memory"}


def check_valid(mined, labels, ref_labels=None, same_set=True):
    ref = labels if ref_labels is None else ref_labels
    if isinstance(mined, Triplets):
        groups = [(mined.anchor, mined.positive, True), (mined.anchor, mined.negative, False)]
    else:
        groups = [(mined.anchor_positive, mined.positive, True), (mined.anchor_negative, mined.negative, False)]
    for anchor, other, same in groups:
        assert anchor.dtype == other.dtype == torch.long
        if anchor.numel():
            assert bool(((labels[anchor] == ref[other]) == same).all())
            if same_set and same:
                assert bool((anchor != other).all())


@pytest.mark.parametrize("name", MINERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_valid_tuples(name, dtype):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(32, 8, generator=generator, dtype=dtype)
    labels = torch.randint(0, 6, (32,), generator=generator)
    mined = build(name)(embeddings, labels)
    assert isinstance(mined, Triplets if name in TRIPLET_MINERS else (Pairs, Triplets))
    assert len(mined) > 0
    # cross-batch memory indexes its memory, which is the batch itself after one call
    check_valid(mined, labels)


@pytest.mark.parametrize("name", MINERS)
def test_valid_tuples_with_reference_set(name):
    generator = torch.Generator().manual_seed(1)
    embeddings, ref_embeddings = torch.randn(10, 8, generator=generator), torch.randn(40, 8, generator=generator)
    labels = torch.randint(0, 4, (10,), generator=generator)
    ref_labels = torch.randint(0, 4, (40,), generator=generator)
    miner = build(name)
    mined = miner(embeddings, labels, ref_embeddings, ref_labels)
    if name == "cross_batch_memory":
        ref_labels = miner.ref_labels
    check_valid(mined, labels, ref_labels, same_set=False)
    assert len(mined) > 0


def degenerate_batches():
    embeddings = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    return {
        "one_class": (embeddings, torch.zeros(6, dtype=torch.long)),
        "singletons": (embeddings, torch.arange(6)),
        "one_item": (embeddings[:1], torch.zeros(1, dtype=torch.long)),
    }


@pytest.mark.parametrize("name", MINERS)
@pytest.mark.parametrize("case", ["one_class", "singletons", "one_item"])
def test_degenerate_batches_give_no_invalid_tuple(name, case):
    embeddings, labels = degenerate_batches()[case]
    mined = build(name)(embeddings, labels)
    if isinstance(mined, Triplets) or case == "one_item":
        assert len(mined) == 0
    elif case == "one_class":
        assert mined.num_negative == 0
    else:
        assert mined.num_positive == 0
    check_valid(mined, labels)


@pytest.mark.parametrize("name", MINERS)
def test_empty_batch_or_reference_set(name):
    labels = torch.tensor([0, 0, 1, 1])
    assert len(build(name)(torch.randn(4, 3), labels, torch.randn(0, 3), torch.zeros(0, dtype=torch.long))) == 0
    assert len(build(name)(torch.randn(0, 3), torch.zeros(0, dtype=torch.long))) == 0


@pytest.mark.parametrize("name", MINERS)
def test_loss_on_mined_tuples_backpropagates(name):
    loss_name = "triplet" if name in TRIPLET_MINERS else "contrastive"
    if loss_name not in registry.names("loss"):
        pytest.skip(f"{loss_name} loss not available")
    loss_fn = registry.build({"name": loss_name, "args": registry.example("loss", loss_name)}, "loss")
    for embeddings, labels in [*degenerate_batches().values(),
                               (torch.randn(16, 4), torch.arange(4).repeat_interleave(4))]:
        embeddings = embeddings.clone().requires_grad_(True)
        miner = build(name)
        mined = miner(embeddings, labels)
        refs = {}
        if name == "cross_batch_memory":
            refs = {"ref_embeddings": miner.ref_embeddings, "ref_labels": miner.ref_labels}
        loss = loss_fn(embeddings, labels, mined=mined, **refs)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("name", MINERS)
def test_input_errors_name_the_problem(name):
    miner = build(name)
    with pytest.raises(ValueError, match=r"^ref_embeddings and ref_labels must be given together, "
                                         r"got ref_embeddings without ref_labels$"):
        miner(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"^labels must have shape \(4,\), one label per row of embeddings, "
                                         r"got shape \(3,\)$"):
        miner(torch.randn(4, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(TypeError, match=r"^labels must be an integer torch\.Tensor, got dtype torch\.float32$"):
        miner(torch.randn(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match=r"^labels must be an integer torch\.Tensor, got NoneType: None$"):
        miner(torch.randn(4, 3), None)
    with pytest.raises(ValueError, match=r"^ref_embeddings must be a matrix of shape \(N, 3\), got shape \(4, 5\)$"):
        miner(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(4, 5), torch.tensor([0, 0, 1, 1]))
