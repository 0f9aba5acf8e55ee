import pytest
import torch

from mafr.scoring import box_smooth, fuse, image_score, residual_map, score_maps


def test_residual_is_l2_over_channels():
    a = torch.zeros(1, 2, 2, 2)
    b = a.clone()
    b[0, 1, 1] = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(residual_map(a, b), torch.tensor([[[0.0, 0.0], [0.0, 5.0]]]))


def test_fusion_modes():
    m2, m3 = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[3.0, 0.0, 5.0]])
    torch.testing.assert_close(fuse(m2, m3, "product"), torch.tensor([[3.0, 0.0, 0.0]]))
    torch.testing.assert_close(fuse(m2, m3, "sum"), torch.tensor([[4.0, 2.0, 5.0]]))
    torch.testing.assert_close(fuse(m2, m3, "max"), torch.tensor([[3.0, 2.0, 5.0]]))
    torch.testing.assert_close(fuse(m2, m3, "rgb"), m2)
    torch.testing.assert_close(fuse(m2, m3, "xyz"), m3)


def test_product_zeroes_where_either_map_is_zero():
    torch.manual_seed(0)
    m2, m3 = torch.rand(4, 4) + 0.1, torch.rand(4, 4) + 0.1
    m2[0, 0] = 0
    m3[2, 3] = 0
    fused = fuse(m2, m3)
    assert fused[0, 0] == 0 and fused[2, 3] == 0
    assert bool((fused[(m2 != 0) & (m3 != 0)] > 0).all())


@pytest.mark.parametrize("count_padding", [False, True])
@pytest.mark.parametrize("shape", [(2, 40, 56), (1, 9, 13), (1, 3, 4)])
def test_box_smooth_is_repeated_avg_pool(shape, count_padding):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape) + shape[-1]))
    x = maps.unsqueeze(1)
    for k, passes in ((5, 2), (7, 1)):
        for _ in range(passes):
            x = torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=count_padding)
    before = maps.clone()
    torch.testing.assert_close(box_smooth(maps, 2, 1, count_padding=count_padding), x.squeeze(1), rtol=1e-5, atol=1e-7)
    assert torch.equal(maps, before)  # the input is not modified
    # The pooled form used off the CPU gives the same maps.
    from mafr.scoring import _box_smooth_pooled

    torch.testing.assert_close(_box_smooth_pooled(maps, 2, 1, count_padding), x.squeeze(1))


def test_box_smooth_preserves_constants_and_spreads_peaks():
    const = torch.full((1, 20, 20), 2.5)
    torch.testing.assert_close(box_smooth(const), const)
    peak = torch.zeros(1, 41, 41)
    peak[0, 20, 20] = 1.0
    sm = box_smooth(peak, 1, 0)
    assert abs(sm.sum().item() - 1.0) < 1e-5 and abs(sm[0, 20, 20].item() - 1 / 25) < 1e-6


def test_image_score_is_max_over_sqrt_mean_nonzero():
    m = torch.tensor([[[0.0, 1.0], [4.0, 0.0]]])
    # non-zero mean = 2.5 -> 4 / sqrt(2.5)
    assert abs(image_score(m).item() - 4 / 2.5**0.5) < 1e-6
    assert image_score(torch.zeros(1, 3, 3)).item() == 0.0


def test_score_maps_masks_invalid_pixels_and_ranks_peaks():
    res2 = torch.ones(2, 4, 4)
    res3 = torch.ones(2, 4, 4)
    res2[1, 1, 1] = res3[1, 1, 1] = 6.0  # a defect in sample 1 only
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, 24:] = False
    fused, m2, m3, scores = score_maps(res2, res3, valid)
    assert fused.shape == (2, 32, 32)
    assert float(fused[:, :, 25:].abs().max()) == 0.0  # dilated validity ends at column 24
    assert float(m3[:, :, 25:].abs().max()) == 0.0
    assert float(m2[:, :, 25:].min()) > 0  # RGB exists everywhere
    assert scores[1] > scores[0]
    peak = divmod(int(fused[1].argmax()), 32)
    assert 4 <= peak[0] <= 16 and 4 <= peak[1] <= 16
