"""The embedded synthetic world's fixed cameras: four 64x64 backgrounds and their walkways.

A scene is drawn once, deterministically, from its own seed (independent of the dataset's):
datasets.synthetic_world walks people and events through it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

FRAME_SIZE = 64
_SCENE_SEED = 20251  # scenes are fixed cameras: independent of the dataset seed


@dataclass(frozen=True)
class Scene:
    """A fixed camera: background [H,W,3] float32 in [0,1] and walkway routes.

    A route is ((x0, y0), (x1, y1), half_width) in pixels; its ends lie off-screen so
    pedestrians wrapping around it enter and leave at the frame border. ``event_route``
    indexes the route fast movers (vehicle, runner) use; ``spots`` are (x, y) ground
    points where stationary events (fight, fire) may happen.
    """

    name: str
    background: np.ndarray
    routes: tuple
    event_route: int
    spots: tuple


def _value_noise(rng, size, cell, octaves=3):
    """Smooth noise [size,size] in about [-1,1]: bilinear-upsampled random grids."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        n = size // cell + 2
        grid = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        coords = np.arange(size, dtype=np.float32) / cell
        i0 = coords.astype(int)
        f = coords - i0
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
        out += amp * (rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :])
        total += amp
        amp *= 0.5
        cell = max(1, cell // 2)
    return out / total


def _textured(rng, color, amount, cell=8):
    noise = _value_noise(rng, FRAME_SIZE, cell)
    grain = rng.uniform(-1, 1, (FRAME_SIZE, FRAME_SIZE)).astype(np.float32)
    shade = 1 + amount * noise + 0.35 * amount * grain
    return np.asarray(color, np.float32)[None, None, :] * shade[..., None]


def _segment_mask(p0, p1, half_width):
    """Bool [H,W]: pixels within ``half_width`` of the segment p0-p1."""
    ys, xs = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32) + 0.5
    d = np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
    t = ((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / float(d @ d)
    t = np.clip(t, 0, 1)
    dist = np.hypot(xs - (p0[0] + t * d[0]), ys - (p0[1] + t * d[1]))
    return dist <= half_width


def _paint(img, mask, layer):
    img[mask] = layer[mask]


def _building(img, rng, x0, y0, x1, y1, wall, window=(0.25, 0.32, 0.42)):
    """Facade with a roof line and a grid of windows (some lit)."""
    img[y0:y1, x0:x1] = _textured(rng, wall, 0.06)[y0:y1, x0:x1]
    img[y0:y0 + 2, x0:x1] = np.asarray(wall, np.float32) * 0.6
    for wy in range(y0 + 4, y1 - 4, 6):
        for wx in range(x0 + 2, x1 - 3, 5):
            lit = rng.random() < 0.25
            img[wy:wy + 3, wx:wx + 3] = (0.85, 0.8, 0.55) if lit else window
    img[y1 - 1:y1, x0:x1] = np.asarray(wall, np.float32) * 0.5


def _tree(img, rng, cx, cy, r):
    ys, xs = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE]
    shadow = (xs - cx - 2) ** 2 + (ys - cy - 2) ** 2 <= r * r
    img[shadow] *= 0.7
    crown = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    _paint(img, crown, _textured(rng, (0.12, 0.32, 0.12), 0.35, cell=2))


@functools.lru_cache(maxsize=None)
def get_scene(scene_id: int) -> Scene:
    """Build fixed camera ``scene_id`` (0..NUM_SCENES-1); deterministic, cached."""
    rng = np.random.default_rng([_SCENE_SEED, scene_id])
    S = FRAME_SIZE
    grass = _textured(rng, (0.30, 0.50, 0.22), 0.25, cell=4)
    paving = _textured(rng, (0.58, 0.57, 0.54), 0.10)
    sand = _textured(rng, (0.72, 0.64, 0.48), 0.10)
    if scene_id == 0:  # plaza: building on top, paved square, lawn bottom-left
        img = paving.copy()
        img[::8, :] *= 0.85
        img[:, ::8] *= 0.85
        _building(img, rng, 0, 0, S, 16, (0.70, 0.62, 0.50))
        lawn = np.zeros((S, S), bool)
        lawn[52:, :26] = True
        _paint(img, lawn, grass)
        routes = (((-8, 30), (72, 30), 4), ((-8, 43), (72, 43), 4), ((34, 72), (60, 14), 3))
        event_route, spots = 1, ((20, 34), (44, 38), (48, 48))
    elif scene_id == 1:  # park: grass, diagonal sand path, vertical path, trees
        img = grass.copy()
        _paint(img, _segment_mask((-10, 56), (74, 18), 6), sand)
        _paint(img, _segment_mask((44, -10), (44, 74), 4), sand)
        for cx, cy, r in ((10, 12, 6), (24, 6, 5), (58, 56, 6), (12, 36, 4)):
            _tree(img, rng, cx, cy, r)
        routes = (((-10, 56), (74, 18), 4), ((44, -10), (44, 74), 3))
        event_route, spots = 0, ((26, 44), (44, 30), (40, 54))
    elif scene_id == 2:  # campus: building left, vertical walkway, lawn right, walkway bottom
        img = grass.copy()
        _paint(img, _segment_mask((28, -10), (28, 74), 6), paving)
        _paint(img, _segment_mask((-10, 52), (74, 52), 5), paving)
        _building(img, rng, 0, 0, 18, 44, (0.55, 0.58, 0.64))
        hedge = np.zeros((S, S), bool)
        hedge[20:24, 40:62] = True
        _paint(img, hedge, _textured(rng, (0.12, 0.28, 0.10), 0.3, cell=2))
        routes = (((28, -10), (28, 74), 4), ((-10, 52), (74, 52), 3))
        event_route, spots = 1, ((28, 30), (48, 40), (40, 52))
    elif scene_id == 3:  # courtyard: brick ground, two buildings, stone walkway, lawn bottom
        img = _textured(rng, (0.55, 0.33, 0.26), 0.12)
        img[::4, :] *= 0.82
        for row in range(0, S, 4):
            off = 0 if (row // 4) % 2 == 0 else 4
            img[row:row + 4, off::8] *= 0.85
        _building(img, rng, 0, 0, 26, 18, (0.78, 0.74, 0.66))
        _building(img, rng, 38, 0, S, 14, (0.50, 0.46, 0.52))
        _paint(img, _segment_mask((-10, 38), (74, 38), 5), paving)
        lawn = np.zeros((S, S), bool)
        lawn[54:, 30:] = True
        _paint(img, lawn, grass)
        routes = (((-10, 38), (74, 38), 4), ((32, 74), (32, 10), 3))
        event_route, spots = 0, ((16, 28), (46, 30), (20, 48))
    else:
        raise ValueError(f"scene id {scene_id} out of range 0..{NUM_SCENES - 1}")
    names = ("plaza", "park", "campus", "courtyard")
    bg = np.clip(img, 0, 1).astype(np.float32)
    bg.setflags(write=False)
    return Scene(names[scene_id], bg, routes, event_route, spots)


NUM_SCENES = 4
