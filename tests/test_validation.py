import math
import re

import numpy as np
import pytest
import torch

from deepmetric.distances import MahalanobisDistance
from deepmetric.losses import (
    AdaCosLoss,
    ArcFaceLoss,
    CenterLoss,
    CombinedMarginLoss,
    ContrastiveLoss,
    CosFaceLoss,
    LiftedStructureLoss,
    MagnetLoss,
    MultiSimilarityLoss,
    NPairLoss,
    NTXentLoss,
    ProxyAnchorLoss,
    QuadrupletLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    TripletLoss,
)
from deepmetric.losses.heads import ClassCentreHead
from deepmetric.miners import CrossBatchMemoryMiner, DistanceWeightedMiner, HardMiner, PairRatioMiner, SemiHardMiner
from deepmetric.models.backbones import MLP, SmallCNN
from deepmetric.models.pooling import GeMPooling
from deepmetric.samplers import DistributedPKSampler, PKSampler
from deepmetric.train.schedules import AdamWOptimizer, ConstantSchedule, SGDOptimizer, WarmupCosineSchedule
from deepmetric.validation import (
    check_bool,
    check_choice,
    check_embeddings,
    check_in_range,
    check_int,
    check_labels,
    check_non_negative_float,
    check_non_negative_int,
    check_number,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_same_device,
    check_seed,
    did_you_mean,
)


def raises(kind, message):
    """pytest.raises matching the whole message literally, so a reworded message is a failure."""
    return pytest.raises(kind, match=f"^{re.escape(message)}$")


# --- integers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(5), np.uint8(2)])
def test_positive_integers_of_python_and_numpy_pass_as_python_ints(value):
    result = check_positive_int("k", value)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize("value,shown", [(0, "0"), (-2, "-2"), (np.int64(0), repr(np.int64(0)))])
def test_a_non_positive_integer_is_a_value_error(value, shown):
    with raises(ValueError, f"k must be a positive integer, got {shown}"):
        check_positive_int("k", value)


@pytest.mark.parametrize("value", [True, np.bool_(True), 2.0, np.float32(3), "3", None, [1]])
def test_anything_but_an_integer_is_a_type_error_naming_the_type(value):
    with raises(TypeError, f"k must be a positive integer, got {type(value).__name__}: {value!r}"):
        check_positive_int("k", value)


def test_positive_int_can_let_none_through():
    assert check_positive_int("chunk_size", None, allow_none=True) is None
    with raises(ValueError, "chunk_size must be a positive integer or None, got 0"):
        check_positive_int("chunk_size", 0, allow_none=True)


def test_non_negative_int_accepts_zero_and_refuses_negatives_and_floats():
    assert check_non_negative_int("warmup_steps", 0) == 0
    with raises(ValueError, "warmup_steps must be a non-negative integer, got -1"):
        check_non_negative_int("warmup_steps", -1)
    with raises(TypeError, "warmup_steps must be a non-negative integer, got float: 0.5"):
        check_non_negative_int("warmup_steps", 0.5)


def test_int_bounds_are_inclusive_and_named():
    assert check_int("rank", 3, low=0, high=3) == 3
    assert check_int("rank", 0, low=0, high=3) == 0
    with raises(ValueError, "rank must be an integer in [0, 3], got 4"):
        check_int("rank", 4, low=0, high=3)
    with raises(ValueError, "margin must be an integer >= 1, got 0"):
        check_int("margin", 0, low=1)
    with raises(TypeError, "rank must be an integer, got str: 'a'"):
        check_int("rank", "a")


def test_seed_is_an_integer_or_none():
    assert check_seed("seed", None) is None
    assert check_seed("seed", np.int64(4)) == 4
    with raises(TypeError, "seed must be an integer or None, got float: 1.5"):
        check_seed("seed", 1.5)


# --- real numbers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 0.5, np.float32(0.25), np.int64(2)])
def test_numbers_come_back_as_python_floats(value):
    result = check_positive_float("scale", value)
    assert result == float(value) and type(result) is float


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan])
def test_a_non_positive_or_non_finite_number_is_a_value_error(value):
    with raises(ValueError, f"scale must be a finite number > 0, got {value!r}"):
        check_positive_float("scale", value)


@pytest.mark.parametrize("value", ["1", None, True, [1.0], torch.tensor(1.0)])
def test_a_non_number_is_a_type_error(value):
    with pytest.raises(TypeError, match=r"^scale must be a finite number > 0, got "):
        check_positive_float("scale", value)


def test_non_negative_float_accepts_zero():
    assert check_non_negative_float("margin", 0) == 0.0
    with raises(ValueError, "margin must be a finite number >= 0, got -0.5"):
        check_non_negative_float("margin", -0.5)


def test_number_may_allow_infinity_but_never_nan():
    assert check_number("cutoff", math.inf, finite=False) == math.inf
    with raises(ValueError, "cutoff must be a number, got nan"):
        check_number("cutoff", math.nan, finite=False)


@pytest.mark.parametrize("low_inclusive,high_inclusive,text", [
    (True, True, "[0, 1]"), (True, False, "[0, 1)"), (False, True, "(0, 1]"), (False, False, "(0, 1)")])
def test_range_ends_are_included_or_excluded_and_written_as_intervals(low_inclusive, high_inclusive, text):
    assert check_in_range("p", 0.5, 0, 1, low_inclusive=low_inclusive, high_inclusive=high_inclusive) == 0.5
    for end, included in ((0, low_inclusive), (1, high_inclusive)):
        if included:
            assert check_in_range("p", end, 0, 1, low_inclusive=low_inclusive, high_inclusive=high_inclusive) == end
        else:
            with raises(ValueError, f"p must be a finite number in {text}, got {end}"):
                check_in_range("p", end, 0, 1, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
    with raises(ValueError, f"p must be a finite number in {text}, got 1.5"):
        check_in_range("p", 1.5, 0, 1, low_inclusive=low_inclusive, high_inclusive=high_inclusive)


def test_probability_is_a_range_check_on_zero_one():
    assert check_probability("sample_rate", 1) == 1.0
    with raises(ValueError, "sample_rate must be a finite number in (0, 1], got 0"):
        check_probability("sample_rate", 0, allow_zero=False)
    with raises(ValueError, "sample_rate must be a finite number in [0, 1), got 1"):
        check_probability("sample_rate", 1, allow_one=False)


def test_bool_refuses_truthy_non_bools():
    assert check_bool("squared", np.bool_(True)) is True
    with raises(TypeError, "squared must be a bool, got str: 'yes'"):
        check_bool("squared", "yes")


# --- choices --------------------------------------------------------------------------------------------------

def test_choice_accepts_members_and_hints_at_the_closest_one():
    assert check_choice("reduction", "mean", ["mean", "sum"]) == "mean"
    with raises(ValueError, "reduction must be one of ['mean', 'sum'], got 'sums'. Did you mean 'sum'?"):
        check_choice("reduction", "sums", ["mean", "sum"])
    with raises(ValueError, "reduction must be one of ['mean', 'sum'], got 'xyz'."):
        check_choice("reduction", "xyz", ("mean", "sum"))
    with raises(TypeError, "reduction must be one of ['mean', 'sum'], got int: 1"):
        check_choice("reduction", 1, ("mean", "sum"))


def test_did_you_mean_is_empty_when_nothing_is_close():
    assert did_you_mean("semihard", ["semi_hard", "hard"]) == " Did you mean 'semi_hard' or 'hard'?"
    assert did_you_mean("cosin", ["cosine", "dot"]) == " Did you mean 'cosine'?"
    assert did_you_mean("q", ["semi_hard", "hard"]) == ""


# --- matrices and labels --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda shape: np.zeros(shape, dtype=np.float32),
                                  lambda shape: torch.zeros(shape, dtype=torch.float64)])
def test_embeddings_of_either_library_pass_unchanged(make):
    matrix = make((3, 4))
    assert check_embeddings("embeddings", matrix, dim=4) is matrix
    assert check_embeddings("embeddings", make((0, 4))).shape[0] == 0


@pytest.mark.parametrize("make", [np.array, torch.tensor])
def test_embeddings_shape_dtype_and_finiteness_are_checked(make):
    with raises(ValueError, "embeddings must be a matrix of shape (N, D), got shape (3,)"):
        check_embeddings("embeddings", make([1.0, 2.0, 3.0]))
    with raises(ValueError, "embeddings must be a matrix of shape (N, 3), got shape (1, 2)"):
        check_embeddings("embeddings", make([[1.0, 2.0]]), dim=3)
    with raises(ValueError, "embeddings must hold finite values, got 2 NaN or infinite entries in shape (1, 3)"):
        check_embeddings("embeddings", make([[1.0, math.nan, math.inf]]))
    assert check_embeddings("embeddings", make([[math.nan]]), finite=False).shape == (1, 1)
    integer = make([[1, 2]])
    with raises(TypeError, f"embeddings must be a floating-point torch.Tensor or numpy array of shape (N, D), "
                           f"got dtype {integer.dtype}"):
        check_embeddings("embeddings", integer)


def test_embeddings_refuse_other_containers_and_optionally_empty_matrices():
    with pytest.raises(TypeError, match=r"^queries must be a floating-point .* got list: \[\[1.0\]\]$"):
        check_embeddings("queries", [[1.0]])
    with raises(ValueError, "queries must hold at least one row, got shape (0, 2)"):
        check_embeddings("queries", np.zeros((0, 2)), allow_empty=False)


@pytest.mark.parametrize("make", [np.array, torch.tensor])
def test_labels_are_one_integer_per_row(make):
    labels = make([0, 1, 1])
    assert check_labels("labels", labels, 3) is labels
    assert check_labels("labels", labels) is labels
    with raises(ValueError, "labels must have shape (4,), one label per row of embeddings, got shape (3,)"):
        check_labels("labels", labels, 4)
    with raises(ValueError, "labels must have shape (L,), got shape (1, 3)"):
        check_labels("labels", make([[0, 1, 1]]))
    floats = make([0.0, 1.0])
    with raises(TypeError, f"labels must be an integer torch.Tensor or numpy array, got dtype {floats.dtype}"):
        check_labels("labels", floats)
    booleans = make([True, False])
    with raises(TypeError, f"labels must be an integer torch.Tensor or numpy array, got dtype {booleans.dtype}"):
        check_labels("labels", booleans)
    with raises(TypeError, "labels must be an integer torch.Tensor or numpy array, got list: [0, 1]"):
        check_labels("labels", [0, 1])


def test_same_device_names_every_tensor_and_ignores_none():
    check_same_device(embeddings=torch.zeros(2, 2), labels=torch.zeros(2), ref_embeddings=None)
    with raises(ValueError, "all tensors must be on one device, got embeddings on cpu, ref_embeddings on meta"):
        check_same_device(embeddings=torch.zeros(2, 2), ref_embeddings=torch.zeros(2, 2, device="meta"))


def test_long_values_are_abbreviated_in_messages():
    with pytest.raises(TypeError) as error:
        check_positive_int("k", list(range(1000)))
    assert len(str(error.value)) < 200 and "..." in str(error.value)


# --- every public constructor follows the policy --------------------------------------------------------------

CENTRES = {"embedding_dim": 4, "num_classes": 3}
SAMPLER = {"labels": [0, 0, 1, 1, 2, 2], "classes_per_batch": 2, "samples_per_class": 2}
WORLD = {**SAMPLER, "num_replicas": 2, "rank": 0, "classes_per_batch": 1}

# (component, the other arguments it needs, argument, bad value, expected exception)
BAD_ARGUMENTS = [
    (ContrastiveLoss, {}, "pos_margin", "0", TypeError),
    (ContrastiveLoss, {}, "neg_margin", math.inf, ValueError),
    (ContrastiveLoss, {}, "squared", "yes", TypeError),
    (ContrastiveLoss, {}, "reduction", "avg", ValueError),
    (ContrastiveLoss, {}, "reduction", None, TypeError),
    (TripletLoss, {}, "margin", "0.2", TypeError),
    (TripletLoss, {}, "margin", math.nan, ValueError),
    (TripletLoss, {}, "soft_margin", 1, TypeError),
    (QuadrupletLoss, {}, "form", "chenn", ValueError),
    (QuadrupletLoss, {}, "form", 3, TypeError),
    (LiftedStructureLoss, {}, "form", None, TypeError),
    (NPairLoss, {}, "l2_reg", -1.0, ValueError),
    (NPairLoss, {}, "l2_reg", [0.1], TypeError),
    (NTXentLoss, {}, "temperature", 0, ValueError),
    (NTXentLoss, {}, "temperature", "0.1", TypeError),
    (MultiSimilarityLoss, {}, "alpha", -2.0, ValueError),
    (MultiSimilarityLoss, {}, "beta", None, TypeError),
    (ProxyAnchorLoss, {"embedding_dim": 4}, "num_classes", 0, ValueError),
    (ProxyAnchorLoss, {"num_classes": 3}, "embedding_dim", 4.0, TypeError),
    (MagnetLoss, {}, "clusters_per_class", 0, ValueError),
    (MagnetLoss, {}, "clusters_per_class", 1.5, TypeError),
    (ArcFaceLoss, CENTRES, "margin", 4.0, ValueError),
    (ArcFaceLoss, CENTRES, "margin", "0.5", TypeError),
    (CosFaceLoss, CENTRES, "scale", 0.0, ValueError),
    (CosFaceLoss, CENTRES, "scale", "64", TypeError),
    (CombinedMarginLoss, CENTRES, "angular_margin", -0.1, ValueError),
    (SphereFaceLoss, CENTRES, "margin", 0, ValueError),
    (SphereFaceLoss, CENTRES, "margin", 1.5, TypeError),
    (CenterLoss, CENTRES, "center_update", "momentum", ValueError),
    (CenterLoss, CENTRES, "center_update", None, TypeError),
    (CenterLoss, CENTRES, "alpha", 1.5, ValueError),
    (SubCenterArcFaceLoss, CENTRES, "num_subcenters", 0, ValueError),
    (SubCenterArcFaceLoss, CENTRES, "num_subcenters", 2.0, TypeError),
    (AdaCosLoss, CENTRES, "dynamic", "yes", TypeError),
    (ClassCentreHead, CENTRES, "sample_rate", 0.0, ValueError),
    (ClassCentreHead, CENTRES, "sample_rate", "0.1", TypeError),
    (ClassCentreHead, CENTRES, "chunk_size", 0, ValueError),
    (ClassCentreHead, CENTRES, "chunk_size", 1.5, TypeError),
    (ClassCentreHead, CENTRES, "head", "sharded", ValueError),
    (HardMiner, {}, "k", 0, ValueError),
    (HardMiner, {}, "k", 1.0, TypeError),
    (HardMiner, {}, "tuple_type", "quads", ValueError),
    (SemiHardMiner, {}, "margin", -0.1, ValueError),
    (SemiHardMiner, {}, "fallback_to_hardest", 1, TypeError),
    (PairRatioMiner, {}, "ratio", 0, ValueError),
    (PairRatioMiner, {}, "strategy", "hard", ValueError),
    (PairRatioMiner, {}, "seed", 1.5, TypeError),
    (DistanceWeightedMiner, {}, "cutoff", 0.0, ValueError),
    (DistanceWeightedMiner, {}, "cutoff", "0.5", TypeError),
    (CrossBatchMemoryMiner, {}, "memory_size", 0, ValueError),
    (CrossBatchMemoryMiner, {}, "memory_size", 10.0, TypeError),
    (CrossBatchMemoryMiner, {"memory_size": 8}, "embedding_dim", 0, ValueError),
    (PKSampler, SAMPLER, "classes_per_batch", 0, ValueError),
    (PKSampler, SAMPLER, "classes_per_batch", 2.0, TypeError),
    (PKSampler, SAMPLER, "seed", "1", TypeError),
    (PKSampler, SAMPLER, "drop_small_classes", "no", TypeError),
    (DistributedPKSampler, WORLD, "rank", 2, ValueError),
    (DistributedPKSampler, WORLD, "rank", 0.0, TypeError),
    (AdamWOptimizer, {}, "lr", 0, ValueError),
    (AdamWOptimizer, {}, "lr", "1e-3", TypeError),
    (AdamWOptimizer, {}, "betas", (0.9, 1.0), ValueError),
    (AdamWOptimizer, {}, "betas", 0.9, TypeError),
    (SGDOptimizer, {}, "momentum", -0.9, ValueError),
    (SGDOptimizer, {}, "nesterov", "yes", TypeError),
    (WarmupCosineSchedule, {}, "warmup_steps", -1, ValueError),
    (WarmupCosineSchedule, {}, "warmup_steps", 1.5, TypeError),
    (WarmupCosineSchedule, {}, "min_lr_ratio", 2, ValueError),
    (ConstantSchedule, {}, "warmup_steps", "1", TypeError),
    (MahalanobisDistance, {}, "dim", 0, ValueError),
    (MahalanobisDistance, {}, "dim", 2.0, TypeError),
    (MLP, {"input_dim": 4}, "dropout", 1.0, ValueError),
    (SmallCNN, {}, "width", "32", TypeError),
    (GeMPooling, {}, "p", 0, ValueError),
    (GeMPooling, {}, "p", "3", TypeError),
]


@pytest.mark.parametrize("component, others, argument, bad, expected", BAD_ARGUMENTS,
                         ids=[f"{case[0].__name__}-{case[2]}={case[3]!r}" for case in BAD_ARGUMENTS])
def test_constructors_raise_type_error_for_a_wrong_type_and_value_error_for_a_wrong_value(
        component, others, argument, bad, expected):
    with pytest.raises((TypeError, ValueError)) as error:
        component(**{**others, argument: bad})
    assert type(error.value) is expected, f"{type(error.value).__name__}: {error.value}"
    message = str(error.value)
    # A sequence argument may name the entry at fault instead ("betas[1] ... got 1.0").
    shown = repr(bad) in message or message.startswith(f"{argument}[")
    assert message.startswith(argument) and shown, message


def test_a_schedule_refuses_a_non_positive_number_of_steps():
    optimizer = AdamWOptimizer().create([{"params": [torch.zeros(1, requires_grad=True)]}])
    with raises(ValueError, "total_steps must be a positive integer, got 0"):
        ConstantSchedule().create(optimizer, 0)
