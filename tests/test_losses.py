import torch

from mafr.losses import census, restoration_loss, smoothness, znssd


def test_znssd_zero_for_positive_affine_copy_and_positive_otherwise():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 5, 16)
    assert znssd(x, 3.0 * x + 1.5).item() < 1e-8
    assert znssd(x, torch.randn_like(x)).item() > 0.5
    # a negated copy is maximally dissimilar: each normalised vector flips sign -> mean 4
    assert abs(znssd(x, -x).item() - 4.0) < 1e-3


def test_census_zero_for_identical_and_equals_pooled_l1():
    torch.manual_seed(1)
    x = torch.randn(1, 9, 9, 4)
    assert census(x, x).item() == 0.0
    y = x + 2.0  # a constant shift survives average pooling unchanged
    assert abs(census(x, y).item() - 2.0) < 1e-6


def test_smoothness_zero_for_constant_residual_and_edge_aware():
    x = torch.zeros(1, 6, 6, 3)
    assert smoothness(x, x + 0.7).item() == 0.0
    step = torch.zeros(1, 6, 6, 3)
    step[:, :, 3:] = 1.0  # residual jumps across columns
    flat_input = smoothness(torch.zeros_like(step), step).item()
    edge_input = torch.zeros(1, 6, 6, 3)
    edge_input[:, :, 3:] = 10.0  # input has an edge at the same place -> weight exp(-10)
    assert smoothness(edge_input, edge_input + step).item() < 1e-3 * flat_input
    # hand value: one jump of 1 between columns 2|3 on 6 rows: mean over 6 x 5 differences = 1/5
    assert abs(flat_input - 1 / 5) < 1e-6


def test_smoothness_first_two_channels_ignores_the_rest():
    x = torch.zeros(1, 4, 4, 5)
    r = torch.zeros(1, 4, 4, 5)
    r[..., 2:] = torch.randn(1, 4, 4, 3)
    assert smoothness(x, x + r, first_two_channels=True).item() == 0.0
    assert smoothness(x, x + r).item() > 0


def test_restoration_loss_weights():
    torch.manual_seed(2)
    x, y = torch.randn(1, 8, 8, 6), torch.randn(1, 8, 8, 6)
    total = restoration_loss(x, y)
    parts = znssd(x, y) + smoothness(x, y) + census(x, y)
    torch.testing.assert_close(total, parts)
    only_census = restoration_loss(x, y, w_similarity=0, w_smoothness=0, w_census=2.0)
    torch.testing.assert_close(only_census, 2 * census(x, y))


def test_znssd_gradient_is_finite_where_restored_channels_are_all_equal():
    # bf16 rounding can make every channel of a restored position equal: the variance is then
    # exactly 0, and sqrt's infinite slope there used to turn the whole gradient into NaN.
    target = torch.randn(1, 2, 2, 3)
    restored = torch.randn(1, 2, 2, 3)
    restored[0, 0, 0] = 0.25
    restored.requires_grad_(True)
    znssd(target, restored).backward()
    assert torch.isfinite(restored.grad).all()
    # Away from zero variance the value is what it always was.
    x = torch.randn(4, 5, 6, 7, dtype=torch.float64)
    y = torch.randn(4, 5, 6, 7, dtype=torch.float64)
    zx = (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
    zy = (y - y.mean(-1, keepdim=True)) / ((y - y.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
    assert torch.equal(znssd(x, y), (zx - zy).pow(2).mean())
