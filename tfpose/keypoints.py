"""Keypoint specifications: names, flip pairs, OKS sigmas, skeleton, Double Embedding groups.

A :class:`KeypointSpec` is everything the package knows about a skeleton. Nothing else in tfpose
assumes a number of keypoints: codecs, models, losses, drawing and evaluation take it from here.

Built-in specs: ``coco`` (17), ``crowdpose`` (14), ``mpii`` (16). A custom spec comes from a
config mapping with the same fields (see :func:`spec_from_dict`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

CENTER = "center"  # the virtual body-centre joint of Double Embedding (mean of labelled joints)


class SpecError(ValueError):
    """A keypoint spec that is not self-consistent."""


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
    """A skeleton definition.

    Args:
        name: str, the spec's name.
        names: tuple of K keypoint names.
        flip_pairs: tuple of (i, j) index pairs swapped by a horizontal flip.
        sigmas: tuple of K per-keypoint OKS constants (COCO `kpt_oks_sigmas`, already divided by 10).
        skeleton: tuple of (i, j) index pairs: the sticks drawn and used by `dekr`'s pose-scoring
            features.
        root_joints: tuple of keypoint indices forming the Double Embedding Root Joints Group (torso
            joints; the virtual body centre is always part of it as well).
        parents: tuple of K ints: the joint each adjacency joint's Local Embedding displacement points
            to (paper 000, section 3.2 "hierarchical displacements"); -1 means the body centre,
            and root joints have -2 (no parent).
    """

    name: str
    names: tuple
    flip_pairs: tuple
    sigmas: tuple
    skeleton: tuple
    root_joints: tuple = ()
    parents: tuple = ()

    def __post_init__(self):
        k = len(self.names)
        where = f"keypoint spec '{self.name}'"
        if k < 1:
            raise SpecError(f"{where}: needs at least one keypoint name")
        if len(set(self.names)) != k:
            raise SpecError(f"{where}: duplicate keypoint names in {list(self.names)}")
        if len(self.sigmas) != k:
            raise SpecError(f"{where}: {len(self.sigmas)} sigmas for {k} keypoints")
        if any(not (s > 0 and np.isfinite(s)) for s in self.sigmas):
            raise SpecError(f"{where}: sigmas must be positive and finite, got {list(self.sigmas)}")
        for field, pairs in (("flip_pairs", self.flip_pairs), ("skeleton", self.skeleton)):
            for pair in pairs:
                if len(pair) != 2 or not all(0 <= int(i) < k for i in pair) or pair[0] == pair[1]:
                    raise SpecError(f"{where}: {field} entry {list(pair)} is not a pair of two "
                                    f"different indices in [0, {k})")
        flipped = [i for pair in self.flip_pairs for i in pair]
        if len(flipped) != len(set(flipped)):
            raise SpecError(f"{where}: a keypoint appears in more than one flip pair")
        if any(not 0 <= i < k for i in self.root_joints):
            raise SpecError(f"{where}: root_joints {list(self.root_joints)} out of range [0, {k})")
        if self.parents:
            self._check_parents(where)

    def _check_parents(self, where):
        k = len(self.names)
        if len(self.parents) != k:
            raise SpecError(f"{where}: {len(self.parents)} parents for {k} keypoints")
        for i, p in enumerate(self.parents):
            if i in self.root_joints:
                if p != -2:
                    raise SpecError(f"{where}: root joint '{self.names[i]}' cannot have a parent")
                continue
            if p == -2 or not -1 <= p < k or p == i:
                raise SpecError(f"{where}: joint '{self.names[i]}' has invalid parent {p}")
        for i in range(k):  # every chain must end at a root joint or the centre
            seen, j = set(), i
            while j >= 0 and j not in self.root_joints:
                if j in seen:
                    raise SpecError(f"{where}: parent chain of '{self.names[i]}' has a cycle")
                seen.add(j)
                j = self.parents[j]

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_index(self) -> np.ndarray:
        """int32 [K]: the keypoint a horizontally flipped keypoint becomes."""
        index = np.arange(self.num_keypoints, dtype=np.int32)
        for i, j in self.flip_pairs:
            index[i], index[j] = j, i
        return index

    @property
    def sigmas_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float32)

    def to_dict(self) -> dict:
        """A plain mapping accepted by :func:`spec_from_dict` (also written into export metadata)."""
        out = {
            "name": self.name,
            "names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": [float(s) for s in self.sigmas],
            "skeleton": [list(p) for p in self.skeleton],
            "root_joints": [self.names[i] for i in self.root_joints],
        }
        if self.parents:
            out["parents"] = {self.names[i]: (CENTER if p == -1 else self.names[p])
                              for i, p in enumerate(self.parents) if p != -2}
        return out


def _pairs(names: Sequence[str], pairs: Sequence[Sequence], where: str, field: str) -> tuple:
    """Pairs given by keypoint name or by index, to index pairs."""
    lookup = {n: i for i, n in enumerate(names)}
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise SpecError(f"{where}: {field} entry {pair!r} is not a pair")
        idx = []
        for item in pair:
            if isinstance(item, str):
                if item not in lookup:
                    raise SpecError(f"{where}: {field} names unknown keypoint '{item}'")
                idx.append(lookup[item])
            elif isinstance(item, int) and not isinstance(item, bool):
                idx.append(item)
            else:
                raise SpecError(f"{where}: {field} entry {pair!r} must hold names or indices")
        out.append(tuple(idx))
    return tuple(out)


def spec_from_dict(data: Mapping, where: str = "keypoint spec") -> KeypointSpec:
    """Builds a spec from a mapping (a config's inline `data.keypoints`).

    Keys: ``names`` (required), ``sigmas`` (required), ``flip_pairs``, ``skeleton`` (pairs of names
    or indices), ``root_joints`` (names), ``parents`` (mapping joint name -> parent name or
    ``center``; joints not listed and not root point to the centre), ``name``.
    """
    allowed = {"name", "names", "flip_pairs", "sigmas", "skeleton", "root_joints", "parents"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key '{unknown[0]}' (allowed: {sorted(allowed)})")
    for key in ("names", "sigmas"):
        if key not in data:
            raise SpecError(f"{where}: missing required key '{key}'")
    names = tuple(str(n) for n in data["names"])
    lookup = {n: i for i, n in enumerate(names)}
    try:
        sigmas = tuple(float(s) for s in data["sigmas"])
    except (TypeError, ValueError):
        raise SpecError(f"{where}: sigmas must be a list of numbers, got {data['sigmas']!r}") from None
    roots = []
    for n in data.get("root_joints", ()):
        if n not in lookup:
            raise SpecError(f"{where}: root_joints names unknown keypoint '{n}'")
        roots.append(lookup[n])
    parents = ()
    if "parents" in data or roots:
        given = dict(data.get("parents") or {})
        plist = []
        for i, n in enumerate(names):
            if i in roots:
                plist.append(-2)
                continue
            p = given.pop(n, CENTER)
            if p != CENTER and p not in lookup:
                raise SpecError(f"{where}: parent of '{n}' is unknown keypoint '{p}'")
            plist.append(-1 if p == CENTER else lookup[p])
        if given:
            raise SpecError(f"{where}: parents names unknown or root keypoint '{next(iter(given))}'")
        parents = tuple(plist)
    return KeypointSpec(
        name=str(data.get("name", "custom")),
        names=names,
        flip_pairs=_pairs(names, data.get("flip_pairs", ()), where, "flip_pairs"),
        sigmas=sigmas,
        skeleton=_pairs(names, data.get("skeleton", ()), where, "skeleton"),
        root_joints=tuple(roots),
        parents=parents,
    )


# --- built-in specs -------------------------------------------------------------------------

# COCO keypoint names, flip pairs and OKS sigmas (cocoapi `kpt_oks_sigmas`); skeleton from the
# COCO person category (1-based there).
_COCO = {
    "name": "coco",
    "names": ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"],
    "sigmas": [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
               .89, .89],
    "skeleton": [[15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6],
                 [5, 7], [6, 8], [7, 9], [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4],
                 [3, 5], [4, 6]],
    # Double Embedding (paper 000, section 1): torso joints + centre form the root group; elbows
    # and knees point to shoulders and hips, wrists and ankles to elbows and knees, the face to
    # the centre.
    "root_joints": ["left_shoulder", "right_shoulder", "left_hip", "right_hip"],
    "parents": {"left_elbow": "left_shoulder", "right_elbow": "right_shoulder",
                "left_wrist": "left_elbow", "right_wrist": "right_elbow",
                "left_knee": "left_hip", "right_knee": "right_hip",
                "left_ankle": "left_knee", "right_ankle": "right_knee"},
}
_COCO["sigmas"] = [s / 10.0 for s in _COCO["sigmas"]]
_COCO["flip_pairs"] = [[i, i + 1] for i in range(1, 17, 2)]

# CrowdPose: keypoint order and sigmas of the CrowdPose toolkit (crowdposetools/cocoeval.py).
_CROWDPOSE = {
    "name": "crowdpose",
    "names": ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
              "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
              "right_ankle", "head", "neck"],
    "sigmas": [v / 10.0 for v in (.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89,
                                  .79, .79)],
    "flip_pairs": [[i, i + 1] for i in range(0, 12, 2)],
    "skeleton": [[12, 13], [13, 0], [13, 1], [0, 2], [2, 4], [1, 3], [3, 5], [0, 6], [1, 7],
                 [6, 7], [6, 8], [8, 10], [7, 9], [9, 11]],
    "root_joints": ["left_shoulder", "right_shoulder", "left_hip", "right_hip"],
    "parents": {"left_elbow": "left_shoulder", "right_elbow": "right_shoulder",
                "left_wrist": "left_elbow", "right_wrist": "right_elbow",
                "left_knee": "left_hip", "right_knee": "right_hip",
                "left_ankle": "left_knee", "right_ankle": "right_knee", "neck": "center",
                "head": "neck"},
}

# MPII joint order of the MPII annotation tool; OKS sigmas as used for MPII by MMPose
# (configs/_base_/datasets/mpii.py).
_MPII = {
    "name": "mpii",
    "names": ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
              "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
              "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"],
    "sigmas": [0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062,
               0.072, 0.179, 0.179, 0.072, 0.062],
    "flip_pairs": [[0, 5], [1, 4], [2, 3], [10, 15], [11, 14], [12, 13]],
    "skeleton": [[0, 1], [1, 2], [2, 6], [6, 3], [3, 4], [4, 5], [6, 7], [7, 8], [8, 9],
                 [7, 12], [12, 11], [11, 10], [7, 13], [13, 14], [14, 15]],
    "root_joints": ["right_shoulder", "left_shoulder", "right_hip", "left_hip"],
    "parents": {"right_elbow": "right_shoulder", "left_elbow": "left_shoulder",
                "right_wrist": "right_elbow", "left_wrist": "left_elbow",
                "right_knee": "right_hip", "left_knee": "left_hip",
                "right_ankle": "right_knee", "left_ankle": "left_knee"},
}

BUILTIN_SPECS = {d["name"]: spec_from_dict(d, f"built-in spec '{d['name']}'")
                 for d in (_COCO, _CROWDPOSE, _MPII)}


def get_spec(spec) -> KeypointSpec:
    """A spec from a built-in name, a mapping (custom spec) or a spec (returned as is)."""
    if isinstance(spec, KeypointSpec):
        return spec
    if isinstance(spec, str):
        if spec not in BUILTIN_SPECS:
            raise SpecError(f"unknown keypoint spec '{spec}' (built in: {sorted(BUILTIN_SPECS)})")
        return BUILTIN_SPECS[spec]
    if isinstance(spec, Mapping):
        return spec_from_dict(spec)
    raise SpecError(f"keypoint spec must be a name or a mapping, got {type(spec).__name__}")
