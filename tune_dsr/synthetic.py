"""Procedural synthetic faces in the paired VLR/HR layout, for demos, tests and smoke runs.

Real face sets cannot be downloaded here, yet the pipeline (loading, augmentation, identity loss,
recognition metrics) needs data with *identities*: images of one subject that resemble each other
more than they resemble other subjects. Each subject gets fixed features from a seeded RNG (skin
tone, face shape, eyes, brows, nose, mouth, hair, glasses, marks); each image varies them a little
(pose, scale, expression, lighting, background, noise). HR images are drawn at twice the size and
downsampled with LANCZOS (cheap anti-aliasing); VLR images are the HR image downsampled with
BICUBIC, as in the original data.

Output, for every split (split by subject, about 80/10/10)::

    <out>/{train,val,test}_processed/hr_images/{subject:04d}_{k:02d}.png
    <out>/{train,val,test}_processed/vlr_images_{S}x{S}/{subject:04d}_{k:02d}.png

Everything is deterministic for a seed: the same arguments write the same bytes.

``python -m tune_dsr.synth`` is the command line over `make_synthetic_dataset`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tune_dsr.errors import SynthError

__all__ = ["SPLITS", "make_synthetic_dataset"]

logger = logging.getLogger(__name__)

# Split name -> folder name; the same names the loaders and the original project use.
SPLITS: dict[str, str] = {
    "train": "train_processed",
    "val": "val_processed",
    "test": "test_processed",
}

MIN_SUBJECTS = 3  # one per split at least
MAX_SUBJECTS = 10_000  # four-digit subject ids
MAX_PER_SUBJECT = 100  # two-digit image ids
MIN_HR, MAX_HR = 16, 1024
MIN_VLR = 4

# The file names this module writes; stale ones from an earlier, larger run are removed.
_NAME_RE = re.compile(r"^\d{4,}_\d{2}\.png$")

_RGB = tuple[int, int, int]

_HAIR_COLOURS: tuple[_RGB, ...] = (
    (28, 24, 20), (62, 40, 26), (112, 74, 42), (210, 178, 112),
    (150, 64, 32), (165, 165, 160), (90, 60, 40),
)
_EYE_COLOURS: tuple[_RGB, ...] = (
    (88, 54, 30), (62, 112, 172), (74, 124, 74), (116, 126, 138), (40, 30, 24),
)
_SKIN_LIGHT = np.array([250, 222, 196], dtype=np.float64)
_SKIN_DARK = np.array([104, 66, 42], dtype=np.float64)


@dataclass(frozen=True)
class _Subject:
    """Fixed features of one synthetic identity, in canvas fractions (0..1) and RGB."""

    skin: _RGB
    face_w: float  # half-width of the face ellipse
    face_h: float  # half-height
    eye_dx: float  # half the distance between the eyes
    eye_y: float  # offset of the eyes from the face centre (negative: above)
    eye_w: float
    eye_open: float  # eye height / eye width
    eye_colour: _RGB
    brow_gap: float
    brow_tilt: float  # radians, positive: outer end lower
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_gap: float  # distance from the nose tip to the mouth
    mouth_w: float
    mouth_curve: float  # positive: smile
    lip: _RGB
    hair: _RGB
    hair_style: int  # 0 short, 1 long, 2 receding, 3 fringe
    hair_thick: float
    shirt: _RGB
    glasses: _RGB | None
    mole: tuple[float, float] | None  # position relative to the face centre, in face radii
    beard: bool


def _colour(values: np.ndarray) -> _RGB:
    r, g, b = (int(v) for v in np.clip(np.rint(values), 0, 255))
    return r, g, b


def _jitter(rng: np.random.Generator, base: Sequence[int], amount: float) -> _RGB:
    return _colour(np.asarray(base, dtype=np.float64) + rng.uniform(-amount, amount, 3))


def _draw_subject(rng: np.random.Generator) -> _Subject:
    """Sample one identity. The order of RNG calls is fixed: it defines the dataset."""
    skin = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT) + rng.uniform(-12, 12, 3)
    hair_base = _HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))]
    eye_base = _EYE_COLOURS[int(rng.integers(len(_EYE_COLOURS)))]
    face_w = rng.uniform(0.24, 0.32)
    face_h = rng.uniform(0.31, 0.39)
    has_glasses = rng.uniform() < 0.3
    glasses_colour = _jitter(rng, (40, 40, 45), 35)
    has_mole = rng.uniform() < 0.5
    mole = (rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.45))
    lip_base = skin * np.array([0.80, 0.52, 0.52]) + np.array([40, 0, 0])
    return _Subject(
        skin=_colour(skin),
        face_w=face_w,
        face_h=face_h,
        eye_dx=face_w * rng.uniform(0.34, 0.48),
        eye_y=-face_h * rng.uniform(0.05, 0.25),
        eye_w=face_w * rng.uniform(0.13, 0.19),
        eye_open=rng.uniform(0.42, 0.68),
        eye_colour=_jitter(rng, eye_base, 15),
        brow_gap=rng.uniform(0.025, 0.05),
        brow_tilt=math.radians(rng.uniform(-14, 14)),
        brow_thick=rng.uniform(0.010, 0.024),
        nose_len=face_h * rng.uniform(0.22, 0.38),
        nose_w=face_w * rng.uniform(0.12, 0.22),
        mouth_gap=face_h * rng.uniform(0.12, 0.22),
        mouth_w=face_w * rng.uniform(0.25, 0.42),
        mouth_curve=rng.uniform(-0.008, 0.022),
        lip=_jitter(rng, tuple(int(v) for v in np.clip(lip_base, 0, 255)), 15),
        hair=_jitter(rng, hair_base, 14),
        hair_style=int(rng.integers(4)),
        hair_thick=rng.uniform(0.03, 0.08),
        shirt=_colour(rng.uniform(30, 230, 3)),
        glasses=glasses_colour if has_glasses else None,
        mole=mole if has_mole else None,
        beard=bool(rng.uniform() < 0.2),
    )


def _shade(colour: _RGB, factor: float) -> _RGB:
    return _colour(np.asarray(colour, dtype=np.float64) * factor)


def _draw_face(subject: _Subject, rng: np.random.Generator, size: int) -> Image.Image:
    """The subject on a transparent canvas, with this image's expression (mouth, eyes, brows)."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    s = subject

    def px(v: float) -> float:
        return v * size

    def box(cx: float, cy: float, rx: float, ry: float) -> list[float]:
        return [px(cx - rx), px(cy - ry), px(cx + rx), px(cy + ry)]

    def width(v: float) -> int:
        return max(1, round(px(v)))

    cx, cy = 0.5, 0.47
    fw, fh = s.face_w, s.face_h
    skin_dark = _shade(s.skin, 0.82)

    # Per-image expression, drawn in a fixed order so the image RNG stays aligned.
    smile = s.mouth_curve + rng.uniform(-0.012, 0.016)
    openness = s.eye_open * rng.uniform(0.8, 1.12)
    brow_raise = rng.uniform(-0.008, 0.01)
    gaze = rng.uniform(-0.25, 0.25)

    # Shoulders and neck, then hair that falls behind the head.
    draw.ellipse(box(cx, 1.08, 0.46, 0.24), fill=s.shirt)
    draw.rectangle([px(cx - fw * 0.42), px(cy + fh * 0.6), px(cx + fw * 0.42), px(0.92)],
                   fill=skin_dark)
    if s.hair_style == 1:
        draw.ellipse(box(cx, cy - 0.02, fw + 0.05, fh + 0.04), fill=s.hair)
        draw.rectangle([px(cx - fw - 0.05), px(cy), px(cx + fw + 0.05), px(cy + fh * 0.95)],
                       fill=s.hair)
    # Ears, face.
    for side in (-1, 1):
        draw.ellipse(box(cx + side * fw * 0.98, cy + 0.01, fw * 0.16, fh * 0.2), fill=skin_dark)
    draw.ellipse(box(cx, cy, fw, fh), fill=s.skin)
    if s.beard:
        draw.chord(box(cx, cy, fw, fh), 22, 158, fill=_shade(s.hair, 1.05))

    # Hair on top: the upper half of an ellipse whose flat side is the hairline.
    hairline = {0: -0.45, 1: -0.5, 2: -0.78, 3: -0.3}[s.hair_style] * fh + cy
    top = cy - fh - s.hair_thick
    side_extra = 0.01 if s.hair_style == 2 else 0.025
    draw.chord([px(cx - fw - side_extra), px(top), px(cx + fw + side_extra),
                px(2 * hairline - top)], 180, 360, fill=s.hair)
    if s.hair_style == 3:  # a jagged fringe below the hairline
        teeth = 7
        points = []
        for i in range(teeth + 1):
            x = cx - fw * 0.85 + i * (1.7 * fw / teeth)
            points.append((px(x), px(hairline)))
            if i < teeth:
                points.append((px(x + 0.85 * fw / teeth), px(hairline + fh * 0.16)))
        draw.polygon(points, fill=s.hair)
    if s.hair_style == 2:  # tufts at the sides
        for side in (-1, 1):
            draw.ellipse(box(cx + side * fw * 0.93, cy - fh * 0.3, fw * 0.12, fh * 0.25),
                         fill=s.hair)

    # Eyes and brows, mirrored.
    ey = cy + s.eye_y
    eh = s.eye_w * openness
    brow_colour = _shade(s.hair, 0.75)
    for side in (-1, 1):
        ex = cx + side * s.eye_dx
        draw.ellipse(box(ex, ey, s.eye_w, eh), fill=(245, 244, 240))
        iris = eh * 0.95
        ix = ex + gaze * (s.eye_w - iris)
        draw.ellipse(box(ix, ey, iris, iris), fill=s.eye_colour)
        draw.ellipse(box(ix, ey, iris * 0.45, iris * 0.45), fill=(12, 10, 10))
        by = ey - eh - s.brow_gap - brow_raise
        half = s.eye_w * 1.25
        dy = math.sin(s.brow_tilt) * half
        draw.line([(px(ex - side * half), px(by - dy)), (px(ex + side * half), px(by + dy))],
                  fill=brow_colour, width=width(s.brow_thick))
        if s.glasses is not None:
            draw.ellipse(box(ex, ey, s.eye_w * 1.65, s.eye_w * 1.3), outline=s.glasses,
                         width=width(0.009))
    if s.glasses is not None:
        inner = s.eye_dx - s.eye_w * 1.65
        draw.line([(px(cx - inner), px(ey)), (px(cx + inner), px(ey))], fill=s.glasses,
                  width=width(0.008))

    # Nose: a bridge line and the nostrils.
    tip = ey + s.nose_len
    draw.line([(px(cx), px(ey + 0.02)), (px(cx + 0.006), px(tip))], fill=skin_dark,
              width=width(0.008))
    draw.chord(box(cx, tip, s.nose_w, s.nose_w * 0.45), 0, 180, fill=_shade(s.skin, 0.72))

    # Mouth: a parabola, corners up when smiling.
    my = tip + s.mouth_gap
    points = [(px(cx + t * s.mouth_w), px(my + smile * (1 - t * t)))
              for t in np.linspace(-1.0, 1.0, 11)]
    draw.line(points, fill=s.lip, width=width(0.016), joint="curve")

    if s.mole is not None:
        mx, my_ = cx + s.mole[0] * fw, cy + s.mole[1] * fh
        draw.ellipse(box(mx, my_, 0.009, 0.009), fill=_shade(s.skin, 0.45))
    return layer


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A vertical gradient in a random muted tint."""
    top = rng.uniform(120, 235, 3)
    bottom = top * rng.uniform(0.7, 0.95)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    rows = top[None, None, :] * (1 - t) + bottom[None, None, :] * t
    pixels = np.broadcast_to(rows, (size, size, 3))
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB").convert("RGBA")


def _render(subject: _Subject, rng: np.random.Generator, hr_size: int) -> np.ndarray:
    """One HR image (uint8 [H, W, 3]) of `subject`; `rng` supplies this image's variations."""
    canvas = 2 * hr_size
    background = _background(rng, canvas)
    face = _draw_face(subject, rng, canvas)

    # Pose: shift by up to 3 HR pixels, scale ±5 %, rotate ±4° about the centre. PIL's AFFINE
    # maps output to input coordinates, so this is the inverse of the pose.
    shift = rng.uniform(-3.0, 3.0, 2) * 2
    scale = rng.uniform(0.95, 1.05)
    angle = math.radians(rng.uniform(-4.0, 4.0))
    cos, sin = math.cos(angle), math.sin(angle)
    c = canvas / 2
    ox, oy = c + shift[0], c + shift[1]
    matrix = (cos / scale, sin / scale, c - (cos * ox + sin * oy) / scale,
              -sin / scale, cos / scale, c - (-sin * ox + cos * oy) / scale)
    face = face.transform((canvas, canvas), Image.Transform.AFFINE, matrix,
                          resample=Image.Resampling.BICUBIC)
    image = Image.alpha_composite(background, face).convert("RGB")
    image = image.resize((hr_size, hr_size), Image.Resampling.LANCZOS)

    # Lighting: overall brightness and a left-right gradient; then sensor noise.
    pixels = np.asarray(image, dtype=np.float32)
    gain = rng.uniform(0.86, 1.12)
    slope = rng.uniform(-0.14, 0.14)
    ramp = 1.0 + slope * np.linspace(-0.5, 0.5, hr_size, dtype=np.float32)
    pixels = pixels * (gain * ramp)[None, :, None]
    pixels += rng.normal(0.0, rng.uniform(1.0, 3.5), pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _split_subjects(subjects: int, seed: int) -> dict[str, list[int]]:
    """Subjects shuffled by the seed, then about 80/10/10 with at least one in val and test."""
    order = np.random.default_rng([seed, 7_919]).permutation(subjects)
    n_held = max(1, round(0.1 * subjects))
    n_val = n_test = n_held
    groups = {
        "train": order[: subjects - n_val - n_test],
        "val": order[subjects - n_val - n_test: subjects - n_test],
        "test": order[subjects - n_test:],
    }
    return {name: sorted(int(i) for i in ids) for name, ids in groups.items()}


def _validate(subjects: int, per_subject: int, vlr_sizes: Sequence[int], hr_size: int,
              seed: int) -> tuple[int, ...]:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise SynthError(message)

    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    need(is_int(subjects) and MIN_SUBJECTS <= subjects <= MAX_SUBJECTS,
         f"subjects must be an integer in [{MIN_SUBJECTS}, {MAX_SUBJECTS}] (at least one "
         f"subject per split: train, val, test), but got subjects={subjects!r}")
    need(is_int(per_subject) and 1 <= per_subject <= MAX_PER_SUBJECT,
         f"per_subject must be an integer in [1, {MAX_PER_SUBJECT}], "
         f"but got per_subject={per_subject!r}")
    need(is_int(hr_size) and MIN_HR <= hr_size <= MAX_HR,
         f"hr_size must be an integer in [{MIN_HR}, {MAX_HR}], but got hr_size={hr_size!r}")
    need(is_int(seed) and seed >= 0, f"seed must be a non-negative integer, but got seed={seed!r}")
    sizes = tuple(vlr_sizes)
    need(len(sizes) > 0, "give at least one VLR size (vlr_sizes=(16,) for example)")
    for size in sizes:
        need(is_int(size) and MIN_VLR <= size < hr_size,
             f"every VLR size must be an integer with {MIN_VLR} <= size < hr_size={hr_size} "
             f"(VLR images are downsampled HR images), but got {size!r}")
    return tuple(sorted({int(s) for s in sizes}))


def make_synthetic_dataset(out: Path, subjects: int = 24, per_subject: int = 6,
                           vlr_sizes: Sequence[int] = (16,), hr_size: int = 112,
                           seed: int = 0) -> dict[str, Path]:
    """Write synthetic train/val/test splits under `out`; returns split name -> split folder.

    Subjects are split 80/10/10 (at least one in val and test), so val and test identities are
    unseen in training, as in the real data. Files this module wrote in an earlier run that the
    current arguments do not produce (e.g. after fewer subjects) are removed from the folders
    written, so a split never mixes runs; other files are left alone.
    Raises SynthError for arguments it cannot use.
    """
    sizes = _validate(subjects, per_subject, vlr_sizes, hr_size, seed)
    out = Path(out).expanduser().resolve()
    started = time.perf_counter()
    split_dirs: dict[str, Path] = {}
    for split, subject_ids in _split_subjects(subjects, seed).items():
        split_dir = out / SPLITS[split]
        folders = {"hr": split_dir / "hr_images"}
        folders.update({f"vlr{s}": split_dir / f"vlr_images_{s}x{s}" for s in sizes})
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        written: set[str] = set()
        for subject_id in subject_ids:
            subject = _draw_subject(np.random.default_rng([seed, subject_id, 0]))
            for k in range(per_subject):
                hr = _render(subject, np.random.default_rng([seed, subject_id, 1 + k]), hr_size)
                name = f"{subject_id:04d}_{k:02d}.png"
                hr_image = Image.fromarray(hr, "RGB")
                hr_image.save(folders["hr"] / name, format="PNG")
                for s in sizes:
                    vlr = hr_image.resize((s, s), Image.Resampling.BICUBIC)
                    vlr.save(folders[f"vlr{s}"] / name, format="PNG")
                written.add(name)
        for folder in folders.values():
            for path in folder.iterdir():
                if _NAME_RE.match(path.name) and path.name not in written and path.is_file():
                    logger.info("removing %s, left from an earlier synthetic run", path)
                    path.unlink()
        split_dirs[split] = split_dir
        logger.debug("%s: %d subjects, %d images in %s", split, len(subject_ids),
                     len(written), split_dir)
    logger.info("wrote %d synthetic faces (%d subjects) under %s in %.2f s",
                subjects * per_subject, subjects, out, time.perf_counter() - started)
    return split_dirs
