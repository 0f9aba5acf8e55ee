"""Weight-free extractors of the "offline" preset: FPFH (3D) and colour/gradient cells (RGB).

Values are checked against geometry / images whose answer is known in closed form.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from mafr.extractors.offline import ColorGradientExtractor, FPFHExtractor

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SPACING = 1e-3  # 1 mm between grid points, surfaces 0.5 m from the camera
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The inputs here are small: one thread avoids paying for thread-pool round trips, which
    on a busy shared machine dominate (results do not depend on the thread count)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return (xs - size / 2) * SPACING, (ys - size / 2) * SPACING


def _surface(z: torch.Tensor) -> torch.Tensor:
    """Organized (1, S, S, 3) map of the height field ``z`` over the regular grid."""
    x, y = _grid(z.shape[0])
    return torch.stack([x, y, z], dim=-1).unsqueeze(0)


def _all_valid(size: int) -> torch.Tensor:
    return torch.ones(1, size, size, dtype=torch.bool)


def _centre_bins(bins: int = 11) -> torch.Tensor:
    """The FPFH of a plane: every group's mass in its middle bin (all pair angles are 0)."""
    h = torch.zeros(3, bins)
    h[:, bins // 2] = 1.0
    return h.flatten()


def _rgb_to_input(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - MEAN) / STD


def _opponent(rgb: tuple[float, float, float]) -> torch.Tensor:
    r, g, b = rgb
    return torch.tensor(
        [(r - g) / math.sqrt(2), (r + g - 2 * b) / math.sqrt(6), (r + g + b) / math.sqrt(3)]
    )


# ---------------------------------------------------------------------------------- FPFH
def test_fpfh_normals_of_tilted_plane_face_the_camera() -> None:
    # A pinhole camera (f = 100 px) seeing the plane n.x = 0.5 with n tilted 30 degrees.
    size, f = 48, 100.0
    n_true = torch.tensor([math.sin(math.radians(30)), 0.1, -1.0])
    n_true = n_true / n_true.norm()
    v, u = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    rays = torch.stack([(u - size / 2) / f, (v - size / 2) / f, torch.ones_like(u)], dim=-1)
    depth = -0.5 / (rays @ n_true)  # n.(t r) = -0.5 with n.z < 0: the plane lies at z > 0
    xyz = (rays * depth.unsqueeze(-1)).unsqueeze(0)
    assert bool((xyz[..., 2] > 0).all())
    normals = FPFHExtractor().estimate_normals(xyz, _all_valid(size))
    assert normals.shape == (1, 3, size, size) and normals.dtype == torch.float32
    # Documented orientation: towards the camera at the origin, so z < 0 here.
    assert torch.allclose(normals[0].permute(1, 2, 0), n_true.expand(size, size, 3), atol=1e-4)


def test_fpfh_plane_is_one_peaked_histogram_and_zero_at_invalid() -> None:
    size = 40
    x, y = _grid(size)
    xyz = _surface(0.5 + 0.3 * x - 0.2 * y)
    valid = _all_valid(size)
    valid[0, 10:14, 20:23] = False  # a hole in the scan
    xyz[0, 10:14, 20:23] = float("nan")  # sensors may write NaN there; it must be ignored
    feats = FPFHExtractor()(xyz, valid)
    assert feats.shape == (1, 33, size, size) and feats.dtype == torch.float32
    assert bool((feats[0][:, ~valid[0]] == 0).all())
    per_pixel = feats[0][:, valid[0]].t()  # every valid pixel, including borders and hole rims
    assert torch.allclose(per_pixel, _centre_bins().expand_as(per_pixel), atol=1e-6)


def test_fpfh_sphere_differs_from_plane_and_groups_sum_to_one() -> None:
    size, radius = 64, 8 * SPACING
    x, y = _grid(size)
    inside = x**2 + y**2 < (0.95 * radius) ** 2
    z = 0.5 - torch.sqrt((radius**2 - x**2 - y**2).clamp_min(0))
    feats = FPFHExtractor()(_surface(z), inside.unsqueeze(0))
    centre = feats[0, :, size // 2, size // 2]
    assert torch.allclose(centre.view(3, 11).sum(1), torch.ones(3), atol=1e-5)
    assert (centre - _centre_bins()).abs().sum() > 2.0  # L1 between histograms is at most 6
    # theta and phi move off the centre bin on a curved surface; alpha stays 0 on a sphere
    # (v is orthogonal to both normals), which pins the pair-feature convention.
    assert centre.view(3, 11)[0, 5] < 0.5 and centre.view(3, 11)[2, 5] < 0.5
    assert centre.view(3, 11)[1, 5] == pytest.approx(1.0, abs=1e-6)


def test_fpfh_invariant_to_rigid_motion() -> None:
    size = 64
    x, y = _grid(size)
    xyz = _surface(0.5 + 2 * SPACING * torch.sin(x / (4 * SPACING)) * torch.cos(y / (5 * SPACING)))
    a, b = math.radians(25), math.radians(30)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rot = rx @ ry
    moved = xyz @ rot.t() + torch.tensor([0.03, -0.02, 0.1])
    extractor = FPFHExtractor()
    valid = _all_valid(size)
    f0, f1 = extractor(xyz, valid), extractor(moved, valid)
    assert (f0[:, 11:22].argmax(1) != 5).any() or (f0[:, 22:].argmax(1) != 5).any()  # non-trivial
    n0, n1 = extractor.estimate_normals(xyz, valid), extractor.estimate_normals(moved, valid)
    assert torch.allclose(torch.einsum("ij,bjhw->bihw", rot, n0), n1, atol=1e-4)
    diff = (f0 - f1)[0, :, 8:-8, 8:-8].abs()
    # Hard binning: float32 rounding of the moved input may flip a rare pair across a bin edge
    # (1/48 of a group per flipped pair); everything else must agree exactly.
    assert diff.mean() < 1e-4
    assert diff.max() < 0.05
    assert (diff.amax(0) > 1e-5).float().mean() < 0.1


def test_fpfh_bump_changes_only_its_neighbourhood() -> None:
    size, rb = 64, 5
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    r = torch.sqrt((xs - 32) ** 2 + (ys - 32) ** 2)
    bump = 2 * SPACING * torch.where(r < rb, torch.cos(math.pi * r / (2 * rb)) ** 2, torch.zeros_like(r))
    extractor = FPFHExtractor()
    valid = _all_valid(size)
    flat = extractor(_surface(torch.full((size, size), 0.5)), valid)
    bumped = extractor(_surface(0.5 - bump), valid)  # towards the camera
    change = (bumped - flat)[0].abs().sum(0)
    # Reach of a moved point: normals (2 px) + SPFH window (3 px) + FPFH window (3 px).
    moved = (bump > 0).float()[None, None]
    reach = F.max_pool2d(moved, 17, stride=1, padding=8)[0, 0] > 0
    assert bool((change[~reach] == 0).all())
    assert change[~reach].numel() > size * size // 2
    assert change[32, 32] > 0.5 and change[32, 32 + rb].item() > 0.5
    assert (change > 0.1).sum() > 50


def test_fpfh_sparse_and_empty_inputs() -> None:
    size = 16
    xyz = _surface(torch.full((size, size), 0.5))
    valid = torch.zeros(1, size, size, dtype=torch.bool)
    extractor = FPFHExtractor()
    assert bool((extractor(xyz, valid) == 0).all())
    valid[0, 8, 8] = True  # an isolated point: no normal, documented zero feature
    valid[0, 2:5, 2:5] = True  # a 3 x 3 patch: 8 neighbours each, enough for a feature
    feats = extractor(xyz, valid)
    assert bool((feats[0, :, 8, 8] == 0).all())
    assert torch.allclose(feats[0, :, 3, 3], _centre_bins(), atol=1e-6)
    # A fixed metric radius of 1.5 spacings leaves 8-neighbourhoods; 0.5 leaves none.
    assert torch.allclose(FPFHExtractor(radius=1.5 * SPACING)(xyz, valid)[0, :, 3, 3], _centre_bins())
    assert bool((FPFHExtractor(radius=0.5 * SPACING)(xyz, valid) == 0).all())


def test_fpfh_batch_matches_single_and_module_properties() -> None:
    size = 24
    x, y = _grid(size)
    a = _surface(0.5 + 0.4 * x)
    b = _surface(0.5 + 3 * SPACING * torch.sin(x / (3 * SPACING)))
    valid = _all_valid(size)
    extractor = FPFHExtractor().eval()
    batch = extractor(torch.cat([a, b]).double(), torch.cat([valid, valid]))
    assert batch.dtype == torch.float32
    assert torch.equal(batch[1:], extractor(b, valid))
    assert extractor.out_dim == 33 and FPFHExtractor(bins=5).out_dim == 15
    assert list(extractor.parameters()) == [] and extractor.state_dict() == {}


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool)), "shape"),
        ((torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 8)), "bool"),
        ((torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 7, dtype=torch.bool)), "shape"),
        ((torch.zeros(1, 8, 8, 3, dtype=torch.long), torch.ones(1, 8, 8, dtype=torch.bool)), "floating"),
        ((torch.full((1, 8, 8, 3), float("inf")), torch.ones(1, 8, 8, dtype=torch.bool)), "NaN or inf"),
    ],
)
def test_fpfh_rejects_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FPFHExtractor()(*args)


def test_fpfh_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="odd"):
        FPFHExtractor(window=6)
    with pytest.raises(ValueError, match="radius"):
        FPFHExtractor(radius=0.0)
    with pytest.raises(ValueError, match="bins"):
        FPFHExtractor(bins=1)


def _reference_fpfh(xyz: torch.Tensor, valid: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-point float64 transcription of Open3D's ``ComputeFPFHFeature`` over pixel windows
    (7 x 7 features, 5 x 5 normals, radius-limited), rescaled to groups summing to 1."""
    size = xyz.shape[0]
    pts, ok = xyz.double(), valid

    def neighbours(y: int, x: int, half: int) -> list[tuple[int, int]]:
        out = []
        for yy in range(max(0, y - half), min(size, y + half + 1)):
            for xx in range(max(0, x - half), min(size, x + half + 1)):
                dist = (pts[yy, xx] - pts[y, x]).norm()
                if (yy, xx) != (y, x) and ok[yy, xx] and 0 < dist <= radius:
                    out.append((yy, xx))
        return out

    normals = {}
    for y in range(size):
        for x in range(size):
            nb = neighbours(y, x, 2) if ok[y, x] else []
            if len(nb) >= 2:
                q = torch.stack([pts[y, x]] + [pts[a, b] for a, b in nb])
                n = torch.linalg.eigh(torch.cov(q.t(), correction=0))[1][:, 0]
                normals[y, x] = -n if n @ pts[y, x] > 0 else n

    def pair_bins(p1, n1, p2, n2) -> list[int]:
        d = p2 - p1
        f4 = d.norm()
        a1, a2 = n1 @ d / f4, n2 @ d / f4
        if math.acos(abs(a1)) > math.acos(abs(a2)):
            n1, n2, d, f3 = n2, n1, -d, -a2
        else:
            f3 = a1
        v = torch.linalg.cross(d, n1)
        v = v / v.norm()
        w = torch.linalg.cross(n1, v)
        f2, f1 = v @ n2, math.atan2(w @ n2, n1 @ n2)
        return [
            min(10, max(0, math.floor(11 * (f1 + math.pi) / (2 * math.pi)))),
            11 + min(10, max(0, math.floor(11 * (f2 + 1) * 0.5))),
            22 + min(10, max(0, math.floor(11 * (f3 + 1) * 0.5)))
        ]

    spfh = {}
    for (y, x), n in normals.items():
        nb = [q for q in neighbours(y, x, 3) if q in normals]
        if len(nb) >= 3:
            h = torch.zeros(33, dtype=torch.float64)
            for q in nb:
                for k in pair_bins(pts[y, x], n, pts[q], normals[q]):
                    h[k] += 100.0 / len(nb)
            spfh[y, x] = h
    out = torch.zeros(33, size, size, dtype=torch.float64)
    for (y, x), h in spfh.items():
        acc, total = torch.zeros(33, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for q in neighbours(y, x, 3):
            if q in spfh:
                val = spfh[q] / (pts[q] - pts[y, x]).norm() ** 2
                acc += val
                total += val.view(3, 11).sum(1)
        if total.sum() > 0:
            acc = (acc.view(3, 11) / total.view(3, 1) * 100).flatten()
        out[:, y, x] = (acc + h) / 200.0 if total.sum() > 0 else h / 100.0
    return out


def test_fpfh_matches_per_point_open3d_transcription() -> None:
    size = 14
    x, y = _grid(size)
    xyz = _surface(0.5 + 1.5 * SPACING * torch.sin(x / (3 * SPACING)) * torch.cos(y / (4 * SPACING)))
    valid = _all_valid(size)
    valid[0, 4:6, 9:11] = False
    xyz[0, 2:, 12:] += torch.tensor([0.0, 0.0, 0.02])  # a depth step, beyond the radius
    radius = 6 * SPACING
    ours = FPFHExtractor(radius=radius)(xyz, valid)[0].double()
    ref = _reference_fpfh(xyz[0], valid[0], radius)
    assert (ours.abs().sum(0) > 0).sum() > 150
    assert torch.equal(ours.abs().sum(0) > 0, ref.abs().sum(0) > 0)
    assert torch.allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------------------------- colour
def test_colour_constant_image() -> None:
    colour = (0.8, 0.4, 0.2)
    rgb = torch.tensor(colour).view(1, 3, 1, 1).expand(2, 3, 64, 64)
    extractor = ColorGradientExtractor()
    feats = extractor(_rgb_to_input(rgb))
    assert feats.shape == (2, 45, 8, 8) and feats.dtype == torch.float32
    per_scale = feats.view(2, 3, 15, 8, 8)
    assert bool((per_scale[:, :, 6:] == 0).all())  # orientation histogram and magnitude
    assert bool((per_scale[:, :, 3:6] == 0).all())  # colour std
    expected = _opponent(colour).view(1, 1, 3, 1, 1).expand(2, 3, 3, 8, 8)
    assert torch.allclose(per_scale[:, :, :3], expected, atol=1e-5)


def test_colour_vertical_edge_votes_in_bin_zero() -> None:
    rgb = torch.full((1, 3, 32, 32), 0.2)
    rgb[..., 16:] = 0.9  # dark | bright: a vertical edge, horizontal gradient
    extractor = ColorGradientExtractor(patch=8, scales=(1,), orientation_bins=8)
    feats = extractor(_rgb_to_input(rgb))[0]  # (15, 4, 4)
    hist, mag = feats[6:14], feats[14]
    # The edge lies between cell columns 1 and 2; each has one edge column of Sobel/8 = 0.35.
    assert torch.allclose(mag[:, 1:3], torch.full((4, 2), 0.35 / 8), atol=1e-6)
    assert bool((mag[:, [0, 3]] == 0).all())
    norm = 1 / math.sqrt(1 + (0.01 / (0.35 / 8)) ** 2)  # Dalal & Triggs L2 with eps = 0.01
    assert torch.allclose(hist[0, :, 1:3], torch.full((4, 2), norm), atol=1e-5)
    assert bool((hist[1:] == 0).all())
    # The same edge rotated 90 degrees votes in the vertical-gradient bin (pi / 2 -> bin 4).
    hist_t = extractor(_rgb_to_input(rgb.transpose(2, 3)))[0, 6:14]
    assert torch.allclose(hist_t[4, 1:3, :], torch.full((2, 4), norm), atol=1e-5)
    assert hist_t[[0, 1, 2, 3, 5, 6, 7]].abs().max() < 1e-6


def test_colour_stain_changes_only_nearby_cells() -> None:
    rgb = torch.tensor([0.6, 0.6, 0.55]).view(1, 3, 1, 1).expand(1, 3, 224, 224).clone()
    stained = rgb.clone()
    stained[:, :, 100:104, 60:64] = torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1)
    extractor = ColorGradientExtractor()
    a, b = extractor(_rgb_to_input(rgb)), extractor(_rgb_to_input(stained))
    changed = (a - b)[0].abs().amax(0) > 0  # (28, 28)
    # Largest scale: 32 px centred on each 8 px cell = 12 px either side; Sobel adds 1 px.
    rows = torch.arange(28) * 8
    near_r = (rows - 12 <= 104) & (rows + 8 + 12 > 99)
    near_c = (rows - 12 <= 64) & (rows + 8 + 12 > 59)
    near = near_r[:, None] & near_c[None, :]
    assert bool(changed[12, 7]) and bool(changed[near].all())
    assert not bool(changed[~near].any())
    assert changed.sum() == near.sum() < 40
    # Colour moved at the finest scale in the stain's own cell: mean O3 dropped.
    assert b[0, 2, 12, 7] < a[0, 2, 12, 7] - 0.05


def test_colour_shape_names_and_validation() -> None:
    extractor = ColorGradientExtractor().eval()
    feats = extractor(torch.randn(2, 3, 224, 224))
    assert feats.shape == (2, extractor.out_dim, 28, 28) and extractor.out_dim == 45
    assert torch.isfinite(feats).all()
    assert len(extractor.feature_names) == 45 and extractor.feature_names[14] == "s1_grad_mag"
    assert extractor.patch_size == 8 and extractor.state_dict() == {}
    assert ColorGradientExtractor(patch=4, scales=(1, 3), orientation_bins=9).out_dim == 32
    for bad, match in [
        (torch.zeros(1, 1, 224, 224), "shape"),
        (torch.zeros(3, 224, 224), "shape"),
        (torch.zeros(1, 3, 220, 224), "multiple"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "floating"),
        (torch.full((1, 3, 224, 224), float("nan")), "NaN"),
    ]:
        with pytest.raises(ValueError, match=match):
            extractor(bad)
    with pytest.raises(ValueError, match="scales"):
        ColorGradientExtractor(scales=())


def _checker(size: int = 224, square: int = 28) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    red = ((yy // square + xx // square) % 2 == 0).float()
    return (red * torch.tensor([0.8, 0.25, 0.2]).view(3, 1, 1) + (1 - red) * torch.tensor([0.9, 0.88, 0.8]).view(3, 1, 1)).unsqueeze(0)


def test_colour_rarity_sees_a_stain_on_a_checker_but_not_the_checker() -> None:
    extractor = ColorGradientExtractor(ring_radii=(14, 22))
    assert extractor.out_dim == 48 and extractor.feature_names[15] == "s1_colour_rarity"
    rgb = _checker()
    stained = rgb.clone()
    stained[:, :, 90:102, 64:76] = torch.tensor([0.45, 0.35, 0.3]).view(1, 3, 1, 1)  # inside a square
    rarity_good = extractor(_rgb_to_input(rgb))[0, 15]  # finest scale, (28, 28)
    rarity_bad = extractor(_rgb_to_input(stained))[0, 15]
    # Every pixel of the checker has its own colour somewhere on a circle around it.
    assert float(rarity_good.abs().max()) < 1e-5
    assert float(rarity_bad[11:13, 8:10].min()) > 0.05  # the stain's cells
    far = torch.ones(28, 28, dtype=torch.bool)
    far[6:18, 3:15] = False  # beyond the stain plus the largest radius and the coarsest pooling
    assert float(rarity_bad[far].abs().max()) < 1e-5
    # The other channels are those of the extractor without the ring, unchanged.
    plain = ColorGradientExtractor()(_rgb_to_input(stained))
    with_ring = extractor(_rgb_to_input(stained)).view(1, 3, 16, 28, 28)
    assert torch.equal(with_ring[:, :, :15].reshape(1, 45, 28, 28), plain)
    for bad in ((0,), (3, 3), (2.5,)):
        with pytest.raises(ValueError, match="ring_radii"):
            ColorGradientExtractor(ring_radii=bad)


def _plate_with_hole(size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey plate with a dark through-hole of radius 9 px (smaller than the circles) at
    (112, 112): the hole has no 3D, the plate has."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    hole = (yy - 112) ** 2 + (xx - 112) ** 2 < 81
    rgb = torch.where(hole, torch.tensor([0.08, 0.08, 0.09]).view(3, 1, 1), torch.tensor([0.6, 0.62, 0.66]).view(3, 1, 1))
    return rgb.unsqueeze(0), ~hole.unsqueeze(0)


def test_colour_rarity_on_the_part_ignores_a_through_hole_and_cannot_match_a_stain_to_it() -> None:
    everywhere = ColorGradientExtractor(ring_radii=(21, 33))
    on_part = ColorGradientExtractor(ring_radii=(21, 33), rarity_on_part=True)
    assert on_part.reads_validity and not everywhere.reads_validity
    rgb, valid = _plate_with_hole()
    # Compared with every pixel, the hole's dark colour is on none of its circles: rare, on every
    # good part; on the part only, the hole is no colour of the part (0) and the plate matches.
    assert float(everywhere(_rgb_to_input(rgb))[0, 15, 14, 14]) > 0.3
    assert float(on_part(_rgb_to_input(rgb), valid)[0, 15].abs().max()) < 1e-5
    # A stain the hole's colour, 21 px from the hole's centre: compared with every pixel it finds
    # the hole on its inner circle and looks ordinary; on the part only it stays rare.
    stained = rgb.clone()
    stained[:, :, 106:118, 127:139] = torch.tensor([0.08, 0.08, 0.09]).view(1, 3, 1, 1)
    ratio = float(on_part(_rgb_to_input(stained), valid)[0, 15, 13:15, 16:17].min())
    assert ratio > 0.2
    assert float(everywhere(_rgb_to_input(stained))[0, 15, 13:15, 16:17].max()) < 0.5 * ratio
    # With every pixel valid, the part-only channel is the plain one away from the image border
    # (where the plain one pads by replication and the part-only one has no pixel).
    all_valid = torch.ones_like(valid)
    a = everywhere(_rgb_to_input(stained))[0, 15, 6:22, 6:22]
    b = on_part(_rgb_to_input(stained), all_valid)[0, 15, 6:22, 6:22]
    assert torch.allclose(a, b, atol=1e-6)
    # The other channels do not read the mask.
    assert torch.equal(everywhere(_rgb_to_input(stained))[0, :15], on_part(_rgb_to_input(stained), valid)[0, :15])


def test_colour_rarity_on_the_part_needs_the_mask() -> None:
    on_part = ColorGradientExtractor(ring_radii=(21,), rarity_on_part=True)
    rgb, valid = _plate_with_hole(64)
    with pytest.raises(ValueError, match="needs valid"):
        on_part(_rgb_to_input(rgb))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        on_part(_rgb_to_input(rgb), valid[:, :32])
    with pytest.raises(ValueError, match="bool tensor of shape"):
        on_part(_rgb_to_input(rgb), valid.float())
    # Without circles there is no rarity channel, and nothing to mask.
    assert not ColorGradientExtractor(rarity_on_part=True).reads_validity
    # A part pixel with no part pixel on any circle has nothing to be compared with: 0.
    lone = torch.zeros_like(valid)
    lone[0, 30:34, 30:34] = True
    assert float(on_part(_rgb_to_input(rgb), lone)[0, 15].abs().max()) == 0.0


def test_timing_at_224() -> None:
    """Prints the cost of both extractors on one 224 x 224 input (no assertion on time): on one
    thread, and on torch's default thread count (which a busy shared machine can slow down a lot,
    since every parallel op waits for all its threads to be scheduled)."""
    size = 224
    x, y = _grid(size)
    valid = (torch.sqrt(x**2 + y**2) < 98.5 * SPACING).unsqueeze(0)  # a disk of ~30k points
    xyz = _surface(0.5 + 0.2 * x + 3 * SPACING * torch.sin(x / (6 * SPACING)) * torch.cos(y / (9 * SPACING)))
    fpfh, colour = FPFHExtractor(), ColorGradientExtractor()
    images = torch.randn(1, 3, size, size)
    calls = {"FPFH": lambda: fpfh(xyz, valid), "colour/gradient": lambda: colour(images)}
    default_threads = DEFAULT_THREADS
    timings: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for threads in (1, default_threads):
            torch.set_num_threads(threads)
            for name, call in calls.items():
                if threads == 1:
                    call()  # the first call pays allocator warm-up
                start = time.perf_counter()
                out = call()
                timings[name].append(time.perf_counter() - start)
                assert torch.isfinite(out).all()
    finally:
        torch.set_num_threads(default_threads)
    print(f"\n224 x 224, FPFH on {int(valid.sum())} valid points; 1 / {default_threads} threads:")
    for name, (one, default) in timings.items():
        print(f"  {name}: {one * 1e3:.1f} ms / {default * 1e3:.1f} ms")


def test_colour_rarity_intensity_weight_sets_how_much_a_shade_counts() -> None:
    """A darker patch of the part's own hue (a shading change) is rare in proportion to the
    intensity weight; a patch of another hue is rare at any weight. The config field reaches
    the extractor."""
    from mafr import MAFRConfig
    from mafr.extractors import build_rgb_extractor

    grey = torch.tensor([0.6, 0.62, 0.66]).view(1, 3, 1, 1)
    base = grey.expand(1, 3, 224, 224).clone()
    shade, hue = base.clone(), base.clone()
    shade[:, :, 106:118, 106:118] *= 0.6
    hue[:, :, 106:118, 106:118] = torch.tensor([0.62, 0.45, 0.40]).view(1, 3, 1, 1)

    def rarity(weight: float, rgb: torch.Tensor) -> float:
        ex = ColorGradientExtractor(ring_radii=(21, 33), ring_intensity_weight=weight)
        return float(ex(_rgb_to_input(rgb))[0, 15, 13:15, 13:15].min())

    # Darkening a tinted grey shrinks its chroma a little too: a small rest at weight 0.
    assert rarity(0.0, shade) < 0.1 * rarity(0.5, shade)
    assert 1.8 < rarity(1.0, shade) / rarity(0.5, shade) < 2.2
    assert min(rarity(w, hue) for w in (0.0, 0.5, 1.0)) > 0.1
    ex = build_rgb_extractor(MAFRConfig(preset="offline", rgb={"ring_intensity_weight": 0.25}))
    assert ex.ring_intensity_weight == 0.25
    assert build_rgb_extractor(MAFRConfig(preset="offline")).ring_intensity_weight == 0.5
    with pytest.raises(Exception, match="ring_intensity_weight"):
        MAFRConfig(preset="offline", rgb={"ring_intensity_weight": -1.0})


def test_smoothed_normals_of_a_tilted_plane_and_a_cylinder() -> None:
    from mafr.extractors.offline import smoothed_normals

    size = 64
    x, y = _grid(size)
    plane = _surface(0.5 + 0.3 * x - 0.2 * y)
    valid = _all_valid(size)
    valid[:, :, :4] = False  # a dropout band: its pixels get 0, its neighbours are not pulled
    n = smoothed_normals(plane, valid, 3.0)[0]
    expected = torch.tensor([0.3, -0.2, -1.0]) / math.sqrt(1 + 0.09 + 0.04)  # facing the camera (-z)
    inside = n[:, 2:-2, 6:-2].reshape(3, -1)
    assert torch.allclose(inside, expected.view(3, 1).expand_as(inside), atol=1e-3)
    assert float(n[:, :, :4].abs().max()) == 0.0
    # A cylinder lying along x: normals turn across it (v) and not along it (u).
    radius = 20 * SPACING
    z = 0.5 - torch.sqrt((radius**2 - y**2).clamp_min(0))
    on = (y.abs() < 0.8 * radius).unsqueeze(0)
    nc = smoothed_normals(_surface(z), on, 2.0)[0]
    assert float((nc[:, 32, 10] - nc[:, 32, 50]).norm()) < 1e-3
    assert float((nc[:, 26, 30] - nc[:, 38, 30]).norm()) > 0.4


def _shaded_cylinder(size: int = 224, stain: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A grey cylinder lying along x under a light from above-left: its flanks are darker than
    its crest. ``stain``: a patch on the crest painted the colour of the shaded flank."""
    x, y = _grid(size)
    radius = 60 * SPACING
    on = y.abs() < 0.85 * radius
    z = 0.5 - torch.sqrt((radius**2 - y**2).clamp_min(0))
    n = torch.stack([torch.zeros_like(y), y / radius, (z - 0.5) / radius])  # outward, towards the camera
    light = torch.tensor([0.0, 0.5, -1.0]) / math.sqrt(1.25)
    shade = (n * light.view(3, 1, 1)).sum(0).clamp_min(0)
    grey = torch.tensor([0.7, 0.72, 0.74]).view(3, 1, 1)
    rgb = grey * (0.25 + 0.75 * shade)
    if stain:
        flank = rgb[:, 112 - 27, 112].clone()  # the shaded flank, within the circles' reach
        rgb[:, 104:120, 104:120] = flank.view(3, 1, 1)
    rgb = torch.where(on, rgb, torch.tensor(0.05))
    return rgb.unsqueeze(0), _surface(z), on.unsqueeze(0)


def test_colour_rarity_with_normals_sees_a_stain_the_colour_of_a_shaded_flank() -> None:
    """On colours alone the stain on the crest finds its colour on the flank under its circles
    and looks ordinary; counting the normals, no pixel of that colour faces the way it does.
    The good cylinder stays ordinary either way: along its axis, colour and normal repeat."""
    plain = ColorGradientExtractor(ring_radii=(21, 33), rarity_on_part=True)
    facing = ColorGradientExtractor(ring_radii=(21, 33), rarity_on_part=True, ring_normal_weight=0.02)
    assert facing.reads_geometry and facing.reads_validity and not plain.reads_geometry
    good, xyz, valid = _shaded_cylinder()
    bad, _, _ = _shaded_cylinder(stain=True)
    r = 15  # s1_colour_rarity
    stain_cells = (slice(13, 15), slice(13, 15))
    on_plain = float(plain(_rgb_to_input(bad), valid)[0, r][stain_cells].min())
    on_facing = float(facing(_rgb_to_input(bad), valid, xyz)[0, r][stain_cells].min())
    good_facing = facing(_rgb_to_input(good), valid, xyz)[0, r]
    inner = torch.zeros(28, 28, dtype=torch.bool)
    inner[8:20, 4:24] = True  # the part, away from the outline and the image border
    assert on_facing > 5 * max(on_plain, float(good_facing[inner].max()))
    # The other channels are the plain extractor's.
    keep = [c for c in range(45 + 3) if c % 16 != 15]
    assert torch.equal(facing(_rgb_to_input(bad), valid, xyz)[0, keep], plain(_rgb_to_input(bad), valid)[0, keep])


def test_colour_rarity_with_normals_needs_the_cloud_and_checks_its_settings() -> None:
    from mafr import MAFRConfig
    from mafr.extractors import build_rgb_extractor

    good, xyz, valid = _shaded_cylinder(64)
    facing = ColorGradientExtractor(ring_radii=(21,), rarity_on_part=True, ring_normal_weight=0.02)
    with pytest.raises(ValueError, match="needs xyz"):
        facing(_rgb_to_input(good), valid)
    with pytest.raises(ValueError, match="xyz must be a tensor of shape"):
        facing(_rgb_to_input(good), valid, xyz[:, :32])
    broken = xyz.clone()
    broken[0, 5, 5, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        facing(_rgb_to_input(good), valid, broken)
    for kwargs in ({"ring_normal_weight": -0.1}, {"ring_normal_weight": math.nan}, {"ring_normal_sigma": 0.0},
                   {"ring_normal_weight": True}):
        with pytest.raises(ValueError, match="ring_normal"):
            ColorGradientExtractor(ring_radii=(21,), **kwargs)
    # Without circles there is no rarity, so nothing reads the cloud.
    assert not ColorGradientExtractor(ring_normal_weight=0.02).reads_geometry
    built = build_rgb_extractor(MAFRConfig(preset="offline", rgb={"ring_normal_weight": 0.05, "ring_normal_sigma": 4.0}))
    assert built.ring_normal_weight == 0.05 and built.ring_normal_sigma == 4.0 and built.reads_geometry
    with pytest.raises(Exception, match="ring_normal_weight"):
        MAFRConfig(preset="offline", rgb={"ring_normal_weight": -1.0})
