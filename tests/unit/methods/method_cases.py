"""Shared by the per-method config-check tests."""

import copy


def raw_config(base: dict, **changes) -> dict:
    """A copy of the raw config `base` with `section__key=value` (or `section=value`) changes."""
    raw = copy.deepcopy(base)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[section] = value
    return raw
