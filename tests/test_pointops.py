"""Point operators against hand-worked cases and brute force."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mafr.extractors import pointops
from mafr.extractors.pointops import farthest_point_sample, group_points, knn, three_nn_interpolate

# A 4 x 2 x 1 box: corners in a scrambled order and the box centre at index 3.
BOX = torch.tensor(
    [
        [0.0, 0.0, 0.0],  # 0
        [0.0, 0.0, 1.0],  # 1
        [4.0, 0.0, 0.0],  # 2
        [2.0, 1.0, 0.5],  # 3 centre
        [0.0, 2.0, 1.0],  # 4
        [4.0, 2.0, 0.0],  # 5
        [4.0, 2.0, 1.0],  # 6
        [0.0, 2.0, 0.0],  # 7
        [4.0, 0.0, 1.0],  # 8
    ]
)


def _reference_fps(points: torch.Tensor, m: int, start: int = 0) -> list[int]:
    """Textbook FPS on one cloud (B = 1), for comparison."""
    p = points[0]
    chosen = [start]
    min_d = ((p - p[start]) ** 2).sum(-1)
    for _ in range(m - 1):
        nxt = int(torch.argmax(min_d))
        chosen.append(nxt)
        min_d = torch.minimum(min_d, ((p - p[nxt]) ** 2).sum(-1))
    return chosen


def test_fps_box_sequence_worked_by_hand() -> None:
    # 0 -> opposite corner 6 (d^2 21) -> centre 3 (5.25 from both) -> tie at 5 between corners
    # 2 and 4: lowest index first -> 4 -> the last four corners all at 1, in index order.
    idx = farthest_point_sample(BOX[None], 9)
    assert idx.dtype == torch.long
    assert idx.tolist() == [[0, 6, 3, 2, 4, 1, 5, 7, 8]]


def test_fps_start_index_and_batches() -> None:
    # from corner 6 the farthest is 0 (d^2 21), then the centre
    assert farthest_point_sample(BOX[None], 3, start_index=6).tolist() == [[6, 0, 3]]
    g = torch.Generator().manual_seed(0)
    clouds = torch.rand(2, 300, 3, generator=g, dtype=torch.float64)
    batched = farthest_point_sample(clouds, 40)
    for b in range(2):
        assert batched[b].tolist() == _reference_fps(clouds[b : b + 1], 40)


def test_fps_torch_path_matches_numpy_path() -> None:
    g = torch.Generator().manual_seed(1)
    clouds = torch.rand(2, 500, 3, generator=g)
    via_numpy = farthest_point_sample(clouds, 64)
    via_torch = pointops._fps_torch(clouds, 64, 0, None)  # the path used on GPUs
    assert torch.equal(via_numpy, via_torch)
    assert via_numpy[0].unique().numel() == 64


_KERNEL_CHECK = """
import sys, numpy as np, torch
from mafr.extractors._fps_kernel import farthest_point_sample_kernel
from mafr.extractors.pointops import farthest_point_sample
g = torch.Generator().manual_seed(2)
for n, k, b, start in ((500, 64, 2, 0), (300, 40, 1, 1), (700, 90, 3, 7)):
    xyz = torch.rand(b, n, 3, generator=g) + torch.tensor([0.0, 0.0, 0.5])
    xyz[:, ::17] = 0.0  # the "no measurement" points skip_near_origin leaves out
    skip = (xyz * xyz).sum(-1) <= 1e-3
    for sk, kw in ((None, {}), (skip, {"skip_near_origin": True})):
        got = farthest_point_sample_kernel(xyz, k, start, sk)
        want = farthest_point_sample(xyz, k, start, **kw)  # the CPU path
        assert got.dtype == torch.long and torch.equal(got, want), (n, k, b, start, sk is not None)
# An organized grid is full of exact ties; the first maximum wins on both paths.
u, v = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
grid = torch.stack([u.flatten() * 1e-3, v.flatten() * 1e-3, torch.full((576,), 0.5)], -1)[None]
assert torch.equal(farthest_point_sample_kernel(grid, 60, 0, None), farthest_point_sample(grid, 60))
print("ok")
"""


def test_fps_kernel_chooses_the_cpu_paths_centres_in_tritons_interpreter() -> None:
    # The GPU kernel's own code, run by Triton's CPU interpreter: the same program the GPU
    # compiles (tests/test_devices.py runs it compiled on CUDA).
    triton = pytest.importorskip("triton")
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 8):
        pytest.skip("Triton < 3.8's interpreter cannot loop over a runtime bound (the compiled kernel can)")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_fps_kernel_runs_only_where_it_can() -> None:
    from mafr.extractors import _fps_kernel

    assert not _fps_kernel.available(torch.zeros(1, 10, 3))  # CPU tensors: the numpy path
    if torch.cuda.is_available() and _fps_kernel.triton is not None:
        assert _fps_kernel.available(torch.zeros(1, _fps_kernel.MAX_POINTS, 3, device="cuda"))
        assert not _fps_kernel.available(torch.zeros(1, _fps_kernel.MAX_POINTS + 1, 3, device="cuda"))


def test_fps_kernel_failure_falls_back_to_the_loop_once(monkeypatch) -> None:
    from mafr.extractors import _fps_kernel

    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(_fps_kernel, "_broken", None)
    monkeypatch.setattr(_fps_kernel, "triton", object())  # as if importable, on any machine
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(_fps_kernel, "farthest_point_sample_kernel", broken)
    clouds = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(6))
    want = farthest_point_sample(clouds, 20)
    with pytest.warns(RuntimeWarning, match="falls back to the torch loop.*no kernel for this GPU"):
        assert torch.equal(pointops._fps_device(clouds, 20, 0, None), want)
    assert len(calls) == 1 and not _fps_kernel.available(clouds)
    assert torch.equal(pointops._fps_device(clouds, 20, 0, None), want) and len(calls) == 1  # not retried


def test_fps_skip_near_origin_like_cuda_kernel() -> None:
    # index 5 is at the origin: the CUDA kernel never picks it (|p|^2 <= 1e-3), plain FPS does
    pts = torch.tensor(
        [[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [1.0, 1.3, 1.0],
         [1.1, 1.1, 1.2], [1.05, 1.0, 1.0], [0.0, 0.0, 0.0]]
    )
    assert farthest_point_sample(pts[None], 3).tolist() == [[0, 5, 2]]
    assert farthest_point_sample(pts[None], 3, skip_near_origin=True).tolist() == [[0, 2, 3]]


def test_fps_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_samples must be in \\[1, 9\\], got 10"):
        farthest_point_sample(BOX[None], 10)
    with pytest.raises(ValueError, match=r"shape \(B, N, 3\)"):
        farthest_point_sample(BOX, 3)
    bad = BOX.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        farthest_point_sample(bad[None], 3)
    with pytest.raises(TypeError, match="floating-point"):
        farthest_point_sample(BOX[None].long(), 3)


@pytest.mark.parametrize("m,chunk", [(37, 8), (64, 64), (5, 256)])
def test_knn_equals_brute_force(m: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(m)
    pts = torch.rand(2, 400, 3, generator=g) + torch.tensor([0.0, 0.0, 5.0])  # far from the origin
    q = torch.rand(2, m, 3, generator=g) + torch.tensor([0.0, 0.0, 5.0])
    dist, idx = knn(q, pts, 10, chunk_size=chunk)
    brute = ((q.double()[:, :, None] - pts.double()[:, None]) ** 2).sum(-1).sqrt()
    ref_d, ref_i = brute.sort(dim=-1)
    assert dist.shape == idx.shape == (2, m, 10)
    assert torch.equal(idx, ref_i[..., :10])
    assert torch.allclose(dist.double(), ref_d[..., :10], atol=1e-6)
    assert bool((dist[..., 1:] >= dist[..., :-1]).all())


def test_broadcast_distances_equal_cdists_exact_mode(monkeypatch) -> None:
    # The GPU formula, run on the CPU: the same distances as cdist's difference mode (to the last
    # bits), so neighbours are ranked alike on every device, far from the origin too.
    g = torch.Generator().manual_seed(8)
    a = torch.rand(2, 70, 3, generator=g) * 0.1 + torch.tensor([0.3, -0.2, 0.5])
    b = torch.rand(2, 300, 3, generator=g) * 0.1 + torch.tensor([0.3, -0.2, 0.5])
    want = torch.cdist(a, b, compute_mode=pointops._EXACT)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("meta")))
    got = pointops._distances(a, b)  # takes the non-CPU branch
    monkeypatch.undo()
    torch.testing.assert_close(got, want, rtol=2e-7, atol=0)
    assert not torch.equal(got, torch.cdist(a, b))  # the matrix-product shortcut differs: the test can tell


def _by_distance_then_index(query: torch.Tensor, points: torch.Tensor, k: int):
    """Every pair compared, ties to the lower index: the rule the CPU kNN documents."""
    d = torch.cdist(query, points, compute_mode=pointops._EXACT)
    order = d.argsort(dim=-1, stable=True)[:, :k]  # a stable sort keeps equal distances by index
    return d.gather(1, order), order


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from(["flat grid", "wavy grid", "random", "duplicates"]),
    k=st.sampled_from([1, 3, 16, 40]),
)
def test_knn_skipping_far_blocks_finds_the_same_neighbours(seed: int, shape: str, k: int) -> None:
    """Both block paths (many points per query; many queries among few points) give exactly the
    neighbours of comparing every pair, ties included (a flat grid has many equal distances)."""
    g = torch.Generator().manual_seed(seed)
    side = 70
    yy, xx = torch.meshgrid(torch.arange(side * 1.0), torch.arange(side * 1.0), indexing="ij")
    if shape == "random":
        cloud = torch.rand(side * side, 3, generator=g)
    else:
        z = torch.full_like(xx, 0.5) if shape != "wavy grid" else 0.5 + 0.01 * torch.sin(xx / 7 + seed)
        cloud = torch.stack([xx * 1e-3, yy * 1e-3, z], -1).reshape(-1, 3)
        if shape == "duplicates":
            cloud[::7] = cloud[3]  # one point measured many times
    few = cloud[torch.randperm(cloud.shape[0], generator=g)[:300]]
    # the grouping's case: 300 queries among 4900 points
    d, i = pointops._knn_blocks(few, cloud, k, chunk_size=128)
    want_d, want_i = _by_distance_then_index(few, cloud, k)
    assert torch.equal(i, want_i) and torch.equal(d, want_d)
    # the interpolation's case: 4900 queries among 300 points (only a share checked by brute force)
    d, i = pointops._knn_query_blocks(cloud, few, min(k, 3))
    rows = torch.randperm(cloud.shape[0], generator=g)[:200]
    want_d, want_i = _by_distance_then_index(cloud[rows], few, min(k, 3))
    assert torch.equal(i[rows], want_i) and torch.equal(d[rows], want_d)


def test_knn_on_a_scan_takes_the_block_paths_and_agrees_with_every_pair() -> None:
    """Through the public function: a scan-sized cloud uses the block paths on the CPU."""
    g = torch.Generator().manual_seed(3)
    cloud = torch.rand(1, 5000, 3, generator=g)
    centres = cloud[:, :200]
    for query, points, k in ((centres, cloud, 32), (cloud, centres, 3)):
        d, i = knn(query, points, k)
        want_d, want_i = _by_distance_then_index(query[0], points[0], k)
        assert torch.equal(i[0], want_i) and torch.equal(d[0], want_d)


def test_knn_rejects_k_larger_than_cloud() -> None:
    with pytest.raises(ValueError, match="k must be in \\[1, 9\\], got 12"):
        knn(BOX[None], BOX[None], 12)
    with pytest.raises(ValueError, match="batch size 1, got 2"):
        knn(BOX[None], BOX[None].expand(2, -1, -1), 2)


def test_interpolation_at_a_centre_returns_its_feature() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(1, 20, 3, generator=g)
    feats = torch.randn(1, 20, 7, generator=g)
    out = three_nn_interpolate(centres[:, [4, 11]], centres, feats)
    assert torch.allclose(out[0], feats[0, [4, 11]], atol=1e-5)


def test_interpolation_reproduces_constant_field() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.rand(2, 30, 3, generator=g)
    query = torch.rand(2, 1000, 3, generator=g)
    feats = torch.tensor([1.5, -2.0, 0.25]).expand(2, 30, 3)
    out = three_nn_interpolate(query, centres, feats, chunk_size=128)
    assert out.shape == (2, 1000, 3)
    assert torch.allclose(out, feats[:, :1].expand(2, 1000, 3), atol=1e-6)


def test_interpolation_linear_field_at_triangle_centroid() -> None:
    # equilateral triangle of centres around the query, two more centres far away
    s = 3.0**0.5 / 2
    centres = torch.tensor(
        [[[1.0, 0.0, 0.0], [-0.5, s, 0.0], [-0.5, -s, 0.0], [9.0, 9.0, 0.0], [0.0, 0.0, 7.0]]]
    )
    a = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.7, -2.0]])  # linear field f(x) = a @ x + b
    b = torch.tensor([0.25, -1.0])
    feats = centres @ a.T + b
    query = torch.zeros(1, 1, 3)  # the centroid
    out = three_nn_interpolate(query, centres, feats)
    assert torch.allclose(out[0, 0], b, atol=1e-6)  # f(centroid) = f(0) = b
    shifted = three_nn_interpolate(query + 10, centres + 10, feats)  # translation invariance
    assert torch.allclose(shifted, out, atol=1e-5)


def test_interpolation_weights_hand_worked() -> None:
    # distances 1, 2, 4 (and 10, not among the 3 nearest): weights 1 : 1/2 : 1/4 -> / 1.75
    centres = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -4.0], [10.0, 0.0, 0.0]]])
    feats = torch.tensor([[[1.0], [2.0], [3.0], [100.0]]])
    out = three_nn_interpolate(torch.zeros(1, 1, 3), centres, feats)
    assert out.item() == pytest.approx((1.0 + 2.0 / 2 + 3.0 / 4) / 1.75, rel=1e-6)
    out1 = three_nn_interpolate(torch.zeros(1, 1, 3), centres, feats, k=1)
    assert out1.item() == pytest.approx(1.0, rel=1e-6)


def test_interpolation_does_not_modify_inputs() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.rand(1, 8, 3, generator=g)
    feats = torch.rand(1, 8, 4, generator=g)
    query = torch.rand(1, 50, 3, generator=g)
    copies = [t.clone() for t in (centres, feats, query)]
    three_nn_interpolate(query, centres, feats)
    assert all(torch.equal(a, b) for a, b in zip(copies, (centres, feats, query)))
    with pytest.raises(ValueError, match=r"features must have shape \(B, G, C\) = \(1, 8, C\)"):
        three_nn_interpolate(query, centres, feats[:, :5])


def test_group_points_relative_neighbourhoods_contain_centre() -> None:
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(2, 300, 3, generator=g)
    before = pts.clone()
    neigh, centres = group_points(pts, 16, 8)
    assert neigh.shape == (2, 16, 8, 3) and centres.shape == (2, 16, 3)
    assert torch.equal(pts, before)
    # first neighbour is the centre itself (distance 0), the rest sorted by distance
    assert bool((neigh[:, :, 0] == 0).all())
    norms = neigh.norm(dim=-1)
    assert bool((norms[..., 1:] >= norms[..., :-1] - 1e-7).all())
    # absolute neighbours are input points, and they are the centre's 8 nearest
    absolute = neigh + centres.unsqueeze(2)
    for b in range(2):
        near = torch.cdist(centres[b], pts[b]).topk(8, largest=False).indices
        assert torch.allclose(absolute[b], pts[b][near], atol=1e-6)
    fps = farthest_point_sample(pts, 16)
    assert torch.equal(centres, torch.stack([pts[b, fps[b]] for b in range(2)]))


def test_group_points_strided_fps_subsample() -> None:
    g = torch.Generator().manual_seed(4)
    pts = torch.rand(1, 1001, 3, generator=g)
    neigh, centres = group_points(pts, 10, 5, fps_max_points=101)
    sub = torch.arange(0, 1001, 10)  # round(linspace(0, 1000, 101)) = every 10th point
    assert torch.equal(centres[0, 0], pts[0, 0])  # index 0 stays the first centre
    expected = pts[0, sub][farthest_point_sample(pts[:, sub], 10)[0]]
    assert torch.equal(centres[0], expected)
    # kNN still searches all points: most neighbours are not in the subsample
    absolute = (neigh + centres.unsqueeze(2)).reshape(-1, 3)
    in_sub = (torch.cdist(absolute, pts[0, sub]).min(dim=1).values < 1e-7).float().mean()
    assert in_sub < 0.5
    with pytest.raises(ValueError, match=r"num_groups \(20\) must not exceed .*\(11 = min\(N=1001"):
        group_points(pts, 20, 5, fps_max_points=11)
