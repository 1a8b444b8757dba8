"""The second synthetic family, ``variant``: a world nobody tunes on.

The demo's recipe was chosen on the default family (datasets.synthetic_world); this family
checks that it holds on data it was not tuned on. Everything that a recipe could adapt to
differs: other scenes (the default layouts mirrored left-right, repainted with other ground
and wall colours and another texture draw; three of them), other frame size (48 x 48 px
frames, rendered at 64 and downsampled: the loader upsamples them again, so events are
blurrier), other walkers (2-8 per video, 0.15-0.9 px/frame, a quarter standing), other event
kinds and speeds, and other video lengths (set by the presets in datasets.synthetic):

- ``cyclist``: a person on a bicycle riding back and forth over a walkway (fast, no streak),
- ``fallen``: a person lying on the ground, twitching now and then,
- ``slow_vehicle``: a car creeping along a walkway (about half the default family's speed),
- ``sprinter``: a person sprinting faster than the default family's runner, without streak.

Every random stream is keyed by ``VARIANT_TAG`` on top of (seed, split, index, stream), so no
video of this family shares a draw with one of the default family.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from datasets import synthetic_scenes as scenes
from datasets import synthetic_world as world
from datasets.synthetic_scenes import Scene
from datasets.synthetic_world import (EVENT_SCALE, SPLITS, VideoSpec, _inner_segment, _paste, _person_sprite,
                                      _ping_pong, _random_person, _upscale, _vehicle_sprite)

VARIANT_TAG = 7_919  # appended to every seed key of this family
VARIANT_ANOMALY_TYPES = ("cyclist", "fallen", "slow_vehicle", "sprinter")
VARIANT_FRAME_SIZE = 48
VARIANT_NUM_SCENES = 3
_BASE_SCENES = (0, 1, 3)  # plaza, park, courtyard layouts, mirrored and repainted
_SCENE_NAMES = ("market", "riverside", "yard")


def variant_rng(spec: VideoSpec, stream: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, SPLITS.index(spec.split), spec.index, stream, VARIANT_TAG])


def _mirror_x(x):
    return scenes.FRAME_SIZE - x


@functools.lru_cache(maxsize=None)
def get_variant_scene(scene_id: int) -> Scene:
    """Scene ``scene_id`` (0..2) of the variant: a default layout mirrored, repainted, re-textured."""
    if not 0 <= scene_id < VARIANT_NUM_SCENES:
        raise ValueError(f"variant scene id {scene_id} out of range 0..{VARIANT_NUM_SCENES - 1}")
    base = scenes.get_scene(_BASE_SCENES[scene_id])
    rng = np.random.default_rng([VARIANT_TAG, scene_id])
    img = base.background[:, ::-1].astype(np.float32)
    # repaint: permute and scale the colour channels, then a fresh low-frequency texture
    perm = ((1, 2, 0), (2, 0, 1), (0, 2, 1))[scene_id]
    img = img[..., perm] * np.asarray(rng.uniform(0.75, 1.1, 3), np.float32)
    img *= 1 + 0.12 * scenes._value_noise(rng, scenes.FRAME_SIZE, 16)[..., None]
    routes = tuple(((_mirror_x(x0), y0), (_mirror_x(x1), y1), hw) for (x0, y0), (x1, y1), hw in base.routes)
    spots = tuple((_mirror_x(x), y) for x, y in base.spots)
    bg = np.clip(img, 0, 1).astype(np.float32)
    bg.setflags(write=False)
    return Scene(_SCENE_NAMES[scene_id], bg, routes, base.event_route, spots)


def _bicycle_sprite(look):
    """RGBA [11,9] person riding a bicycle, facing right."""
    s = np.zeros((11, 9, 4), np.float32)
    s[0:9, 2:7] = _person_sprite(*look, 2)[:, :5]
    s[6:9, 2:7] = 0
    frame_colour = (0.2, 0.2, 0.22, 1)
    for y, x in ((8, 1), (9, 0), (9, 2), (10, 1), (8, 7), (9, 6), (9, 8), (10, 7)):  # wheels
        s[y, x] = frame_colour
    s[8, 2:7] = frame_colour
    s[6:8, 4] = (*look[1], 1)  # legs on the pedals
    return s


def _fallen_sprite(look):
    """RGBA [5,9] person lying on the ground (a standing sprite turned on its side)."""
    return np.ascontiguousarray(_person_sprite(*look, 0).transpose(1, 0, 2)[::-1])


def _variant_event_drawer(spec, scene):
    rng = variant_rng(spec, 1)
    start, end = spec.interval
    n = end - start
    kind = spec.anomaly
    if kind in ("cyclist", "slow_vehicle", "sprinter"):
        if kind == "cyclist":
            sprite, speed = _upscale(_bicycle_sprite(_random_person(rng))), EVENT_SCALE * rng.uniform(1.6, 2.4)
            poses = [sprite, sprite]
        elif kind == "slow_vehicle":
            sprite, speed = _upscale(_vehicle_sprite(world._CARS[rng.integers(len(world._CARS))])), \
                EVENT_SCALE * rng.uniform(0.4, 0.7)
            poses = [sprite, sprite]
        else:
            look = _random_person(rng)
            poses = [_upscale(_person_sprite(*look, 2)), _upscale(_person_sprite(*look, 0))]
            speed = EVENT_SCALE * rng.uniform(1.5, 2.0)
        h, w = poses[0].shape[:2]
        a, b = _inner_segment(scene.routes[scene.event_route], w, h)
        centres, forward = _ping_pong(rng, a, b, n, speed)

        def draw(canvas, k):
            sprite = poses[k % 2]
            sprite = sprite if forward[k] else sprite[:, ::-1]
            _paste(canvas, sprite, centres[k, 0] - w / 2, centres[k, 1] - h / 2)
        return draw
    if kind == "fallen":
        cx, cy = scene.spots[rng.integers(len(scene.spots))]
        sprite = _upscale(_fallen_sprite(_random_person(rng)))
        h, w = sprite.shape[:2]
        twitch = rng.random(n) < 0.2

        def draw(canvas, k):
            dy = -1 if twitch[k] else 0
            _paste(canvas, sprite, *world._inside(cx - w / 2, cy - h / 2 + dy, w, h))
        return draw
    raise ValueError(f"unknown variant anomaly type {kind!r}; expected one of {VARIANT_ANOMALY_TYPES}")


def render_variant_video(spec: VideoSpec, with_event: bool = True) -> np.ndarray:
    """Render a variant ``spec`` as uint8 frames [T, 48, 48, 3] (drawn at 64 px, downsampled)."""
    scene = get_variant_scene(spec.scene)
    rng = variant_rng(spec, 0)
    tracks = world._pedestrian_tracks(scene, rng, spec.num_frames, count=(2, 9), standing=0.25,
                                      speeds=(0.15, 0.9))
    gain = rng.uniform(0.8, 1.15) * (1 + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
    draw_event = _variant_event_drawer(spec, scene) if (with_event and spec.anomaly) else None
    size = VARIANT_FRAME_SIZE
    frames = np.empty((spec.num_frames, size, size, 3), np.uint8)
    for t in range(spec.num_frames):
        canvas = scene.background.copy()
        for i in sorted(range(len(tracks)), key=lambda i: tracks[i][1][t, 1]):
            sprites, pos, phase = tracks[i]
            _paste(canvas, sprites[phase[t]], pos[t, 0] - 2.5, pos[t, 1] - 8.5)
        if draw_event is not None and spec.interval[0] <= t < spec.interval[1]:
            draw_event(canvas, t - spec.interval[0])
        full = np.clip(canvas * gain * 255 + 0.5, 0, 255).astype(np.uint8)
        frames[t] = np.asarray(Image.fromarray(full).resize((size, size), Image.BILINEAR))
    return frames
