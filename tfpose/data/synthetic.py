"""Deterministic synthetic multi-person keypoint dataset in COCO format, for any keypoint spec.

``generate(out_dir, spec, ...)`` draws ``num_images`` JPEG images of several articulated people
on cluttered backgrounds and writes ``out_dir/annotations_<split>.json`` (COCO keypoints format)
with the images under ``out_dir/images/<split>/`` (``file_name`` is the bare name, so a split's
``images`` folder is ``out_dir/images/<split>``). CLI::

    python -m tfpose.data.synthetic --out DIR --keypoints coco|crowdpose|mpii|spec.yaml \\
        --num-images 200 --size 256 --seed 0 --split train

Determinism: image ``i`` uses ``numpy.random.default_rng([seed, crc32(split), i])``; nothing
depends on time, hashing order or the machine, so the same arguments give byte-identical files
(JPEG bytes depend on the installed OpenCV build). Every file is written to a temporary file in its
folder and moved in place with ``os.replace``.

People. A spec whose keypoint names are all known anatomical points (the built-in coco,
crowdpose and mpii specs, or a custom subset such as a 13-joint body) is drawn from one 3-D human
model; the annotation picks the spec's points out of it:

* Segment lengths and joint heights as fractions of standing height H after Drillis & Contini
  (1966) as tabulated in Winter, *Biomechanics and Motor Control of Human Movement* (4th ed.,
  2009, fig. 4.1): hip 0.530 H, shoulder 0.818 H, chin 0.870 H, thigh 0.245 H, shank 0.246 H,
  upper arm 0.188 H, forearm 0.145 H, hand 0.108 H, foot 0.152 H; shoulder-joint and hip-joint
  spacing a little inside the biacromial (0.259 H) and hip (0.191 H) breadths. Limb radii and head
  size are approximate adult means (thigh circumference ~55 cm, calf ~37 cm, arm ~30 cm, head
  breadth ~15.5 cm, length ~19.5 cm at H = 175 cm); a per-person build factor varies them.
* Joint angles are sampled per pose family (standing, walking/running, gesturing, sitting/
  squatting, free) and clipped to normal active ranges of motion (AAOS; Soucie et al., Haemophilia
  2011): shoulder flexion -60..180, abduction -10..180, rotation -90..70; elbow 0..150; hip flexion
  -30..120, abduction -20..45, rotation -45..45; knee 0..135; ankle -20..50; trunk flexion
  -25..80, lateral 35, rotation 45; head yaw 80, pitch 45, roll 40 (degrees).
* The body is turned to any yaw (frontal views dominant, side and back views common), tilted by
  a small camera pitch and projected orthographically; parts are drawn far to near. The scene
  does not depend on which human spec is asked for: coco, crowdpose and mpii sets made with the
  same seed and split show the same pictures, each annotated in its own skeleton.

Any other spec gets a "creature": a kinematic tree from a breadth-first search of its skeleton
from the root joints (or joint 0), unreached joints hung on the first root, with bone lengths,
rest angles and bounded swing ranges drawn once per spec (from a hash of the spec, so every split
shows the same anatomy) and mirrored across flip pairs; each person varies lengths by +-10 % and
joint angles within the swing ranges.

Rendering. All people in an image share one palette (colours per body-part slot, drawn per image;
shapes get small independent jitter), so colour never tells people apart. Limbs are tapered
capsules and bodies polygons/ellipses with a shading band towards a per-image light direction,
drawn with cv2 using ``SHIFT`` fractional bits; joints carry small blobs drawn as analytic
anti-aliased discs (cv2's filled shapes cover every touched pixel, up to ~0.4 px off for small
discs; the analytic disc's centroid is within 0.06 px of its centre). Backgrounds have gradients,
blotchy texture, random shapes and limb-like distractor strokes in the same palette; images get
noise, optional blur and gain.

Pixel convention (tfpose.codecs.base): continuous coordinates, pixel (i, j) covers
[j, j + 1) x [i, i + 1). Keypoints are quantised to 1/16 px and the shapes are drawn from exactly
those coordinates (cv2 point = (x - 0.5) * 2**SHIFT, since cv2 puts integer points at pixel
centres).

Annotations (one per person that shows at least one pixel):
* ``keypoints``: v = 0 with x = y = 0 outside the image; v = 1 when the keypoint's pixel is covered
  by a nearer person, by a non-adjacent part of the same person (the far arm behind the torso), or
  when it is a face/ear point turned away from the camera; v = 2 otherwise.
* ``segmentation``/``bbox``/``area``: polygons, tight box and pixel count of the person's visible
  silhouette (not covered by nearer people, clipped to the image), as COCO segments are.
* People shown by less than ``SyntheticConfig.occluded_fraction`` of their in-image silhouette,
  and occasional tiny people, are annotated with 0 labelled keypoints (``iscrowd`` 0); some images
  get a dense group of small people annotated by one ``iscrowd`` 1 polygon (their convex hull).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from typing import Mapping, Optional

import cv2
import numpy as np
import yaml

from tfpose.fileio import atomic_write
from tfpose.keypoints import KeypointSpec, SpecError, get_spec, spec_from_dict

SHIFT = 4  # fractional bits of cv2 drawing coordinates
_ONE = 1 << SHIFT
VERSION = 1  # written to the JSON `info`; bump when the generator's output changes


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (defaults: the documented dataset).

    Args:
        min_people: int, fewest annotated people per image (before border/occlusion drops).
        max_people: int, most annotated people per image.
        min_scale: float, smallest person standing height as a fraction of the image size.
        max_scale: float, largest person standing height as a fraction of the image size.
        upright_prob: float, probability that a person is upright (rotation ~ N(0, upright_sigma)
            clipped to +-2 sigma); otherwise the rotation is uniform in +-180 degrees.
        upright_sigma: float, degrees.
        border_prob: float, probability that a person is centred near an image edge (cut).
        crowd_rate: float, probability that an image holds a dense group marked ``iscrowd`` 1.
        unlabelled_rate: float, probability that an image holds a tiny person with no keypoints.
        occluded_fraction: float, a person showing less than this fraction of its in-image
            silhouette gets 0 labelled keypoints.
        view_spread: float in [0, 1], the sampled body yaw is multiplied by it: 1 gives any view
            (frontal dominant), 0 frontal views only.
        clutter: float in [0, 1], share of the background shapes and limb-like distractor strokes
            drawn (1 = all, 0 = a plain textured gradient).
        jpeg_quality: int, 1..100.
    """

    min_people: int = 1
    max_people: int = 6
    min_scale: float = 0.1
    max_scale: float = 0.9
    upright_prob: float = 0.75
    upright_sigma: float = 12.0
    border_prob: float = 0.25
    crowd_rate: float = 0.05
    unlabelled_rate: float = 0.08
    occluded_fraction: float = 0.05
    view_spread: float = 1.0
    clutter: float = 1.0
    jpeg_quality: int = 92

    def __post_init__(self):
        if self.min_people < 0 or self.max_people < max(self.min_people, 1):
            raise ValueError("need 0 <= min_people <= max_people and max_people >= 1. Received: "
                             f"min_people={self.min_people}, max_people={self.max_people}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError("need 0 < min_scale <= max_scale. Received: "
                             f"min_scale={self.min_scale}, max_scale={self.max_scale}")
        for name in ("upright_prob", "border_prob", "crowd_rate", "unlabelled_rate",
                     "occluded_fraction", "view_spread", "clutter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value}")
        if self.upright_sigma < 0:
            raise ValueError(f"upright_sigma must be >= 0. Received: {self.upright_sigma}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100]. Received: {self.jpeg_quality}")


# --- small geometry helpers ------------------------------------------------------------------

def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _fix(points) -> np.ndarray:
    """Continuous pixel coordinates -> cv2 fixed-point coordinates (int32)."""
    return np.round((np.asarray(points, np.float64) - 0.5) * _ONE).astype(np.int32)


def _quantise(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE) / _ONE


def _unit(v, fallback=(0.0, -1.0)):
    n = float(np.hypot(v[0], v[1]))
    return np.asarray(fallback, np.float64) if n < 1e-9 else np.asarray(v, np.float64) / n


# --- shapes: geometry in person-normalised units until placed ---------------------------------

@dataclasses.dataclass
class _Shape:
    """One drawn primitive. ``kind`` and ``geom``:

    capsule: (i0, i1, r0, r1) tapered stroke between model points i0 and i1.
    ellipse: (centre [2], axis_a [2], axis_b [2]) semi-axis vectors.
    poly:    (points [n, 2],).
    blob:    (i, r) small analytic disc on model point i (drawn flat, after the part).
    """

    kind: str
    geom: tuple
    slot: str
    shaded: bool = True
    colour: tuple = (0.0, 0.0, 0.0)


@dataclasses.dataclass
class _Part:
    """Shapes drawn together as one label of a person's part map."""

    shapes: list
    key: float  # drawing order inside the person: smaller is farther
    joints: tuple  # model points this part is attached to (it does not occlude them)


@dataclasses.dataclass
class _Person:
    points: np.ndarray  # [M, 2] model points (normalised, then continuous pixels once placed)
    parts: list
    facing: np.ndarray  # [M] bool, False for surface points turned away from the camera
    height: float = 0.0  # standing height in pixels
    rotation: float = 0.0  # in-plane rotation, degrees
    depth: float = 0.0  # larger is nearer the camera
    role: str = "person"  # person | unlabelled | crowd


# --- the human model -------------------------------------------------------------------------

_HUMAN_POINTS = (
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_toe", "right_toe", "thorax", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand", "neck", "upper_neck",
    "head_centre", "head_top", "nose", "left_eye", "right_eye", "left_ear", "right_ear")
_HP = {n: i for i, n in enumerate(_HUMAN_POINTS)}
_ALIASES = {"head": "head_top", "mid_hip": "pelvis", "left_big_toe": "left_toe",
            "right_big_toe": "right_toe", "head_center": "head_centre"}

# Fractions of standing height (module docstring: Winter 2009 fig. 4.1 after Drillis & Contini).
_TRUNK = 0.818 - 0.530  # hip-joint line to shoulder line
_THIGH, _SHANK = 0.245, 0.246
_UPPER_ARM, _FOREARM, _HAND = 0.188, 0.145, 0.108
_NECK = 0.870 - 0.818  # shoulder line to chin
_SHOULDER_HALF, _HIP_HALF = 0.115, 0.085  # joint centres, inside the 0.259 / 0.191 breadths
_HEAD_SEMI = (0.046, 0.066, 0.056)  # half breadth, half height (chin-vertex), half length
_FOOT = (0.0, -0.035, 0.115)  # ankle -> toe tip, foot length 0.152 H with heel behind the ankle

# Normal active ranges of motion, degrees (AAOS; Soucie et al. 2011).
_ROM = {"sh_flex": (-60, 180), "sh_abd": (-10, 180), "sh_rot": (-90, 70), "elbow": (0, 150),
        "wrist": (-70, 80), "hip_flex": (-30, 120), "hip_abd": (-20, 45), "hip_rot": (-45, 45),
        "knee": (0, 135), "ankle": (-20, 50), "trunk_flex": (-25, 80), "trunk_lat": (-35, 35),
        "trunk_rot": (-45, 45), "head_yaw": (-80, 80), "head_pitch": (-45, 45),
        "head_roll": (-40, 40)}
_MODES = ("stand", "walk", "gesture", "sit", "free")
_MODE_P = (0.3, 0.25, 0.15, 0.15, 0.15)


def _human_angles(rng, mode: str) -> dict:
    """Joint angles in degrees; per-side entries are [left, right]."""
    u = lambda lo, hi, n=2: rng.uniform(lo, hi, n)  # noqa: E731
    a = {"trunk_flex": u(-5, 12, None), "trunk_lat": u(-8, 8, None),
         "trunk_rot": u(-15, 15, None), "head_yaw": u(-50, 50, None),
         "head_pitch": u(-15, 25, None), "head_roll": u(-10, 10, None),
         "sh_flex": u(-15, 30), "sh_abd": u(3, 25), "sh_rot": u(-10, 40), "elbow": u(0, 40),
         "wrist": u(-15, 20), "hip_flex": u(-10, 15), "hip_abd": u(0, 12), "hip_rot": u(-10, 15),
         "knee": u(0, 15), "ankle": u(-10, 10)}
    if mode == "walk":
        phase, amp = rng.uniform(-1, 1), rng.uniform(0.5, 1.6)
        swing = np.array([phase, -phase]) * amp
        a["hip_flex"] = 30 * swing + 5
        a["knee"] = u(5, 20 + 45 * amp)
        a["sh_flex"] = -30 * swing
        a["elbow"] = u(10, 30) + 70 * max(amp - 1.0, 0.0)
        a["trunk_flex"] = rng.uniform(0, 10 * amp)
        a["ankle"] = u(-15, 30)
    elif mode == "gesture":
        for i in range(2):
            kind = rng.integers(4)
            if kind == 0:  # raised
                a["sh_flex"][i], a["sh_abd"][i] = rng.uniform(60, 175), rng.uniform(0, 60)
            elif kind == 1:  # sideways
                a["sh_abd"][i], a["sh_flex"][i] = rng.uniform(60, 170), rng.uniform(-20, 30)
            elif kind == 2:  # reaching forward
                a["sh_flex"][i], a["elbow"][i] = rng.uniform(40, 110), rng.uniform(0, 120)
            else:  # hand on hip / arms folded
                a["sh_abd"][i], a["elbow"][i] = rng.uniform(20, 60), rng.uniform(80, 140)
                a["sh_rot"][i] = rng.uniform(40, 70)
        a["hip_abd"] = u(0, 25)
    elif mode == "sit":
        squat = rng.random() < 0.35
        a["hip_flex"] = u(90, 120) if squat else u(60, 105)
        a["knee"] = u(100, 135) if squat else u(60, 125)
        a["hip_abd"] = u(0, 30)
        a["trunk_flex"] = rng.uniform(-10, 35)
        a["sh_flex"], a["elbow"], a["sh_rot"] = u(-10, 70), u(20, 120), u(0, 70)
        a["ankle"] = u(-20, 20)
    elif mode == "free":
        for name, (lo, hi) in _ROM.items():
            scalar = name.startswith(("trunk", "head"))
            a[name] = rng.uniform(lo * 0.8, hi * 0.8, None if scalar else 2)
    return {k: np.clip(v, *_ROM[k]) for k, v in a.items()}


def _project_ellipsoid(rot: np.ndarray, semi) -> tuple:
    """Outline of an ellipsoid (rotation, semi-axes) under the orthographic view along z, as two
    semi-axis vectors in (u, v) = (x, -y) coordinates."""
    q = rot @ np.diag(1.0 / np.square(semi)) @ rot.T
    m = q[:2, :2] - np.outer(q[:2, 2], q[:2, 2]) / q[2, 2]
    m = m * np.array([[1, -1], [-1, 1]])  # y up -> v down
    w, vec = np.linalg.eigh(m)
    return vec[:, 0] / math.sqrt(w[0]), vec[:, 1] / math.sqrt(w[1])


class _HumanModel:
    """Articulated 3-D person (module docstring); ``keypoint_index`` maps spec -> model points."""

    num_points = len(_HUMAN_POINTS)

    def __init__(self, spec: KeypointSpec):
        self.keypoint_index = np.array([_HP[_ALIASES.get(n, n)] for n in spec.names], np.int64)

    @staticmethod
    def accepts(spec: KeypointSpec) -> bool:
        return all(_ALIASES.get(n, n) in _HP for n in spec.names)

    def sample(self, rng, view_spread: float = 1.0) -> _Person:
        mode = _MODES[rng.choice(len(_MODES), p=_MODE_P)]
        a = _human_angles(rng, mode)
        r = math.radians
        build = rng.uniform(0.85, 1.3)  # limb and torso girth
        lengths = rng.uniform(0.93, 1.07, 4)  # arms, legs, trunk, head
        head_semi = np.array(_HEAD_SEMI) * rng.uniform(0.9, 1.12)

        p = np.zeros((self.num_points, 3))
        rot_trunk = _ry(r(a["trunk_rot"])) @ _rz(r(a["trunk_lat"])) @ _rx(r(a["trunk_flex"]))
        rot_pelvis = _ry(r(a["trunk_rot"]) * 0.3)
        p[_HP["thorax"]] = rot_trunk @ [0, _TRUNK * lengths[2], 0]
        for s, side in ((1, "left"), (-1, "right")):
            i = 0 if s > 0 else 1
            hip = rot_pelvis @ [s * _HIP_HALF * math.sqrt(build), 0, 0]
            rot_hip = (rot_pelvis @ _rz(s * r(a["hip_abd"][i])) @ _rx(-r(a["hip_flex"][i]))
                       @ _ry(-s * r(a["hip_rot"][i])))
            rot_knee = rot_hip @ _rx(r(a["knee"][i]))
            p[_HP[f"{side}_hip"]] = hip
            p[_HP[f"{side}_knee"]] = knee = hip + rot_hip @ [0, -_THIGH * lengths[1], 0]
            p[_HP[f"{side}_ankle"]] = ankle = knee + rot_knee @ [0, -_SHANK * lengths[1], 0]
            p[_HP[f"{side}_toe"]] = ankle + (rot_knee @ _rx(r(a["ankle"][i])) @ _ry(s * r(8))
                                             @ _FOOT)
            shoulder = p[_HP["thorax"]] + rot_trunk @ [s * _SHOULDER_HALF * math.sqrt(build),
                                                        0, -0.01]
            rot_arm = (rot_trunk @ _rz(s * r(a["sh_abd"][i])) @ _rx(-r(a["sh_flex"][i]))
                       @ _ry(-s * r(a["sh_rot"][i])))
            rot_fore = rot_arm @ _rx(-r(a["elbow"][i]))
            p[_HP[f"{side}_shoulder"]] = shoulder
            p[_HP[f"{side}_elbow"]] = elbow = shoulder + rot_arm @ [0, -_UPPER_ARM * lengths[0], 0]
            p[_HP[f"{side}_wrist"]] = wrist = elbow + rot_fore @ [0, -_FOREARM * lengths[0], 0]
            p[_HP[f"{side}_hand"]] = wrist + rot_fore @ _rx(-r(a["wrist"][i])) @ [0, -_HAND, 0]

        rot_neck = rot_trunk @ _ry(r(a["head_yaw"]) * 0.4) @ _rx(r(a["head_pitch"]) * 0.5)
        rot_head = rot_trunk @ _ry(r(a["head_yaw"])) @ _rx(r(a["head_pitch"])) @ _rz(
            r(a["head_roll"]))
        thorax = p[_HP["thorax"]]
        p[_HP["upper_neck"]] = upper = thorax + rot_neck @ [0, _NECK * lengths[3], 0.005]
        p[_HP["neck"]] = (thorax + upper) / 2
        hs = head_semi
        centre = upper + rot_head @ [0, hs[1] * 0.94, 0.008]
        p[_HP["head_centre"]] = centre
        local = {"head_top": (0, hs[1], 0), "nose": (0, -0.18 * hs[1], hs[2] * 1.1),
                 "left_eye": (0.65 * hs[0], 0.06 * hs[1], 0.8 * hs[2]),
                 "right_eye": (-0.65 * hs[0], 0.06 * hs[1], 0.8 * hs[2]),
                 "left_ear": (hs[0] * 1.05, -0.06 * hs[1], -0.07 * hs[2]),
                 "right_ear": (-hs[0] * 1.05, -0.06 * hs[1], -0.07 * hs[2])}
        for name, offset in local.items():
            p[_HP[name]] = centre + rot_head @ offset

        # View: any yaw, small camera pitch; orthographic projection (u, v) = (x, -y), depth z.
        yaw = (rng.normal(0, 50) if rng.random() < 0.6 else rng.uniform(-180, 180)) * view_spread
        view = _rx(r(rng.uniform(-15, 15))) @ _ry(r(yaw))
        p = p @ view.T
        uv = np.stack([p[:, 0], -p[:, 1]], 1)
        z = p[:, 2]
        facing = np.ones(self.num_points, bool)
        normals = {"nose": (0, 0, 1), "left_eye": (0.5, 0, 0.87), "right_eye": (-0.5, 0, 0.87),
                   "left_ear": (1, 0, 0), "right_ear": (-1, 0, 0)}
        for name, n in normals.items():
            facing[_HP[name]] = (view @ rot_head @ n)[2] > -0.15
        parts = self._parts(uv, z, facing, view, rot_trunk, rot_pelvis, rot_head, head_semi,
                            build)
        return _Person(points=uv, parts=parts, facing=facing)

    @staticmethod
    def _parts(uv, z, facing, view, rot_trunk, rot_pelvis, rot_head, head_semi, build):
        P = _HP
        w = build
        parts = []

        def capsule(a, b, r0, r1, slot, blobs=(), bias=0.0, extra=()):
            shapes = [_Shape("capsule", (P[a], P[b], r0 * w, r1 * w), slot)]
            shapes += [_Shape("blob", (P[n], 0.42 * (r0 if n == a else r1) * w), "joint", False)
                       for n in blobs]
            key = (z[P[a]] + z[P[b]]) / 2 + bias
            parts.append(_Part(shapes, key, tuple(P[n] for n in (a, b) + tuple(extra))))

        # Torso: three cross-sections (shoulder, waist, hip lines) of an elliptic cylinder,
        # each projected to its half-extent across the projected spine.
        pelvis, thorax = uv[P["pelvis"]], uv[P["thorax"]]
        spine = _unit(thorax - pelvis)
        normal = np.array([-spine[1], spine[0]])
        corners = []
        for frac, rot, semi in ((1.0, rot_trunk, (0.128, 0.066)), (0.45, rot_trunk, (0.098, 0.06)),
                                (0.0, rot_pelvis, (0.108, 0.072))):
            centre = pelvis + frac * (thorax - pelvis)
            ax = (view @ rot @ [semi[0] * w, 0, 0])[:2] * [1, -1]
            bx = (view @ rot @ [0, 0, semi[1] * w])[:2] * [1, -1]
            half = math.hypot(ax @ normal, bx @ normal)
            corners.append((centre + normal * half, centre - normal * half))
        outline = np.array([c[0] for c in corners] + [c[1] for c in corners[::-1]])
        torso_key = (z[P["pelvis"]] + z[P["thorax"]]) / 2 - 0.05
        parts.append(_Part([_Shape("poly", (outline,), "top")], torso_key,
                           (P["thorax"], P["pelvis"])))
        capsule("thorax", "upper_neck", 0.03, 0.028, "skin", bias=-0.03, extra=("neck",))

        # Head: hair and face ellipsoids (farther first), then the face marks that face the camera.
        rot = view @ rot_head
        centre = uv[P["head_centre"]]
        hair_off, face_off = rot @ [0, 0.01, -0.012], rot @ [0, -0.006, 0.008]
        hair = _Shape("ellipse", (centre + hair_off[:2] * [1, -1],
                                  *_project_ellipsoid(rot, head_semi * [1.04, 1.0, 0.95])), "hair")
        face = _Shape("ellipse", (centre + face_off[:2] * [1, -1],
                                  *_project_ellipsoid(rot, head_semi * [0.94, 0.92, 0.93])), "skin")
        shapes = [hair, face] if hair_off[2] < face_off[2] else [face, hair]
        hs = head_semi[0]
        for name, radius, slot in (("left_ear", 0.2, "skin_dark"), ("right_ear", 0.2, "skin_dark"),
                                   ("nose", 0.2, "skin_dark"), ("left_eye", 0.16, "eye"),
                                   ("right_eye", 0.16, "eye")):
            if facing[P[name]]:
                shapes.append(_Shape("blob", (P[name], radius * hs), slot, False))
        head_joints = ("upper_neck", "head_centre", "head_top", "nose", "left_eye", "right_eye",
                       "left_ear", "right_ear")
        parts.append(_Part(shapes, z[P["head_centre"]], tuple(P[n] for n in head_joints)))

        for side in ("left", "right"):
            capsule(f"{side}_shoulder", f"{side}_elbow", 0.034, 0.027, "top",
                    (f"{side}_shoulder", f"{side}_elbow"), bias=0.03)
            capsule(f"{side}_elbow", f"{side}_wrist", 0.027, 0.019, "sleeve",
                    (f"{side}_elbow", f"{side}_wrist"), bias=0.035)
            wrist, tip = uv[P[f"{side}_wrist"]], uv[P[f"{side}_hand"]]
            along = (tip - wrist) * 0.5
            across = np.array([-along[1], along[0]])
            across = _unit(across, (1.0, 0.0)) * 0.022 * w
            hand = _Shape("ellipse", (wrist + along * 1.1, along + _unit(along) * 0.01, across),
                          "skin")
            parts.append(_Part([hand], (z[P[f"{side}_wrist"]] + z[P[f"{side}_hand"]]) / 2 + 0.033,
                               (P[f"{side}_wrist"], P[f"{side}_hand"])))
            capsule(f"{side}_hip", f"{side}_knee", 0.056, 0.036, "bottom",
                    (f"{side}_hip", f"{side}_knee"), bias=0.03)
            capsule(f"{side}_knee", f"{side}_ankle", 0.036, 0.023, "shin",
                    (f"{side}_knee", f"{side}_ankle"), bias=0.032)
            capsule(f"{side}_ankle", f"{side}_toe", 0.024, 0.018, "shoe", bias=0.035)
        return parts


# --- the creature model (specs without known anatomy) ----------------------------------------

class _CreatureModel:
    """A kinematic tree derived from a spec's skeleton (module docstring)."""

    def __init__(self, spec: KeypointSpec):
        k = spec.num_keypoints
        self.num_points = k
        self.keypoint_index = np.arange(k)
        text = json.dumps(spec.to_dict(), sort_keys=True)
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        flip = spec.flip_index
        neighbours = [[] for _ in range(k)]
        for i, j in spec.skeleton:
            neighbours[i].append(j)
            neighbours[j].append(i)
        roots = list(dict.fromkeys(spec.root_joints)) or [0]
        parent = np.full(k, -2)
        for r in roots:
            parent[r] = -1
        order, queue = list(roots), list(roots)
        while len(order) < k or queue:
            if not queue:  # a joint the skeleton does not reach hangs on the first root
                j = int(np.flatnonzero(parent == -2)[0])
                parent[j] = roots[0]
                order.append(j)
                queue.append(j)
            i = queue.pop(0)
            for j in sorted(neighbours[i]):
                if parent[j] == -2:
                    parent[j] = i
                    order.append(j)
                    queue.append(j)
        self.roots, self.parent, self.order = tuple(roots), parent, tuple(order)
        tree = {(int(parent[j]), j) for j in range(k) if parent[j] >= 0}
        self.extra_edges = tuple((i, j) for i, j in spec.skeleton
                                 if (i, j) not in tree and (j, i) not in tree)

        # Root layout: flip-paired roots mirrored left/right, the others on the midline.
        pos = np.zeros((k, 2))
        paired = [r for r in roots if flip[r] != r and flip[r] in roots and r < flip[r]]
        single = [r for r in roots if flip[r] == r or flip[r] not in roots]
        for n, r in enumerate(paired):
            y = (np.linspace(-0.35, 0.35, len(paired))[n] if len(paired) > 1 else 0.0)
            x = rng.uniform(0.12, 0.25)
            pos[r], pos[flip[r]] = (x, y), (-x, y)
        for n, r in enumerate(single):
            y = np.linspace(-0.4, 0.4, len(single))[n] if len(single) > 1 else 0.0
            pos[r] = (0.0 if paired or len(single) == 1 else rng.uniform(-0.15, 0.15), y)
        if len(roots) == 2 and not paired:
            pos[roots[0]], pos[roots[1]] = (0.0, -0.3), (0.0, 0.3)

        # Bones: rest direction (absolute for children of roots, else relative to the parent
        # bone), length, swing range and radius; mirror images across flip pairs.
        centroid = pos[roots].mean(0)
        symmetric = bool(spec.flip_pairs)
        on_midline = lambda j, p: symmetric and flip[j] == j and flip[p] == p  # noqa: E731
        midline = np.zeros(k, np.int64)  # midline children placed per root
        length, rest, swing, radius = (np.zeros(k) for _ in range(4))
        slot = np.zeros(k, np.int64)
        done = set(roots)
        for j in order:
            if j in done:
                continue
            p, q = parent[j], flip[j]
            mirror = q in done and q != j and parent[q] >= 0 and flip[parent[q]] == p
            if mirror:
                length[j], swing[j], radius[j], slot[j] = length[q], swing[q], radius[q], slot[q]
                rest[j] = (math.pi - rest[q]) if parent[p] == -1 else -rest[q]
            else:
                if parent[p] == -1:
                    out = pos[p] - centroid
                    base = (math.atan2(out[1], out[0]) if np.hypot(*out) > 1e-6
                            else rng.uniform(-math.pi, math.pi))
                    rest[j] = base + rng.uniform(-0.6, 0.6)
                    if on_midline(j, p):  # keep a symmetric creature symmetric: up, down, ...
                        side = out[1] if abs(out[1]) > 1e-6 else (-1.0) ** (midline[p] + 1)
                        rest[j] = math.copysign(math.pi / 2, side)
                        midline[p] += 1
                    length[j] = rng.uniform(0.25, 0.5)
                else:
                    rest[j] = 0.0 if on_midline(j, p) else rng.uniform(-1.2, 1.2)
                    length[j] = rng.uniform(0.2, 0.45)
                swing[j] = math.radians(rng.uniform(15, 45))
                radius[j] = rng.uniform(0.025, 0.05)
                slot[j] = rng.integers(4)
            done.add(j)
        self.root_pos, self.length, self.rest = pos, length, rest
        self.swing, self.radius, self.slot = swing, radius, slot
        extent = np.ptp(self._pose(np.zeros(k), np.ones(k), 1.0), axis=0).max()
        self.unit = 1.0 / extent if extent > 1e-6 else 1.0

    def _pose(self, delta, stretch, width) -> np.ndarray:
        pos = self.root_pos * [width, 1.0]
        angle = np.zeros(self.num_points)
        for j in self.order:
            p = self.parent[j]
            if p == -1:
                continue
            angle[j] = self.rest[j] + delta[j] + (0.0 if self.parent[p] == -1 else angle[p])
            pos[j] = pos[p] + self.length[j] * stretch[j] * np.array(
                [math.cos(angle[j]), math.sin(angle[j])])
        return pos

    def sample(self, rng, view_spread: float = 1.0) -> _Person:
        del view_spread  # a creature is drawn in the image plane: it has one view
        k = self.num_points
        delta = rng.uniform(-1, 1, k) * self.swing
        pts = self._pose(delta, rng.uniform(0.9, 1.1, k), rng.uniform(0.9, 1.1)) * self.unit
        girth = rng.uniform(0.85, 1.25) * self.unit
        parts = []
        for j in self.order:
            p = int(self.parent[j])
            if p < 0:
                continue
            r0 = self.radius[j] * girth
            shapes = [_Shape("capsule", (p, j, r0, 0.75 * r0), f"limb{self.slot[j]}"),
                      _Shape("blob", (p, 0.45 * r0), "joint", False),
                      _Shape("blob", (j, 0.4 * r0), "joint", False)]
            parts.append(_Part(shapes, rng.uniform(-0.05, 0.05), (p, j)))
        for i, j in self.extra_edges:
            r0 = 0.4 * (self.radius[i] + self.radius[j]) * girth  # roots have radius 0
            r0 = r0 if r0 > 0 else 0.03 * girth
            shapes = [_Shape("capsule", (i, j, r0, r0), "limb0"),
                      _Shape("blob", (i, 0.4 * r0), "joint", False),
                      _Shape("blob", (j, 0.4 * r0), "joint", False)]
            parts.append(_Part(shapes, rng.uniform(-0.05, 0.05), (i, j)))
        roots = list(self.roots)
        if len(roots) >= 3:
            hull = cv2.convexHull(pts[roots].astype(np.float32)).reshape(-1, 2).astype(np.float64)
            centre = hull.mean(0)
            hull = centre + (hull - centre) * 1.15 + (hull - centre) / np.maximum(
                np.linalg.norm(hull - centre, axis=1, keepdims=True), 1e-9) * 0.03 * girth
            parts.append(_Part([_Shape("poly", (hull,), "torso")], -0.1, tuple(roots)))
        elif len(roots) == 2:
            r0 = 0.06 * girth
            parts.append(_Part([_Shape("capsule", (roots[0], roots[1], r0, r0), "torso")], -0.1,
                               tuple(roots)))
        else:
            r0 = (0.08 if k > 1 else 0.2) * girth
            parts.append(_Part([_Shape("ellipse", (pts[roots[0]], np.array([0.0, -1.4 * r0]),
                                                   np.array([r0, 0.0])), "torso")],
                               -0.1, tuple(roots)))
        for r in roots:
            parts[-1].shapes.append(_Shape("blob", (r, 0.03 * girth), "joint", False))
        return _Person(points=pts, parts=parts, facing=np.ones(k, bool))


def _build_model(spec: KeypointSpec):
    return _HumanModel(spec) if _HumanModel.accepts(spec) else _CreatureModel(spec)


# --- palette, placement and plan --------------------------------------------------------------

def _hsv(rng, h, s, v) -> np.ndarray:
    """A BGR colour (float) from HSV ranges (h in degrees, s and v in [0, 1])."""
    pix = np.uint8([[[rng.uniform(*h) / 2 % 180, rng.uniform(*s) * 255, rng.uniform(*v) * 255]]])
    return cv2.cvtColor(pix, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)


def _palette(rng) -> dict:
    """One colour per body-part slot, shared by every person in the image."""
    anything = lambda: _hsv(rng, (0, 360), (0, 1), (0.1, 1))  # noqa: E731
    skin = _hsv(rng, (5, 30), (0.2, 0.65), (0.3, 0.95)) if rng.random() < 0.8 else anything()
    pal = {"skin": skin, "skin_dark": skin * 0.72, "hair": _hsv(rng, (0, 40), (0.2, 0.9),
                                                               (0.05, 0.6)),
           "top": anything(), "bottom": anything(), "shoe": _hsv(rng, (0, 360), (0, 0.6),
                                                                 (0.05, 0.5)),
           "eye": _hsv(rng, (0, 360), (0, 0.5), (0.0, 0.25)), "joint": anything(),
           "torso": anything()}
    pal["sleeve"] = pal["top"] if rng.random() < 0.5 else skin
    pal["shin"] = pal["bottom"] if rng.random() < 0.6 else skin
    for i in range(4):
        pal[f"limb{i}"] = anything()
    return pal


@dataclasses.dataclass
class _Plan:
    size: int
    palette: dict
    light: np.ndarray  # unit 2-vector in image coordinates, towards the light
    people: list  # far -> near
    background_seed: int
    post_seed: int
    clutter: float = 1.0


def _place(person: _Person, height: float, rotation: float, centre, rng, size: int,
           border_prob: float = 0.0) -> None:
    """Rotates, scales and moves a sampled person into the image (in place); without a given
    centre the person is framed where it fits, or centred near an edge (cut) with probability
    ``border_prob``."""
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    lin = height * np.array([[c, -s], [s, c]])
    pts = person.points @ lin.T
    lo, hi = pts.min(0), pts.max(0)
    if centre is None:
        if rng.random() < border_prob:
            edge = rng.integers(4)
            axis = edge % 2  # 0: left/right edge moves x, 1: top/bottom moves y
            centre = rng.uniform(0, size, 2)
            centre[axis] = (0 if edge < 2 else size) + rng.uniform(-0.35, 0.35) * (
                hi - lo)[axis]
        else:  # inside the frame where the person fits, else cut on both sides
            half = (hi - lo) / 2
            centre = rng.uniform(np.minimum(half, size - half), np.maximum(half, size - half))
    shift = np.asarray(centre) - (lo + hi) / 2
    person.points = _quantise(pts + shift)
    for part in person.parts:
        for shape in part.shapes:
            g = shape.geom
            if shape.kind == "capsule":
                shape.geom = (g[0], g[1], g[2] * height, g[3] * height)
            elif shape.kind == "blob":
                shape.geom = (g[0], g[1] * height)
            elif shape.kind == "ellipse":
                shape.geom = (g[0] @ lin.T + shift, g[1] @ lin.T, g[2] @ lin.T)
            elif shape.kind == "poly":
                shape.geom = (g[0] @ lin.T + shift,)
    person.height, person.rotation = height, rotation


def _rotation(rng, cfg: SyntheticConfig) -> float:
    if rng.random() < cfg.upright_prob:
        return float(np.clip(rng.normal(0, cfg.upright_sigma), -2 * cfg.upright_sigma,
                             2 * cfg.upright_sigma))
    return float(rng.uniform(-180, 180))


def _plan_image(rng, model, cfg: SyntheticConfig, size: int) -> _Plan:
    """Samples everything about one image; rendering then uses only the plan."""
    palette = _palette(rng)
    light_angle = -math.pi / 2 + rng.uniform(-1.2, 1.2)
    light = np.array([math.cos(light_angle), math.sin(light_angle)])
    people = []
    for _ in range(int(rng.integers(cfg.min_people, cfg.max_people + 1))):
        person = model.sample(rng, cfg.view_spread)
        scale = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
        _place(person, scale * size, _rotation(rng, cfg), None, rng, size, cfg.border_prob)
        person.depth = math.log(scale) + rng.normal(0, 0.35)
        people.append(person)
    if rng.random() < cfg.unlabelled_rate:
        person = model.sample(rng, cfg.view_spread)
        _place(person, rng.uniform(0.03, 0.07) * size, _rotation(rng, cfg), None, rng, size)
        person.depth, person.role = math.log(0.05) + rng.normal(0, 0.2), "unlabelled"
        people.append(person)
    if rng.random() < cfg.crowd_rate:
        centre = rng.uniform(0.2, 0.8, 2) * size
        member_h = rng.uniform(0.07, 0.15) * size
        for _ in range(int(rng.integers(5, 11))):
            person = model.sample(rng, cfg.view_spread)
            offset = rng.normal(0, 1, 2) * member_h * [0.8, 0.25]
            _place(person, member_h * rng.uniform(0.85, 1.15), rng.normal(0, 5),
                   centre + offset, rng, size)
            person.depth, person.role = -10.0 + offset[1] / size, "crowd"
            people.append(person)
    people.sort(key=lambda q: q.depth)
    for person in people:
        person.parts.sort(key=lambda part: part.key)
        for part in person.parts:
            for shape in part.shapes:
                jitter = rng.uniform(-6, 6, 3)
                shape.colour = tuple(np.clip(palette[shape.slot] + jitter, 0, 255).tolist())
    return _Plan(size, palette, light, people, int(rng.integers(2**31)), int(rng.integers(2**31)),
                 cfg.clutter)


# --- rendering ---------------------------------------------------------------------------------

def _capsule_outline(p0, p1, r0, r1) -> np.ndarray:
    n = _unit(np.array([p0[1] - p1[1], p1[0] - p0[0]]), (1.0, 0.0))
    return np.array([p0 + n * r0, p1 + n * r1, p1 - n * r1, p0 - n * r0])


def _fill_capsule(img, p0, p1, r0, r1, colour, line):
    cv2.fillConvexPoly(img, _fix(_capsule_outline(p0, p1, r0, r1)), colour, line, SHIFT)
    for p, r in ((p0, r0), (p1, r1)):
        cv2.circle(img, _fix(p).tolist(), max(int(round(r * _ONE)), 1), colour, -1, line, SHIFT)


def _fill_ellipse(img, centre, ax_a, ax_b, colour, line):
    a, b = float(np.hypot(*ax_a)), float(np.hypot(*ax_b))
    angle = math.degrees(math.atan2(ax_a[1], ax_a[0]))
    axes = [max(int(round(a * _ONE)), 1), max(int(round(b * _ONE)), 1)]
    cv2.ellipse(img, _fix(centre).tolist(), axes, angle, 0, 360, colour, -1, line, SHIFT)


def _blob(img, centre, radius, colour):
    """Analytic anti-aliased disc: coverage = clip(r + 0.5 - distance to the pixel centre)."""
    radius = max(radius, 0.5)
    h, w = img.shape[:2]
    x0, y0 = max(int(centre[0] - radius - 1), 0), max(int(centre[1] - radius - 1), 0)
    x1, y1 = min(int(centre[0] + radius + 2), w), min(int(centre[1] + radius + 2), h)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1]
    dist = np.hypot(xs + 0.5 - centre[0], ys + 0.5 - centre[1])
    alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]
    patch = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = np.round(patch * (1 - alpha) + np.float32(colour) * alpha).astype(
        np.uint8)


def _shade(colour, factor, add=0.0):
    return tuple(np.clip(np.asarray(colour) * factor + add, 0, 255).tolist())


def _draw_shape(img, shape: _Shape, points, light):
    """Draws one shape on the image, shaded: dark base, mid band and highlight towards the
    light."""
    g, col, aa = shape.geom, shape.colour, cv2.LINE_AA
    if shape.kind == "blob":
        _blob(img, points[g[0]], g[1], col)
        return
    layers = ((0.62, 0.0, 1.0, 0.0), (1.0, 0.0, 0.72, 0.2), (1.12, 22.0, 0.3, 0.45))
    if shape.kind == "capsule":
        p0, p1 = points[g[0]], points[g[1]]
        n = _unit(np.array([p0[1] - p1[1], p1[0] - p0[0]]), (1.0, 0.0))
        n = n if n @ light >= 0 else -n
        for factor, add, size, offset in (layers if shape.shaded and g[2] > 1.0 else layers[1:2]):
            if size != 1.0 or offset:
                r0, r1 = g[2] * size, g[3] * size
                q0, q1 = p0 + n * g[2] * offset, p1 + n * g[3] * offset
            else:
                r0, r1, q0, q1 = g[2], g[3], p0, p1
            _fill_capsule(img, q0, q1, r0, r1, _shade(col, factor, add), aa)
    elif shape.kind == "ellipse":
        centre, ax_a, ax_b = g
        extent = math.sqrt((ax_a @ light) ** 2 + (ax_b @ light) ** 2)
        for factor, add, size, offset in (layers if shape.shaded and extent > 1.0 else layers[1:2]):
            _fill_ellipse(img, centre + light * extent * offset * (size != 1.0), ax_a * size,
                          ax_b * size, _shade(col, factor, add), aa)
    elif shape.kind == "poly":
        pts = g[0]
        centre = pts.mean(0)
        extent = float(np.abs((pts - centre) @ light).max())
        for factor, add, size, offset in (layers if shape.shaded and extent > 1.0 else layers[1:2]):
            moved = centre + (pts - centre) * size + light * extent * offset * (size != 1.0)
            cv2.fillPoly(img, [_fix(moved)], _shade(col, factor, add), aa, SHIFT)


def _draw_label(lab, shape: _Shape, points, value):
    """The same shape, unshaded and aliased, into a part-label map."""
    g, line = shape.geom, cv2.LINE_8
    if shape.kind == "capsule":
        _fill_capsule(lab, points[g[0]], points[g[1]], g[2], g[3], value, line)
    elif shape.kind == "ellipse":
        _fill_ellipse(lab, *g, value, line)
    elif shape.kind == "poly":
        cv2.fillPoly(lab, [_fix(g[0])], value, line, SHIFT)


def _background(rng, size: int, palette: dict, light, clutter: float = 1.0) -> np.ndarray:
    """Gradient + blotchy texture + random shapes + limb-like distractor strokes (their counts
    times ``clutter``)."""
    s = size
    c0, c1 = rng.uniform(0, 255, (2, 3))
    ang = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(s, dtype=np.float32) / s
    t = ramp[None, :] * math.cos(ang) + ramp[:, None] * math.sin(ang)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    cells = int(rng.integers(3, 24))
    blot = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
    img += cv2.resize(blot, (s, s), interpolation=cv2.INTER_CUBIC) * rng.uniform(5, 35)
    img = np.clip(img, 0, 255).astype(np.uint8)
    limb_slots = [k for k in palette if k not in ("skin_dark",)]

    def colour():
        if rng.random() < 0.3:
            return tuple(np.clip(palette[limb_slots[rng.integers(len(limb_slots))]]
                                 + rng.uniform(-15, 15, 3), 0, 255).tolist())
        return tuple(rng.uniform(0, 255, 3).tolist())

    for _ in range(round(int(rng.integers(6, 22)) * clutter)):
        kind, centre = rng.integers(5), rng.uniform(-0.1, 1.1, 2) * s
        extent = rng.uniform(0.03, 0.45) * s
        thick = -1 if rng.random() < 0.7 else int(rng.integers(1, 4))
        if kind == 0:
            box = cv2.boxPoints(((float(centre[0]), float(centre[1])),
                                 (float(extent), float(extent * rng.uniform(0.2, 1.5))),
                                 float(rng.uniform(0, 180))))
            if thick < 0:
                cv2.fillConvexPoly(img, _fix(box), colour(), cv2.LINE_AA, SHIFT)
            else:
                cv2.polylines(img, [_fix(box)], True, colour(), thick, cv2.LINE_AA, SHIFT)
        elif kind == 1:
            ax = np.array([extent, 0.0]), np.array([0.0, extent * rng.uniform(0.2, 1.0)])
            rot = rng.uniform(0, math.pi)
            c, sn = math.cos(rot), math.sin(rot)
            m = np.array([[c, -sn], [sn, c]])
            _fill_ellipse(img, centre, m @ ax[0] * 0.5, m @ ax[1] * 0.5, colour(), cv2.LINE_AA)
        elif kind == 2:
            pts = centre + rng.normal(0, extent * 0.4, (int(rng.integers(3, 7)), 2))
            cv2.fillPoly(img, [_fix(pts)], colour(), cv2.LINE_AA, SHIFT)
        elif kind == 3:
            p0, p1 = centre, centre + rng.normal(0, extent, 2)
            cv2.line(img, _fix(p0).tolist(), _fix(p1).tolist(), colour(),
                     int(rng.integers(1, 4)), cv2.LINE_AA, SHIFT)
        else:  # stripes texture patch
            period = rng.uniform(3, 12)
            x0, y0 = (int(v) for v in np.clip(centre, 0, s - 1))
            x1, y1 = min(s, x0 + int(extent)), min(s, y0 + int(extent))
            rot, col = rng.uniform(0, math.pi), np.uint8(np.array(colour()))
            if x1 > x0 and y1 > y0:
                ys, xs = np.mgrid[y0:y1, x0:x1]
                phase = (xs * math.cos(rot) + ys * math.sin(rot)) * 2 * math.pi / period
                img[y0:y1, x0:x1][np.sin(phase) > 0] = col

    # Distractors: limb-like tapered strokes in the people's palette, some with a joint blob.
    for _ in range(round(int(rng.integers(2, 9)) * clutter)):
        length = rng.uniform(0.04, 0.2) * s
        width = length * rng.uniform(0.06, 0.2)
        p0 = rng.uniform(0, s, 2)
        pts = [p0]
        for _ in range(int(rng.integers(1, 3))):
            a = rng.uniform(0, 2 * math.pi)
            pts.append(_quantise(pts[-1] + length * np.array([math.cos(a), math.sin(a)])))
        pts = np.array(pts)
        slot = limb_slots[rng.integers(len(limb_slots))]
        col = tuple(np.clip(palette[slot] + rng.uniform(-6, 6, 3), 0, 255).tolist())
        for i in range(len(pts) - 1):
            shape = _Shape("capsule", (i, i + 1, width, width * 0.75), slot, colour=col)
            _draw_shape(img, shape, pts, light)
        if rng.random() < 0.5:
            _blob(img, pts[1], width * 0.42, palette["joint"])
    return img


def _render(plan: _Plan):
    """The image (uint8 BGR) and one part-label map per person (0 = background)."""
    s = plan.size
    img = _background(np.random.default_rng(plan.background_seed), s, plan.palette, plan.light,
                      plan.clutter)
    labels = []
    for person in plan.people:
        lab = np.zeros((s, s), np.uint8)
        for index, part in enumerate(person.parts):
            for shape in part.shapes:
                _draw_shape(img, shape, person.points, plan.light)
                _draw_label(lab, shape, person.points, index + 1)
        labels.append(lab)
    rng = np.random.default_rng(plan.post_seed)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    gain, bias, noise = rng.uniform(0.8, 1.2), rng.uniform(-20, 20), rng.uniform(1, 8)
    out = img.astype(np.float32) * gain + bias
    out += rng.standard_normal(out.shape, dtype=np.float32) * noise
    return np.clip(np.round(out), 0, 255).astype(np.uint8), labels


# --- annotations -------------------------------------------------------------------------------

def _polygons(mask: np.ndarray) -> list:
    """COCO polygons (continuous coordinates through pixel centres) of a binary mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2)
        if len(c) >= 3:
            polys.append([round(float(v) + 0.5, 2) for v in c.reshape(-1)])
    return polys


def _box_polygon(x, y, w, h) -> list:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _annotate(plan: _Plan, labels: list, keypoint_index: np.ndarray, cfg: SyntheticConfig,
              image_id: int) -> list:
    """(index into ``plan.people`` or -1 for the crowd region, COCO annotation without id) for
    one rendered plan, in drawing order; nearer people decide occlusion."""
    s = plan.size
    k = len(keypoint_index)
    nearer = np.zeros((s, s), bool)
    anns, crowd = [], np.zeros((s, s), bool)
    for index in range(len(plan.people) - 1, -1, -1):
        person, lab = plan.people[index], labels[index]
        silhouette = lab > 0
        visible = silhouette & ~nearer
        area = int(visible.sum())
        if person.role == "crowd" or area == 0:
            if person.role == "crowd":
                crowd |= visible
            nearer |= silhouette
            continue
        kps = np.zeros((k, 3))
        if person.role == "person" and area >= cfg.occluded_fraction * silhouette.sum():
            incident = [set() for _ in range(len(person.points))]
            for label_value, part in enumerate(person.parts, start=1):
                for j in part.joints:
                    incident[j].add(label_value)
            for n, m in enumerate(keypoint_index):
                x, y = person.points[m]
                if not (0 <= x < s and 0 <= y < s):
                    continue
                iy, ix = int(y), int(x)
                label = int(lab[iy, ix])
                hidden = (nearer[iy, ix] or not person.facing[m]
                          or (label and label not in incident[m]))
                kps[n] = (x, y, 1 if hidden else 2)
        nearer |= silhouette
        ys, xs = np.nonzero(visible)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
        anns.append((index, {"image_id": image_id, "category_id": 1, "iscrowd": 0,
                     "keypoints": [float(v) if i % 3 < 2 else int(v)
                                   for i, v in enumerate(kps.reshape(-1))],
                     "num_keypoints": int((kps[:, 2] > 0).sum()), "bbox": bbox,
                     "area": float(area), "segmentation": _polygons(visible) or _box_polygon(
                         *bbox)}))
    anns.reverse()  # far to near, as drawn
    if crowd.any():
        grown = cv2.dilate(crowd.astype(np.uint8), np.ones((5, 5), np.uint8))
        hull = cv2.convexHull(np.argwhere(grown)[:, ::-1].astype(np.int32)).reshape(-1, 2)
        region = np.zeros((s, s), np.uint8)
        cv2.fillConvexPoly(region, hull, 1)
        ys, xs = np.nonzero(region)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
        poly = [round(float(v) + 0.5, 2) for v in hull.reshape(-1)]
        anns.append((-1, {"image_id": image_id, "category_id": 1, "iscrowd": 1,
                     "keypoints": [0] * (3 * k), "num_keypoints": 0, "bbox": bbox,
                     "area": float(region.sum()),
                     "segmentation": [poly] if len(hull) >= 3 else _box_polygon(*bbox)}))
    return anns


# --- files -------------------------------------------------------------------------------------

def load_spec(value) -> KeypointSpec:
    """A spec from a built-in name, a mapping, a spec, or a YAML file path (the file holds a spec
    mapping, a ``keypoints:`` mapping, or a tfpose config with ``data.keypoints``)."""
    if isinstance(value, str) and value.endswith((".yaml", ".yml", ".json")):
        with open(value, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if isinstance(data, Mapping) and "names" not in data:
            data = data.get("keypoints", (data.get("data") or {}).get("keypoints"))
        if isinstance(data, str):
            return get_spec(data)
        if not isinstance(data, Mapping):
            raise SpecError(f"{value}: no keypoint spec found (expected `names`, `keypoints` "
                            "or `data.keypoints`)")
        return spec_from_dict(data, where=value)
    return get_spec(value)


def generate(out_dir: str, spec, num_images: int = 200, image_size: int = 256, seed: int = 0,
             split_name: str = "train", config: Optional[SyntheticConfig] = None) -> str:
    """Writes a synthetic COCO-format keypoint dataset and returns the annotation JSON path.

    Args:
        out_dir: str, output folder; images go to ``out_dir/images/<split_name>/``.
        spec: a KeypointSpec, built-in name, spec mapping or spec YAML path.
        num_images: int >= 0.
        image_size: int >= 32, square image side in pixels.
        seed: int >= 0.
        split_name: str, names the JSON (``annotations_<split_name>.json``) and the image folder;
            it also enters the random seed, so splits differ for the same seed.
        config: optional SyntheticConfig.
    """
    spec = load_spec(spec)
    cfg = config or SyntheticConfig()
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0. Received: num_images={num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32. Received: image_size={image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0. Received: seed={seed}")
    if not split_name or os.sep in split_name or split_name.startswith("."):
        raise ValueError(f"split_name must be a plain folder name. Received: {split_name!r}")
    model = _build_model(spec)
    image_dir = os.path.join(out_dir, "images", split_name)
    os.makedirs(image_dir, exist_ok=True)
    split_key = zlib.crc32(split_name.encode())
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        plan = _plan_image(rng, model, cfg, image_size)
        image, labels = _render(plan)
        image_id = index + 1
        file_name = f"{image_id:012d}.jpg"
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {file_name}")
        atomic_write(os.path.join(image_dir, file_name), jpeg.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": image_size,
                       "height": image_size})
        for _, ann in _annotate(plan, labels, model.keypoint_index, cfg, image_id):
            ann["id"] = len(annotations) + 1
            annotations.append(ann)
    data = {
        "info": {"description": f"tfpose synthetic keypoints ({spec.name})",
                 "version": str(VERSION), "generator": "tfpose.data.synthetic",
                 "seed": seed, "split": split_name, "image_size": image_size,
                 "config": dataclasses.asdict(cfg)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(spec.names),
                        "skeleton": [[int(i) + 1, int(j) + 1] for i, j in spec.skeleton]}],
    }
    path = os.path.join(out_dir, f"annotations_{split_name}.json")
    atomic_write(path, json.dumps(data, separators=(",", ":")).encode("utf-8"))
    return path


# --- command line ------------------------------------------------------------------------------

def _define_flags():
    from absl import flags

    flags.DEFINE_string("out", None, "output folder")
    flags.DEFINE_string("keypoints", "coco", "coco | crowdpose | mpii | path to a spec YAML")
    flags.DEFINE_integer("num_images", 200, "number of images")
    flags.DEFINE_integer("size", 256, "square image size in pixels")
    flags.DEFINE_integer("seed", 0, "random seed (>= 0)")
    flags.DEFINE_string("split", "train", "split name")
    flags.DEFINE_integer("min_people", SyntheticConfig.min_people, "fewest people per image")
    flags.DEFINE_integer("max_people", SyntheticConfig.max_people, "most people per image")
    flags.DEFINE_float("min_scale", SyntheticConfig.min_scale,
                       "smallest person height as a fraction of the image size")
    flags.DEFINE_float("max_scale", SyntheticConfig.max_scale,
                       "largest person height as a fraction of the image size")
    flags.DEFINE_float("crowd_rate", SyntheticConfig.crowd_rate, "share of images with a crowd")
    flags.DEFINE_float("unlabelled_rate", SyntheticConfig.unlabelled_rate,
                       "share of images with a tiny unlabelled person")
    flags.DEFINE_float("upright_prob", SyntheticConfig.upright_prob,
                       "probability that a person is upright (else any rotation)")
    flags.DEFINE_float("border_prob", SyntheticConfig.border_prob,
                       "probability that a person is placed across an image edge")
    flags.DEFINE_float("view_spread", SyntheticConfig.view_spread,
                       "body yaw scale: 1 = any view, 0 = frontal views only")
    flags.DEFINE_float("clutter", SyntheticConfig.clutter,
                       "share of background shapes and distractor strokes drawn (0..1)")
    flags.mark_flag_as_required("out")
    return flags.FLAGS


def _parse(argv):
    """absl flag parsing that also accepts dashes in flag names (--num-images)."""
    from absl import flags

    fixed = [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("--") and not arg.startswith("---"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        fixed.append(arg)
    return flags.FLAGS(fixed)


def main(argv):
    del argv
    from absl import flags

    from tfpose.config import ConfigError

    f = flags.FLAGS
    try:  # the config and generate() check the flag values first, naming the one at fault
        cfg = SyntheticConfig(min_people=f.min_people, max_people=f.max_people,
                              min_scale=f.min_scale, max_scale=f.max_scale,
                              crowd_rate=f.crowd_rate, unlabelled_rate=f.unlabelled_rate,
                              upright_prob=f.upright_prob, border_prob=f.border_prob,
                              view_spread=f.view_spread, clutter=f.clutter)
        path = generate(f.out, f.keypoints, num_images=f.num_images, image_size=f.size,
                        seed=f.seed, split_name=f.split, config=cfg)
    except ValueError as e:
        raise ConfigError(f"tfpose.data.synthetic: {e}") from None
    print(path)


if __name__ == "__main__":
    from absl import app

    from tfpose.cli import user_errors_as_lines

    _define_flags()
    app.run(user_errors_as_lines(main), flags_parser=_parse)
