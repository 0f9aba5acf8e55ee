import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mafr.projection import depth_to_xyz, pool_to_grid, project_points, scatter_to_pixels, upsample_rgb, valid_grid_mask

K = np.array([[100.0, 0, 32.0], [0, 100.0, 24.0], [0, 0, 1]])


def test_pinhole_projection_lands_on_the_right_pixels():
    # Points placed exactly on the rays of chosen pixels at various depths.
    pix = [(0, 0), (24, 32), (47, 63), (10, 50)]
    pts = []
    for (r, c), z in zip(pix, (0.5, 1.0, 2.0, 0.8)):
        pts.append([(c - 32) * z / 100, (r - 24) * z / 100, z])
    out = project_points(np.array(pts), K, 48, 64)
    for (r, c), p in zip(pix, pts):
        np.testing.assert_allclose(out[r, c], p, rtol=1e-6)
    assert int((out != 0).any(-1).sum()) == 4


def test_zbuffer_keeps_nearest_and_drops_behind_camera_and_outside():
    near, far = [0.0, 0.0, 0.5], [0.0, 0.0, 2.0]  # same pixel (24, 32)
    behind, outside = [0.0, 0.0, -1.0], [10.0, 0.0, 1.0]
    out = project_points(np.array([far, near, behind, outside]), K, 48, 64)
    np.testing.assert_allclose(out[24, 32], near)
    assert int((out != 0).any(-1).sum()) == 1


def test_extrinsics_transform_world_to_camera():
    # camera translated by +1 in z: world point at z=0 is 1 m in front.
    E = np.eye(4)
    E[2, 3] = 1.0
    out = project_points(np.array([[0.0, 0.0, 0.0]]), K, 48, 64, E)
    np.testing.assert_allclose(out[24, 32], [0, 0, 1.0])


def test_depth_back_projection_inverts_projection():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.4, 0.6, size=(48, 64)).astype(np.float32)
    depth[5, 5] = 0
    xyz = depth_to_xyz(depth, K)
    assert (xyz[5, 5] == 0).all()
    reproj = project_points(xyz[depth > 0], K, 48, 64)
    np.testing.assert_allclose(reproj, xyz, atol=1e-5)
    np.testing.assert_allclose(depth_to_xyz(depth * 1000, K, depth_scale=1e-3), xyz, atol=1e-5)


def test_depth_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        depth_to_xyz(np.full((4, 4), np.nan), K)


def test_scatter_and_pooling_follow_spec():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = scatter_to_pixels(feats, torch.tensor([0, 5]), 4)
    assert m.shape == (2, 4, 4)
    assert m[0, 0, 0] == 1.0 and m[1, 1, 1] == 4.0 and m.abs().sum() == 10.0
    # constant map stays constant through 3x3 avg pool + adaptive pooling
    const = torch.full((3, 16, 16), 2.0)
    torch.testing.assert_close(pool_to_grid(const, 16), const)
    torch.testing.assert_close(pool_to_grid(const, 4), torch.full((3, 4, 4), 2.0))
    # one point: 3x3 pooling spreads it into its 3 x 3 neighbourhood only
    single = torch.zeros(1, 16, 16)
    single[0, 8, 8] = 9.0
    pooled = pool_to_grid(single, 16)
    assert pooled[0, 8, 8] > 0 and pooled[0, 0, 0] == 0 and pooled[0, 8, 13] == 0


def test_valid_grid_mask_and_rgb_upsampling():
    valid = torch.zeros(16, 16, dtype=torch.bool)
    valid[:8, :8] = True
    g = valid_grid_mask(valid, 4)
    assert g[:2, :2].all() and not g[3, 3]
    rgb = torch.arange(4.0).view(1, 1, 2, 2)
    assert upsample_rgb(rgb, 2) is rgb
    up = upsample_rgb(rgb, 4)
    assert up.shape == (1, 1, 4, 4) and up[0, 0, 0, 0] == 0.0 and up[0, 0, 3, 3] == 3.0


def test_fill_small_holes_closes_dropouts_but_not_wide_holes():
    from mafr.projection import fill_small_holes

    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    xyz = torch.stack([xx * 0.001, yy * 0.001, 0.5 + 0.0001 * xx], -1)  # a tilted plane
    valid = torch.ones(40, 40, dtype=torch.bool)
    valid[10, 10] = False  # single dropout
    valid[20:22, 5:7] = False  # 2 x 2 dropout
    valid[25:37, 20:32] = False  # a 12 x 12 hole: a real missing region
    holed = xyz * valid.unsqueeze(-1)
    before = holed.clone()
    filled, v = fill_small_holes(holed, valid, iterations=3)
    torch.testing.assert_close(holed, before)  # input untouched
    assert v[10, 10] and v[20:22, 5:7].all()
    torch.testing.assert_close(filled[10, 10], xyz[10, 10])  # plane is linear: mean of ring = centre
    # one-sided neighbourhoods: within half a pixel spacing (1 mm) of the true surface
    assert float((filled[20:22, 5:7] - xyz[20:22, 5:7]).abs().max()) < 0.0005
    assert not v[28:34, 23:29].any()  # interior of the wide hole stays missing


def test_fill_small_holes_closes_a_round_dropout():
    from mafr.projection import fill_small_holes

    yy, xx = torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="ij")
    xyz = torch.stack([xx, yy, torch.full_like(xx, 5.0)], -1)
    valid = (yy - 15) ** 2 + (xx - 15) ** 2 > 2.5**2  # a disk of radius 2.5 px, as sensors drop
    _, v = fill_small_holes(xyz * valid.unsqueeze(-1), valid, iterations=3)
    assert int((~v).sum()) == 5  # peeled from 21 missing pixels, one ring per iteration
    _, v = fill_small_holes(xyz * valid.unsqueeze(-1), valid, iterations=4)
    assert bool(v.all())


def test_fill_small_holes_equals_the_ring_convolution_it_replaced():
    # The shifted sums are the 3 x 3 ring convolution's sums (zero padding), so the fill is too.
    import torch.nn.functional as F

    from mafr.projection import fill_small_holes

    def by_convolution(xyz, valid, iterations=4, min_neighbours=4):
        kernel = torch.ones(1, 1, 3, 3, dtype=xyz.dtype)
        kernel[0, 0, 1, 1] = 0
        xyz, valid = xyz.clone(), valid.clone()
        for _ in range(iterations):
            count = F.conv2d(valid.to(xyz.dtype)[None, None], kernel, padding=1)[0, 0]
            fill = ~valid & (count >= min_neighbours)
            sums = F.conv2d((xyz * valid.unsqueeze(-1)).permute(2, 0, 1).unsqueeze(1), kernel, padding=1)[:, 0]
            xyz[fill] = sums.permute(1, 2, 0)[fill] / count[fill].unsqueeze(-1)
            valid = valid | fill
        return xyz, valid

    g = torch.Generator().manual_seed(3)
    xyz = torch.rand(48, 40, 3, generator=g) * torch.tensor([0.1, 0.1, 0.02]) + torch.tensor([0.0, 0.0, 0.5])
    valid = torch.rand(48, 40, generator=g) > 0.3  # dropouts of every shape, the borders included
    valid[0, :] = False
    want_xyz, want_valid = by_convolution(xyz * valid.unsqueeze(-1), valid)
    got_xyz, got_valid = fill_small_holes(xyz * valid.unsqueeze(-1), valid)
    assert torch.equal(got_valid, want_valid) and int((got_valid & ~valid).sum()) > 100
    torch.testing.assert_close(got_xyz, want_xyz, rtol=1e-6, atol=1e-7)


def test_measured_pixels_is_any_coordinate_non_zero():
    from mafr.io import measured_pixels

    xyz = np.zeros((3, 4, 3), dtype=np.float32)
    xyz[0, 0, 0] = 1.0
    xyz[1, 2, 1] = -2.0
    xyz[2, 3, 2] = 1e-30
    xyz[2, 0] = np.nan  # not zero: measured (and rejected later as non-finite)
    expected = np.any(xyz != 0, axis=-1)
    got = measured_pixels(xyz)
    assert got.dtype == bool and got.shape == (3, 4) and np.array_equal(got, expected) and int(got.sum()) == 4


def test_resize_xyz_mean_averages_only_measured_pixels():
    from mafr.projection import resize_xyz_mean

    xyz = np.zeros((4, 4, 3), dtype=np.float32)
    xyz[:2, :2] = [[[1, 1, 1], [3, 3, 3]], [[5, 5, 5], [0, 0, 0]]]  # 3 of 4 measured
    xyz[:2, 2:] = [[[2, 2, 2], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]  # 1 of 4: too few
    xyz[2:, :2] = 7.0  # all measured
    before = xyz.copy()
    out, valid = resize_xyz_mean(xyz, 2)
    np.testing.assert_array_equal(xyz, before)  # input untouched
    assert valid.tolist() == [[True, False], [True, False]]
    torch.testing.assert_close(out[0, 0], torch.full((3,), 3.0))  # the missing pixel is not a 0 in the mean
    torch.testing.assert_close(out[1, 0], torch.full((3,), 7.0))
    assert bool((out[~valid] == 0).all())


def test_resize_xyz_mean_is_the_identity_at_the_same_size_and_averages_noise_away():
    from mafr.projection import resize_xyz_mean

    rng = np.random.default_rng(0)
    xyz = np.zeros((400, 400, 3), dtype=np.float32)
    xyz[..., 2] = 0.5 + rng.normal(0, 0.0002, (400, 400))
    xyz[:50] = 0.0  # unmeasured band
    same, valid = resize_xyz_mean(xyz, 400)
    np.testing.assert_array_equal(same.numpy(), xyz)
    assert valid.numpy().tolist() == (xyz != 0).any(-1).tolist()
    small, valid = resize_xyz_mean(xyz, 224)
    noise = float(small[..., 2][valid].std())
    assert noise < 0.0002 / 1.5  # ~3 measurements per output pixel


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.integers(2, 30), st.integers(0, 2**32 - 1))
def test_resize_xyz_mean_stays_within_the_measured_values(h, w, size, seed):
    from mafr.projection import resize_xyz_mean

    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0.1, 2.0, (h, w, 3)).astype(np.float32) * (rng.random((h, w, 1)) < 0.7)
    out, valid = resize_xyz_mean(xyz, size)
    assert out.shape == (size, size, 3) and valid.shape == (size, size) and out.dtype == torch.float32
    measured = xyz[(xyz != 0).any(-1)]
    if valid.any():
        assert float(out[valid].min()) >= measured.min() - 1e-6 and float(out[valid].max()) <= measured.max() + 1e-6
    assert bool((out[~valid] == 0).all()) and bool((out[valid] != 0).any(-1).all())


def test_resize_xyz_mean_of_coordinates_near_the_float32_limit_is_finite():
    from mafr.projection import resize_xyz_mean

    big = np.full((8, 8, 3), 3e38, dtype=np.float32)
    out, valid = resize_xyz_mean(big, 4)
    assert bool(valid.all()) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, torch.full((4, 4, 3), 3e38))


def test_axis_pool_matrix_reproduces_pool_to_grid():
    from mafr.projection import _axis_pool_matrix

    torch.manual_seed(0)
    x = torch.rand(2, 32, 32, dtype=torch.float64)
    for grid in (32, 8, 5):
        a = _axis_pool_matrix(32, grid)
        torch.testing.assert_close(a @ x @ a.T, pool_to_grid(x, grid))


def test_centres_operator_equals_interpolate_scatter_pool():
    from mafr.extractors.pointops import knn, three_nn_interpolate
    from mafr.projection import centres_to_grid_operator

    gen = torch.Generator().manual_seed(1)
    size, grid, n, g, c = 32, 8, 300, 20, 6
    pixel_index = torch.randperm(size * size, generator=gen)[:n]
    points = torch.rand(1, n, 3, generator=gen)
    centres = points[:, torch.randperm(n, generator=gen)[:g]]
    feats = torch.randn(1, g, c, generator=gen)
    dense = pool_to_grid(scatter_to_pixels(three_nn_interpolate(points, centres, feats)[0], pixel_index, size), grid)
    dist, idx = knn(points, centres, 3)
    w = 1.0 / (dist[0] + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    op = centres_to_grid_operator(pixel_index, size, grid, idx[0], w, g)
    fast = (op.float() @ feats[0]).T.reshape(c, grid, grid)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-4)
