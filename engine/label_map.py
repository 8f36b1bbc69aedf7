"""Label names of one label set matched to another's: a shard set's classes or tags to a model's (``evaluate
--label-map``, cross-dataset evaluation) and a training set's to a pretrained checkpoint's (``run.init_label_map``,
whose matched tags start from the pretrained output rows). A map file is YAML or JSON ``{label: other label |
null}``; without an entry, names equal up to case and punctuation (``hiphop`` / ``Hip-Hop``) match."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["load_label_map", "normalised_label", "resolve_label_map"]


def normalised_label(name: str) -> str:
    """Label name up to case and punctuation: ``Hip-Hop`` -> ``hiphop``."""
    return re.sub(r"[^0-9a-z]+", "", name.casefold())


def load_label_map(path: str | Path) -> dict[str, str | None]:
    """Read a YAML or JSON mapping ``{shard label: model label or null}`` (UTF-8 text: other bytes raise
    :class:`shards.outputs.InputError` naming the line and offset)."""
    import yaml

    from shards.outputs import decode_utf8

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} does not exist")
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), path))  # JSON is YAML
    except yaml.YAMLError as err:
        raise ValueError(f"label map {path} is neither YAML nor JSON: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"label map {path} must be a mapping of shard label name -> model label name")
    for k, v in data.items():
        if v is not None and not isinstance(v, str):
            raise ValueError(f"label map {path}: {k!r} maps to {v!r}, expected a label name or null")
    return data


def resolve_label_map(
    shard_labels: list[str], model_labels: list[str], label_map: dict[str, str | None] | None = None
) -> tuple[list[int], dict[str, str]]:
    """Map each shard class to a model class.

    Order of rules per shard label: the explicit ``label_map`` entry (``None`` = not evaluated), else the
    identical model label, else the unique model label equal up to case and punctuation.

    Returns:
        ``(index, mapping)``: ``index[i]`` is the model class of shard class ``i`` (-1 = unmapped);
        ``mapping`` is ``{shard label: model label}`` of the mapped classes.
    Raises:
        ValueError: a map entry names a model label that does not exist, or a shard label that does not
        exist (a typo would otherwise silently drop a class).
    """
    label_map = dict(label_map or {})
    unknown_src = sorted(set(label_map) - set(shard_labels))
    if unknown_src:
        raise ValueError(
            f"label map names shard label(s) {unknown_src} that the shard set does not have "
            f"(shard labels: {shard_labels})"
        )
    bad_dst = sorted({v for v in label_map.values() if v is not None and v not in model_labels})
    if bad_dst:
        raise ValueError(f"label map targets {bad_dst} are not model labels (model labels: {model_labels})")
    by_norm: dict[str, list[str]] = {}
    for name in model_labels:
        by_norm.setdefault(normalised_label(name), []).append(name)
    index, mapping = [], {}
    for name in shard_labels:
        if name in label_map:
            target = label_map[name]
        elif name in model_labels:
            target = name
        else:
            candidates = by_norm.get(normalised_label(name), [])
            target = candidates[0] if len(candidates) == 1 else None
        index.append(model_labels.index(target) if target is not None else -1)
        if target is not None:
            mapping[name] = target
    return index, mapping
