"""Export a checkpoint as a self-contained model: ``python -m engine export CHECKPOINT --format export|onnx|torchscript --out FILE``.

The exported graph is the whole inference path -- float32 waveform ``[B, T]`` in [-1, 1] at the model's
sample rate -> feature front end -> backbone -> softmax probabilities ``[B, K]`` -- with the augmentations
removed and the model in eval mode, so a deployment needs neither this package nor librosa/nnAudio.
The batch size B is dynamic; T is the length the graph was exported at (``window_samples``).

Formats:

- ``export``: a ``torch.export`` program (``.pt2``), PyTorch's current format: ``torch.export.load(f)
  .module()(wave)`` with plain PyTorch;
- ``onnx``: the ``torch.export``-based ONNX exporter (``dynamo=True``, opset 18, ``torch.stft`` as ONNX
  ``STFT``; needs ``onnxscript``); if it fails, the legacy TorchScript-based exporter (opset 17) on the
  same model with its STFT computed as a real-valued convolution (the legacy exporter rejects complex
  tensors);
- ``torchscript``: ``torch.jit.trace`` + freeze. PyTorch deprecates ``torch.jit``; kept while it loads.

Metadata travels with the file (labels, sample_rate, segment_samples, window_samples, config): an extra
file ``genre_meta.json`` in TorchScript and ``.pt2`` archives, ``metadata_props["genre_meta"]`` in ONNX.
``python -m engine classify`` reads it, so it accepts every exported file like a checkpoint.

Every export is verified in the command itself: the exported model and the eager model are run on the same
random waveforms and the largest absolute probability difference must stay under ``tolerance`` (1e-4).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine.classify.predictor import (
    ONNX_META_KEY,
    PT2_META_FILE,
    TS_META_FILE,
    CheckpointInputError,
    check_input_kind,
    zip_names,
)
from engine.cli_help import HelpFormatter, float_at_least, int_at_least
from engine.logs import setup_logging
from shards.outputs import EXIT_USER_ERROR, PathProblem, cli_errors, prepare_output_file

logger = logging.getLogger(__name__)

PROG = "python -m engine export"

DEFAULT_TOLERANCE = 1e-4  # max |p_exported - p_eager| over every probability of the check batch
FORMATS = ("export", "onnx", "torchscript")
ONNX_OPSET = 18  # the torch.export-based exporter's lowest opset (asking for 17 fails converting Pad)
ONNX_LEGACY_OPSET = 17  # STFT is an ONNX op from opset 17
_ONNX_LOG_LEVELS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}


class ProbabilityModel(nn.Module):
    """Eval-mode :class:`~engine.models.GenreModel` without augmentation, returning probabilities.

    ``forward(wave float32 [B, T] in [-1, 1]) -> float32 [B, K]``: a softmax over the K genres, or for a
    multi-label tag model (checkpoint ``extra["multi_label"]``, the pretrained musicnn models) each tag's own
    sigmoid, as ``classify`` scores the checkpoint itself.
    """

    def __init__(self, model: nn.Module, multi_label: bool = False) -> None:
        super().__init__()
        strip = getattr(model, "strip_augmentation", None)
        if callable(strip):
            model = strip()
        self.model = model.eval()
        self.multi_label = multi_label

    def forward(self, wave: Tensor) -> Tensor:
        logits = self.model(wave).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


class ExportError(RuntimeError):
    """The exporter failed, or the exported model does not match the eager one."""


def _meta(ckpt: dict[str, Any], window_samples: int) -> dict[str, Any]:
    return {
        "format": "genre-engine-export",
        "labels": list(ckpt["labels"]),
        "sample_rate": int(ckpt["sample_rate"]),
        "segment_samples": int(ckpt["segment_samples"]),
        "window_samples": int(window_samples),
        "arch": ckpt.get("arch"),
        "config": ckpt.get("config"),
        "extra": ckpt.get("extra") or {},  # multi_label / label_kind / tag_groups of tag models
        "input": "wave float32 [B, T] in [-1, 1] at sample_rate Hz",
        "output": "per-tag sigmoid scores float32 [B, K] in label order"
        if _multi_label(ckpt)
        else "probabilities float32 [B, K] in label order",
    }


def _multi_label(ckpt: dict[str, Any]) -> bool:
    extra = ckpt.get("extra")
    return isinstance(extra, dict) and bool(extra.get("multi_label"))


def _check_inputs(batch: int, window_samples: int, seed: int = 0) -> Tensor:
    """Random test waveforms ``[batch, window_samples]``: noise at varied loudness plus one silent row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, window_samples, generator=g) * torch.logspace(-3, -0.5, batch).unsqueeze(1)
    x[-1] = 0.0  # silence must export too (log of zero power)
    return x.clamp(-1.0, 1.0)


def _export_torchscript(wrapper: ProbabilityModel, example: Tensor, out: Path, meta: dict[str, Any]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-derived Python ints are fine here
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still the portable format
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        torch.jit.save(traced, str(out), _extra_files={TS_META_FILE: json.dumps(meta)})


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    """``dynamic_shapes`` of the wrapper's input: any batch size, the window length as traced."""
    return {"wave": {0: torch.export.Dim("batch", min=1)}}


def _export_program(wrapper: ProbabilityModel, example: Tensor, out: Path, meta: dict[str, Any]) -> None:
    """``torch.export`` program of the whole inference path, saved as a ``.pt2`` archive with the metadata."""
    with torch.no_grad():
        try:
            program = torch.export.export(wrapper, (example,), dynamic_shapes=_dynamic_batch())
        except Exception as err:  # torch.export raises many types (guards on data, unsupported ops, ...)
            raise ExportError(f"torch.export cannot trace this model: {type(err).__name__}: {_first_lines(err)}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found")  # see classify.predictor
        torch.export.save(program, str(out), extra_files={PT2_META_FILE: json.dumps(meta)})


@contextlib.contextmanager
def _quiet(levels: dict[str, int]) -> Iterator[None]:
    """Raise these loggers' levels for a while (the ONNX graph passes log each step at INFO, the op
    registry warns about every torchvision op it cannot register when torchvision is not installed)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in levels]
    for log, _ in saved:
        log.setLevel(levels[log.name])
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def _first_lines(err: BaseException, n: int = 3) -> str:
    return " | ".join(line for line in str(err).splitlines()[:n] if line.strip())


def _export_onnx(
    wrapper: ProbabilityModel, model: nn.Module, ckpt: dict[str, Any], example: Tensor, out: Path,
    meta: dict[str, Any],
) -> str:  # fmt: skip
    """The ``torch.export``-based exporter on ``wrapper`` first (``torch.stft`` as is); only if it fails the
    legacy one on ``model`` with a conv STFT (:func:`_onnx_friendly`). Returns which exporter wrote ``out``."""
    errors = []
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet(_ONNX_LOG_LEVELS):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (example,), str(out), dynamo=True, opset_version=ONNX_OPSET, input_names=["wave"],
                output_names=["probs"], dynamic_shapes=_dynamic_batch(), external_data=False, verbose=False,
            )  # fmt: skip
        exporter = f"torch.onnx dynamo (torch.export), opset {ONNX_OPSET}"
    except Exception as err:  # onnxscript missing, an op without a translation, a torch.export failure, ...
        errors.append(f"dynamo: {type(err).__name__}: {_first_lines(err)}")
        logger.warning("the torch.export-based ONNX exporter failed (%s); trying the legacy one", errors[-1])
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                legacy = ProbabilityModel(_onnx_friendly(model, ckpt), multi_label=wrapper.multi_label).eval()
                torch.onnx.export(
                    legacy, (example,), str(out), dynamo=False, opset_version=ONNX_LEGACY_OPSET,
                    input_names=["wave"], output_names=["probs"],
                    dynamic_axes={"wave": {0: "batch"}, "probs": {0: "batch"}},
                )  # fmt: skip
            exporter = f"torch.onnx legacy (TorchScript), opset {ONNX_LEGACY_OPSET}, conv STFT"
        except Exception as err2:
            errors.append(f"legacy: {type(err2).__name__}: {_first_lines(err2)}")
            raise ExportError("ONNX export failed with both exporters:\n" + "\n".join(errors)) from None
    try:
        import onnx  # noqa: PLC0415 -- optional dependency

        proto = onnx.load(str(out))
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, json.dumps(meta)
        onnx.save(proto, str(out))
    except ImportError:
        logger.warning("onnx is not installed: %s carries no label metadata", out)
    return exporter


def _onnx_friendly(model: nn.Module, ckpt: dict[str, Any]) -> nn.Module:
    """The same model with its STFT computed by nnAudio's real-valued conv STFT instead of ``torch.stft``.

    For the legacy ONNX exporter, which rejects complex tensors (``torch.stft(return_complex=True)``:
    "STFT does not currently support complex types"); the conv STFT computes the same power spectrum
    (kernels/features.py) with plain Conv1d ops every ONNX runtime supports. Weights are copied from ``model``; the conv kernels are
    derived buffers. The verification still compares against the original (torch.stft) eager model.
    """
    import dataclasses  # noqa: PLC0415

    from engine.checkpoint import model_config_from  # noqa: PLC0415
    from engine.models import build_model  # noqa: PLC0415

    cfg = model_config_from(ckpt)
    if getattr(cfg.features, "backend", "nnaudio") == "nnaudio":
        return model
    cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, backend="nnaudio"))
    twin = build_model(cfg, len(ckpt["labels"]), ckpt["sample_rate"], ckpt["segment_samples"])
    res = twin.load_state_dict(model.state_dict(), strict=False)
    bad = [k for k in [*res.missing_keys, *res.unexpected_keys] if ".stft." not in k]
    if bad:
        raise ExportError(
            f"cannot switch the STFT to the ONNX-friendly conv backend: mismatched weights {bad[:5]}"
        )
    return twin.eval()


def _run_exported(fmt: str, path: Path, x: Tensor) -> Tensor | None:
    """The saved file, loaded back as a deployment would, run on ``x``; None if onnxruntime is missing."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return model(x)
    if fmt == "export":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No complete tensor found")  # see classify.predictor
            program = torch.export.load(str(path))
        with torch.no_grad():
            return program.module()(x)
    try:
        import onnxruntime as ort  # noqa: PLC0415 -- optional dependency
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def is_exported_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model file this command wrote: a TorchScript or ``.pt2`` archive holding
    ``genre_meta.json``, or an ONNX file carrying the ``genre_meta`` metadata key."""
    names = zip_names(path)
    if names is not None:
        return any(n.rsplit("/", 1)[-1] in (TS_META_FILE, PT2_META_FILE) for n in names)
    key, tail = ONNX_META_KEY.encode(), b""
    try:
        with open(path, "rb") as fh:  # the key is a protobuf string: its bytes appear as they are
            while chunk := fh.read(1 << 20):
                if key in tail + chunk:
                    return True
                tail = chunk[-len(key) :]
    except OSError:
        return False
    return False


def check_export_out(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse, before any work, an ``out`` export may not write (:class:`shards.outputs.OutputError`): a
    folder, a read-only file or folder, a file in the way of a missing parent, or an existing file that
    this command did not write (:func:`is_exported_model`) unless ``overwrite``. A missing parent folder is
    created when the export is written."""
    return prepare_output_file(
        out, replace=lambda p: overwrite or is_exported_model(p),
        replace_hint="it is not a model written by export: pass --overwrite to replace it, or choose another --out",
    )  # fmt: skip


def export_model(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    window_samples: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    check_batch: int = 4,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` as ``fmt`` (``"export"``, ``"onnx"`` or ``"torchscript"``) and verify it.

    Args:
        window_samples: input length T the graph is traced at (default: the checkpoint's evaluation window
            ``window_samples``, else its training crop ``segment_samples``); the exported graph is verified at that length, other lengths may work
            but are not checked.
        tolerance: the largest allowed ``|p_exported - p_eager|`` on the check batch.
        check_batch: waveforms in the verification batch (a different batch size than the trace's 2, so a
            batch dimension baked in by mistake fails here).

    Returns ``{"format", "out", "bytes", "max_abs_diff", "tolerance", "verified", "exporter", "labels",
    "sample_rate", "segment_samples", "window_samples", "seconds"}``; ``verified`` is False only when
    onnxruntime is missing. Raises :class:`ExportError` when the check fails (nothing is written: the
    export goes to a temporary file that replaces ``out`` only once verified). An existing ``out`` is
    replaced only when it is an exported model (:func:`is_exported_model`) or with ``overwrite``; other
    refusals of ``out`` (:func:`check_export_out`) come before the checkpoint is loaded.
    """
    from engine.checkpoint import load_model  # noqa: PLC0415

    t0 = time.perf_counter()
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "export" and Path(out).suffix != ".pt2":
        raise ValueError(f"--out {out}: torch.export archives are .pt2 files (torch.export.load expects the name)")
    if window_samples is not None and window_samples < 1:
        raise ValueError(f"window_samples must be >= 1, got {window_samples}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    check_export_out(out, overwrite=overwrite)
    check_input_kind(checkpoint)
    model, ckpt = load_model(checkpoint, "cpu")
    # default: the evaluation window the checkpoint was validated at (``window_samples``), else the crop
    default_window = ckpt.get("window_samples") or ckpt["segment_samples"]
    window = int(default_window if window_samples is None else window_samples)
    if window < 1:
        raise ValueError(f"window_samples must be >= 1, got {window}")
    wrapper = ProbabilityModel(model, multi_label=_multi_label(ckpt)).eval()
    meta = _meta(ckpt, window)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _check_inputs(2, window, seed=1)
    # write to a temporary name; only a verified export replaces ``out`` (torch.export wants a .pt2 name)
    suffix = ".tmp.pt2" if fmt == "export" else ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "torchscript":
            _export_torchscript(wrapper, example, tmp, meta)
            exporter = "torch.jit.trace"
        elif fmt == "export":
            _export_program(wrapper, example, tmp, meta)
            exporter = "torch.export"
        else:
            exporter = _export_onnx(wrapper, model, ckpt, example, tmp, meta)
        x = _check_inputs(check_batch, window, seed=2)
        with torch.no_grad():
            eager = wrapper(x)
        got = _run_exported(fmt, tmp, x)
        diff = None if got is None else float((got.float() - eager).abs().max())
        if diff is not None and not diff <= tolerance:
            raise ExportError(
                f"exported {fmt} model differs from the eager model: max |dp| = {diff:.3g} > {tolerance:g}"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if diff is None:
        logger.warning("onnxruntime is not installed: %s was not verified", out)
    return {
        "format": fmt,
        "out": str(out),
        "bytes": out.stat().st_size,
        "exporter": exporter,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "verified": diff is not None,
        "labels": meta["labels"],
        "sample_rate": meta["sample_rate"],
        "segment_samples": meta["segment_samples"],
        "window_samples": window,
        "seconds": time.perf_counter() - t0,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Export a checkpoint as a self-contained waveform-in, probabilities-out model (feature front end "
            "inside, augmentation removed) and verify it against the eager model."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint .pt written by training")
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        required=True,
        help="export: torch.export program (.pt2, torch.export.load); onnx: ONNX (onnxruntime); "
        "torchscript: torch.jit (deprecated by PyTorch, kept while it loads)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output file (.pt2 for export, .onnx for ONNX, .ts for TorchScript); an existing file is replaced "
        "only when it is a model written by export",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out whatever it holds")
    p.add_argument(
        "--window-samples", type=int_at_least(1), default=None, help="input length T in samples (default: the checkpoint's evaluation window, else its training crop)"
    )
    p.add_argument(
        "--tolerance", type=float_at_least(0), default=DEFAULT_TOLERANCE, help="max abs probability difference"
    )
    return p


@cli_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    """Run the command: 0 when exported and verified; 2 for a refused option or output path (one line,
    no traceback); 1 when the checkpoint cannot be exported or the export fails its check."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        res = export_model(
            args.checkpoint,
            args.format,
            args.out,
            window_samples=args.window_samples,
            tolerance=args.tolerance,
            overwrite=args.overwrite,
        )
    except PathProblem as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (ExportError, CheckpointInputError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    check = (
        f"max |p - p_eager| = {res['max_abs_diff']:.2e} <= {res['tolerance']:g}"
        if res["verified"]
        else "NOT verified (onnxruntime missing)"
    )
    print(
        f"exported {res['format']} ({res['exporter']}) to {res['out']} ({res['bytes'] / 1e6:.2f} MB): "
        f"wave float32 [B, {res['window_samples']}] at {res['sample_rate']} Hz -> probabilities over "
        f"{len(res['labels'])} genres; {check}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
