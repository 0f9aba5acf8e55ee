"""Draw the figures of the mafr documentation (Pillow only, no matplotlib).

- ``docs/pipeline.png``: the MAFR pipeline as boxes and arrows, about 1400 px wide.
- ``docs/framing.png``: what the network sees with ``framing="image"`` and ``framing="part"``
  (a generated lying cylinder; no fitting).
- ``docs/alignment.png``: three generated lying cylinders as they lie and turned to the fit parts'
  axis (``align="axis"``; no fitting).
- ``docs/rarity_normals.png``: colour rarity on a generated lying shaft with a stain, on colours
  alone and facing the same way, and the normals behind the difference (no fitting).
- ``docs/example_panel.png``: a real result panel. A detector with the weight-free ``"offline"``
  preset is fitted on 6 generated good "puck" parts (under a minute on a 2-core CPU), then scores a
  generated part with a crack.

    python docs/make_figures.py               # every figure
    python docs/make_figures.py --skip-panel  # only the drawings (instant)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DOCS = Path(__file__).resolve().parent

WIDTH = 1400
MARGIN = 14
COLUMNS = 7
BOX_W = 170
RIGHT = 34  # room for the arrow that brings the RGB grid down to the concatenation
GAP = (WIDTH - MARGIN - RIGHT - COLUMNS * BOX_W) // (COLUMNS - 1)

# Fill / border colours per lane.
BLUE = ((226, 237, 252), (40, 90, 170))
GREEN = ((225, 244, 228), (40, 130, 70))
ORANGE = ((253, 236, 218), (190, 100, 20))
GREY = ((242, 242, 242), (90, 90, 90))
RED = ((252, 226, 226), (180, 40, 40))


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    names = ("DejaVuSans-Bold.ttf", "Arial Bold.ttf") if bold else ("DejaVuSans.ttf", "Arial.ttf")
    for name in names:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


TITLE = _font(22, bold=True)
LANE = _font(16, bold=True)
HEAD = _font(14, bold=True)
BODY = _font(13)
TAG = _font(11, bold=True)


def col_x(col: int) -> int:
    return MARGIN + col * (BOX_W + GAP)


def box(draw: ImageDraw.ImageDraw, col: int, y: int, h: int, title: str, lines: list[str],
        colours, tag: str | None = None) -> tuple[int, int, int, int]:
    """A rounded box in column ``col`` whose top is ``y``; returns its (x0, y0, x1, y1)."""
    fill, edge = colours
    x0, x1 = col_x(col), col_x(col) + BOX_W
    width = 3 if tag == "trained" else 2
    draw.rounded_rectangle((x0, y, x1, y + h), radius=9, fill=fill, outline=edge, width=width)
    texts = [(title, HEAD)] + [(line, BODY) for line in lines]
    heights = [draw.textbbox((0, 0), t, font=f)[3] + 4 for t, f in texts]
    ty = y + (h - sum(heights)) // 2
    for (text, font), th in zip(texts, heights):
        tw = draw.textlength(text, font=font)
        if tw > BOX_W - 8:  # another font than DejaVu Sans may run wider: say so, keep drawing
            print(f"warning: text wider than its box ({tw:.0f} px): {text!r}")
        draw.text((x0 + (BOX_W - tw) / 2, ty), text, fill=(20, 20, 20), font=font)
        ty += th
    if tag:
        tw = draw.textlength(tag, font=TAG)
        tx, tyy = x1 - tw - 10, y - 8
        draw.rounded_rectangle((tx - 4, tyy - 1, tx + tw + 4, tyy + 14), radius=4, fill="white", outline=edge)
        draw.text((tx, tyy), tag, fill=edge, font=TAG)
    return x0, y, x1, y + h


def arrow(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour=(60, 60, 60),
          label: str | None = None) -> None:
    """A polyline ending in an arrow head; ``label`` is written above its first segment."""
    draw.line(points, fill=colour, width=3, joint="curve")
    (xa, ya), (xb, yb) = points[-2], points[-1]
    dx, dy = xb - xa, yb - ya
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    ux, uy = dx / norm, dy / norm
    size = 11
    left = (xb - size * ux + size * 0.55 * uy, yb - size * uy - size * 0.55 * ux)
    right = (xb - size * ux - size * 0.55 * uy, yb - size * uy + size * 0.55 * ux)
    draw.polygon([(xb, yb), left, right], fill=colour)
    if label:
        (x0, y0), (x1, y1) = points[0], points[1]
        tw = draw.textlength(label, font=BODY)
        draw.text(((x0 + x1) / 2 - tw / 2, min(y0, y1) - 18), label, fill=colour, font=BODY)


def right_arrow(draw, a, b, label=None):
    """From the right edge of box ``a`` to the left edge of box ``b`` (same row)."""
    y = (a[1] + a[3]) / 2
    arrow(draw, [(a[2] + 2, y), (b[0] - 3, y)], label=label)


def left_arrow(draw, a, b, ya=None, yb=None):
    """From the left edge of box ``a`` to the right edge of box ``b``."""
    ya = (a[1] + a[3]) / 2 if ya is None else ya
    yb = (b[1] + b[3]) / 2 if yb is None else yb
    if abs(ya - yb) < 1:
        arrow(draw, [(a[0] - 2, ya), (b[2] + 3, yb)])
    else:
        xm = (a[0] + b[2]) / 2
        arrow(draw, [(a[0] - 2, ya), (xm, ya), (xm, yb), (b[2] + 3, yb)])


def lane_label(draw, y: int, text: str, colour) -> None:
    draw.text((MARGIN, y), text, fill=colour, font=LANE)


def draw_pipeline(path: Path) -> Path:
    height = 680
    img = Image.new("RGB", (WIDTH, height), "white")
    d = ImageDraw.Draw(img)
    d.text((MARGIN, 12), "MAFR in mafr: from one RGB image + one organized point cloud to an anomaly map",
           fill=(20, 20, 20), font=TITLE)
    d.text((MARGIN, 42), "Numbers are the defaults (preset \"paper\", grid_size 28). Frozen extractors run once per "
           "part; only the fusion autoencoder is trained, on good parts.", fill=(70, 70, 70), font=BODY)

    # ---- 2D branch
    y1, h1 = 100, 96
    lane_label(d, y1 - 28, "2D branch", BLUE[1])
    r0 = box(d, 0, y1, h1, "RGB image", ["H x W x 3 uint8", "(array, PIL image", "or file path)"], BLUE)
    r1 = box(d, 1, y1, h1, "Square pad + resize", ["pad bottom/right", "bicubic to 224 x 224", "ImageNet mean/std"], BLUE)
    r2 = box(d, 2, y1, h1, "DINO ViT-B/8", ["timm: vit_base_patch8", "_224.dino, 12 blocks", "+ final norm, no cls"],
             BLUE, tag="frozen")
    r3 = box(d, 3, y1, h1, "Patch map", ["28 x 28 x 768", "(224 / 8 = 28)"], BLUE)
    r6 = box(d, 6, y1, h1, "RGB on the grid", ["bilinear to grid", "(identity at 28)", "28 x 28 x 768"], BLUE)
    right_arrow(d, r0, r1)
    right_arrow(d, r1, r2)
    right_arrow(d, r2, r3)
    arrow(d, [(r3[2] + 2, (r3[1] + r3[3]) / 2), (r6[0] - 3, (r6[1] + r6[3]) / 2)])

    # ---- 3D branch
    y2, h2 = 250, 112
    lane_label(d, y2 - 28, "3D branch", GREEN[1])
    g0 = box(d, 0, y2, h2, "Organized xyz", ["H x W x 3, metres", "pixel-aligned", "(0,0,0) = no point"], GREEN)
    g1 = box(d, 1, y2, h2, "Valid points", ["pad + nearest 224", "fill small holes", "keep non-zero", "points only"],
             GREEN)
    g2 = box(d, 2, y2, h2, "PointMAE", ["FPS: 1024 centres", "kNN: 128 points", "mini-PointNet", "12 blocks, width 384"],
             GREEN, tag="frozen")
    g3 = box(d, 3, y2, h2, "Centre features", ["1152-d per centre", "= LayerNorm of", "blocks 4, 8, 12", "(3 x 384)"],
             GREEN)
    g4 = box(d, 4, y2, h2, "3-NN interpolation", ["inverse-distance", "weights: each point", "mixes its 3 nearest",
                                                   "centres"], GREEN)
    g5 = box(d, 5, y2, h2, "Scatter to pixels", ["each point at its", "pixel of 224 x 224", "no point = zero"], GREEN)
    g6 = box(d, 6, y2, h2, "Pool to the grid", ["3 x 3 avg pool", "+ adaptive pool", "28 x 28 x 1152"], GREEN)
    for a, b in zip((g0, g1, g2, g3, g4, g5), (g1, g2, g3, g4, g5, g6)):
        right_arrow(d, a, b)
    d.text((col_x(4), y2 + h2 + 6), "steps 4-6 are one sparse linear operator at grid 28", fill=GREEN[1], font=BODY)

    # ---- fusion autoencoder and scoring (right to left)
    y3 = 430
    lane_label(d, y3 - 28, "Fusion autoencoder (trained) and scoring", ORANGE[1])
    hd, gapd = 86, 18
    yc = y3 + (2 * hd + gapd) // 2  # centre line of the lane
    f6 = box(d, 6, yc - 48, 96, "Concatenate", ["768 + 1152", "= 1920 channels", "per grid position"], ORANGE)
    f5 = box(d, 5, yc - 48, 96, "Fusion encoder", ["1920 -> 960 -> 960", "-> latent 960", "GELU, shared LN"],
             ORANGE, tag="trained")
    f4 = box(d, 4, yc - 48, 96, "Shared latent", ["960 per position", "(half of 1920)"], ORANGE)
    dec2 = box(d, 3, y3, hd, "Decoder 2D", ["3 x Linear-LN-GELU", "CBAM", "Linear -> 768 + skip"], ORANGE,
               tag="trained")
    dec3 = box(d, 3, y3 + hd + gapd, hd, "Decoder 3D", ["3 x Linear-LN-GELU", "CBAM", "Linear -> 1152 + skip"],
               ORANGE, tag="trained")
    res2 = box(d, 2, y3, hd, "2D residual map", ["|restored - input|", "L2 over channels", "28 x 28"], ORANGE)
    res3 = box(d, 2, y3 + hd + gapd, hd, "3D residual map", ["|restored - input|", "L2 over channels", "28 x 28"],
               ORANGE)
    sc = box(d, 1, yc - 62, 124, "Scoring", ["bilinear to 224", "product 2D x 3D", "zero where no 3D", "5x box 5x5 +",
                                           "3x box 7x7"], RED)
    out = box(d, 0, yc - 62, 124, "Result", ["anomaly map (H x W)", "score = max /", "sqrt(mean of", "non-zero values)",
                                           "vs threshold"], RED)
    # branch outputs down into the concatenation
    arrow(d, [((r6[0] + r6[2]) / 2 + 40, r6[3] + 2), ((r6[0] + r6[2]) / 2 + 40, r6[3] + 22),
              (r6[2] + 16, r6[3] + 22), (r6[2] + 16, f6[1] + 20), (r6[2] + 3, f6[1] + 20)], colour=BLUE[1])
    arrow(d, [((g6[0] + g6[2]) / 2, g6[3] + 2), ((g6[0] + g6[2]) / 2, f6[1] - 3)], colour=GREEN[1])
    left_arrow(d, f6, f5)
    left_arrow(d, f5, f4)
    left_arrow(d, f4, dec2, yb=(dec2[1] + dec2[3]) / 2)
    left_arrow(d, f4, dec3, yb=(dec3[1] + dec3[3]) / 2)
    left_arrow(d, dec2, res2)
    left_arrow(d, dec3, res3)
    left_arrow(d, res2, sc, yb=sc[1] + 30)
    left_arrow(d, res3, sc, yb=sc[3] - 30)
    left_arrow(d, sc, out)

    # ---- legend
    ly = height - 30
    d.text((MARGIN, ly), "Training: composite loss (ZNSSD + edge-aware smoothness + census) per modality, Adam, on "
           "cached features of good parts.  Threshold: calibrated on held-out good parts.",
           fill=(70, 70, 70), font=BODY)
    img.save(path)
    return path


def draw_framing(path: Path) -> Path:
    """The network's 224 x 224 input for one part, whole image against the framed window, with
    the window outlined on the whole image."""
    import numpy as np

    from mafr import framing
    from mafr.datasets.synthetic import generate_sample

    fit = [generate_sample("cylinder", seed=s) for s in range(6)]
    side = framing.fit_side([np.any(p.xyz != 0, axis=-1) for p in fit])
    part = generate_sample("cylinder", "stain", seed=100)
    valid = np.any(part.xyz != 0, axis=-1)
    size, pad, head = 224, 24, 40
    whole = Image.fromarray(framing.crop(part.rgb, framing.window(valid, None))).resize((size, size), Image.BICUBIC)
    top, left, win = framing.window(valid, side)
    framed = Image.fromarray(framing.crop(part.rgb, (top, left, win))).resize((size, size), Image.BICUBIC)
    scale = size / max(part.rgb.shape[:2])
    ImageDraw.Draw(whole).rectangle([left * scale, top * scale, (left + win) * scale, (top + win) * scale],
                                    outline=(255, 200, 0), width=2)
    img = Image.new("RGB", (3 * pad + 2 * size, head + size + pad), "white")
    draw = ImageDraw.Draw(img)
    for i, (tile, title) in enumerate(((whole, 'framing="image"'), (framed, 'framing="part" (outlined left)'))):
        x = pad + i * (size + pad)
        img.paste(tile, (x, head))
        draw.text((x, 12), title, fill=(30, 30, 30), font=_font(15))
    img.save(path)
    return path


def draw_alignment(path: Path) -> Path:
    """Three generated lying cylinders at different angles as the network sees them, as they lie
    (``align="none"``) and turned to the fit parts' axis (``align="axis"``, the offline preset)."""
    import numpy as np
    import torch

    import mafr
    from mafr.datasets.synthetic import generate_sample
    from mafr.extractors.rgb import IMAGENET_MEAN, IMAGENET_STD
    from mafr.preparation import fit_window, prepare

    fit = [generate_sample("cylinder", seed=s) for s in range(6)]
    parts = [generate_sample("cylinder", seed=s) for s in (203, 204, 200)]
    size, pad, head = 200, 20, 34
    img = Image.new("RGB", (pad + 3 * (size + pad), 2 * (head + size) + pad), "white")
    draw = ImageDraw.Draw(img)
    for row, align in enumerate(("none", "axis")):
        config = mafr.MAFRConfig(preset="offline", align=align)
        framing = fit_window(fit, config)
        y = row * (head + size)
        title = ('align="none": each part as it lies' if align == "none"
                 else f'align="axis": each turned to the fit parts\' axis ({framing.axis:.1f} degrees)')
        draw.text((pad, y + 10), title, fill=(30, 30, 30), font=_font(15))
        for col, part in enumerate(parts):
            prep = prepare(part, config, torch.device("cpu"), framing)
            picture = prep.image.permute(1, 2, 0).numpy() * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
            tile = Image.fromarray((picture.clip(0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            img.paste(tile, (pad + col * (size + pad), y + head))
    img.save(path)
    return path


def draw_example_panel(path: Path) -> Path:
    import mafr
    from mafr.datasets.synthetic import generate_sample

    config = mafr.MAFRConfig(preset="offline")
    good = [generate_sample("puck", seed=s) for s in range(6)]
    detector = mafr.MAFRDetector(config).fit(good, seed=0, progress=False)
    part = generate_sample("puck", "crack", seed=100)
    result = detector.predict(part.rgb, part.xyz)
    result.to_panel().save(path)
    print(f"example: threshold {detector.threshold_:.3f}, crack score {result.score:.3f}, "
          f"anomalous={result.is_anomalous}, fit {detector.fit_info_['fit_seconds']:.1f} s")
    return path


def draw_rarity_normals(path: Path) -> Path:
    """Colour rarity on a lying shaft with a dark stain on its crest, on colours alone and facing
    the same way (``rgb.ring_normal_weight``), per pixel before pooling, on one colour scale; and
    the normals that make the difference (x and y components as red and green). The network's
    framed input, cropped to the part."""
    import numpy as np
    import torch

    import mafr
    from mafr.datasets.synthetic import generate_sample
    from mafr.extractors.surface import smoothed_normals
    from mafr.preparation import prepare

    detector = mafr.MAFRDetector(mafr.MAFRConfig(preset="offline"))
    detector.extract_features([generate_sample("shaft", seed=s) for s in range(4)])  # sets the framing
    # Of the generated stains on this shaft, one that colours alone rank low (seeds 100-123).
    part = generate_sample("shaft", "stain", seed=117)
    prep = prepare(part, detector.config, detector.device, detector.framing_)
    extractor = detector.rgb_extractor
    images, valid, xyz = prep.image[None], prep.valid[None].bool(), prep.xyz[None].float()
    opponent = torch.einsum("oc,bchw->bohw", extractor.opponent, images * extractor.std)
    normals = smoothed_normals(xyz, valid, extractor.ring_normal_sigma)
    alone = extractor._colour_rarity(opponent, valid)[0, 0].numpy()
    facing = extractor._colour_rarity(opponent, valid, normals)[0, 0].numpy()
    on = valid[0].numpy()
    ys, xs = np.nonzero(on)
    box = (max(xs.min() - 6, 0), max(ys.min() - 6, 0), min(xs.max() + 7, on.shape[1]), min(ys.max() + 7, on.shape[0]))

    def heat(values: np.ndarray, top: float) -> Image.Image:
        t = np.clip(values / top, 0, 1)
        rgb = np.stack([255 * np.clip(2 * t, 0, 1), 255 * np.clip(2 * t - 1, 0, 1), 60 * (1 - t)], -1)
        return Image.fromarray(rgb.astype(np.uint8))

    picture = (images[0].permute(1, 2, 0) * extractor.std[0, :, 0, 0] + extractor.mean[0, :, 0, 0]).numpy()
    n = normals[0].numpy()
    # Each rarity map on the scale of its own 99.9th percentile over the part: the stain against
    # what the rest of the part reaches.
    tiles = [
        (Image.fromarray((picture.clip(0, 1) * 255).astype(np.uint8)), "framed part: a dark stain on the crest"),
        (heat(alone, float(np.percentile(alone[on], 99.9))), "colour rarity, colours alone (rgb.ring_normal_weight=0)"),
        (heat(facing, float(np.percentile(facing[on], 99.9))), "colour rarity facing the same way (0.02, the offline preset)"),
        (Image.fromarray((np.stack([n[0], n[1], np.zeros_like(n[0])], -1) * 127 + 128 * on[..., None])
                         .clip(0, 255).astype(np.uint8)), "smoothed normals (x as red, y as green)"),
    ]
    crop_w = box[2] - box[0]
    width = 640
    height = round((box[3] - box[1]) * width / crop_w)
    pad, head = 14, 22
    img = Image.new("RGB", (2 * pad + width, pad + len(tiles) * (head + height + pad)), "white")
    draw = ImageDraw.Draw(img)
    for i, (tile, title) in enumerate(tiles):
        y = pad + i * (head + height + pad)
        draw.text((pad, y), title, fill=(30, 30, 30), font=_font(14))
        img.paste(tile.crop(box).resize((width, height), Image.NEAREST), (pad, y + head))
    img.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-panel", action="store_true", help="only draw the pipeline (no fitting)")
    args = parser.parse_args()
    print("wrote", draw_pipeline(DOCS / "pipeline.png"))
    print("wrote", draw_framing(DOCS / "framing.png"))
    print("wrote", draw_alignment(DOCS / "alignment.png"))
    print("wrote", draw_rarity_normals(DOCS / "rarity_normals.png"))
    if not args.skip_panel:
        print("wrote", draw_example_panel(DOCS / "example_panel.png"))


if __name__ == "__main__":
    main()
