"""The packed MLP's fused CPU kernels (workers.cpu_kernels) against the eager ops they replace.

BatchNorm's and pooling's kernels are tested where their layers are (test_wide, test_tasks).
"""

from __future__ import annotations

import torch

from workers.cpu_kernels import bias_relu_, relu_backward_sum_


def _activations(gen: torch.Generator) -> torch.Tensor:
    """(K, features, samples) with exact zeros, negative zeros and NaNs among ordinary values."""
    h = torch.randn(5, 7, 33, generator=gen).round(decimals=1)  # rounding makes zeros
    h[0, 0, :3] = torch.tensor([-0.0, float("nan"), 0.0])
    return h


def test_bias_relu_equals_add_then_relu_exactly():
    gen = torch.Generator().manual_seed(0)
    for relu in (True, False):
        h = _activations(gen)
        stacked = torch.randn(5, 20, generator=gen)
        b = stacked[:, 3:10]  # a strided view, as the bias is a slice of a config's parameter row
        b[0, 0] = 0.0
        want = h.clone().add_(b.unsqueeze(2))
        if relu:
            want = want.relu_()
        bias_relu_(h, b, relu)
        assert torch.equal(h.isnan(), want.isnan()) and h.isnan().any()
        same = h.nan_to_num(9.0) == want.nan_to_num(9.0)
        assert same.all()
        assert torch.equal(torch.signbit(h), torch.signbit(want))  # -0 stays -0, as relu_ leaves it


def test_relu_backward_sum_masks_like_threshold_backward_and_sums_the_bias_gradient():
    gen = torch.Generator().manual_seed(1)
    a = _activations(gen).relu()  # ReLU outputs: zeros (no gradient), positives, a NaN (gradient passes)
    d = torch.randn(5, 7, 33, generator=gen)
    want = torch.ops.aten.threshold_backward(d, a, 0.0)
    gb = torch.empty(5, 7)
    got = d.clone()
    relu_backward_sum_(got, a, gb)
    assert torch.equal(got, want) and (want == 0).sum() > want.numel() // 3
    assert got[0, 0, 1] == d[0, 0, 1]  # the NaN activation's gradient passed
    # The sum's order differs from torch.sum's (vector lanes): float32 rounding apart, the same.
    torch.testing.assert_close(gb, want.sum(2), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(gb, d.sum(2), rtol=1e-3)  # the mask is applied before the sum
