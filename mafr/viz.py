"""Pictures of results, with Pillow only: heatmap overlays and a per-part panel.

Pillow is enough for colour mapping (a lookup table), blending, tiling and text; matplotlib
would add a heavy dependency for no extra capability here.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchors of matplotlib's "inferno" (perceptually uniform, readable in grey); interpolated to 256.
_INFERNO = np.array(
    [
        [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
        [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
    ],
    dtype=np.float64,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_INFERNO)), _INFERNO[:, c]) for c in range(3)], axis=1
).round().astype(np.uint8)


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: Optional[float] = None) -> np.ndarray:
    """H x W floats -> H x W x 3 uint8 through the inferno colour map (``vmax`` default: max)."""
    v = np.asarray(values, dtype=np.float64)
    top = float(v.max()) if vmax is None and v.size else float(vmax or 0.0)
    scale = top - vmin if top > vmin else 1.0
    idx = np.clip((v - vmin) / scale, 0, 1) * 255
    return _LUT[idx.round().astype(np.int64)]


#: Colour of the defect-mask outline: cyan is far from every colour of the inferno map.
OUTLINE_COLOUR = (0, 255, 255)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it (4-neighbourhood), ``width`` pixels deep."""
    inner = np.asarray(mask, dtype=bool)
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.asarray(mask, dtype=bool) & ~inner


def overlay(rgb: Optional[np.ndarray], anomaly_map: np.ndarray, alpha: float = 0.5, vmax: Optional[float] = None,
            outline: Optional[np.ndarray] = None) -> Image.Image:
    """Heatmap of ``anomaly_map`` blended over ``rgb`` (or alone when no image is known), with the
    outline of the boolean mask ``outline`` drawn on top."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = colorize(anomaly_map, vmax=vmax)
    if rgb is None:
        out = heat.copy()
    else:
        if rgb.shape[:2] != anomaly_map.shape:
            raise ValueError(f"image {rgb.shape[:2]} and map {anomaly_map.shape} differ in size")
        blend = (1 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
        out = blend.round().clip(0, 255).astype(np.uint8)
    if outline is not None and np.any(outline):
        if outline.shape != anomaly_map.shape:
            raise ValueError(f"outline mask {outline.shape} and map {anomaly_map.shape} differ in size")
        out[mask_outline(outline, width=max(1, min(out.shape[:2]) // 200))] = OUTLINE_COLOUR
    return Image.fromarray(out)


def _depth_image(depth: Optional[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    if depth is None:
        return np.zeros((*shape, 3), dtype=np.uint8)
    valid = depth != 0
    out = np.zeros(depth.shape, dtype=np.float64)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [1, 99])
        # Near is bright: the way people read a height map.
        out[valid] = 1 - np.clip((depth[valid] - lo) / max(hi - lo, 1e-9), 0, 1)
        out[valid] = 0.15 + 0.85 * out[valid]
    grey = (out * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _tile(arr: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(arr)
    width = max(1, round(im.width * height / im.height))
    return im.resize((width, height), Image.BILINEAR)


def colour_bar(vmin: float, vmax: float, height: int, width: int = 18) -> Image.Image:
    """A vertical inferno bar, top = ``vmax``, with its two end values written beside it."""
    ramp = np.linspace(1, 0, height)[:, None].repeat(width, axis=1)
    bar = Image.fromarray(_LUT[(ramp * 255).round().astype(np.int64)])
    canvas = Image.new("RGB", (width + 70, height), "white")
    canvas.paste(bar, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((width + 4, 0), f"{vmax:.3g}", fill="black", font=font)
    draw.text((width + 4, height - 14), f"{vmin:.3g}", fill="black", font=font)
    return canvas


def result_panel(result, tile_height: int = 224) -> Image.Image:
    """RGB | depth | 2D map | 3D map | fused map over RGB | colour bar, with titles and the
    decision (score vs threshold) in the header."""
    shape = result.anomaly_map.shape
    rgb = result.rgb if result.rgb is not None else np.zeros((*shape, 3), dtype=np.uint8)
    vmax = float(result.anomaly_map.max()) if result.anomaly_map.size else 1.0
    tiles = [
        ("RGB", rgb),
        ("depth", _depth_image(result.depth, shape)),
        ("2D map", colorize(result.map_2d)),
        ("3D map", colorize(result.map_3d)),
        ("fused map + defect outline", np.asarray(overlay(result.rgb, result.anomaly_map, 0.6, vmax=vmax,
                                                         outline=result.defect_mask))),
    ]
    images = [(title, _tile(arr, tile_height)) for title, arr in tiles]
    bar = colour_bar(0.0, vmax, tile_height)
    header, title_h, gap = 30, 18, 6
    width = sum(im.width + gap for _, im in images) + bar.width + gap
    panel = Image.new("RGB", (width, header + title_h + tile_height + gap), "white")
    draw = ImageDraw.Draw(panel)
    if result.is_anomalous is None:
        headline, colour = f"NOT JUDGED (no threshold)   score {result.score:.3f}", (200, 120, 0)
    else:
        verdict = "ANOMALOUS" if result.is_anomalous else "GOOD"
        colour = (200, 30, 30) if result.is_anomalous else (20, 140, 60)
        relation = ">" if result.is_anomalous else "<="
        headline = f"{verdict}   score {result.score:.3f}  {relation}  threshold {result.threshold:.3f}"
    draw.text((gap, 6), headline, fill=colour, font=_font(16))
    x = gap
    for title, im in images:
        draw.text((x, header), title, fill="black", font=_font(13))
        panel.paste(im, (x, header + title_h))
        x += im.width + gap
    panel.paste(bar, (x, header + title_h))
    return panel
