"""Clipping policies against a hand computation over the flattened gradient vector."""

import math

import pytest
import torch

from trainer.clipping import NoClip, NormClip, ValueClip

pytestmark = pytest.mark.unit


def params_with_grads(scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    params = []
    for shape in shapes:
        p = torch.zeros(shape, requires_grad=True)
        p.grad = torch.randn(shape, generator=gen) * scale
        params.append(p)
    params.append(torch.zeros(2, requires_grad=True))  # no grad: must be ignored
    return params


def flat(params):
    return [x for p in params if p.grad is not None for x in p.grad.flatten().tolist()]


def after_clip(policy, result):
    """The post-clip norm and clipped flag of one step: the step's own, or (NormClip, NoClip)
    what the policy derives at the log step from the pre-clip norm."""
    if result.clipped_norm is not None:
        return result.clipped_norm.item(), result.clipped.item()
    norms, clipped = policy.clipped_stats([result.norm.item()])
    return norms[0], clipped[0]


def hand_norm(values, norm_type):
    if norm_type == math.inf:
        return max(abs(v) for v in values)
    return sum(abs(v) ** norm_type for v in values) ** (1 / norm_type)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_norm_clip_matches_hand_computation(norm_type, max_norm):
    params = params_with_grads()
    before = flat(params)
    expected_norm = hand_norm(before, norm_type)
    coef = min(1.0, max_norm / (expected_norm + 1e-6))

    policy = NormClip(max_norm, norm_type)
    result = policy(params)

    assert result.norm.item() == pytest.approx(expected_norm, rel=1e-6)
    assert flat(params) == pytest.approx([v * coef for v in before], rel=1e-6, abs=1e-9)
    clipped_norm, clipped = after_clip(policy, result)
    assert clipped_norm == pytest.approx(hand_norm(flat(params), norm_type), rel=1e-5)
    assert clipped == (expected_norm > max_norm)
    assert clipped_norm <= max_norm * (1 + 1e-6)


def test_value_clip_matches_hand_computation():
    params = params_with_grads(scale=2.0)
    before = flat(params)
    clipped = [max(-1.0, min(1.0, v)) for v in before]

    result = ValueClip(1.0)(params)

    assert flat(params) == pytest.approx(clipped)
    assert result.norm.item() == pytest.approx(hand_norm(before, 2.0), rel=1e-6)
    assert result.clipped_norm.item() == pytest.approx(hand_norm(clipped, 2.0), rel=1e-6)
    assert result.clipped.item() is True
    assert ValueClip(100.0)(params_with_grads()).clipped.item() is False


def test_no_clip_measures_and_leaves_gradients():
    params = params_with_grads()
    before = flat(params)
    policy = NoClip()
    result = policy(params)
    assert flat(params) == before
    assert result.norm.item() == pytest.approx(hand_norm(before, 2.0), rel=1e-6)
    assert after_clip(policy, result) == (result.norm.item(), False)


def test_non_finite_gradient_gives_non_finite_norm():
    params = params_with_grads()
    params[0].grad[0, 0] = float("nan")
    assert not torch.isfinite(NormClip(1.0)(params).norm)
    params = params_with_grads()
    params[1].grad[0] = float("inf")
    assert not torch.isfinite(NoClip()(params).norm)
