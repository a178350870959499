"""Associative-embedding grouping of keypoint candidates by their tags, in TF ops, static shapes.

Follows Associative Embedding (Newell et al., NIPS 2017, Sec. 3 "grouping") as implemented by
its reference and HigherHRNet (``lib/core/group.py``: ``match_by_tag``, ``HeatmapParser.refine``):

* keypoint types are visited in a fixed order; the candidates of the first type found start one
  person each; the candidates of every next type are matched to the existing people by the
  distance between the candidate's tag and the person's mean tag (the mean of the tags of the
  joints already grouped to it), with the cost ``round(distance) * 100 - detection value`` when
  the detection value is used (the reference's cost) and the plain distance otherwise. A pair
  is allowed only if the distance is below the tag threshold; candidates left unmatched start
  new people while free person slots remain (the reference starts them anyway but matches only
  to its first P people; with static shapes they are dropped).
* the reference solves each type's assignment with the Hungarian algorithm (munkres); here it
  is greedy matching by increasing cost among the allowed pairs, computed as rounds of mutually
  best pairs (a row's cheapest column whose cheapest row is that row, ties to the lower index).
  Matching locally dominant pairs gives exactly the sequential greedy matching (sorted by
  (cost, row, column)); it needs one round when every candidate has a single clear person.
* ``refine`` fills a person's missing keypoint type with the pixel maximising
  ``heat - round(||tag - person tag||)`` over the whole map, if the heat there is positive.

Symbols: B batch, K keypoint types, M candidates per type, P person slots, T tag dimension,
H x W map size. People occupy slots 0..n-1 in order of creation (no slot is ever freed).
Loops over types and rounds are Python loops over static sizes or ``tf.while_loop``; the public
functions are marked ``do_not_convert`` (no AutoGraph pass when traced).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Associative Embedding reference (`match_by_tag`): cost = round(tag distance) * 100 - value,
# i.e. the rounded tag distance first and the detection value to break ties.
_TAG_COST_SCALE = 100.0


def _batch_size(x: tf.Tensor):
    """The static batch size when known (keeps loop-variable shapes static), else a tensor."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _mutual_round(cost, ok, rows):
    """One round of greedy matching: the pairs that are each other's cheapest allowed pair."""
    masked = tf.where(ok, cost, np.inf)
    best_col = tf.argmin(masked, axis=2, output_type=tf.int32)  # [B, R]
    best_row = tf.argmin(masked, axis=1, output_type=tf.int32)  # [B, C]
    back = tf.gather(best_row, best_col, batch_dims=1)  # best row of each row's best column
    return tf.reduce_any(ok, axis=2) & tf.equal(back, rows), best_col


@tf.autograph.experimental.do_not_convert
def greedy_match(cost: tf.Tensor, allowed: tf.Tensor) -> tf.Tensor:
    """Greedy one-to-one matching of rows to columns by increasing cost.

    Repeats: take every allowed pair (r, c) with both r and c free such that c is r's cheapest
    free column and r is c's cheapest free row (ties: lower index), until none is left. This
    equals picking pairs one at a time in increasing (cost, r, c) order. The first round is
    unrolled; the ``tf.while_loop`` for the next ones usually runs zero times.

    Args:
        cost: float [B, R, C].
        allowed: bool [B, R, C], pairs that may be matched.

    Returns:
        int32 [B, R]: the column matched to each row, -1 when none.
    """
    cost = tf.convert_to_tensor(cost, tf.float32)
    allowed = tf.convert_to_tensor(allowed, tf.bool)
    r, c = cost.shape[1], cost.shape[2]
    if r == 0 or c == 0:
        return -tf.ones(tf.shape(cost)[:2], tf.int32)
    rows = tf.range(r, dtype=tf.int32)[None, :]
    mutual, best_col = _mutual_round(cost, allowed, rows)
    match = tf.where(mutual, best_col, -1)

    def free_pairs(match):
        taken = tf.reduce_max(tf.one_hot(match, c), axis=1) > 0  # [B, C]
        return allowed & (match < 0)[:, :, None] & ~taken[:, None, :]

    def body(match):
        mutual, best_col = _mutual_round(cost, free_pairs(match), rows)
        return (tf.where(mutual, best_col, match),)

    # every round matches at least the cheapest free allowed pair, so the loop ends
    (match,) = tf.while_loop(lambda match: tf.reduce_any(free_pairs(match)), body, (match,))
    return match


@tf.autograph.experimental.do_not_convert
def group_by_tags(values: tf.Tensor, tags: tf.Tensor, *, max_people: int, joint_order,
                  detection_threshold: float, tag_threshold: float,
                  use_detection_value: bool = True) -> dict:
    """Groups per-type keypoint candidates into people (see the module docstring).

    Args:
        values: float [B, K, M] detection values of the candidates (a candidate counts when its
            value is above ``detection_threshold``).
        tags: float [B, K, M, T] the candidates' tags.
        max_people: int P, person slots. Candidates that would start a person past P are
            dropped, the later ones in candidate order first (top-k order: lowest value first).
        joint_order: sequence of the K type indices in processing order.
        detection_threshold: float.
        tag_threshold: float, a candidate joins a person only if the tag distance is below it.
        use_detection_value: bool, the reference's cost ``round(d) * 100 - value``, else ``d``.

    Returns:
        dict with ``assignment`` int32 [B, P, K] (candidate index in M, -1 when none),
        ``person_tags`` float [B, P, T] (mean tag of the grouped joints), ``active`` bool
        [B, P] (slots holding a person; always a prefix of the slots).
    """
    values = tf.convert_to_tensor(values, tf.float32)
    tags = tf.convert_to_tensor(tags, tf.float32)
    k_types, t = values.shape[1], tags.shape[-1]
    p = int(max_people)
    if sorted(int(j) for j in joint_order) != list(range(k_types)):
        raise ValueError(f"joint_order {list(joint_order)} is not an order of 0..{k_types - 1}")
    batch = _batch_size(values)
    scalar_tags = t == 1
    # Per-type slices made once (one unstack each) in the shapes the loop needs: candidates as
    # rows [B, M], as columns [B, M, 1] against the person row [B, 1, P].
    above = values > detection_threshold
    candidate = tf.unstack(above, axis=1)
    candidate_col = tf.unstack(above[..., None], axis=1)
    value_col = tf.unstack(values[..., None], axis=1)
    tag_col = tf.unstack(tags if scalar_tags else tags[:, :, :, None, :], axis=1)

    person_shape = [batch, 1, p] if scalar_tags else [batch, 1, p, t]
    count = tf.zeros([batch, 1, p], tf.float32)
    sums = tf.zeros(person_shape, tf.float32)
    mean = sums
    active = tf.zeros([batch, 1, p], tf.bool)
    n_active = tf.zeros([batch, 1], tf.int32)
    slot_rows = {}
    for k in joint_order:
        k = int(k)
        if scalar_tags:
            dist = tf.abs(tag_col[k] - mean)  # [B, M, P]
        else:
            dist = tf.sqrt(tf.reduce_sum(tf.square(tag_col[k] - mean), axis=-1))
        allowed = (dist < tag_threshold) & (candidate_col[k] & active)
        if use_detection_value:
            cost = tf.round(dist) * _TAG_COST_SCALE - value_col[k]
        else:
            cost = dist
        match = greedy_match(cost, allowed)  # [B, M]
        new = tf.cast(candidate[k] & (match < 0), tf.int32)
        slot = tf.cumsum(new, axis=1, exclusive=True) + n_active
        # one-hot rows of index >= P (no slot left, or no candidate) are all zero
        target = tf.where(match >= 0, match, tf.where(new > 0, slot, p))
        onehot = tf.one_hot(target, p, dtype=tf.float32)  # [B, M, P]
        slot_rows[k] = onehot
        count += tf.reduce_sum(onehot, axis=1, keepdims=True)
        if scalar_tags:
            sums += tf.reduce_sum(onehot * tag_col[k], axis=1, keepdims=True)
            mean = sums / tf.maximum(count, 1.0)
        else:
            sums += tf.reduce_sum(onehot[..., None] * tag_col[k], axis=1, keepdims=True)
            mean = sums / tf.maximum(count, 1.0)[..., None]
        active = count > 0
        n_active = tf.minimum(n_active + tf.reduce_sum(new, axis=1, keepdims=True), p)
    onehots = tf.stack([slot_rows[k] for k in range(k_types)], axis=1)  # [B, K, M, P]
    assigned = tf.reduce_max(onehots, axis=2) > 0  # [B, K, P]
    index = tf.where(assigned, tf.argmax(onehots, axis=2, output_type=tf.int32), -1)
    return {"assignment": tf.transpose(index, [0, 2, 1]),
            "person_tags": mean[:, 0, :, None] if scalar_tags else mean[:, 0],
            "active": active[:, 0]}


@tf.autograph.experimental.do_not_convert
def refine_by_tags(heatmaps: tf.Tensor, tags: tf.Tensor, person_tags: tf.Tensor,
                   active: tf.Tensor, missing: tf.Tensor):
    """Associative Embedding's refine: fills missing keypoints from the person's mean tag.

    For person p and type k the pixel maximising ``heat_k - round(||tag_k - tag_p||)`` over the
    whole map is taken if the heat there is positive (HigherHRNet ``HeatmapParser.refine``).
    Only the missing (person, type) pairs are searched, K pairs per step of a ``tf.while_loop``
    (each step one pass over K maps), and nothing runs when no keypoint is missing.

    Args:
        heatmaps: float [B, H, W, K].
        tags: float [B, H, W, K, T].
        person_tags: float [B, P, T].
        active: bool [B, P].
        missing: bool [B, P, K], the keypoints to fill.

    Returns:
        (index int32 [B, P, K] flat pixel index, value float [B, P, K] heat there,
        filled bool [B, P, K]).
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    tags = tf.convert_to_tensor(tags, tf.float32)
    person_tags = tf.convert_to_tensor(person_tags, tf.float32)
    active = tf.convert_to_tensor(active, tf.bool)
    h, w, k_types, t = heatmaps.shape[1], heatmaps.shape[2], heatmaps.shape[3], tags.shape[-1]
    p = person_tags.shape[1]
    pairs = p * k_types  # flat (person, type) pairs, searched `k_types` at a time
    batch = _batch_size(heatmaps)
    scalar_tags = t == 1
    missing = tf.convert_to_tensor(missing, tf.bool) & active[:, :, None]
    flags = tf.reshape(tf.cast(missing, tf.int32), [batch, pairs])
    # missing pairs first (top_k keeps the lower index first among equals)
    _, order = tf.math.top_k(flags, k=pairs)
    todo = tf.reduce_sum(flags, axis=1, keepdims=True)  # [B, 1]
    steps = (tf.reduce_max(todo) + k_types - 1) // k_types
    nothing = tf.zeros([batch, pairs], tf.int32), tf.zeros([batch, pairs], tf.float32)
    lane = tf.range(k_types, dtype=tf.int32)[None, :]
    batch_ids = tf.range(batch, dtype=tf.int32)[:, None]

    def search():
        # channels first: the argmax runs along the contiguous last axis
        heat = tf.reshape(tf.transpose(heatmaps, [0, 3, 1, 2]), [batch, k_types, h * w])
        if scalar_tags:
            tag_map = tf.reshape(tf.transpose(tags[..., 0], [0, 3, 1, 2]),
                                 [batch, k_types, h * w])
            ref_tags = person_tags[..., 0]
        else:
            tag_map = tf.reshape(tf.transpose(tags, [0, 3, 1, 2, 4]), [batch, k_types, h * w, t])
            ref_tags = person_tags

        def body(i, index, value):
            pair = order[:, i * k_types:(i + 1) * k_types]  # [B, L], L = K lanes
            heat_l = tf.gather(heat, pair % k_types, batch_dims=1)  # [B, L, HW]
            tag_l = tf.gather(tag_map, pair % k_types, batch_dims=1)  # [B, L, HW(, T)]
            ref = tf.gather(ref_tags, pair // k_types, batch_dims=1)  # [B, L(, T)]
            if scalar_tags:
                dist = tf.abs(tag_l - ref[:, :, None])
            else:
                dist = tf.sqrt(tf.reduce_sum(tf.square(tag_l - ref[:, :, None, :]), axis=-1))
            best = tf.argmax(heat_l - tf.round(dist), axis=2, output_type=tf.int32)  # [B, L]
            best_value = tf.gather(heat_l, best[:, :, None], batch_dims=2)[:, :, 0]
            # back to the pair slots (each pair is visited once); lanes past the last missing
            # pair add 0 to a pair that is not missing
            live = i * k_types + lane < todo
            where = tf.stack([tf.broadcast_to(batch_ids, tf.shape(pair)), pair], axis=-1)
            index += tf.scatter_nd(where, tf.where(live, best, 0), [batch, pairs])
            value += tf.scatter_nd(where, tf.where(live, best_value, 0.0), [batch, pairs])
            return i + 1, index, value

        _, index, value = tf.while_loop(lambda i, index, value: i < steps, body,
                                        (tf.constant(0),) + nothing)
        return index, value

    index, value = tf.cond(steps > 0, search, lambda: nothing)
    index = tf.reshape(index, [batch, p, k_types])
    value = tf.reshape(value, [batch, p, k_types])
    filled = missing & (value > 0.0)
    return index, value, filled
