"""The four pretrained ``musicnn`` 0.1.0 models (ISC licence, Music Technology Group, UPF) as engine checkpoints.

``MSD_musicnn`` / ``MSD_vgg`` were trained on ~200k Million Song Dataset tracks with its 50 most frequent
last.fm tags, ``MTT_musicnn`` / ``MTT_vgg`` on MagnaTagATune (50 tags). The wheel ships them as TensorFlow 1
checkpoints (``musicnn/<name>/.index`` + ``.data-00000-of-00001``); they are read with
:mod:`engine.pretrained.tf_bundle` (no TensorFlow), every variable is mapped onto the port
(:mod:`engine.models.musicnn`, :mod:`engine.models.musicnn_vgg`; batch-norm moving statistics included), and
an ordinary checkpoint is saved: model config (``musicnn`` feature at 16 kHz, 47,616-sample window = the
187-frame patch), weights, the 50 tag names as labels, and ``extra["multi_label"] = True`` /
``extra["label_kind"] = "tags"`` (sigmoid scores per tag, not a softmax over genres), and
``extra["tag_groups"] = {"genre": [...]}`` (:data:`GENRE_TAGS`: the tags that are genres).

Where the weights come from, first match wins:

1. a ``musicnn-0.1.0-py3-none-any.whl`` file given as ``wheel=`` or in ``$GENRE_ENGINE_MUSICNN_WHEEL``
   (read straight from the zip, nothing installed);
2. the installed ``musicnn`` package: ``pip install --no-deps musicnn==0.1.0`` (``--no-deps``: its own
   requirements pin numpy < 1.17 and TensorFlow, neither of which the engine needs).

Conversion checks: every model variable of the TF checkpoint is consumed exactly once (Adam slots and
``beta1_power`` / ``beta2_power`` are optimiser state and are the only variables left out), every parameter
and batch-norm statistic of the port is written exactly once, and every shape matches.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint_format import CheckpointError, save_checkpoint
from engine.config import to_dict
from engine.models import GenreModel, ModelConfig, build_model
from engine.pretrained.cache import PretrainedError, cache_dir
from engine.pretrained.tf_bundle import BundleError, read_index, read_tensor
from kernels.augment_config import AugmentConfig
from kernels.features import FrontendConfig
from kernels.musicnn_input import MUSICNN_RATE

__all__ = [
    "NAMES",
    "INSTALL_HINT",
    "WHEEL_ENV",
    "MusicnnSource",
    "Conversion",
    "find_source",
    "model_config",
    "convert",
    "checkpoint_path",
    "ensure_checkpoint",
    "GENRE_TAGS",
    "tag_groups",
]

log = logging.getLogger(__name__)

PACKAGE_VERSION = "0.1.0"
NAMES = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
WHEEL_ENV = "GENRE_ENGINE_MUSICNN_WHEEL"
INSTALL_HINT = f"pip install --no-deps musicnn=={PACKAGE_VERSION}"
CONVERTER_VERSION = 2  # part of the cached file name: a changed conversion never reuses an old file (2: tag_groups)
SAMPLE_RATE = MUSICNN_RATE  # Hz
WINDOW_SAMPLES = 47616  # 186 hops of 256 samples: 1 + 47616 // 256 = 187 frames, the training patch
DATA_FILE = ".data-00000-of-00001"
OPTIMIZER_STATE = re.compile(r"(/Adam|/Adam_1)$|^beta[12]_power$")
"""Checkpoint variables that are Adam's state, not the model's: the only ones a conversion leaves out."""

GENRE_TAGS: dict[str, tuple[str, ...]] = {
    # MSD's 50 last.fm tags that name a genre or style (30). Left out: eras (00s, 60s, 70s, 80s, 90s, oldies),
    # moods and qualities (beautiful, Mellow, chill, sexy, catchy, sad, happy, party), voices and instruments
    # (female vocalists, male vocalists, female vocalist, guitar, acoustic, instrumental).
    "MSD": (
        "rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz", "metal",
        "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk", "blues", "hard rock",
        "ambient", "experimental", "Hip-Hop", "country", "easy listening", "funk", "electro", "heavy metal",
        "Progressive rock", "rnb", "indie pop", "House",
    ),
    # MagnaTagATune's 50 tags that name a genre or style (13; "classic" is MTT's other spelling of classical,
    # "indian" its Indian classical music). Left out: instruments (guitar, strings, synth, sitar, ...), voices
    # (vocal, female, choir, choral, no vocals, ...), tempo and loudness (slow, fast, loud, quiet, soft) and
    # the rest (beat, beats, weird, solo).
    "MTT": (
        "classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop", "classic", "new age",
        "dance", "country", "metal",
    ),
}
"""The tags of each dataset that are genres: ``--tags genre`` of ``classify`` keeps these (saved in each converted
checkpoint as ``extra["tag_groups"]["genre"]``, in label order)."""


# ---------------------------------------------------------------------------------------------------------
# the source: installed package or wheel file


@dataclass
class MusicnnSource:
    """The ``musicnn`` package's files, from its installed directory or straight from a wheel."""

    location: Path
    is_wheel: bool

    def read(self, rel: str) -> bytes:
        """Bytes of ``musicnn/<rel>`` (e.g. ``"MSD_musicnn/.index"``)."""
        try:
            if self.is_wheel:
                with zipfile.ZipFile(self.location) as zf:
                    return zf.read(f"musicnn/{rel}")
            return (self.location / rel).read_bytes()
        except (KeyError, FileNotFoundError) as err:
            raise PretrainedError(
                f"{self.location} has no musicnn/{rel}: not an intact musicnn {PACKAGE_VERSION} "
                f"{'wheel' if self.is_wheel else 'installation'} (reinstall: {INSTALL_HINT})"
            ) from err
        except (zipfile.BadZipFile, OSError) as err:
            raise PretrainedError(f"cannot read {self.location}: {err}") from err

    def __str__(self) -> str:
        return f"{'wheel' if self.is_wheel else 'package'} {self.location}"


def find_source(wheel: str | os.PathLike | None = None) -> MusicnnSource:
    """The ``musicnn`` weights: ``wheel`` / ``$GENRE_ENGINE_MUSICNN_WHEEL``, else the installed package.

    Raises :class:`PretrainedError` saying how to install it when neither is there.
    """
    wheel = wheel or os.environ.get(WHEEL_ENV) or None
    if wheel:
        path = Path(wheel).expanduser()
        if not path.is_file():
            raise PretrainedError(f"musicnn wheel {path} does not exist (given as wheel= or ${WHEEL_ENV})")
        if not zipfile.is_zipfile(path):
            raise PretrainedError(f"{path} is not a wheel (zip) file")
        return MusicnnSource(path, is_wheel=True)
    spec = importlib.util.find_spec("musicnn")  # locates the package without importing it (no TensorFlow)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(
            "the pretrained musicnn models need the musicnn package's weights, and it is not installed: "
            f"{INSTALL_HINT}  (--no-deps: its own requirements pin numpy<1.17 and TensorFlow, which the "
            f"engine does not use; or point ${WHEEL_ENV} at a downloaded musicnn-{PACKAGE_VERSION}-py3-none-any.whl)"
        )
    return MusicnnSource(Path(next(iter(spec.submodule_search_locations))), is_wheel=False)


def read_labels(source: MusicnnSource, dataset: str) -> list[str]:
    """``MSD_LABELS`` / ``MTT_LABELS`` from the package's ``configuration.py`` (parsed, not imported)."""
    tree = ast.parse(source.read("configuration.py"))
    wanted = f"{dataset}_LABELS"
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == wanted for t in node.targets):
            labels = ast.literal_eval(node.value)
            if isinstance(labels, list) and len(labels) == 50 and all(isinstance(x, str) for x in labels):
                return labels
    raise PretrainedError(f"{source}: configuration.py has no 50-entry {wanted} list")


# ---------------------------------------------------------------------------------------------------------
# model configs and the variable map


def model_config(name: str) -> ModelConfig:
    """The engine model config of pretrained ``name`` (architecture sizes of the shipped checkpoints)."""
    _check_name(name)
    features = FrontendConfig(features=["musicnn"], n_fft=512, hop_length=256, n_mels=96, top_db=None)
    arch = "musicnn" if name.endswith("_musicnn") else "musicnn_vgg"
    return ModelConfig(arch=arch, params={}, features=features, augment=AugmentConfig(enabled=False))


def tag_groups(name: str, labels: list[str]) -> dict[str, list[str]]:
    """Named subsets of pretrained ``name``'s tags, in label order: ``{"genre": [...]}`` (:data:`GENRE_TAGS`)."""
    genres = set(GENRE_TAGS[name.split("_")[0]])
    unknown = genres - set(labels)
    if unknown:
        raise PretrainedError(f"musicnn:{name}: genre tags {sorted(unknown)} are not among its labels")
    return {"genre": [t for t in labels if t in genres]}


def _check_name(name: str) -> None:
    if name not in NAMES:
        hint = " (MSD_musicnn_big is not in the wheel, only in the musicnn source repository)" if "big" in name else ""
        raise PretrainedError(
            f"unknown pretrained musicnn model {name!r}{hint}; valid: " + ", ".join(f"musicnn:{n}" for n in NAMES)
        )


def _layer_order(arch: str) -> list[tuple[str, str, str]]:
    """``(layer type, TF layer name or "" for auto, backbone module)`` in the order the original graph
    creates its layers (``musicnn/models.py``); TF names unnamed layers ``conv2d``, ``conv2d_1``, ... per type."""
    if arch == "musicnn":
        order = [("bn", "", "input_bn")]
        for block in ("timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2"):  # f74 f77 s1 s2 s3
            order += [("conv", "", f"{block}.conv"), ("bn", "", f"{block}.bn")]
        for i in range(3):
            order += [("conv", "", f"midend.{i}.conv"), ("bn", "", f"midend.{i}.bn")]
        order += [("bn", "", "pool_bn"), ("dense", "", "dense"), ("bn", "", "dense_bn"), ("dense", "", "classifier")]
        return order
    order = [("bn", "", "input_bn")]
    for i in range(5):
        order += [("conv", f"{i + 1}CNN", f"convs.{i}"), ("bn", "", f"bns.{i}")]
    return order + [("dense", "", "classifier")]


_TF_DEFAULT = {"conv": "conv2d", "bn": "batch_normalization", "dense": "dense"}
_SUFFIXES = {
    "conv": (("kernel", "weight"), ("bias", "bias")),
    "dense": (("kernel", "weight"), ("bias", "bias")),
    "bn": (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")),
}


def variable_map(arch: str) -> list[tuple[str, str]]:
    """``[(TF variable, engine state-dict key)]`` for ``arch`` (``musicnn`` / ``musicnn_vgg``)."""
    counts: dict[str, int] = {}
    pairs = []
    for kind, tf_name, module in _layer_order(arch):
        if not tf_name:
            base = _TF_DEFAULT[kind]
            n = counts.get(base, 0)
            counts[base] = n + 1
            tf_name = base if n == 0 else f"{base}_{n}"
        for tf_suffix, pt_suffix in _SUFFIXES[kind]:
            pairs.append((f"{tf_name}/{tf_suffix}", f"backbone.{module}.{pt_suffix}"))
    return pairs


def _to_torch(tf_name: str, value: np.ndarray, target: torch.Tensor) -> torch.Tensor:
    """TF layout -> PyTorch layout: conv kernels HWIO -> OIHW (the mid-end's [7, C, 1, O] -> Conv1d [O, C, 7]),
    dense kernels [in, out] -> [out, in]; vectors as they are."""
    if tf_name.endswith("/kernel"):
        if value.ndim == 4 and target.dim() == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 4 and target.dim() == 3:
            if value.shape[2] != 1:
                raise CheckpointError(f"{tf_name}: expected a [k, C, 1, O] mid-end kernel, got {value.shape}")
            value = value[:, :, 0, :].transpose(2, 1, 0)
        elif value.ndim == 2:
            value = value.T
    out = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if tuple(out.shape) != tuple(target.shape):
        raise CheckpointError(
            f"{tf_name}: checkpoint shape {tuple(value.shape)} does not fit {tuple(target.shape)} of the port"
        )
    return out


@dataclass
class Conversion:
    """A converted model and the bookkeeping that proves the mapping complete."""

    name: str
    model: GenreModel
    labels: list[str]
    source: str
    consumed: dict[str, int] = field(default_factory=dict)  # TF variable -> times read into the port (all 1)
    optimizer_state: list[str] = field(default_factory=list)  # TF variables left out (Adam's)
    untouched: list[str] = field(default_factory=list)  # port state entries not in TF (num_batches_tracked)


def convert(name: str, wheel: str | os.PathLike | None = None) -> Conversion:
    """Read pretrained ``name`` from the musicnn package (or wheel) into a fresh engine model (eval mode).

    Raises :class:`CheckpointError` if any variable is unmapped, mapped twice, missing or misshapen.
    """
    _check_name(name)
    source = find_source(wheel)
    labels = read_labels(source, name.split("_")[0])
    cfg = model_config(name)
    model = build_model(cfg, len(labels), SAMPLE_RATE, WINDOW_SAMPLES)
    try:
        index = read_index(source.read(f"{name}/.index"))
        data = source.read(f"{name}/{DATA_FILE}")
    except BundleError as err:
        raise CheckpointError(f"{source}: musicnn/{name} is not a readable TensorFlow checkpoint: {err}") from err
    optimizer = sorted(v for v in index if OPTIMIZER_STATE.search(v))
    model_vars = {v for v in index if not OPTIMIZER_STATE.search(v)}
    pairs = variable_map(cfg.arch)
    state = model.state_dict()
    consumed: dict[str, int] = {}
    written: dict[str, int] = {}
    missing = [tf for tf, _ in pairs if tf not in model_vars]
    unmapped = sorted(model_vars - {tf for tf, _ in pairs})
    if missing or unmapped:
        raise CheckpointError(
            f"musicnn/{name}: the variable map does not fit the checkpoint: missing {missing[:6]}, "
            f"unmapped {unmapped[:6]}"
        )
    new_state = {}
    for tf_name, key in pairs:
        if key not in state:
            raise CheckpointError(f"musicnn/{name}: {tf_name} maps to {key}, which the port does not have")
        try:
            value = read_tensor(index[tf_name], data)
        except BundleError as err:
            raise CheckpointError(f"{source}: musicnn/{name}: {err}") from err
        new_state[key] = _to_torch(tf_name, value, state[key])
        consumed[tf_name] = consumed.get(tf_name, 0) + 1
        written[key] = written.get(key, 0) + 1
    twice = [k for k, n in {**consumed, **written}.items() if n != 1]
    untouched = sorted(set(state) - set(written))
    unloaded = [k for k in untouched if not k.endswith("num_batches_tracked")]
    if twice or unloaded:
        raise CheckpointError(f"musicnn/{name}: used more than once {twice[:6]}; left unloaded {unloaded[:6]}")
    model.load_state_dict(new_state, strict=False)
    model.eval()
    return Conversion(name, model, labels, str(source), consumed, optimizer, untouched)


# ---------------------------------------------------------------------------------------------------------
# the cache


def checkpoint_path(name: str) -> Path:
    """Cache file of converted ``name`` (see :func:`engine.pretrained.cache.cache_dir`)."""
    _check_name(name)
    return cache_dir() / f"musicnn-{name}-v{CONVERTER_VERSION}.pt"


def ensure_checkpoint(name: str, wheel: str | os.PathLike | None = None) -> Path:
    """Path of the engine checkpoint of ``musicnn:<name>``, converting and caching it on first use.

    Concurrent first uses (several classify workers, DDP ranks) are safe: each conversion is written to a
    temporary file and renamed into place, and all produce the same file.
    """
    path = checkpoint_path(name)
    if path.is_file():
        return path
    conv = convert(name, wheel)
    cfg = conv.model.cfg
    default = getattr(conv.model.backbone, "DEFAULT_EMBEDDING", None)
    save_checkpoint(
        path,
        model=conv.model,
        config={"model": to_dict(cfg)},
        labels=conv.labels,
        sample_rate=SAMPLE_RATE,
        segment_samples=WINDOW_SAMPLES,
        epoch=0,
        metrics={},
        extra={
            "multi_label": True,
            "label_kind": "tags",
            "tag_groups": tag_groups(name, conv.labels),
            "pretrained": {
                "spec": f"musicnn:{name}",
                "package": f"musicnn {PACKAGE_VERSION}",
                "licence": "ISC (Music Technology Group, Universitat Pompeu Fabra)",
                "dataset": "Million Song Dataset (last.fm tags)" if name.startswith("MSD") else "MagnaTagATune",
                "source": conv.source,
                "converter_version": CONVERTER_VERSION,
                "variables": len(conv.consumed),
                "default_embedding": default,
            },
        },
    )
    log.info("converted musicnn:%s from %s -> %s (%d variables)", name, conv.source, path, len(conv.consumed))
    return path
