"""tfpose.postprocess.grouping: greedy matching vs a numpy reference, hand-made grouping cases."""

import numpy as np
import pytest

from tfpose.postprocess import grouping


def np_greedy(cost, allowed):
    """Sequential greedy: pairs in increasing (cost, row, column), taken when both are free."""
    match = -np.ones(cost.shape[0], np.int64)
    used = set()
    pairs = sorted((cost[r, c], r, c) for r, c in zip(*np.nonzero(allowed)))
    for _, r, c in pairs:
        if match[r] < 0 and c not in used:
            match[r] = c
            used.add(c)
    return match


@pytest.mark.parametrize("seed", range(4))
def test_greedy_match_equals_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    # few cost levels -> many ties; some all-ones rows/columns blocked
    cost = rng.integers(0, 4, (3, 9, 7)).astype(np.float32)
    allowed = rng.uniform(size=cost.shape) < 0.6
    got = grouping.greedy_match(cost, allowed).numpy()
    for b in range(cost.shape[0]):
        np.testing.assert_array_equal(got[b], np_greedy(cost[b], allowed[b]))


def test_greedy_match_needs_several_rounds():
    # a chain: row 0 wants col 0, row 1 wants col 0 then col 1, row 2 wants col 1 then col 2 ...
    n = 6
    cost = np.full((1, n, n), 10.0, np.float32)
    for r in range(n):
        cost[0, r, r] = r
        if r > 0:
            cost[0, r, r - 1] = r - 0.5
    allowed = cost < 10
    got = grouping.greedy_match(cost, allowed).numpy()[0]
    np.testing.assert_array_equal(got, np_greedy(cost[0], allowed[0]))


def group(values, tags, **kw):
    args = dict(max_people=4, joint_order=list(range(np.asarray(values).shape[1])),
                detection_threshold=0.1, tag_threshold=1.0, use_detection_value=True)
    args.update(kw)
    out = grouping.group_by_tags(np.asarray(values, np.float32), np.asarray(tags, np.float32),
                                 **args)
    return {k: v.numpy() for k, v in out.items()}


def test_two_people_with_overlapping_candidates_split_by_tags():
    # type 0: person A (tag 0) and person B (tag 3); type 1: the two candidates come in the
    # other order (B's is stronger), at the same place but with their own tags.
    values = [[[0.9, 0.8], [0.95, 0.7]]]
    tags = [[[[0.0], [3.0]], [[3.1], [0.2]]]]
    out = group(values, tags)
    assert out["active"][0].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(out["assignment"][0, :2], [[0, 1], [1, 0]])
    np.testing.assert_allclose(out["person_tags"][0, :2, 0], [0.1, 3.05], atol=1e-6)
    assert (out["assignment"][0, 2:] == -1).all()


def test_tag_threshold_respected():
    values = [[[0.9], [0.9]]]
    tags = [[[[0.0]], [[1.2]]]]
    apart = group(values, tags, tag_threshold=1.0)
    assert apart["active"][0].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(apart["assignment"][0, :2], [[0, -1], [-1, 0]])
    joined = group(values, tags, tag_threshold=1.5)
    assert joined["active"][0].tolist() == [True, False, False, False]
    np.testing.assert_array_equal(joined["assignment"][0, 0], [0, 0])


def test_detection_value_breaks_tag_ties():
    # both type-1 candidates round to the same tag distance (0) to person 0: the stronger wins,
    # the weaker starts a person of its own.
    values = [[[0.9, 0.0], [0.3, 0.8]]]
    tags = [[[[0.0], [0.0]], [[0.2], [0.3]]]]
    out = group(values, tags)
    np.testing.assert_array_equal(out["assignment"][0, :2], [[0, 1], [-1, 0]])
    plain = group(values, tags, use_detection_value=False)  # plain distance: the closer wins
    np.testing.assert_array_equal(plain["assignment"][0, :2], [[0, 0], [-1, 1]])


def test_detection_threshold_and_max_people():
    values = [[[0.9, 0.8, 0.7, 0.6, 0.5, 0.05]]]
    tags = [[[[0.0], [2.0], [4.0], [6.0], [8.0], [10.0]]]]
    out = group(values, tags, max_people=4)
    assert out["active"][0].all()
    np.testing.assert_array_equal(out["assignment"][0, :, 0], [0, 1, 2, 3])  # 5th dropped
    out = group(values, tags, max_people=8)
    assert out["active"][0].tolist() == [True] * 5 + [False] * 3  # 0.05 is below threshold


def test_joint_order_and_vector_tags():
    # type 1 is processed first: its candidates found the people; T = 2 (flip-test tags)
    values = [[[0.9, 0.9], [0.9, 0.9]]]
    tags = [[[[5.0, 5.0], [0.0, 0.0]], [[0.1, 0.0], [5.0, 4.9]]]]
    out = group(values, tags, joint_order=[1, 0])
    np.testing.assert_array_equal(out["assignment"][0, :2], [[1, 0], [0, 1]])
    np.testing.assert_allclose(out["person_tags"][0, 0], [0.05, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        group(values, tags, joint_order=[0, 0])


def test_empty_input_and_batch():
    values = np.zeros((3, 2, 5), np.float32)
    values[1, 0, 0] = 0.5
    out = group(values, np.zeros((3, 2, 5, 1)))
    assert out["active"].sum(axis=1).tolist() == [0, 1, 0]
    assert (out["assignment"][[0, 2]] == -1).all()


def test_refine_fills_from_the_person_tag():
    h, w = 6, 7
    heat = np.zeros((1, h, w, 2), np.float32)
    tags = np.zeros((1, h, w, 2, 1), np.float32)
    heat[0, 1, 1, 1], tags[0, 1, 1, 1, 0] = 0.9, 5.0  # strong, other person's tag
    heat[0, 4, 5, 1], tags[0, 4, 5, 1, 0] = 0.05, 1.1  # weak, this person's tag
    tags[0, :, :, 0, 0] = 9.0  # type 0: no heat anywhere near the tag -> nothing to fill
    person_tags = np.array([[[1.0], [5.0]]], np.float32)
    active = np.array([[True, True]])
    missing = np.array([[[True, True], [False, True]]])
    index, value, filled = grouping.refine_by_tags(heat, tags, person_tags, active, missing)
    assert filled.numpy().tolist() == [[[False, True], [False, True]]]
    assert index.numpy()[0, 0, 1] == 4 * w + 5 and value.numpy()[0, 0, 1] == pytest.approx(0.05)
    assert index.numpy()[0, 1, 1] == 1 * w + 1 and value.numpy()[0, 1, 1] == pytest.approx(0.9)
    # inactive people and present keypoints are left alone
    _, _, filled = grouping.refine_by_tags(heat, tags, person_tags, np.array([[True, False]]),
                                           missing)
    assert filled.numpy().tolist() == [[[False, True], [False, False]]]


def np_group(values, tags, order, max_people, det, thr, use_value):
    """Associative Embedding's match_by_tag (HigherHRNet lib/core/group.py) in numpy, with the
    Hungarian step replaced by sequential greedy matching and no person created past P."""
    k_types, m = values.shape
    people = []  # [{"joints": {k: m}, "tags": [tag, ...]}]
    for k in order:
        cands = [i for i in range(m) if values[k, i] > det]
        if not cands:
            continue
        matched = {}
        if people:
            means = np.array([np.mean(p["tags"], axis=0) for p in people])
            dist = np.linalg.norm(tags[k, cands][:, None, :] - means[None], axis=2)
            cost = np.round(dist) * 100 - values[k, cands][:, None] if use_value else dist
            rows = dict(zip(range(len(cands)), np_greedy(cost, dist < thr)))
            matched = {cands[r]: c for r, c in rows.items() if c >= 0}
        for i in cands:
            if i in matched:
                people[matched[i]]["joints"][k] = i
                people[matched[i]]["tags"].append(tags[k, i])
            elif len(people) < max_people:
                people.append({"joints": {k: i}, "tags": [tags[k, i]]})
    assignment = -np.ones((max_people, k_types), np.int64)
    mean = np.zeros((max_people, tags.shape[-1]))
    for p, person in enumerate(people):
        for k, i in person["joints"].items():
            assignment[p, k] = i
        mean[p] = np.mean(person["tags"], axis=0)
    return assignment, mean, len(people)


@pytest.mark.parametrize("use_value", [True, False])
@pytest.mark.parametrize("dims", [1, 2])
def test_group_by_tags_matches_the_reference_procedure(use_value, dims):
    rng = np.random.default_rng(dims + 2 * use_value)
    b, k_types, m, p = 4, 5, 6, 5
    person = rng.integers(0, 4, (b, k_types, m))  # 4 true people, tags 1.5 apart + noise
    tags = (person[..., None] * 1.5 + rng.normal(0, 0.35, (b, k_types, m, dims))).astype(np.float32)
    values = rng.uniform(0, 1, (b, k_types, m)).astype(np.float32)
    order = list(rng.permutation(k_types))
    out = group(values, tags, max_people=p, joint_order=order, use_detection_value=use_value)
    for i in range(b):
        assignment, mean, n = np_group(values[i], tags[i], order, p, 0.1, 1.0, use_value)
        np.testing.assert_array_equal(out["assignment"][i], assignment)
        np.testing.assert_allclose(out["person_tags"][i], mean, atol=1e-5)
        assert out["active"][i].tolist() == [j < n for j in range(p)]


@pytest.mark.parametrize("dims", [1, 2])
def test_refine_matches_numpy_on_many_missing_pairs(dims):
    rng = np.random.default_rng(20 + dims)
    b, h, w, k, p = 2, 7, 9, 3, 5
    heat = rng.normal(0.2, 0.5, (b, h, w, k)).astype(np.float32)
    tags = rng.normal(0, 2, (b, h, w, k, dims)).astype(np.float32)
    person_tags = rng.normal(0, 2, (b, p, dims)).astype(np.float32)
    active = np.array([[True] * 5, [True, True, False, False, False]])
    missing = rng.uniform(size=(b, p, k)) < 0.7  # more than K pairs: several loop steps
    index, value, filled = (v.numpy() for v in grouping.refine_by_tags(
        heat, tags, person_tags, active, missing))
    for i in range(b):
        for j in range(p):
            for c in range(k):
                if not (missing[i, j, c] and active[i, j]):
                    assert not filled[i, j, c]
                    continue
                dist = np.linalg.norm(tags[i, :, :, c] - person_tags[i, j], axis=-1)
                best = int(np.argmax((heat[i, :, :, c] - np.round(dist)).reshape(-1)))
                assert index[i, j, c] == best
                assert value[i, j, c] == pytest.approx(heat[i, :, :, c].reshape(-1)[best])
                assert filled[i, j, c] == (value[i, j, c] > 0)
