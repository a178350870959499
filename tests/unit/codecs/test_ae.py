"""AECodec: encode on hand-made keypoints, oracle decode round trips, zero-person images."""

import numpy as np
import pytest
import tensorflow as tf
from codec_cases import batch, encode, match_people, oracle_metrics, synthetic_people

from tfpose.codecs.ae import AECodec, AEConfig, default_joint_order
from tfpose.config import ConfigError
from tfpose.keypoints import get_spec, spec_from_dict

TINY = spec_from_dict({"name": "tiny", "names": ["a", "b", "c"], "sigmas": [0.5, 0.5, 0.5],
                       "flip_pairs": [["a", "b"]]})


def codec_for(spec=TINY, size=64, **kw):
    return AECodec(AEConfig(**kw), spec, size)


def np_gaussian(size, stride, x, y, sigma):
    c = np.arange(size // stride) + 0.5
    return np.exp(-((c[None, :] - x / stride) ** 2 + (c[:, None] - y / stride) ** 2)
                  / (2 * sigma ** 2))


# -- encode ---------------------------------------------------------------------------------------

def test_signature_matches_encode():
    codec = codec_for(strides=[4, 2])
    sig = codec.target_signature()
    out = codec.encode(tf.zeros([2, 3, 3]), tf.ones([64, 64]))
    assert set(out) == set(sig) == {"heatmaps_4", "heatmaps_2", "mask_4", "mask_2", "tag_index"}
    for k, spec in sig.items():
        assert out[k].dtype == spec.dtype and out[k].shape == spec.shape, k
    assert sig["heatmaps_2"].shape == (32, 32, 3) and sig["tag_index"].shape == (30, 3, 2)


def test_peak_value_one_at_pixel_centre():
    codec = codec_for(strides=[4])
    out = encode(codec, [[[4 * 5.5, 4 * 9.5, 2], [0, 0, 0], [4 * 3.5, 4 * 2.5, 1]]])
    heat = out["heatmaps_4"]
    assert heat[9, 5, 0] == pytest.approx(1.0) and np.unravel_index(heat[..., 0].argmax(),
                                                                    (16, 16)) == (9, 5)
    assert heat[2, 3, 2] == pytest.approx(1.0)
    assert not heat[..., 1].any()  # unlabelled


@pytest.mark.parametrize("scale_sigma", [True, False])
def test_gaussian_matches_numpy_formula(scale_sigma):
    codec = codec_for(strides=[4, 2], sigma=2.0, scale_sigma=scale_sigma)
    people = [[[13.3, 20.7, 2], [40.2, 8.9, 2], [0, 0, 0]],
              [[17.9, 30.1, 2], [0, 0, 0], [55.0, 50.5, 1]]]
    out = encode(codec, people)
    for stride in (4, 2):
        sigma = (2.0 * 2 / stride) if scale_sigma else 2.0
        assert codec.sigma_at(stride) == pytest.approx(sigma)
        for k in range(3):
            want = np.zeros((64 // stride,) * 2)
            for p in people:
                if p[k][2] > 0:
                    want = np.maximum(want, np_gaussian(64, stride, p[k][0], p[k][1], sigma))
            np.testing.assert_allclose(out[f"heatmaps_{stride}"][..., k], want, atol=1e-6)


def test_masks_ignore_cells_touching_ignored_pixels():
    codec = codec_for(strides=[4, 2])
    mask = np.ones((64, 64), np.float32)
    mask[10:13, 21:30] = 0  # rows 10..12, columns 21..29
    out = encode(codec, np.zeros((0, 3, 3)), mask)
    for s in (4, 2):
        want = np.ones((64 // s, 64 // s), np.float32)
        want[10 // s:12 // s + 1, 21 // s:29 // s + 1] = 0
        np.testing.assert_array_equal(out[f"mask_{s}"], want)


def test_tag_index_values_and_validity():
    codec = codec_for(strides=[4, 2])  # tags at stride 4 on a 16 x 16 map
    people = [[[13.3, 20.7, 2], [64.0, 8.0, 2], [0, 0, 0]],  # x = 64 is outside [0, 64)
              [[0, 0, 0], [0, 0, 0], [0, 0, 0]],  # no labelled keypoint: skipped
              [[-0.5, 5.0, 2], [8.0, 63.9, 1], [4.0, 4.0, 2]]]
    ti = encode(codec, people)["tag_index"]
    assert ti.dtype == np.int32
    np.testing.assert_array_equal(ti[0], [[5 * 16 + 3, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(ti[1], [[0, 0], [15 * 16 + 2, 1], [1 * 16 + 1, 1]])
    assert not ti[2:].any()
    heat = encode(codec, people)["heatmaps_4"]  # no heat for x = 64 nor for x = -0.5
    np.testing.assert_allclose(heat[..., 1], np_gaussian(64, 4, 8.0, 63.9, 1.0), atol=1e-6)
    np.testing.assert_allclose(heat[..., 0], np_gaussian(64, 4, 13.3, 20.7, 1.0), atol=1e-6)


def test_no_people():
    codec = codec_for(strides=[4, 2])
    out = encode(codec, np.zeros((0, 3, 3)))
    assert not out["heatmaps_4"].any() and not out["heatmaps_2"].any()
    assert not out["tag_index"].any()
    assert out["mask_4"].all()


def test_people_beyond_max_people_get_no_tags():
    codec = codec_for(strides=[4], max_people=2)
    people = [[[6.0 + 16 * n, 6.0, 2], [0, 0, 0], [0, 0, 0]] for n in range(4)]
    out = encode(codec, people)
    assert out["tag_index"].shape == (2, 3, 2)
    np.testing.assert_array_equal(out["tag_index"][:, 0], [[1 * 16 + 1, 1], [1 * 16 + 5, 1]])
    assert (out["heatmaps_4"][1, :, 0] > 0.99).sum() == 4  # every person still has a heatmap


def test_encode_in_tf_data():
    codec = codec_for(strides=[4, 2])
    counts = [0, 2, 1]
    data = tf.data.Dataset.from_generator(
        lambda: (np.full((n, 3, 3), 20.0, np.float32) for n in counts),
        output_signature=tf.TensorSpec([None, 3, 3], tf.float32))
    data = data.map(lambda kp: codec.encode(kp, tf.ones([64, 64]))).batch(3)
    out = next(iter(data))
    assert out["heatmaps_2"].shape == (3, 32, 32, 3)
    assert out["tag_index"].numpy()[:, :, 0, 1].sum(axis=1).tolist() == [0, 2, 1]


# -- config ---------------------------------------------------------------------------------------

def test_default_joint_order_is_the_ae_reference_order_for_coco():
    order = default_joint_order(get_spec("coco"))
    assert order == [0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16]
    assert default_joint_order(TINY) == [0, 1, 2]
    assert codec_for(joint_order=[2, 0, 1]).joint_order == [2, 0, 1]


def test_config_errors():
    with pytest.raises(ConfigError, match="joint_order"):
        codec_for(joint_order=[0, 1])
    with pytest.raises(ConfigError, match="stride"):
        codec_for(size=66, strides=[4])
    with pytest.raises(ConfigError, match="multiple"):
        codec_for(size=96, strides=[3, 2])
    with pytest.raises(ConfigError, match="repeats"):
        AEConfig(joint_order=[1, 1]).validate()


# -- decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strides", [[4], [4, 2]])
def test_oracle_round_trip_coco(strides):
    spec = get_spec("coco")
    codec = AECodec(AEConfig(strides=strides), spec, 256)
    rng = np.random.default_rng(len(strides))
    gt = [synthetic_people(rng, 256, 17, unlabelled=3), synthetic_people(rng, 256, 17)[:2]]
    targets = batch(*(codec.encode(g, tf.ones([256, 256])) for g in gt))
    outputs = codec.oracle_outputs(targets)
    assert outputs["heatmaps"].shape == (2, 256 // strides[-1], 256 // strides[-1], 17)
    assert outputs["tags"].shape == outputs["heatmaps"].shape
    poses = {k: v.numpy() for k, v in codec.decode(outputs).items()}
    assert poses["keypoints"].shape == (2, 30, 17, 3) and poses["scores"].shape == (2, 30)
    assert poses["num_people"].tolist() == [len(gt[0]), len(gt[1])]
    for b in range(2):
        n = int(poses["num_people"][b])
        match_people(poses["keypoints"][b], n, gt[b], tol=0.05)
        assert not poses["keypoints"][b, n:].any() and not poses["scores"][b, n:].any()
        assert (np.diff(poses["scores"][b, :n]) <= 0).all()
    # person score = mean over K of the grouped detection values (before refine)
    first = poses["keypoints"][1, 0]
    assert poses["scores"][1, 0] == pytest.approx(first[:, 2].mean(), abs=1e-6)


def test_unlabelled_keypoints_stay_empty_without_refine():
    codec = codec_for(size=128, strides=[4], refine=False)
    rng = np.random.default_rng(5)
    gt = synthetic_people(rng, 128, 3, unlabelled=1)
    poses = codec.decode(codec.oracle_outputs(batch(codec.encode(gt, tf.ones([128, 128])))))
    kp = poses["keypoints"].numpy()[0]
    match_people(kp, int(poses["num_people"][0]), gt, tol=0.05)
    hole = np.flatnonzero(gt[0, :, 2] == 0)[0]
    owner = int(np.argmin([np.abs(kp[p, 0, :2] - gt[0, 0, :2]).max() for p in range(4)]))
    assert not kp[owner, hole].any()
    assert poses["scores"].numpy()[0, owner] == pytest.approx(kp[owner, :, 2].sum() / 3, abs=1e-6)


def test_flip_test_tags_and_adjust_only():
    codec = codec_for(size=128, strides=[4], subpixel=False)
    rng = np.random.default_rng(6)
    gt = synthetic_people(rng, 128, 3)
    outputs = codec.oracle_outputs(batch(codec.encode(gt, tf.ones([128, 128]))))
    outputs["tags"] = tf.stack([outputs["tags"], outputs["tags"]], axis=-1)  # T = 2
    poses = codec.decode(outputs)
    # quarter-pixel adjust only: within 0.25 + 0.5 map pixels of the truth (stride 4)
    match_people(poses["keypoints"].numpy()[0], int(poses["num_people"][0]), gt, tol=0.75 * 4)


def test_zero_person_image_and_noise():
    codec = codec_for(size=64, strides=[4, 2])
    empty = codec.oracle_outputs(batch(codec.encode(np.zeros((0, 3, 3)), tf.ones([64, 64]))))
    poses = codec.decode(empty)
    assert poses["num_people"].numpy().tolist() == [0]
    assert not poses["keypoints"].numpy().any() and not poses["scores"].numpy().any()
    rng = np.random.default_rng(7)
    noise = {"heatmaps": rng.normal(0, 1, (2, 32, 32, 3)).astype(np.float32),
             "tags": rng.normal(0, 5, (2, 32, 32, 3)).astype(np.float32)}
    noise["heatmaps"][1] = 0.0
    noise["heatmaps"][0, 3, 4] = 0.0  # exact zeros and negatives must not give NaN
    poses = {k: v.numpy() for k, v in codec.decode(noise).items()}
    for v in poses.values():
        assert np.isfinite(v).all()
    n = poses["num_people"]
    assert 0 < n[0] <= 30 and n[1] == 0
    assert not poses["keypoints"][0, n[0]:].any()
    inside = poses["keypoints"][0, :n[0]]
    assert (inside[..., :2] >= 0).all() and (inside[..., :2] <= 64).all()


def test_decode_traces_with_unknown_batch():
    codec = codec_for(size=64, strides=[4])
    spec = tf.TensorSpec([None, 16, 16, 3], tf.float32)
    decode = tf.function(codec.decode, input_signature=[{"heatmaps": spec, "tags": spec}])
    rng = np.random.default_rng(8)
    gt = synthetic_people(rng, 64, 3, cell=32, jitter=6.0)
    targets = batch(codec.encode(gt, tf.ones([64, 64])), codec.encode(gt[:1], tf.ones([64, 64])))
    poses = decode(codec.oracle_outputs(targets))
    assert poses["num_people"].numpy().tolist() == [4, 1]


@pytest.mark.parametrize("name", ["ae_coco", "ae_crowdpose"])
def test_oracle_ap_on_the_mini_sets(name, repo_dir, data_dir, monkeypatch):
    """DESIGN.md section 3: encode GT -> decode -> AP >= 0.99 on the real mini sets."""
    assert oracle_metrics(repo_dir, monkeypatch, name)["AP"] >= 0.99
