"""The embedded synthetic world: walkers and anomalous events in a scene, one video.

What datasets.synthetic plans and writes, this module draws: a ``VideoSpec`` (scene, length,
anomaly kind and interval, seed) becomes ``uint8 [N, 64, 64, 3]`` frames, deterministically
from the spec's own random streams, in a fixed camera of datasets.synthetic_scenes. See
datasets.synthetic for why the world looks like this.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasets.synthetic_scenes import FRAME_SIZE, get_scene

GENERATOR = "frameshield-synthetic"
GENERATOR_VERSION = 2
FILENAME_TMPL = "img_{:08}.jpg"
JPEG_QUALITY = 90
ANOMALY_TYPES = ("vehicle", "runner", "fight", "fire")
# Events are drawn at EVENT_SCALE x the pedestrians' pixel scale (version 2; version 1 drew
# them at 1x): a from-scratch tiny ViT with 8 px patches barely saw a 9x5 runner among 9x5
# walkers and stayed near chance for the demo's whole CPU budget.
EVENT_SCALE = 2
SPLITS = ("train", "test")


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video; ``interval`` is (start, end), end exclusive."""

    split: str
    index: int
    scene: int
    num_frames: int
    anomaly: str | None
    interval: tuple[int, int] | None
    seed: int
    family: str = "default"  # "variant": drawn by datasets.synthetic_variant

    @property
    def name(self) -> str:
        return f"{self.scene + 1:02d}_{self.index:04d}"

    @property
    def rel_dir(self) -> str:
        return f"frames/{self.split}/{self.name}"

    @property
    def label(self) -> int:
        return 0 if self.anomaly is None else 1

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), self.index, stream])



# --------------------------------------------------------------------------- sprites


def _rgba(h, w):
    return np.zeros((h, w, 4), np.float32)


def _person_sprite(shirt, pants, skin, pose):
    """RGBA [9,5] person; pose 0/1 = walking stride phases, 2 = sprint, 3 = arms raised."""
    s = _rgba(9, 5)
    s[0:2, 2] = (*skin, 1)
    s[0, 1:3] = (0.15, 0.1, 0.05, 1)  # hair
    s[1, 1] = (*skin, 1)
    s[2:6, 1:4] = (*shirt, 1)
    legs = {0: ((6, 1), (7, 1), (8, 1), (6, 3), (7, 3), (8, 3)),
            1: ((6, 2), (7, 2), (8, 2), (6, 1), (7, 1), (8, 1)),
            2: ((6, 1), (7, 0), (8, 0), (6, 3), (7, 4), (8, 4)),
            3: ((6, 1), (7, 1), (8, 1), (6, 3), (7, 3), (8, 3))}[pose]
    for y, x in legs:
        s[y, x] = (*pants, 1)
    if pose == 2:  # sprinting: arms swung out
        s[2, 0] = s[3, 4] = (*skin, 1)
    elif pose == 3:  # fighting: arms raised
        s[1, 0] = s[2, 0] = s[1, 4] = s[2, 4] = (*skin, 1)
    else:
        s[3:5, 0] = s[3:5, 4] = (*shirt, 0.9)
    return s


def _punch_sprite(shirt, pants, skin):
    """RGBA [9,7] person facing right with one arm thrown forward and legs braced."""
    s = _rgba(9, 7)
    s[:, :5] = _person_sprite(shirt, pants, skin, 2)
    s[3, 4] = (*shirt, 1)
    s[3, 5:7] = (*skin, 1)
    return s


def _vehicle_sprite(color):
    """RGBA [8,15] side view of a car facing right."""
    s = _rgba(8, 15)
    body = np.asarray(color, np.float32)
    s[3:6, 0:15] = (*body, 1)
    s[1:3, 3:11] = (*body * 0.8, 1)
    s[1:3, 4:7] = s[1:3, 8:10] = (0.15, 0.2, 0.3, 1)  # windows
    s[0, 4:10] = (*body * 0.7, 1)
    s[3, 14] = (1.0, 0.95, 0.5, 1)  # headlight
    s[3, 0] = (0.8, 0.05, 0.05, 1)  # tail light
    s[6:8, 2:5] = s[6:8, 10:13] = (0.05, 0.05, 0.05, 1)  # wheels
    return s


def _upscale(sprite, factor=EVENT_SCALE):
    """Nearest-neighbour enlargement of an RGBA sprite [h,w,4] -> [h*f,w*f,4]."""
    return np.ascontiguousarray(sprite.repeat(factor, axis=0).repeat(factor, axis=1))


def _inside(x, y, w, h, margin=1):
    """Top-left (x, y) moved so that a w x h sprite stays ``margin`` px off the frame border."""
    x = min(max(x, margin), FRAME_SIZE - 1 - margin - w)
    y = min(max(y, margin), FRAME_SIZE - 1 - margin - h)
    return x, y


def _paste(canvas, sprite, x, y, alpha=1.0):
    """Alpha-composite RGBA ``sprite`` [h,w,4] onto ``canvas`` [H,W,3] at top-left (x, y).

    Fractional positions are rendered by bilinear splatting, so slow walkers move
    smoothly instead of jumping a whole pixel every few frames. Clipped at the border.
    """
    h, w = sprite.shape[:2]
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    prem = np.concatenate([sprite[..., :3] * sprite[..., 3:], sprite[..., 3:]], -1) * alpha
    out = np.zeros((h + 1, w + 1, 4), np.float32)
    out[:h, :w] += (1 - fx) * (1 - fy) * prem
    out[:h, 1:] += fx * (1 - fy) * prem
    out[1:, :w] += (1 - fx) * fy * prem
    out[1:, 1:] += fx * fy * prem
    H, W = canvas.shape[:2]
    x0, y0 = max(ix, 0), max(iy, 0)
    x1, y1 = min(ix + w + 1, W), min(iy + h + 1, H)
    if x0 >= x1 or y0 >= y1:
        return
    part = out[y0 - iy:y1 - iy, x0 - ix:x1 - ix]
    region = canvas[y0:y1, x0:x1]
    region *= 1 - part[..., 3:]
    region += part[..., :3]


_SHIRTS = np.array([(0.85, 0.15, 0.15), (0.15, 0.35, 0.8), (0.9, 0.85, 0.2), (0.95, 0.95, 0.95),
                    (0.1, 0.1, 0.12), (0.2, 0.6, 0.3), (0.6, 0.3, 0.7), (0.95, 0.55, 0.15)], np.float32)
_PANTS = np.array([(0.15, 0.15, 0.25), (0.3, 0.25, 0.2), (0.1, 0.1, 0.1), (0.45, 0.45, 0.5)], np.float32)
_SKINS = np.array([(0.95, 0.78, 0.62), (0.78, 0.57, 0.4), (0.5, 0.35, 0.24)], np.float32)
_CARS = np.array([(0.85, 0.1, 0.1), (0.1, 0.3, 0.85), (0.95, 0.85, 0.1), (0.95, 0.95, 0.95)], np.float32)


def _random_person(rng):
    return (_SHIRTS[rng.integers(len(_SHIRTS))], _PANTS[rng.integers(len(_PANTS))],
            _SKINS[rng.integers(len(_SKINS))])


# --------------------------------------------------------------------------- rendering


def _pedestrian_tracks(scene, rng, num_frames, count=(3, 7), standing=0.15, speeds=(0.25, 0.6)):
    """Per pedestrian: sprites for both stride phases and foot positions [T,2] (x, y).

    ``count`` pedestrians (low inclusive, high exclusive) walk along a route (wrapping
    off-screen) at a speed drawn from ``speeds`` px/frame; a share ``standing`` of them stand.
    The defaults are the default family's; the variant family draws other ranges.
    """
    tracks = []
    for _ in range(int(rng.integers(*count))):
        (x0, y0), (x1, y1), half = scene.routes[rng.integers(len(scene.routes))]
        length = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        speed = 0.0 if rng.random() < standing else rng.uniform(*speeds)
        direction = 1 if rng.random() < 0.5 else -1
        lateral = rng.uniform(-half, half)
        s = (rng.uniform(0, length) + direction * speed * np.arange(num_frames)) % length
        xs = x0 + ux * s - uy * lateral
        ys = y0 + uy * s + ux * lateral
        look = _random_person(rng)
        sprites = [_person_sprite(*look, pose) for pose in (0, 1)]
        phase = (np.floor(speed * np.arange(num_frames) / 1.5).astype(int) + rng.integers(2)) % 2
        tracks.append((sprites, np.stack([xs, ys], 1), phase))
    return tracks


def _inner_segment(route, w, h, margin=1):
    """Part of a route along which a w x h sprite (centred on the route) stays inside."""
    (x0, y0), (x1, y1), _ = route
    t = np.linspace(0, 1, 400)
    xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    ok = ((xs - w / 2 >= margin) & (xs + w / 2 <= FRAME_SIZE - 1 - margin)
          & (ys - h / 2 >= margin) & (ys + h / 2 <= FRAME_SIZE - 1 - margin))
    idx = np.flatnonzero(ok)
    return np.array([xs[idx[0]], ys[idx[0]]]), np.array([xs[idx[-1]], ys[idx[-1]]])


def _ping_pong(rng, a, b, n, speed):
    """n centre positions [n,2] moving at ``speed`` px/frame from a random point, bouncing at a and b."""
    length = float(np.linalg.norm(b - a))
    s0 = rng.uniform(0, 2 * length)
    s = (s0 + speed * np.arange(n)) % (2 * length)
    s = np.where(s > length, 2 * length - s, s)
    forward = ((s0 + speed * np.arange(n)) % (2 * length)) <= length
    return a + (b - a) * (s / length)[:, None], forward


def _event_drawer(spec, scene):
    """Return ``draw(canvas, k)`` that draws the event at interval frame k (0-based)."""
    rng = spec._rng(1)
    start, end = spec.interval
    n = end - start
    kind = spec.anomaly
    if kind == "vehicle":
        sprite = _upscale(_vehicle_sprite(_CARS[rng.integers(len(_CARS))]))
        h, w = sprite.shape[:2]
        a, b = _inner_segment(scene.routes[scene.event_route], w, h)
        centres, forward = _ping_pong(rng, a, b, n, EVENT_SCALE * rng.uniform(0.8, 1.3))
        flipped = sprite[:, ::-1]

        def draw(canvas, k):
            _paste(canvas, sprite if forward[k] else flipped, centres[k, 0] - w / 2, centres[k, 1] - h / 2)
        return draw
    if kind == "runner":
        look = _random_person(rng)
        poses = [_upscale(_person_sprite(*look, 2)), _upscale(_person_sprite(*look, 0))]
        h, w = poses[0].shape[:2]
        a, b = _inner_segment(scene.routes[scene.event_route], w, h)
        speed = EVENT_SCALE * rng.uniform(0.9, 1.4)
        centres, forward = _ping_pong(rng, a, b, n, speed)

        def draw(canvas, k):
            sprite = poses[k % 2]
            for j, ghost in ((3, 0.2), (2, 0.4), (1, 0.6)):  # motion streak along the path just run
                gx, gy = centres[max(k - j, 0)]
                _paste(canvas, sprite, gx - w / 2, gy - h / 2, ghost)
            _paste(canvas, sprite, centres[k, 0] - w / 2, centres[k, 1] - h / 2)
        return draw
    if kind == "fight":
        cx, cy = scene.spots[rng.integers(len(scene.spots))]
        looks = [_random_person(rng), _random_person(rng)]
        # fighter 0 faces right, fighter 1 (mirrored) faces left: arms raised or punching
        fighters = [[_upscale(_person_sprite(*look, 3)), _upscale(_punch_sprite(*look))] for look in looks]
        fighters[1] = [sp[:, ::-1] for sp in fighters[1]]
        jitter = EVENT_SCALE * np.stack([rng.integers(-3, 4, (n, 2)), rng.integers(-1, 2, (n, 2))], -1)
        pose = rng.integers(0, 2, (n, 2))
        down = rng.random(n) < 0.3  # one fighter knocked to the ground now and then
        e = EVENT_SCALE
        dust = _rgba(5 * e, 16 * e)
        dust[..., :3] = (0.62, 0.56, 0.45)
        # the whole group (fighters + jitter + dust) stays inside the frame
        cx = min(max(cx, 8 * e + 2), FRAME_SIZE - 8 * e - 3)
        cy = min(max(cy, 10 * e + 2), FRAME_SIZE - 6 * e - 3)

        def draw(canvas, k):
            flick = np.random.default_rng([spec.seed, spec.index, 8, k])
            dust[..., 3] = 0.7 * flick.random(dust.shape[:2]).astype(np.float32)
            _paste(canvas, dust, *_inside(cx - 8 * e, cy + e, *dust.shape[1::-1]))
            for who in (0, 1):
                sprite = fighters[who][pose[k, who]]
                x = cx - 6 * e + 5 * e * who + jitter[k, who, 0]
                y = cy - 6 * e + jitter[k, who, 1]
                if who == 1 and down[k]:
                    sprite = np.ascontiguousarray(sprite.transpose(1, 0, 2)[::-1])
                    y = cy
                _paste(canvas, sprite, *_inside(x, y, *sprite.shape[1::-1]))
        return draw
    if kind == "fire":
        cx, cy = scene.spots[rng.integers(len(scene.spots))]
        fh, fw = 14 * EVENT_SCALE, 11 * EVENT_SCALE
        cx = min(max(cx, fw // 2 + 4), FRAME_SIZE - fw // 2 - 4)
        cy = min(max(cy, fh + 2), FRAME_SIZE - 12)  # the glow stays off the bottom border
        ys, xs = np.mgrid[0:fh, 0:fw].astype(np.float32)
        height = 1 - ys / fh  # 0 at the base, 1 at the top
        envelope = np.exp(-((xs - fw / 2 + 0.5) / (fw / 2 * (1 - 0.7 * height) + 0.5)) ** 2)
        envelope *= 1.2 - height
        colours = np.array([(0.75, 0.1, 0.02), (1.0, 0.5, 0.05), (1.0, 0.95, 0.45)], np.float32)
        smoke_h = 10 * EVENT_SCALE
        gy, gx = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32)
        glow = np.exp(-((gx - cx) ** 2 + (gy - cy + 2) ** 2) / (2 * 10.0 ** 2))[..., None]
        glow = glow * np.array([0.25, 0.06, -0.12], np.float32)  # warm light on the ground

        def draw(canvas, k):
            flick = np.random.default_rng([spec.seed, spec.index, 7, k])
            heat = envelope * (0.75 + 0.5 * flick.random((fh, fw)).astype(np.float32))
            level = np.clip((heat - 0.35) / 0.3, 0, 2)
            x0, y0 = int(cx - fw // 2), int(cy - fh + 4)
            # smoke above the flames, drifting up
            smoke = _rgba(smoke_h, fw + 4)
            drift = flick.random((smoke_h, fw + 4)).astype(np.float32)
            smoke[..., :3] = 0.35
            smoke[..., 3] = 0.55 * drift * np.linspace(0.3, 1, smoke_h)[:, None]
            _paste(canvas, smoke, x0 - 2, max(y0 - smoke_h + 2, 1))
            sprite = _rgba(fh, fw)
            lo = np.floor(np.clip(level, 0, 1.999)).astype(int)
            frac = np.clip(level - lo, 0, 1)[..., None]
            sprite[..., :3] = colours[lo] * (1 - frac) + colours[np.minimum(lo + 1, 2)] * frac
            sprite[..., 3] = np.clip(level * 1.5, 0, 1)
            canvas *= 1 + glow * (0.8 + 0.4 * flick.random())
            _paste(canvas, sprite, x0, y0)
        return draw
    raise ValueError(f"unknown anomaly type {kind!r}; expected one of {ANOMALY_TYPES}")


def render_video(spec: VideoSpec, with_event: bool = True) -> np.ndarray:
    """Render ``spec`` as uint8 frames [T, 64, 64, 3].

    ``with_event=False`` renders the same video without its anomalous event (the
    pedestrians, lighting and everything else identical): the counterfactual normal video.
    """
    scene = get_scene(spec.scene)
    rng = spec._rng(0)
    tracks = _pedestrian_tracks(scene, rng, spec.num_frames)
    gain = rng.uniform(0.88, 1.1) * (1 + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
    draw_event = _event_drawer(spec, scene) if (with_event and spec.anomaly) else None
    frames = np.empty((spec.num_frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    for t in range(spec.num_frames):
        canvas = scene.background.copy()
        for i in sorted(range(len(tracks)), key=lambda i: tracks[i][1][t, 1]):
            sprites, pos, phase = tracks[i]
            _paste(canvas, sprites[phase[t]], pos[t, 0] - 2.5, pos[t, 1] - 8.5)
        if draw_event is not None and spec.interval[0] <= t < spec.interval[1]:
            draw_event(canvas, t - spec.interval[0])
        frames[t] = np.clip(canvas * gain * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames
