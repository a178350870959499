"""Tests for tfpose.data.synthetic: determinism, COCO fields, visibility, variety, rendering."""

import collections
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from tfpose.data import synthetic
from tfpose.keypoints import get_spec, spec_from_dict

SIZE = 128
CUSTOM5 = {"name": "star5", "names": ["body", "head", "arm_l", "arm_r", "tail"],
           "sigmas": [0.05] * 5, "flip_pairs": [["arm_l", "arm_r"]],
           "skeleton": [["body", "head"], ["body", "arm_l"], ["body", "arm_r"], ["body", "tail"]]}


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _keypoints(ann):
    return np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco")
    return synthetic.generate(str(out), "coco", num_images=60, image_size=SIZE, seed=1)


@pytest.fixture(scope="module")
def custom_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("custom")
    return synthetic.generate(str(out), CUSTOM5, num_images=30, image_size=SIZE, seed=2,
                              split_name="val")


@pytest.fixture(scope="module")
def crowd_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("crowd")
    cfg = synthetic.SyntheticConfig(crowd_rate=1.0, unlabelled_rate=1.0)
    return synthetic.generate(str(out), "crowdpose", num_images=6, image_size=SIZE, seed=3,
                              config=cfg)


def _plans(spec, n, seed=7, size=SIZE, cfg=None):
    """(plan, image, labels) for n images, straight from the generator's internals."""
    model = synthetic._build_model(get_spec(spec))
    cfg = cfg or synthetic.SyntheticConfig()
    out = []
    for i in range(n):
        plan = synthetic._plan_image(np.random.default_rng([seed, i]), model, cfg, size)
        image, labels = synthetic._render(plan)
        out.append((plan, image, labels, model))
    return out


def _tree_bytes(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_deterministic_and_atomic(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), CUSTOM5, num_images=5, image_size=96, seed=4)
    b = synthetic.generate(str(tmp_path / "b"), CUSTOM5, num_images=5, image_size=96, seed=4)
    synthetic.generate(str(tmp_path / "b"), CUSTOM5, num_images=5, image_size=96, seed=4)
    c = synthetic.generate(str(tmp_path / "c"), CUSTOM5, num_images=5, image_size=96, seed=5)
    files_a, files_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert files_a == files_b
    assert sorted(files_a) == ["annotations_train.json"] + [
        os.path.join("images", "train", f"{i:012d}.jpg") for i in range(1, 6)]  # no temp files
    assert os.path.basename(a) == "annotations_train.json"
    assert _tree_bytes(tmp_path / "c") != files_a
    assert _load(a)["images"] == _load(b)["images"] and _load(c)["images"] == _load(a)["images"]


def test_loads_with_pycocotools(coco_set):
    coco = COCO(coco_set)
    assert len(coco.getImgIds()) == 60
    cat = coco.loadCats(1)[0]
    spec = get_spec("coco")
    assert cat["keypoints"] == list(spec.names)
    assert cat["skeleton"] == [[i + 1, j + 1] for i, j in spec.skeleton]
    image_dir = os.path.join(os.path.dirname(coco_set), "images", "train")
    for img in coco.loadImgs(coco.getImgIds()[:5]):
        pixels = cv2.imread(os.path.join(image_dir, img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3) == (SIZE, SIZE, 3)
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert mask.any(), ann["id"]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE and w > 0 and h > 0
        assert ann["area"] > 0 and ann["category_id"] == 1
    assert len({a["id"] for a in coco.dataset["annotations"]}) == len(coco.dataset["annotations"])


@pytest.mark.parametrize("which", ["coco_set", "custom_set"])
def test_keypoint_fields(which, request):
    path = request.getfixturevalue(which)
    data = _load(path)
    k = len(data["categories"][0]["keypoints"])
    assert k == (17 if which == "coco_set" else 5)
    for ann in data["annotations"]:
        kps = _keypoints(ann)
        assert kps.shape == (k, 3)
        assert set(kps[:, 2]) <= {0, 1, 2}
        assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
        hidden, shown = kps[kps[:, 2] == 0], kps[kps[:, 2] > 0]
        assert (hidden[:, :2] == 0).all()
        assert ((shown[:, :2] >= 0) & (shown[:, :2] < SIZE)).all()
        # quantised to the drawing grid
        assert np.allclose(shown[:, :2] * synthetic._ONE, np.round(shown[:, :2] * synthetic._ONE))


def test_people_per_image_in_range(coco_set):
    data = _load(coco_set)
    cfg = synthetic.SyntheticConfig()
    labelled = collections.Counter(a["image_id"] for a in data["annotations"]
                                   if a["num_keypoints"] > 0)
    counts = [labelled.get(img["id"], 0) for img in data["images"]]
    assert max(counts) <= cfg.max_people
    assert min(counts) <= 2 and max(counts) >= 5
    for plan, *_ in _plans("coco", 20):
        n = sum(p.role == "person" for p in plan.people)
        assert cfg.min_people <= n <= cfg.max_people


def test_scale_and_rotation_spread():
    heights, rotations = [], []
    for plan, *_ in _plans("coco", 40, size=64):
        for p in plan.people:
            if p.role == "person":
                heights.append(p.height / plan.size)
                rotations.append(p.rotation)
    heights, rotations = np.array(heights), np.abs(np.array(rotations))
    assert heights.min() < 0.15 and heights.max() > 0.7
    assert np.percentile(heights, 75) / np.percentile(heights, 25) > 2
    assert (rotations < 30).mean() > 0.6  # upright dominant
    assert (rotations > 120).sum() >= 3  # but some upside down


def _shoulder_order(view_spread):
    """Share of people whose left shoulder is drawn right of the right shoulder (facing us)."""
    cfg = synthetic.SyntheticConfig(upright_prob=1.0, view_spread=view_spread)
    spec = get_spec("coco")
    left, right = spec.names.index("left_shoulder"), spec.names.index("right_shoulder")
    facing = [p.points[model.keypoint_index][left, 0] > p.points[model.keypoint_index][right, 0]
              for plan, _, _, model in _plans("coco", 30, size=64, cfg=cfg)
              for p in plan.people if p.role == "person"]
    return np.mean(facing)


def test_view_spread_zero_gives_frontal_views():
    assert _shoulder_order(0.0) == 1.0
    assert _shoulder_order(1.0) < 0.9  # any view: back views swap the shoulders


def test_clutter_changes_background_only():
    plain = _plans("coco", 4, cfg=synthetic.SyntheticConfig(clutter=0.0))
    busy = _plans("coco", 4)
    for (p0, img0, _, _), (p1, img1, _, _) in zip(plain, busy):
        for a, b in zip(p0.people, p1.people):
            np.testing.assert_array_equal(a.points, b.points)
        # a plain background is smoother: fewer strong edges
        edges = [np.mean(np.abs(np.diff(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).astype(float),
                                        axis=1)) > 40) for im in (img0, img1)]
        assert edges[0] <= edges[1]


def test_spread_in_annotations(coco_set):
    data = _load(coco_set)
    spec = get_spec("coco")
    n = {name: i for i, name in enumerate(spec.names)}
    angles, heights = [], []
    for ann in data["annotations"]:
        kps = _keypoints(ann)
        torso = [n["left_shoulder"], n["right_shoulder"], n["left_hip"], n["right_hip"]]
        if (kps[torso, 2] > 0).all():
            up = kps[torso[:2], :2].mean(0) - kps[torso[2:], :2].mean(0)
            angles.append(abs(math.degrees(math.atan2(up[0], -up[1]))))
        if ann["num_keypoints"] >= 14:
            heights.append(ann["bbox"][3] / SIZE)
    angles = np.array(angles)
    assert (angles < 35).mean() > 0.5 and (angles > 120).any()
    assert min(heights) < 0.2 and max(heights) > 0.6


def test_border_and_occlusion_occur(coco_set):
    data = _load(coco_set)
    cut = occluded = total = 0
    for ann in data["annotations"]:
        kps = _keypoints(ann)
        if ann["num_keypoints"] == 0:
            continue
        total += len(kps)
        occluded += int((kps[:, 2] == 1).sum())
        x, y, w, h = ann["bbox"]
        touches = x <= 0 or y <= 0 or x + w >= SIZE or y + h >= SIZE
        cut += bool(touches and (kps[:, 2] == 0).any())
    assert cut >= 5
    assert 0.05 < occluded / total < 0.5


def test_occlusion_by_nearer_person_is_flagged():
    by_other = 0
    for plan, _, labels, model in _plans("coco", 25, size=96):
        cfg = synthetic.SyntheticConfig()
        for index, ann in synthetic._annotate(plan, labels, model.keypoint_index, cfg, 1):
            if index < 0:
                continue
            nearer = np.zeros(labels[0].shape, bool)
            for lab in labels[index + 1:]:  # drawn later = nearer
                nearer |= lab > 0
            for x, y, v in _keypoints(ann):
                if v > 0 and nearer[int(y), int(x)]:
                    assert v == 1
                    by_other += 1
    assert by_other > 10


def test_crowd_and_unlabelled_people(crowd_set):
    coco = COCO(crowd_set)
    anns = coco.loadAnns(coco.getAnnIds())
    per_image = collections.defaultdict(list)
    for ann in anns:
        per_image[ann["image_id"]].append(ann)
    assert len(per_image) == 6
    for image_anns in per_image.values():
        crowds = [a for a in image_anns if a["iscrowd"] == 1]
        assert len(crowds) == 1
        crowd = crowds[0]
        assert crowd["num_keypoints"] == 0 and not any(crowd["keypoints"])
        assert len(crowd["segmentation"][0]) >= 6 and coco.annToMask(crowd).sum() > 0
    zero = [a for a in anns if a["iscrowd"] == 0 and a["num_keypoints"] == 0]
    assert len(zero) >= 3
    assert all(a["area"] > 0 and a["bbox"][2] > 0 for a in zero)


def test_drawn_structure_at_visible_joints():
    joint_diff, far_diff = [], []
    for plan, image, labels, model in _plans("coco", 12):
        empty = synthetic._Plan(plan.size, plan.palette, plan.light, [], plan.background_seed,
                                plan.post_seed)
        background, _ = synthetic._render(empty)
        anns = synthetic._annotate(plan, labels, model.keypoint_index, synthetic.SyntheticConfig(),
                                   1)
        diff = np.abs(image.astype(np.int16) - background.astype(np.int16)).max(-1)
        for _, ann in anns:
            for x, y, v in _keypoints(ann):
                if v == 2:
                    joint_diff.append(diff[int(y), int(x)])
        people = np.zeros(diff.shape, np.uint8)
        for lab in labels:
            people |= (lab > 0).astype(np.uint8)
        far = cv2.dilate(people, np.ones((7, 7), np.uint8)) == 0
        far_diff.extend(diff[far].tolist())
    joint_diff, far_diff = np.array(joint_diff), np.array(far_diff)
    assert len(joint_diff) > 100
    assert (joint_diff > 8).mean() > 0.9
    assert (far_diff == 0).mean() > 0.99


def test_visible_keypoints_lie_on_own_silhouette():
    on = total = 0
    for plan, _, labels, model in _plans("mpii", 12):
        shown = [(p, lab) for p, lab in zip(plan.people, labels) if p.role == "person"]
        for person, lab in shown:
            grown = cv2.dilate((lab > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
            for m in model.keypoint_index:
                x, y = person.points[m]
                if 0 <= x < plan.size and 0 <= y < plan.size and person.facing[m]:
                    total += 1
                    on += int(grown[int(y), int(x)] > 0)
    assert on / total > 0.99


def test_blob_centre_matches_continuous_coordinates():
    ys, xs = np.mgrid[0:40, 0:40]
    rng = np.random.default_rng(0)
    for _ in range(20):
        centre = synthetic._quantise(rng.uniform(15, 25, 2))
        img = np.zeros((40, 40, 3), np.uint8)
        synthetic._blob(img, centre, rng.uniform(0.8, 4.0), (200.0, 200.0, 200.0))
        w = img[..., 0].astype(np.float64)
        got = np.array([(w * (xs + 0.5)).sum(), (w * (ys + 0.5)).sum()]) / w.sum()
        assert np.abs(got - centre).max() < 0.08
    # cv2 fixed point: continuous x -> (x - 0.5) * 2**SHIFT
    assert synthetic._fix([0.5, 10.5]).tolist() == [0, 10 * synthetic._ONE]


def test_palette_is_shared_not_per_person():
    within, across, means = [], [], []
    for plan, image, labels, _ in _plans("coco", 30, seed=5):
        for person in plan.people:  # every shape's colour is its slot's image colour +- jitter
            for part in person.parts:
                for shape in part.shapes:
                    assert np.abs(np.array(shape.colour) - np.clip(
                        plan.palette[shape.slot], 0, 255)).max() <= 6.01
        nearer, image_means = np.zeros(labels[0].shape if labels else (SIZE, SIZE), bool), []
        for person, lab in zip(reversed(plan.people), reversed(labels)):
            visible = (lab > 0) & ~nearer
            nearer |= lab > 0
            tops = [i + 1 for i, part in enumerate(person.parts) if part.shapes[0].slot == "top"]
            mask = np.isin(lab, tops) & visible
            if person.role == "person" and mask.sum() >= 15:
                image_means.append(image[mask].mean(0))
        within += [np.linalg.norm(a - b) for i, a in enumerate(image_means)
                   for b in image_means[i + 1:]]
        means.append(image_means)
    for i, group in enumerate(means):
        for other in means[i + 1:]:
            across += [np.linalg.norm(a - b) for a in group for b in other]
    assert len(within) > 20
    assert np.median(within) < 0.3 * np.median(across)


def test_specs_and_models():
    assert isinstance(synthetic._build_model(get_spec("crowdpose")), synthetic._HumanModel)
    subset = spec_from_dict({"names": ["nose", "left_shoulder", "right_shoulder", "left_wrist"],
                             "sigmas": [0.05] * 4})
    assert isinstance(synthetic._build_model(subset), synthetic._HumanModel)
    assert isinstance(synthetic._build_model(spec_from_dict(CUSTOM5)), synthetic._CreatureModel)
    odd = [  # disconnected skeleton with root joints; a single keypoint
        {"names": list("abcdef"), "sigmas": [0.05] * 6, "skeleton": [["a", "b"], ["c", "d"]],
         "root_joints": ["a", "c", "e"]},
        {"names": ["x"], "sigmas": [0.05]}]
    for data in odd:
        spec = spec_from_dict(data)
        model = synthetic._build_model(spec)
        assert sorted(model.order) == list(range(spec.num_keypoints))
        for plan, image, _, _ in _plans(spec, 3, size=64):
            assert image.shape == (64, 64, 3)
            for person in plan.people:
                assert np.isfinite(person.points).all()


def test_creature_template_is_mirror_symmetric():
    model = synthetic._build_model(spec_from_dict(CUSTOM5))
    rest = model._pose(np.zeros(5), np.ones(5), 1.0)
    assert np.allclose(rest[2] * [-1, 1], rest[3])  # arm_l mirrors arm_r
    assert np.allclose(rest[[0, 1, 4], 0], rest[0, 0])  # body, head, tail on the midline
    assert rest[1, 1] != rest[4, 1]  # head and tail on opposite sides


def test_load_spec_from_yaml(tmp_path):
    direct = tmp_path / "spec.yaml"
    direct.write_text(json.dumps(CUSTOM5))
    nested = tmp_path / "config.yaml"
    nested.write_text(json.dumps({"data": {"keypoints": CUSTOM5}}))
    named = tmp_path / "named.yaml"
    named.write_text("keypoints: mpii\n")
    assert synthetic.load_spec(str(direct)).names == tuple(CUSTOM5["names"])
    assert synthetic.load_spec(str(nested)).names == tuple(CUSTOM5["names"])
    assert synthetic.load_spec(str(named)).name == "mpii"


def test_config_validation():
    with pytest.raises(ValueError, match="Received"):
        synthetic.SyntheticConfig(min_people=3, max_people=2)
    with pytest.raises(ValueError, match="crowd_rate"):
        synthetic.SyntheticConfig(crowd_rate=1.5)
    with pytest.raises(ValueError, match="view_spread"):
        synthetic.SyntheticConfig(view_spread=-0.1)
    with pytest.raises(ValueError, match="clutter"):
        synthetic.SyntheticConfig(clutter=2.0)
    with pytest.raises(ValueError, match="seed"):
        synthetic.generate("/nonexistent", "coco", seed=-1)


def test_cli(tmp_path):
    spec = tmp_path / "star.yaml"
    spec.write_text(json.dumps(CUSTOM5))
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tfpose.data.synthetic", "--out", str(out), "--keypoints",
           str(spec), "--num-images", "3", "--size", "64", "--seed", "9", "--split", "val",
           "--max_people=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = _load(out / "annotations_val.json")
    assert len(data["images"]) == 3 and data["images"][0]["width"] == 64
    assert data["categories"][0]["keypoints"] == CUSTOM5["names"]
    assert data["info"]["config"]["max_people"] == 2
    assert (out / "images" / "val" / "000000000003.jpg").is_file()


def test_cli_bad_flag_value_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "tfpose.data.synthetic", "--out", str(tmp_path / "bad"),
           "--num-images", "2", "--min-scale", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "min_scale=2.0" in result.stderr
    assert not (tmp_path / "bad").exists()
