"""Profiles: the non-tensor objects real checkpoints hold, rebuilt as inert data (``ckpt.profiles``).

Lightning, OmegaConf and DeepSpeed are not installed here (and ckpt must never import them), so
their pickles are made by *stand-in* classes registered under the real module names for the
duration of ``pickle.dumps``, with the reduce shapes of the real classes (checked against their
public sources): ``Namespace``/``DynamicLossScaler``/OmegaConf ``Metadata`` pickle as
``NEWOBJ`` + ``BUILD __dict__``; ``AttributeDict`` (a dict subclass) as ``NEWOBJ`` + ``SETITEMS``;
OmegaConf containers and nodes as ``NEWOBJ`` + ``BUILD`` of ``__dict__`` without ``_flags_cache``
(their ``__getstate__``), with ``_parent`` back-references; ``ZeroStageEnum(int, Enum)`` as
``REDUCE(cls, (value,))``. The stand-ins are removed from ``sys.modules`` before ckpt reads the
files, and the tests check that nothing was imported. The files are plain torch-zip archives
written here (no torch needed); torch's own view of them is checked where torch is installed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import enum
import pathlib
import pickle
import sys
import types
import zipfile
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.profiles import BY_NAME, DEFAULT_GROUPS, GROUPS, PROFILES, groups
from ckpt.values import EnumMember, GlobalRef, InertObject, ListRecord, Record

STANDIN_MODULES = (
    "lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data",
    "omegaconf", "omegaconf.base", "omegaconf.nodes", "omegaconf.dictconfig", "omegaconf.listconfig",
    "deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero", "deepspeed.runtime.zero.config",
    "deepspeed.runtime.fp16", "deepspeed.runtime.fp16.loss_scaler",
)


def write_checkpoint(path: Path, obj: Any, protocol: int = 2) -> Path:
    """A torch-zip checkpoint holding ``obj`` (no tensors needed), as torch.save lays it out."""
    data = pickle.dumps(obj, protocol=protocol)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


# -- stand-ins with the real classes' reduce shapes ------------------------------------------------


def _standins() -> types.SimpleNamespace:
    mods = {name: types.ModuleType(name) for name in STANDIN_MODULES}

    def place(cls: type, module: str) -> type:
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
        setattr(mods[module], cls.__name__, cls)
        return cls

    class AttributeDict(dict):  # lightning.fabric.utilities.data.AttributeDict
        def __getattr__(self, key: str) -> Any:
            try:
                return self[key]
            except KeyError as e:
                raise AttributeError(key) from e

        def __setattr__(self, key: str, val: Any) -> None:
            self[key] = val

    @dataclass
    class Metadata:  # omegaconf.base.Metadata
        ref_type: Any
        object_type: Any
        optional: bool
        key: Any
        flags: Any = None
        flags_root: bool = False
        resolver_cache: Any = field(default_factory=lambda: defaultdict(dict))

    @dataclass
    class ContainerMetadata(Metadata):  # omegaconf.base.ContainerMetadata
        key_type: Any = None
        element_type: Any = None

    class Node:
        def __getstate__(self) -> dict[str, Any]:  # omegaconf.base.Node: drops the flags cache
            state = copy.copy(self.__dict__)
            del state["_flags_cache"]
            return state

    class AnyNode(Node):  # omegaconf.nodes.AnyNode
        def __init__(self, value: Any, key: Any, parent: Any) -> None:
            self.__dict__.update(_metadata=Metadata(None, None, True, key, {}), _parent=parent,
                                 _flags_cache=None, _val=value)

    def container_meta(key: Any, object_type: Any) -> Any:
        return ContainerMetadata(Any, object_type, True, key, {}, False, defaultdict(dict), Any, Any)

    class DictConfig(Node):  # omegaconf.dictconfig.DictConfig
        def __init__(self, content: dict[str, Any], key: Any = None, parent: Any = None) -> None:
            self.__dict__.update(_metadata=container_meta(key, dict), _parent=parent, _flags_cache=None)
            self.__dict__["_content"] = {k: wrap(v, k, self) for k, v in content.items()}

    class ListConfig(Node):  # omegaconf.listconfig.ListConfig
        def __init__(self, content: list[Any], key: Any = None, parent: Any = None) -> None:
            self.__dict__.update(_metadata=container_meta(key, list), _parent=parent, _flags_cache=None)
            self.__dict__["_content"] = [wrap(v, i, self) for i, v in enumerate(content)]

    def wrap(value: Any, key: Any, parent: Any) -> Any:
        if isinstance(value, dict):
            return DictConfig(value, key, parent)
        if isinstance(value, list):
            return ListConfig(value, key, parent)
        return AnyNode(value, key, parent)

    class ZeroStageEnum(int, enum.Enum):  # deepspeed.runtime.zero.config.ZeroStageEnum
        disabled = 0
        optimizer_states = 1
        gradients = 2
        weights = 3

    class LossScaler:  # deepspeed.runtime.fp16.loss_scaler.LossScaler
        def __init__(self, scale: float = 1.0) -> None:
            self.cur_scale = scale
            self.dynamic = False

    class DynamicLossScaler(LossScaler):
        def __init__(self) -> None:
            super().__init__(2.0**16)
            self.cur_iter, self.last_overflow_iter, self.scale_factor = 10, -1, 2.0
            self.scale_window, self.min_scale, self.delayed_shift = 1000, 1.0, 2
            self.cur_hysteresis, self.consecutive_hysteresis = 2, False
            self.raise_error_at_min_scale, self.dynamic = True, True
            self.dtype = "float16"

    place(AttributeDict, "lightning.fabric.utilities.data")
    for cls in (Metadata, ContainerMetadata):
        place(cls, "omegaconf.base")
    place(AnyNode, "omegaconf.nodes")
    place(DictConfig, "omegaconf.dictconfig")
    place(ListConfig, "omegaconf.listconfig")
    place(ZeroStageEnum, "deepspeed.runtime.zero.config")
    place(LossScaler, "deepspeed.runtime.fp16.loss_scaler")
    place(DynamicLossScaler, "deepspeed.runtime.fp16.loss_scaler")
    return types.SimpleNamespace(mods=mods, **{c.__name__: c for c in (
        AttributeDict, DictConfig, ListConfig, ZeroStageEnum, LossScaler, DynamicLossScaler)})


@pytest.fixture
def standins(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The stand-in classes, importable under the real names only inside ``with registered():``."""
    s = _standins()

    class Registered:
        def __enter__(self) -> None:
            for name, mod in s.mods.items():
                monkeypatch.setitem(sys.modules, name, mod)

        def __exit__(self, *exc: Any) -> None:
            for name in s.mods:
                sys.modules.pop(name, None)

    s.registered = Registered
    yield s
    for name in s.mods:
        assert name not in sys.modules or sys.modules[name] is s.mods[name], f"ckpt imported {name}"


def dump(standins: Any, tmp_path: Path, obj: Any, name: str = "m.ckpt", protocol: int = 2) -> Path:
    with standins.registered():
        path = write_checkpoint(tmp_path / name, obj, protocol)
    assert not any(m in sys.modules for m in STANDIN_MODULES)
    return path


def lightning_checkpoint(s: Any) -> dict[str, Any]:
    hp = s.DictConfig({"lr": 0.001, "model": {"width": 64, "act": "gelu"}, "layers": [1, 2, 3],
                       "data": "${oc.env:DATA}", "seed": None})
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.1.0",
            "hyper_parameters": hp, "hparams_type": s.DictConfig, "hparams_name": "cfg"}


# -- the table --------------------------------------------------------------------------------------


def test_table_is_consistent() -> None:
    assert len(BY_NAME) == len(PROFILES), "a name is profiled twice"
    kinds = {"value", "call", "object", "dict", "list", "enum"}
    for p in PROFILES:
        assert p.group in GROUPS and p.kind in kinds and p.becomes, p
        assert (p.make is not None) == (p.kind == "call"), p
        assert (p.value is not None) == (p.kind == "value"), p
        assert p.name.count(".") >= 1 and "" not in p.name.split("."), p
    assert DEFAULT_GROUPS < set(GROUPS)
    assert {p.group for p in PROFILES} == set(GROUPS)


def test_profiled_names_are_not_the_dangerous_ones() -> None:
    """No profile opens a door the verdict table knows as dangerous (defaultdict aside: its factory
    is checked against built-in types)."""
    from ckpt.verdicts import verdict_for

    dangerous = [p.name for p in PROFILES if verdict_for(p.name)[0] == "dangerous"]
    assert dangerous == ["collections.defaultdict"]


def test_groups_selection() -> None:
    assert groups(None) == DEFAULT_GROUPS == groups("default")
    assert groups("all") == set(GROUPS) and groups("none") == frozenset()
    assert groups(["numpy"]) == {"numpy"} and groups("argparse") == {"argparse"}
    with pytest.raises(ValueError, match="unknown profile group 'omegaconfig'"):
        groups(["omegaconfig"])
    with pytest.raises(ValueError, match="unknown profile group"):
        ckpt.load("nothing.pt", profiles=["nope"])


# -- argparse.Namespace: a record, opt-in for load, shown by inspect ----------------------------------


def test_namespace_is_refused_by_default_with_a_hint_then_read_when_asked(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.pt", {"args": argparse.Namespace(lr=0.1, name="run", dims=[3, 4])})
    with pytest.raises(ckpt.UnsafeGlobalError, match="argparse.Namespace") as info:
        ckpt.load(path, as_="numpy")
    assert "profiles=['argparse']" in str(info.value) and "nothing was executed" in str(info.value)
    for kw in ({"allow": ["argparse.Namespace"]}, {"profiles": ["argparse"]}, {"profiles": "all"}):
        args = ckpt.load(path, as_="numpy", **kw)["args"]
        assert type(args) is Record and args.type == "argparse.Namespace"
        assert args == {"lr": 0.1, "name": "run", "dims": [3, 4]} and args.lr == 0.1
        with pytest.raises(AttributeError, match="no field 'nope'"):
            args.nope
    with pytest.raises(ckpt.UnsafeGlobalError):
        ckpt.load(path, as_="numpy", profiles="none", allow=["argparse.ArgumentParser"])


def test_inspect_shows_records_as_data_and_names_them_in_findings(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.pt", {"args": argparse.Namespace(lr=0.1, name="run")})
    summary = ckpt.inspect(path)
    values = {v.path: (v.type, v.value) for v in summary.values}
    assert values["args"][0] == "argparse.Namespace"
    assert values["args.lr"] == ("float", 0.1) and values["args.name"] == ("str", "run")
    (finding,) = summary.findings
    assert finding.name == "argparse.Namespace" and finding.verdict == "unknown"
    assert "argparse" in finding.message and "profile" in finding.message
    assert ckpt.inspect(path, allow=["argparse.Namespace"]).findings == []


def test_a_trusted_constructor_wins_over_the_profile(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.pt", {"args": argparse.Namespace(lr=0.1)})
    got = ckpt.load(path, as_="numpy", trust={"argparse.Namespace": argparse.Namespace}, profiles="all")
    assert type(got["args"]) is argparse.Namespace and got["args"].lr == 0.1


# -- Lightning + OmegaConf ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_lightning_omegaconf_hyper_parameters(standins: Any, tmp_path: Path, protocol: int) -> None:
    path = dump(standins, tmp_path, lightning_checkpoint(standins), protocol=protocol)
    with pytest.raises(ckpt.UnsafeGlobalError, match="omegaconf.dictconfig.DictConfig") as info:
        ckpt.load(path, as_="numpy")
    assert "profiles=['omegaconf']" in str(info.value)
    ck = ckpt.load(path, as_="numpy", profiles=["default", "omegaconf"])
    hp = ck["hyper_parameters"]
    assert type(hp) is Record and hp.type == "omegaconf.dictconfig.DictConfig"
    assert hp == {"lr": 0.001, "model": {"width": 64, "act": "gelu"}, "layers": [1, 2, 3],
                  "data": "${oc.env:DATA}", "seed": None}
    assert hp.model.type == "omegaconf.dictconfig.DictConfig" and hp.model.width == 64
    assert type(hp["layers"]) is ListRecord and hp["layers"].type == "omegaconf.listconfig.ListConfig"
    meta = hp.info["_metadata"]
    assert meta.type == "omegaconf.base.ContainerMetadata" and meta.object_type is dict
    assert type(meta.resolver_cache) is defaultdict and meta.resolver_cache.default_factory is dict
    import typing

    assert meta.key_type is typing.Any
    # the class object Lightning stores beside the config stays a reference, never an import
    assert type(ck["hparams_type"]) is GlobalRef and ck["hparams_type"].qualname == "omegaconf.dictconfig.DictConfig"
    assert ck["epoch"] == 3


def test_inspect_reads_a_lightning_checkpoint_without_loading_omegaconf(standins: Any, tmp_path: Path) -> None:
    path = dump(standins, tmp_path, lightning_checkpoint(standins))
    summary = ckpt.inspect(path)
    values = {v.path: v for v in summary.values}
    assert values["hyper_parameters.lr"].value == 0.001
    assert values["hyper_parameters.model.act"].value == "gelu"
    assert values["hyper_parameters.layers"].value == [1, 2, 3]
    assert values["hyper_parameters"].type == "omegaconf.dictconfig.DictConfig"
    assert values["hparams_type"].value == "omegaconf.dictconfig.DictConfig"
    assert {f.name for f in summary.findings} == {
        "omegaconf.dictconfig.DictConfig", "omegaconf.base.ContainerMetadata", "omegaconf.nodes.AnyNode",
        "omegaconf.base.Metadata", "omegaconf.listconfig.ListConfig",
    }


def test_lightning_attribute_dict(standins: Any, tmp_path: Path) -> None:
    hp = standins.AttributeDict(lr=0.01, batch_size=32, betas=(0.9, 0.99))
    path = dump(standins, tmp_path, {"hyper_parameters": hp, "epoch": 1})
    with pytest.raises(ckpt.UnsafeGlobalError, match="lightning.fabric.utilities.data.AttributeDict"):
        ckpt.load(path, as_="numpy")
    got = ckpt.load(path, as_="numpy", profiles=["lightning"])["hyper_parameters"]
    assert got == {"lr": 0.01, "batch_size": 32, "betas": (0.9, 0.99)} and got.batch_size == 32
    assert got.type == "lightning.fabric.utilities.data.AttributeDict"


# -- DeepSpeed ----------------------------------------------------------------------------------------


def test_deepspeed_enum_and_loss_scalers(standins: Any, tmp_path: Path) -> None:
    obj = {"zero_stage": standins.ZeroStageEnum.gradients, "scaler": standins.DynamicLossScaler(),
           "static": standins.LossScaler(128.0)}
    path = dump(standins, tmp_path, obj)
    got = ckpt.load(path, as_="numpy", profiles=["deepspeed"])
    stage = got["zero_stage"]
    assert type(stage) is EnumMember and (stage.name, stage.value) == ("gradients", 2)
    assert stage == EnumMember("deepspeed.runtime.zero.config.ZeroStageEnum", 2)
    assert got["scaler"].cur_scale == 65536.0 and got["scaler"].scale_window == 1000
    assert got["static"] == {"cur_scale": 128.0, "dynamic": False}
    shown = {v.path: v for v in ckpt.inspect(path).values}
    assert shown["zero_stage"].type == "deepspeed.runtime.zero.config.ZeroStageEnum" and shown["zero_stage"].value == 2


def test_deepspeed_profiles_check_what_they_accept(standins: Any, tmp_path: Path) -> None:
    stage = dump(standins, tmp_path, {"s": standins.ZeroStageEnum.weights}, "s.ckpt")
    with zipfile.ZipFile(stage) as z:
        data = z.read("archive/data.pkl")
    assert data.count(b"K\x03\x85") == 1
    fixed = write_raw(tmp_path / "s2.ckpt", data.replace(b"K\x03\x85", b"K\x07\x85"))  # the value: 3 -> 7
    with pytest.raises(ckpt.CorruptCheckpointError, match="7 is not a value of"):
        ckpt.load(fixed, as_="numpy", profiles=["deepspeed"])
    scaler = standins.LossScaler(1.0)
    scaler.cur_scale = "a lot"
    with pytest.raises(ckpt.CorruptCheckpointError, match="field 'cur_scale'"):
        ckpt.load(dump(standins, tmp_path, {"s": scaler}, "l.ckpt"), as_="numpy", profiles=["deepspeed"])


def write_raw(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")
    return path


# -- plain values, read by default ---------------------------------------------------------------------


PLAIN = {
    "when": datetime.datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=datetime.timezone(datetime.timedelta(hours=2), "X")),
    "naive": datetime.datetime(1999, 12, 31, 23, 59, 59),
    "fold": datetime.datetime(2021, 11, 7, 1, 30, fold=1),
    "day": datetime.date(2020, 2, 29), "at": datetime.time(13, 5, 1, 2), "td": datetime.timedelta(-1, 5, 7),
    "utc": datetime.timezone.utc,
    "frozen": frozenset({1, "a", (2, 3)}), "sl": slice(1, None, 2), "r": range(3, 100, 7), "dots": ...,
    "empty": b"", "dd": defaultdict(list, {"a": [1]}), "dd_set": defaultdict(set), "dd_none": defaultdict(None, {1: 2}),
    "dd_od": defaultdict(OrderedDict), "types": [list, dict, int, float, str, bool, tuple],
}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_values_load_by_default_as_pickle_gives_them(tmp_path: Path, protocol: int) -> None:
    path = write_checkpoint(tmp_path / "v.pt", PLAIN, protocol)
    got = ckpt.load(path, as_="numpy")
    for key, want in PLAIN.items():
        assert type(got[key]) is type(want) and got[key] == want, key
    assert got["fold"].fold == (protocol >= 4)  # pickle keeps fold from protocol 4 on
    assert got["when"].tzinfo == PLAIN["when"].tzinfo
    assert got["dd"].default_factory is list and got["dd_od"].default_factory is OrderedDict
    assert ckpt.inspect(path).findings == []


def test_paths_become_pure_paths(tmp_path: Path) -> None:
    obj = {"posix": pathlib.PurePosixPath("/data/x.bin"), "win": pathlib.PureWindowsPath("C:/data/x.bin"),
           "concrete": pathlib.Path("runs/1")}
    path = write_checkpoint(tmp_path / "p.pt", obj)
    got = ckpt.load(path, as_="numpy")
    assert type(got["posix"]) is pathlib.PurePosixPath and got["posix"] == obj["posix"]
    assert type(got["win"]) is pathlib.PureWindowsPath and str(got["win"]) == "C:\\data\\x.bin"
    assert type(got["concrete"]) is pathlib.PurePosixPath and got["concrete"] == obj["concrete"]
    assert {v.path: v.value for v in ckpt.inspect(path).values}["posix"] == "/data/x.bin"


def test_python_3_13_pathlib_names(tmp_path: Path) -> None:
    """Python 3.13 pickles paths as pathlib._local.PosixPath(raw path strings)."""
    data = b"\x80\x02}X\x01\x00\x00\x00pcpathlib._local\nPosixPath\nX\x04\x00\x00\x00/a/b\x85Rs."
    got = ckpt.load(write_raw(tmp_path / "p.pt", data), as_="numpy")
    assert got == {"p": pathlib.PurePosixPath("/a/b")}


@pytest.mark.parametrize("profiles", ["none", ["numpy"]])
def test_profiles_none_is_torchs_allowlist(tmp_path: Path, profiles: Any) -> None:
    path = write_checkpoint(tmp_path / "v.pt", {"r": range(3)})
    with pytest.raises(ckpt.UnsafeGlobalError, match="builtins.range"):
        ckpt.load(path, as_="numpy", profiles=profiles)
    assert ckpt.load(path, as_="numpy", profiles=profiles, allow=["builtins.range"]) == {"r": range(3)}


# -- bad and hostile input -------------------------------------------------------------------------------


class Payload:
    """Pickles as a call of a dangerous function; ckpt must never make that call."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return self.func, self.args


def test_defaultdict_factories(tmp_path: Path) -> None:
    import os

    marker = tmp_path / "ran"
    good = write_checkpoint(tmp_path / "g.pt", {"d": defaultdict(int, {"a": 1})})
    assert ckpt.load(good, as_="numpy")["d"].default_factory is int
    evil = tmp_path / "e.pt"
    write_checkpoint(evil, {"d": defaultdict(os.system)})  # a factory that runs commands
    with pytest.raises(ckpt.UnsafeGlobalError, match="posix.system|nt.system"):
        ckpt.load(evil, as_="numpy")
    shown = ckpt.inspect(evil)
    assert [f.verdict for f in shown.findings] == ["dangerous"]
    allowed = ckpt.load(evil, as_="numpy", allow=[shown.findings[0].name])["d"]
    assert type(allowed) is InertObject and allowed.global_name == "collections.defaultdict"
    assert not marker.exists()


def test_hashing_checks_cover_records_and_arrays(tmp_path: Path) -> None:
    """A record or an array cannot become a dict key or a set member (they are unhashable)."""
    g = pickle.dumps
    data = (b"\x80\x02}" + g(argparse.Namespace, protocol=2)[2:-1] + b")\x81K\x01s.")
    with pytest.raises(ckpt.CorruptCheckpointError, match="cannot be a dict key"):
        ckpt.load(write_raw(tmp_path / "k.pt", data), as_="numpy", profiles="all")


@pytest.mark.parametrize("case", ["slice", "range", "frozenset", "datetime", "date", "timezone", "bytes", "path"])
def test_bad_arguments_are_clear_errors(tmp_path: Path, case: str) -> None:
    calls = {
        "slice": b"c__builtin__\nslice\n(X\x01\x00\x00\x00at",
        "range": b"c__builtin__\nxrange\n(K\x00K\x05K\x00t",
        "frozenset": b"c__builtin__\nfrozenset\n(]]aa\x85",
        "datetime": b"cdatetime\ndatetime\nC\x03abc\x85",
        "date": b"cdatetime\ndate\nC\x04\x07\xe8\x0d\x01\x85",  # month 13
        "timezone": b"cdatetime\ntimezone\nK\x01\x85",
        "bytes": b"c__builtin__\nbytes\nX\x01\x00\x00\x00a\x85",
        "path": b"cpathlib\nPosixPath\nK\x01\x85",
    }
    data = b"\x80\x03}X\x01\x00\x00\x00v" + calls[case] + b"Rs."
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.load(write_raw(tmp_path / "b.pt", data), as_="numpy")


def test_records_refuse_bad_state_and_arguments(tmp_path: Path) -> None:
    ns = b"cargparse\nNamespace\n"
    cases = {
        "args": ns + b"K\x01\x85\x81",                       # NEWOBJ with an argument
        "dunder": ns + b")\x81}X\x08\x00\x00\x00__dict__K\x01sb",  # a dunder field
        "state": ns + b")\x81K\x01b",                        # a state that is not a dict
        "items": ns + b")\x81X\x01\x00\x00\x00aK\x01s",       # SETITEM on a Namespace
    }
    for name, body in cases.items():
        data = b"\x80\x02}X\x01\x00\x00\x00v" + body + b"s."
        with pytest.raises(ckpt.CorruptCheckpointError):
            ckpt.load(write_raw(tmp_path / f"{name}.pt", data), as_="numpy", profiles="all")


def test_records_copy_and_pickle_like_plain_data(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.pt", {"args": argparse.Namespace(lr=0.1, dims=[1, 2])})
    args = ckpt.load(path, as_="numpy", profiles="all")["args"]
    for twin in (copy.copy(args), copy.deepcopy(args)):
        assert type(twin) is Record and twin == args and twin.type == "argparse.Namespace"
    assert b"ckpt.values" in pickle.dumps(args)  # a record pickles as ckpt's own data class
    with pytest.raises(AttributeError):
        args.__missing_dunder__  # special names are never fields


def test_open_takes_profiles_and_inspect_policy_shows_everything(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a.pt", {"args": argparse.Namespace(lr=0.1), "when": datetime.date(2020, 1, 1)})
    with pytest.raises(ckpt.UnsafeGlobalError):
        ckpt.open(path)
    with ckpt.open(path, profiles=["argparse"], allow=["datetime.date"]) as ck:
        assert ck.root["args"].lr == 0.1 and ck.root["when"] == datetime.date(2020, 1, 1) and ck.findings == []
    with ckpt.open(path, policy="inspect") as ck:
        assert type(ck.root["args"]) is Record and [f.name for f in ck.findings] == ["argparse.Namespace"]
