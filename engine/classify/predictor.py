"""The model side of ``classify``: load a model file of any kind, then ``int16 windows -> probabilities``.

Kinds (:func:`model_file_kind`):

- ``checkpoint``: a ``.pt`` from training (``engine.checkpoint``), run eagerly under autocast;
- ``torchscript``: ``python -m engine export --format torchscript`` (metadata in ``genre_meta.json``);
- ``export``: ``--format export``, a ``torch.export`` program ``.pt2`` (metadata in its extra files);
- ``onnx``: ``--format onnx``, run by onnxruntime (metadata in ``metadata_props["genre_meta"]``).

Exported files take float waveforms in [-1, 1] and return probabilities, in float32.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.distributed import autocast_dtype, precision_name
from engine.models.inputs import check_data_fits_model, input_kind
from engine.pretrained import resolve_checkpoint
from engine.scoring import forward
from shards.format import PCM_SCALE

logger = logging.getLogger(__name__)

TS_META_FILE = "genre_meta.json"  # extra file inside exported TorchScript archives (engine/export.py)
PT2_META_FILE = "genre_meta.json"  # extra file inside exported torch.export archives (engine/export.py)
ONNX_META_KEY = "genre_meta"  # metadata_props key of exported ONNX files (engine/export.py)
MODEL_KINDS = ("checkpoint", "torchscript", "export", "onnx")
#: a tag model's cut on the mean sigmoid score when it stores none of its own (the pretrained musicnn models)
DEFAULT_TAG_THRESHOLD = 0.5


class CheckpointInputError(ValueError):
    """A model file that cannot classify audio (e.g. trained on precomputed MSD features)."""


def _check_reads_audio(path: str, config: Any) -> None:
    """:class:`CheckpointInputError` when a checkpoint's config (``config["model"]["features"]``, the
    ModelConfig contract) describes a feature-input (MSD) model: it cannot read audio files."""

    def error(model_kind: str, data_kind: str) -> CheckpointInputError:
        return CheckpointInputError(_msd_message(path, 'model.features.features == ["precomputed"]'))

    check_data_fits_model(input_kind(config), "audio", error)


def _msd_message(path: str, reason: str) -> str:
    return (
        f"{path} was trained on precomputed Million Song Dataset features ({reason}); it cannot classify "
        "audio files: MSD-trained models need MSD features, not audio. Use `python -m engine evaluate` "
        "on MSD feature shards, or classify audio with a model trained on waveform shards."
    )


def check_input_kind(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointInputError` for a checkpoint trained on precomputed (MSD) features.

    Reads the checkpoint lazily (``mmap``); unreadable files pass here and fail in ``load_model`` with its
    own specific error.
    """
    try:
        ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint at all: load_model says why
        return
    if isinstance(ckpt, dict):
        _check_reads_audio(os.fspath(path), ckpt.get("config"))


def zip_names(path: str | os.PathLike) -> list[str] | None:
    """The member names of the zip archive ``path`` (TorchScript, ``.pt2``, ``torch.save``); None for a file
    that is not a zip (or cannot be read)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """TorchScript archives hold ``<root>/code/`` and ``<root>/constants.pkl``; ``torch.save`` files do not."""
    names = zip_names(path) or []
    return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in names)


def model_file_kind(path: str | os.PathLike) -> str:
    """One of :data:`MODEL_KINDS`, from the file's contents.

    ``torch.export`` archives hold ``<root>/archive_format`` (``pt2``); TorchScript ones ``<root>/code/``;
    an ONNX file is not a zip and is named ``.onnx`` or starts like an ONNX protobuf (field 1,
    ``ir_version``: byte 0x08; a legacy ``torch.save`` pickle starts with 0x80). Anything else is treated
    as a checkpoint, whose loader says what is wrong with it.
    """
    names = zip_names(path)
    if names is None:
        try:
            with open(path, "rb") as fh:
                first = fh.read(1)
        except OSError:
            first = b""
        return "onnx" if os.fspath(path).lower().endswith(".onnx") or first == b"\x08" else "checkpoint"
    if is_torchscript_file(path):
        return "torchscript"
    if any(n.split("/", 1)[-1] == "archive_format" for n in names):
        return "export"
    return "checkpoint"


# ------------------------------------------------------------------------------------------- loaders
# each: (path, device, channels_last) -> (callable on a device tensor, metadata dict with labels, ...)
Loaded = tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]


def _load_checkpoint(path: str, device: torch.device, channels_last: bool) -> Loaded:
    check_input_kind(path)
    from engine.checkpoint import load_model  # noqa: PLC0415 -- keeps `--help` and discovery light

    model, meta = load_model(path, device)
    model.eval()
    backbone = getattr(model, "backbone", None)
    if channels_last and isinstance(backbone, torch.nn.Module):
        # NHWC conv weights make the convs run NHWC (2x faster on CPU measured for the seed CNN, same
        # numbers to 1e-7); tensors that are not 4-D are left alone, so RNN backbones are unaffected
        backbone.to(memory_format=torch.channels_last)
    return model, meta


def _load_torchscript(path: str, device: torch.device, channels_last: bool) -> Loaded:
    extra = {TS_META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still loads
        model = torch.jit.load(path, map_location=device, _extra_files=extra)
    return model, _exported_meta(path, extra[TS_META_FILE], "TorchScript")


def _load_export(path: str, device: torch.device, channels_last: bool) -> Loaded:
    extra = {PT2_META_FILE: ""}
    with warnings.catch_warnings():
        # a buffer that views a larger storage (the STFT window: the periodic Hann is n_fft samples of an
        # n_fft + 1 one) is saved as that view; torch warns it "may cause issues" off the CPU only
        warnings.filterwarnings("ignore", message="No complete tensor found")
        program = torch.export.load(path, extra_files=extra)
    meta = _exported_meta(path, extra[PT2_META_FILE], "torch.export")
    if device.type != "cpu":  # the program was exported on the CPU; constants created in it move too
        from torch.export.passes import move_to_device_pass  # noqa: PLC0415

        program = move_to_device_pass(program, device)
    return program.module(), meta


class _OnnxModel:
    """An onnxruntime session as ``float32 wave [B, T] -> probabilities [B, K]`` on torch tensors."""

    def __init__(self, path: str, device: torch.device) -> None:
        try:
            import onnxruntime as ort  # noqa: PLC0415 -- optional dependency
        except ImportError:
            raise CheckpointInputError(
                f"{path} is an ONNX model; classifying with it needs onnxruntime (pip install 'genre-engine[onnx]')"
            ) from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise CheckpointInputError(f"{path}: onnxruntime cannot load it ({err})") from None
        self.input = self.session.get_inputs()[0].name
        self.meta = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY, "")

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        (probs,) = self.session.run(None, {self.input: wave.cpu().numpy()})
        return torch.from_numpy(probs)


def _load_onnx(path: str, device: torch.device, channels_last: bool) -> Loaded:
    model = _OnnxModel(path, device)
    return model, _exported_meta(path, model.meta, "ONNX")


def _exported_meta(path: str, text: str, what: str) -> dict[str, Any]:
    """The ``genre_meta`` JSON of an exported file; the window length is the one it was exported at."""
    if not text:
        raise CheckpointInputError(
            f"{path} is a {what} file without genre-engine metadata; export it with `python -m engine export`"
        )
    meta = json.loads(text)
    _check_reads_audio(path, meta.get("config"))
    return meta


_LOADERS: dict[str, Callable[[str, torch.device, bool], Loaded]] = {
    "checkpoint": _load_checkpoint,
    "torchscript": _load_torchscript,
    "export": _load_export,
    "onnx": _load_onnx,
}


class Predictor:
    """``int16 windows [B, T]`` -> ``float32 probabilities [B, K]`` on the host, from a model file of any
    kind (:func:`model_file_kind`) or a pretrained name (``musicnn:MSD_musicnn``, resolved to its converted
    checkpoint by :func:`engine.pretrained.resolve_checkpoint`; ``path`` is then that file, ``spec`` the name).
    ``labels``, ``sample_rate`` (Hz) and ``segment_samples`` (the window length T: the training segment for a
    checkpoint, the exported input length for an exported file) come from the file.

    A genre model gives a softmax over its genres. A multi-label tag model (checkpoint ``extra["multi_label"]``,
    the pretrained musicnn models: :attr:`label_kind` ``"tags"``) gives each tag's own sigmoid score;
    ``tags="genre"`` then keeps only the tags of that group (``extra["tag_groups"]``), which for independent
    sigmoid scores is exact (nothing is renormalised). A tag model's :attr:`thresholds` (float64 ``[K]``, in
    :attr:`labels` order) say which tags a track has: ``threshold`` for every tag when given (``--threshold``),
    else the per-tag cuts a multi-label run chose on its validation split (``extra["thresholds"]``), else
    :data:`DEFAULT_TAG_THRESHOLD` (the pretrained musicnn models carry none); None for a genre model.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: torch.device | str,
        precision: str = "auto",
        channels_last: bool = True,
        tags: str | None = None,
        threshold: float | None = None,
    ) -> None:
        self.spec = str(path)
        self.path = str(resolve_checkpoint(path))  # musicnn:MSD_musicnn -> its converted checkpoint file
        self.device = torch.device(device)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"checkpoint {self.path} does not exist")
        self.kind = model_file_kind(self.path)
        self.model, meta = _LOADERS[self.kind](self.path, self.device, channels_last)
        try:
            self.labels = [str(x) for x in meta["labels"]]
            self.sample_rate = int(meta["sample_rate"])
            self.segment_samples = int(meta.get("window_samples") or meta["segment_samples"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointInputError(
                f"{self.path}: missing labels/sample_rate/segment_samples ({err})"
            ) from None
        extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
        # a multi-label tag model (musicnn:*): independent sigmoid scores per tag, not a softmax over genres
        self.multi_label = bool(extra.get("multi_label"))
        self.label_kind = "tags" if self.multi_label else "genres"
        self.tags = tags
        self.columns: list[int] | None = None  # output columns kept by --tags, in label order
        self.threshold = threshold
        self.thresholds = self._tag_thresholds(threshold, extra.get("thresholds"))
        if tags is not None:
            self.columns = self._tag_columns(tags, extra.get("tag_groups"))
            self.labels = [self.labels[i] for i in self.columns]
            self.thresholds = None if self.thresholds is None else self.thresholds[self.columns]
        self.dtype = autocast_dtype(precision, self.device)
        if self.exported and self.dtype is not None:
            logger.info("%s model: running in float32 (autocast does not apply to exported graphs)", self.kind)
            self.dtype = None

    @property
    def exported(self) -> bool:
        """An exported graph (float wave in, probabilities out) rather than a training checkpoint."""
        return self.kind != "checkpoint"

    @property
    def torchscript(self) -> bool:
        return self.kind == "torchscript"

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        """``windows`` int16 ``(B, segment_samples)`` (pinned when on CUDA) -> probabilities ``(B, K)``."""
        if self.exported:  # exported graphs take float [-1, 1], give probabilities
            probs = self.model(windows.to(self.device, non_blocking=True).float() / PCM_SCALE)
        else:
            logits = forward(self.model, windows, self.device, self.dtype)  # (B, K) float32
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        if self.columns is not None:
            probs = probs[:, self.columns]
        return probs.float().cpu().numpy()

    def _tag_thresholds(self, threshold: float | None, stored: Any) -> np.ndarray | None:
        """Each tag's cut (``[K]`` float64 in label order; see the class doc); None for a genre model."""
        if not self.multi_label:
            if threshold is not None:
                raise CheckpointInputError(
                    f"--threshold {threshold}: {self.spec} is a genre classifier (a softmax over "
                    f"{len(self.labels)} genres: one genre per file), not a multi-label tag model"
                )
            return None
        if threshold is not None:
            return np.full(len(self.labels), float(threshold))
        if stored is None:
            return np.full(len(self.labels), DEFAULT_TAG_THRESHOLD)
        cuts = np.asarray(stored, dtype=np.float64)
        if cuts.shape != (len(self.labels),) or not np.all((cuts >= 0) & (cuts <= 1)):
            raise CheckpointInputError(
                f"{self.path}: extra['thresholds'] holds {cuts.size} values, expected one in [0, 1] for each of "
                f"its {len(self.labels)} tags"
            )
        return cuts

    def _tag_columns(self, group: str, groups: Any) -> list[int]:
        """Indices of the labels in tag group ``group`` (``--tags``); clear errors for other models."""
        if not self.multi_label:
            raise CheckpointInputError(
                f"--tags {group}: {self.spec} is a genre classifier (a softmax over {len(self.labels)} genres), "
                "not a multi-label tag model; --tags applies to tag models such as musicnn:MSD_musicnn"
            )
        groups = groups if isinstance(groups, dict) else {}
        if group not in groups:
            raise CheckpointInputError(
                f"--tags {group}: {self.spec} has no tag group {group!r} "
                f"(it has: {', '.join(sorted(groups)) or 'none'})"
            )
        wanted = set(groups[group])
        return [i for i, label in enumerate(self.labels) if label in wanted]
