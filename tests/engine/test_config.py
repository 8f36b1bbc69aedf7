"""engine.config: YAML + ``a.b=value`` overrides -> a strict, typed dataclass, and back to plain dicts.

The loader is generic; a small config tree here exercises every annotation kind it handles, and the shipped
``configs/*.yaml`` are checked against :class:`engine.train.TrainConfig` and the models they build.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml
from torch import nn

from engine.config import (
    ConfigError,
    apply_overrides,
    config_json,
    from_dict,
    load_config,
    load_yaml,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Inner:
    size: int = 3
    rate: float = 0.5
    names: list[str] = field(default_factory=list)
    span: tuple[float, float] = (0.0, 1.0)
    widths: tuple[int, ...] = (1, 2)

    def validate(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")  # plain ValueError, as kernels raise


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["no", "fp16", "bf16"] = "no"
    flag: bool = False
    limit: float | None = None
    hop: int | None = None
    where: str = "runs"  # code may put a Path here (to_dict writes it as its string)
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.name == "forbidden":
            raise ConfigError("name: 'forbidden' is reserved")


# ------------------------------------------------------------------------------------------------ YAML
def test_yaml_file_loads_into_nested_dataclass_with_lossless_conversions(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: run1\nmode: bf16\nflag: true\nlimit: 2\nextra: {a: 1}\n"
        "inner:\n  size: 7\n  rate: 1\n  names: [a, b]\n  span: [-1, 2.5]\n  widths: [4, 5, 6]\n"
    )
    cfg = load_config(Outer, path)
    assert cfg == Outer(
        name="run1",
        mode="bf16",
        flag=True,
        limit=2.0,
        extra={"a": 1},
        inner=Inner(size=7, rate=1.0, names=["a", "b"], span=(-1.0, 2.5), widths=(4, 5, 6)),
    )
    # int -> float where a float is declared, list -> tuple where a tuple is declared
    assert type(cfg.limit) is float and type(cfg.inner.rate) is float
    assert (
        type(cfg.inner.span) is tuple and type(cfg.inner.span[0]) is float and type(cfg.inner.widths) is tuple
    )
    # keys the file leaves out keep their defaults, in nested sections too
    assert cfg.hop is None and cfg.where == "runs"
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert load_config(Outer, tmp_path / "empty.yaml") == Outer()


def test_unreadable_yaml_files_are_config_errors_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'nope.yaml'} does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=f"{listing}: top level must be a mapping, got list"):
        load_config(Outer, listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("inner:\n  names: [a, b\nflag: true\n")
    with pytest.raises(
        ConfigError, match=f"^{broken}: not valid YAML: while parsing a flow sequence .* line 2"
    ):
        load_config(Outer, broken)


# ------------------------------------------------------------------------------------------- overrides
def test_overrides_set_nested_keys_without_touching_their_siblings_or_the_input():
    base = {"name": "a", "inner": {"size": 2, "rate": 0.25}}
    out = apply_overrides(base, ["inner.size=5", "extra.deep.key=1", "name=b", "name=c"])
    assert out == {"name": "c", "inner": {"size": 5, "rate": 0.25}, "extra": {"deep": {"key": 1}}}
    assert base == {
        "name": "a",
        "inner": {"size": 2, "rate": 0.25},
    }  # the caller's dict, nested too, is unchanged
    # a value may itself contain '=' (only the first one separates key and value)
    assert apply_overrides({}, ["extra.expr=a=b"]) == {"extra": {"expr": "a=b"}}
    # a section set whole from YAML flow syntax
    assert apply_overrides({}, ["inner={size: 4, names: [x, y]}"]) == {
        "inner": {"size": 4, "names": ["x", "y"]}
    }


@pytest.mark.parametrize("item", ["inner.size", "inner.size:3", ""])
def test_an_override_without_equals_sign_is_a_config_error(item):
    with pytest.raises(ConfigError, match=r"is not key=value \(e.g. optim.lr=3e-4\)"):
        apply_overrides({}, [item])


@pytest.mark.parametrize(
    ("item", "attr", "expected"),
    [
        ("inner.size=12", "inner.size", 12),
        ("inner.size=0x10", "inner.size", 16),  # YAML integer syntax
        ("inner.rate=3e-4", "inner.rate", 3e-4),  # YAML 1.1 reads 3e-4 as a string; a number is meant
        ("inner.rate=1E3", "inner.rate", 1000.0),
        ("inner.rate=.5", "inner.rate", 0.5),
        ("inner.rate=2", "inner.rate", 2.0),
        ("inner.rate=inf", "inner.rate", math.inf),
        ("inner.rate=.inf", "inner.rate", math.inf),
        ("inner.rate=-inf", "inner.rate", -math.inf),
        ("inner.names=a, b ,c", "inner.names", ["a", "b", "c"]),  # comma list without brackets
        ("inner.names=[a, b]", "inner.names", ["a", "b"]),
        ("inner.names=single", "inner.names", ["single"]),
        ("inner.span=0.8,1.25", "inner.span", (0.8, 1.25)),  # comma-list items are numbers where declared
        ("inner.span=-6,6", "inner.span", (-6.0, 6.0)),
        ("inner.widths=3,4", "inner.widths", (3, 4)),
        ("inner.names=1,2", "inner.names", ["1", "2"]),  # ...and stay strings where strings are declared
        ("inner.widths=[3]", "inner.widths", (3,)),
        ("flag=true", "flag", True),
        ("flag=False", "flag", False),
        ("limit=null", "limit", None),
        ("limit=~", "limit", None),
        ("limit=7", "limit", 7.0),
        ("hop=256", "hop", 256),
        ("name=", "name", ""),
        ("name=runs/a b", "name", "runs/a b"),
        ("name='2024'", "name", "2024"),  # quoted: a string even though it looks like a number
        ("mode=fp16", "mode", "fp16"),
        ("mode=no", "mode", "no"),  # YAML 1.1 reads `no` as false; the choice "no" is meant
        ("where=/tmp/out", "where", "/tmp/out"),
    ],
)
def test_override_values_are_parsed_as_yaml_and_coerced_to_the_declared_type(item, attr, expected):
    cfg = load_config(Outer, None, [item])
    value = cfg
    for part in attr.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("inner.size=big", "inner.size: expected an integer, got 'big'"),
        ("inner.size=1.5", "inner.size: expected an integer, got 1.5"),
        ("inner.size=true", "inner.size: expected an integer, got True"),  # a bool is not an int
        ("inner.rate=fast", "inner.rate: expected a number, got 'fast'"),
        ("inner.rate=yes", "inner.rate: expected a number, got True"),
        ("flag=1", "flag: expected true or false, got 1"),
        ("name=[a]", r"name: expected a string, got \['a'\]"),
        ("mode=fp8", r"mode: 'fp8' is not one of \['no', 'fp16', 'bf16'\]"),
        ("inner.span=1,2,3", r"inner.span: expected 2 items, got 3"),
        ("inner.span=1,x", r"inner.span\[1\]: expected a number, got 'x'"),
        ("inner.span=1,[x", r"inner.span\[1\]: expected a number, got '\[x'"),
        ("mode=true", r"mode: True is not one of \['no', 'fp16', 'bf16'\]"),
        (
            "limit=[1",
            r"override 'limit=\[1': the value is not valid YAML \(while parsing a flow sequence\); quote it",
        ),
        ("inner.widths=[1, a]", r"inner.widths\[1\]: expected an integer, got 'a'"),
        ("inner.names={a: 1}", r"inner.names: expected a list, got \{'a': 1\}"),
        ("limit=lots", "limit: 'lots' is not float or NoneType"),
        ("inner=3", "inner: expected a mapping for Inner, got 3"),
        ("extra=[1]", r"extra: expected a mapping, got \[1\]"),
    ],
)
def test_values_of_the_wrong_type_are_config_errors_naming_key_and_value(item, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(Outer, None, [item])


def test_overrides_apply_on_top_of_the_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: file\ninner:\n  size: 7\n  rate: 0.75\n")
    cfg = load_config(Outer, path, ["inner.size=9", "flag=true"])
    assert (cfg.name, cfg.flag, cfg.inner.size, cfg.inner.rate) == ("file", True, 9, 0.75)


# ------------------------------------------------------------------------------------------ strictness
def test_unknown_keys_are_refused_with_their_full_path_and_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, ["inner.sise=3", "inner.rat=1"])
    assert str(err.value) == (
        "unknown config key(s) inner.rat, inner.sise; valid keys of inner: names, rate, size, span, widths"
    )
    with pytest.raises(ConfigError, match="^unknown config key\\(s\\) nmae; valid keys: extra, flag, hop, "):
        from_dict(Outer, {"nmae": "x"})


def test_validate_runs_for_every_section_and_value_errors_become_config_errors():
    with pytest.raises(ConfigError, match="^size must be >= 1, got 0$") as err:
        load_config(Outer, None, ["inner.size=0"])
    assert isinstance(err.value.__cause__, ValueError) and not isinstance(err.value.__cause__, ConfigError)
    with pytest.raises(ConfigError, match="^name: 'forbidden' is reserved$") as err:
        load_config(Outer, None, ["name=forbidden"])
    assert err.value.__cause__ is None  # a ConfigError passes through as raised
    # the real case: the feature front end (kernels/, which does not import engine) validates with ValueError
    from kernels.features import FrontendConfig

    with pytest.raises(ConfigError, match="n_fft must be >= 16"):
        from_dict(FrontendConfig, {"n_fft": 4})


# ------------------------------------------------------------------------------------------ round trip
def test_to_dict_gives_plain_data_that_loads_back_to_an_equal_config():
    cfg = Outer(
        name="r",
        mode="fp16",
        limit=math.inf,
        hop=128,
        where=Path("/data/runs"),
        extra={"k": [1, 2]},
        inner=Inner(size=4, rate=0.1, names=["a"], span=(0.25, 4.0), widths=(8,)),
    )
    plain = to_dict(cfg)
    assert plain == {
        "name": "r",
        "mode": "fp16",
        "flag": False,
        "limit": math.inf,
        "hop": 128,
        "where": "/data/runs",
        "extra": {"k": [1, 2]},
        "inner": {"size": 4, "rate": 0.1, "names": ["a"], "span": [0.25, 4.0], "widths": [8]},
    }
    # through YAML text (what a run directory stores) and back
    again = from_dict(Outer, yaml.safe_load(yaml.safe_dump(plain)))
    assert again == Outer(**{**cfg.__dict__, "where": "/data/runs"})  # a Path field comes back as its string
    # strict JSON (no Infinity literal) and back: non-finite floats travel as strings
    text = json.dumps(config_json(cfg), allow_nan=False)
    assert '"limit": "inf"' in text
    assert from_dict(Outer, json.loads(text)).limit == math.inf


def test_the_training_config_round_trips_through_yaml_and_json():
    from engine.train import TrainConfig

    cfg = load_config(
        TrainConfig,
        None,
        ["data.shards=s", "optim.lr=3e-4", "model.augment.gain_db=-3,3", "run.freeze=[backbone.blocks]"],
    )
    assert from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg
    assert from_dict(TrainConfig, json.loads(json.dumps(config_json(cfg), allow_nan=False))) == cfg


@pytest.mark.parametrize("written", ["no", '"no"', "fp32"])
def test_run_precision_no_of_older_configs_reads_as_fp32(tmp_path, written):
    """``run.precision`` takes the shared names (fp32/bf16/fp16); accelerate's ``no`` that configs, run
    directories and checkpoints written before hold still loads, as fp32."""
    from engine.train import TrainConfig

    path = tmp_path / "old.yaml"
    path.write_text(f"data:\n  shards: s\nrun:\n  precision: {written}\n")
    assert load_config(TrainConfig, path).run.precision == "fp32"
    assert load_config(TrainConfig, None, ["data.shards=s", f"run.precision={written}"]).run.precision == "fp32"
    assert load_config(TrainConfig, None, ["data.shards=s", "run.precision=bf16"]).run.precision == "bf16"
    with pytest.raises(ConfigError, match="run.precision: 'fp8' is not one of"):
        load_config(TrainConfig, None, ["data.shards=s", "run.precision=fp8"])


# ------------------------------------------------------------------------------ shipped configs/*.yaml
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _assert_same(stated: Any, loaded: Any, where: str) -> None:
    """Every key the file states is in the loaded config with the value the file gives (a tuple field holds
    the file's list; an int given for a float field is the same number)."""
    if isinstance(stated, dict):
        assert isinstance(loaded, dict), where
        for key, value in stated.items():
            assert key in loaded, f"{where}.{key} is not in the loaded config"
            _assert_same(value, loaded[key], f"{where}.{key}")
    elif isinstance(stated, list):
        assert isinstance(loaded, list) and len(loaded) == len(stated), where
        for i, (a, b) in enumerate(zip(stated, loaded)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        same_kind = isinstance(loaded, bool) == isinstance(stated, bool)  # True is not 1
        assert loaded == stated and same_kind, f"{where}: the file says {stated!r}, the config has {loaded!r}"


def _sections(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every mapping in a YAML document (the root included)."""
    out = [prefix]
    for key, value in data.items():
        if isinstance(value, dict):
            out += _sections(value, (*prefix, key))
    return out


def _is_precomputed(raw: dict[str, Any]) -> bool:
    return raw["model"].get("features", {}).get("features") == ["precomputed"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_loads_exactly_what_its_file_states(path, tmp_path):
    from engine.models.base import ARCHS
    from engine.train import TrainConfig

    raw = yaml.safe_load(path.read_text())
    arch = raw["model"]["arch"]
    if path.stem in ARCHS:  # configs/<arch>.yaml is that architecture's recipe
        assert arch == path.stem
    cfg = load_config(TrainConfig, path, ["data.shards=x"])
    _assert_same(raw, to_dict(cfg), path.stem)
    # model.params is a free mapping until the architecture reads it: it round-trips through that Config too
    _assert_same(raw["model"]["params"], to_dict(cfg.model.arch_config()), f"{path.stem}.model.params")
    # an unknown key in any section of the file is refused, by its dotted name
    for section in _sections(raw):
        bad = copy.deepcopy(raw)
        node = bad
        for key in section:
            node = node[key]
        node["bogus_key"] = 1
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        dotted = ".".join((*section, "bogus_key"))
        # model.params is read by the architecture's Config when the model config validates
        if section == ("model", "params"):
            dotted = f"model.params ({arch}).bogus_key"
        with pytest.raises(ConfigError, match=rf"^unknown config key\(s\) {re.escape(dotted)}; valid keys"):
            load_config(TrainConfig, tmp_path / "bad.yaml", ["data.shards=x"])


def _bands(feats: dict[str, Any]) -> int:
    """Frequency rows of a ``stack: freq`` front end, by hand: mel bands, MFCCs x (1 + deltas), 12 chroma."""
    per = {
        "logmel": feats.get("n_mels", 128),
        "mfcc": feats.get("n_mfcc", 20) * (1 + feats.get("deltas", 0)),
        "chroma": 12,
        "musicnn": feats.get("n_mels", 128),  # on 16-kHz audio: the feature resamples first
    }
    return sum(per[name] for name in feats["features"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_builds_the_model_its_file_describes(path):
    from engine.models import build_model
    from engine.models.base import ARCHS
    from engine.train import TrainConfig

    raw = yaml.safe_load(path.read_text())
    model_raw, params, aug = raw["model"], raw["model"]["params"], raw["model"]["augment"]
    feats = model_raw["features"]
    overrides = ["data.shards=x"]
    if _is_precomputed(raw):  # D comes from the shard manifest; the MSD layout has 12 + 12 + 1
        overrides.append("model.features.feature_dim=25")
        sample_rate = 4  # the MSD's nominal 4 segments / s
    else:
        sample_rate = 22050
    cfg = load_config(TrainConfig, path, overrides)
    segment = round(raw["data"]["segment_seconds"] * sample_rate)
    model = build_model(cfg.model, 10, sample_rate, segment)

    assert type(model.backbone) is ARCHS.get(model_raw["arch"])
    assert model.backbone.cfg == cfg.model.arch_config()
    if _is_precomputed(raw):
        assert model.in_shape == (1, 25, segment)  # (C, D, frames): one frame per segment
    else:
        assert feats.get("stack", "freq") == "freq"
        assert list(model.frontend.names) == feats["features"]
        n = segment
        if feats["features"] == ["musicnn"]:  # its STFT runs after the in-model resampler to 16 kHz
            from kernels.musicnn_input import resampled_length

            n = resampled_length(segment, sample_rate)
        assert model.in_shape == (1, _bands(feats), 1 + n // feats["hop_length"])  # centred STFT frames

    # the layers have the widths, depths and pools the file gives
    convs = [
        m
        for m in model.backbone.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and max(m.kernel_size) > 1
    ]
    rnns = [m for m in model.backbone.modules() if isinstance(m, (nn.GRU, nn.LSTM))]
    arch = model_raw["arch"]
    if arch in ("cnn", "cnn1d", "crnn"):
        assert [m.out_channels for m in convs] == params["channels"]
        assert {m.kernel_size[0] for m in convs} == {params["kernel_size"]}
        assert convs[0].in_channels == (25 if arch == "cnn1d" else 1)
    if arch == "resnet":  # two 3x3 convolutions per residual block
        widths = [params["channels"] * m for m in params["width_multipliers"]]
        assert [m.out_channels for m in convs] == [w for w in widths for _ in (0, 1)]
    if arch == "crnn":
        (gru,) = rnns
        f_left = model.in_shape[1]
        for f_pool, _ in params["pools"]:
            f_left //= f_pool  # 128 -> 2 bins
        assert (gru.hidden_size, gru.num_layers, gru.bidirectional) == (
            params["rnn_hidden"],
            params["rnn_layers"],
            True,
        )
        assert gru.input_size == params["channels"][-1] * f_left
    if arch == "rnn":
        (rnn,) = rnns
        assert isinstance(rnn, nn.GRU if params["cell"] == "gru" else nn.LSTM)
        assert (rnn.hidden_size, rnn.num_layers, rnn.bidirectional) == (
            params["hidden"], params["layers"], params["bidirectional"]
        )  # fmt: skip
        assert rnn.input_size == model.in_shape[0] * model.in_shape[1]
    if arch in ("cnn", "cnn1d", "resnet"):
        assert rnns == []

    # the augmentations switched on in the file, in their fixed order, with its settings
    if _is_precomputed(raw):  # sequences take time masks and mixup only
        assert list(model.wave_aug.parts) == []
        assert list(model.spec_aug.parts) == (["time_mask"] if aug["time_masks"] > 0 else [])
    else:
        wave = {"shift": "shift_p", "polarity": "polarity_p", "gain": "gain_p", "noise": "noise_p"}
        assert {n: m.p for n, m in model.wave_aug.parts.items()} == {
            n: aug[k] for n, k in wave.items() if aug[k] > 0
        }
        assert list(model.wave_aug.parts) == [n for n, k in wave.items() if aug[k] > 0]
        spec = [("time_stretch", "time_stretch_p"), ("pitch_shift", "pitch_shift_p"), ("freq_mask", "freq_masks"),
                ("time_mask", "time_masks")]  # fmt: skip
        assert list(model.spec_aug.parts) == [n for n, k in spec if aug[k] > 0]
        for name, key in spec[:2]:
            if aug[key] > 0:
                assert model.spec_aug.parts[name].p == aug[key]
        if aug["freq_masks"] > 0:
            fm = model.spec_aug.parts["freq_mask"]
            assert (fm.count, fm.max_width) == (aug["freq_masks"], aug["freq_mask_width"])
    if aug["time_masks"] > 0:
        tm = model.spec_aug.parts["time_mask"]
        assert (tm.count, tm.max_width) == (aug["time_masks"], aug["time_mask_width"])
    assert (model.mixup.alpha, model.mixup.p) == (aug["mixup_alpha"], aug["mixup_p"])

    # and it runs: a batch of crops -> [B, K] finite logits (eval mode: no augmentation)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    shape = (2, segment, 25) if _is_precomputed(raw) else (2, segment)
    with torch.no_grad():
        logits = model(0.1 * torch.randn(shape, generator=gen))
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())
