"""``ckpt.load`` against torch, the oracle: live ``torch.load(weights_only=True)`` where torch is
installed, and the answers torch gave when the fixtures were made (``tests/fixtures/expected``).

Every fixture runs through every test (``oracle_name``); what ckpt should do with it follows from
the recorded torch result and the few documented places where ckpt differs on purpose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ckpt

# torch warns about pickle protocols, ComplexHalf and TypedStorage; none of it is under test
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Files ckpt refuses, each for a documented reason: (error class, words the message must contain).
REFUSED = {
    # a protocol-0 pickle spells each persistent id as str() of a tuple holding a class: nobody can read it
    "protocol_0": (ckpt.CorruptCheckpointError, "persistent id"),
    "unknown_global": (ckpt.UnsafeGlobalError, "argparse.Namespace"),
    "tensor_subclass": (ckpt.UnsafeGlobalError, "__main__.TaggedTensor"),
}
# ckpt reads these where torch's safe loader refuses them (pickle protocols other than 2)
READ_WHERE_TORCH_REFUSES = {"protocol_1", "protocol_3", "protocol_4", "protocol_5", "protocol_0_values", "empty_bytes"}
# ckpt.load(..., allow=...) reads these as inert data
ALLOWED_READS = {
    "unknown_global": ["argparse.Namespace"],
    "tensor_subclass": ["__main__.TaggedTensor"],
}


def _load_kwargs(exp: dict[str, Any]) -> dict[str, Any]:
    return dict(exp.get("load_kwargs", {}))


def _refusal(name: str) -> tuple[type, str] | None:
    return REFUSED.get(name)


# -- the recorded answers (no torch needed) ------------------------------------------------------


def test_fixture_table_is_complete(helpers):
    """Every fixture is either read like torch, read where torch refuses, or refused on purpose."""
    for name in helpers.ORACLE_NAMES:
        exp = helpers.expected(name)
        assert helpers.fixture_path(name).is_file(), name
        if exp["torch_load"] == "ok":
            assert name not in READ_WHERE_TORCH_REFUSES, name
        else:
            assert name in READ_WHERE_TORCH_REFUSES or name in REFUSED, f"{name}: torch refuses it: {exp['torch_load']}"


def test_torch_refusals_are_as_recorded(oracle_name, helpers):
    """The recorded torch answers themselves: which pickle protocols torch's safe loader refuses."""
    exp = helpers.expected(oracle_name)
    status = exp["torch_load"]
    expected_messages = {
        "protocol_0": "Unsupported operand 100",  # DICT (text opcodes)
        "protocol_0_values": "Unsupported operand 100",
        "protocol_1": "Unsupported operand 73",  # INT (bools as I01)
        "protocol_3": "Unsupported operand 67",  # SHORT_BINBYTES
        "protocol_4": "Unsupported operand 149",  # FRAME
        "protocol_5": "Unsupported operand 149",
        "unknown_global": "argparse.Namespace",
        "empty_bytes": "GLOBAL bytes",
        "tensor_subclass": "GLOBAL __main__.TaggedTensor",
    }
    if oracle_name in expected_messages:
        assert status != "ok" and expected_messages[oracle_name] in status["message"], status
    else:
        assert status == "ok", status


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_load_matches_recorded_torch(oracle_name, mmap, helpers):
    """ckpt.load (torch flavour) equals what torch.load returned when the fixture was made."""
    helpers.require_torch()
    exp = helpers.expected(oracle_name)
    path = helpers.fixture_path(oracle_name)
    refused = _refusal(oracle_name)
    if refused:
        with pytest.raises(refused[0], match=refused[1]):
            ckpt.load(path, mmap=mmap, **_load_kwargs(exp))
        return
    result = ckpt.load(path, mmap=mmap, **_load_kwargs(exp))
    # recorded without mmap; torch shares empty storages only with mmap
    helpers.compare_to_expected(result, exp, "torch", check_empty_storages=not mmap)


def _torch_reference(helpers: Any, name: str, **kw: Any) -> Any:
    """What live torch.load(weights_only=True) gives for fixture ``name`` (or for its twin)."""
    torch = helpers.require_torch()
    exp = helpers.expected(name)
    path = helpers.fixture_path(name)
    if exp["torch_load"] == "ok":
        return torch.load(path, weights_only=True, **kw)
    twin = helpers.twin_path(exp)
    if twin is None:
        pytest.skip("torch cannot load this file and it has no loadable twin")
    with pytest.raises(Exception):  # noqa: B017 - torch still refuses the file itself
        torch.load(path, weights_only=True, **kw)
    return torch.load(twin, weights_only=True, **kw)


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_load_matches_live_torch(oracle_name, mmap, helpers):
    """ckpt.load(path, mmap=...) equals torch.load(path, weights_only=True) of the same torch.

    Reference is torch without mmap: torch's own mmap path returns garbage for compressed
    records (the ``deflated`` fixture), which ckpt reads correctly.
    """
    torch = helpers.require_torch()
    exp = helpers.expected(oracle_name)
    if _refusal(oracle_name):
        pytest.skip("refused on purpose (see test_load_matches_recorded_torch)")
    kw = _load_kwargs(exp)
    reference = _torch_reference(helpers, oracle_name, **kw)
    result = ckpt.load(helpers.fixture_path(oracle_name), mmap=mmap, **kw)
    helpers.compare_loaded(result, reference, check_empty_storages=not mmap)
    if mmap and exp["torch_load"] == "ok" and exp.get("torch_mmap_matches"):
        torch_mmap = torch.load(helpers.fixture_path(oracle_name), weights_only=True, mmap=True, **kw)
        helpers.compare_loaded(result, torch_mmap)


def test_torch_mmap_garbles_deflated_records_but_ckpt_does_not(helpers):
    """A documented difference: torch's mmap slices compressed records raw; ckpt inflates them."""
    torch = helpers.require_torch()
    path = helpers.fixture_path("deflated")
    assert helpers.expected("deflated")["torch_mmap_matches"] is False
    good = torch.load(path, weights_only=True)
    garbled = torch.load(path, weights_only=True, mmap=True)
    assert not torch.equal(good["w"], garbled["w"])
    helpers.compare_loaded(ckpt.load(path, mmap=True), good)


def test_mmap_tensors_are_copy_on_write(tmp_path, helpers):
    """Writing to a tensor loaded with mmap=True never reaches the file (torch's MAP_PRIVATE)."""
    torch = helpers.require_torch()
    path = tmp_path / "cow.pt"
    path.write_bytes(helpers.fixture_path("views").read_bytes())
    before = path.read_bytes()
    loaded = ckpt.load(path, mmap=True)
    loaded["base"].add_(1)
    assert torch.equal(loaded["rows"], torch.load(path, weights_only=True)["rows"] + 1)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_files_fail_cleanly_and_name_the_reason(name, helpers):
    """Documented refusals raise ckpt's own errors (never a traceback from deep inside)."""
    refused = _refusal(name)
    path = helpers.fixture_path(name)
    for kw in ({"as_": "numpy"}, {"as_": "numpy", "mmap": True}):
        with pytest.raises(refused[0], match=refused[1]) as info:
            ckpt.load(path, **kw)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ckpt.CheckpointError)


def _safe_globals(torch: Any, name: str) -> list[Any]:
    """What torch needs allowlisted to load fixture ``name`` (classes stand in for __main__ ones)."""
    import argparse

    class TaggedTensor(torch.Tensor):
        pass

    return {
        "unknown_global": [argparse.Namespace],
        "empty_bytes": [bytes],
        "tensor_subclass": [(TaggedTensor, "__main__.TaggedTensor")],
    }[name]


@pytest.mark.parametrize("name", sorted(ALLOWED_READS))
def test_allow_reads_unknown_globals_as_inert_data(name, helpers):
    """ckpt.load(allow=[...]) reads what torch only reads under safe_globals, as inert data:
    a record of the call for objects, the plain tensor (attributes kept) for a tensor subclass."""
    from ckpt.values import InertObject

    exp = helpers.expected(name)
    path = helpers.fixture_path(name)
    allow = ALLOWED_READS[name]
    arrays = ckpt.load(path, allow=allow, as_="numpy")
    if name == "unknown_global":  # argparse.Namespace has a profile: allowed, it is a record
        assert arrays["args"] == {"lr": 0.1, "name": "run"} and arrays["args"].type == "argparse.Namespace"
        exp = {**exp, "root": {**exp["root"], "items": [i for i in exp["root"]["items"] if i[0] != "args"]}}
        arrays = {k: v for k, v in arrays.items() if k != "args"}
    helpers.compare_to_expected(arrays, exp, "numpy")
    inert = [v.global_name for v in arrays.values() if type(v) is InertObject]
    assert inert == ([] if name in ("tensor_subclass", "unknown_global") else allow)
    if not helpers.HAS_TORCH:
        return
    import argparse

    torch = helpers.require_torch()
    loaded = ckpt.load(path, allow=allow)
    if name != "unknown_global":
        helpers.compare_to_expected(loaded, exp, "torch")
    with torch.serialization.safe_globals(_safe_globals(torch, name)):
        reference = torch.load(path, weights_only=True)
    assert list(loaded) == list(reference)
    for key, value in reference.items():
        if type(value) is torch.Tensor:
            helpers.compare_loaded(loaded[key], value)
        elif isinstance(value, torch.Tensor):  # the subclass: same data and attributes, plain type
            assert type(loaded[key]) is torch.Tensor
            assert helpers.torch_view_bytes(loaded[key]) == helpers.torch_view_bytes(value)
            assert loaded[key].__dict__ == value.__dict__
        elif type(value) is argparse.Namespace:  # ckpt's profile: a record of the attributes
            assert loaded[key] == vars(value) and loaded[key].type == "argparse.Namespace"
        else:
            assert value == b"" and loaded[key].args == () and loaded[key].how == "reduce"


def test_trust_rebuilds_a_tensor_subclass_like_torch(helpers):
    """trust={name: cls} is the explicit choice to run cls: the result is torch's, type included."""
    torch = helpers.require_torch()
    path = helpers.fixture_path("tensor_subclass")
    (cls, name), = _safe_globals(torch, "tensor_subclass")
    with torch.serialization.safe_globals([(cls, name)]):
        reference = torch.load(path, weights_only=True)
    loaded = ckpt.load(path, trust={name: cls})
    assert type(loaded["t"]) is cls
    helpers.compare_loaded(loaded, reference)


def test_big_endian_values_as_torch_gives_them(helpers):
    """Torch-flavour loads byteswap exactly as torch does: v2 dtypes swapped, v3 dtypes left raw."""
    helpers.require_torch()
    exp = helpers.expected("big_endian")
    loaded = ckpt.load(helpers.fixture_path("big_endian"))
    original = exp["original"]
    for row in exp["tensors"]:
        data = helpers.torch_view_bytes(loaded[row["path"]]).hex()
        assert data == row["data"], row["path"]
        swapped_by_torch = row["path"] not in ("u16", "u32", "c32")
        assert (data == original[row["path"]]["data"]) == swapped_by_torch, row["path"]


# -- map_location ---------------------------------------------------------------------------------


def _cuda_count(torch: Any) -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _map_location_cases(torch: Any) -> list[tuple[str, Any]]:
    return [
        ("str", "cpu"),
        ("device", torch.device("cpu")),
        ("dict", {"cuda:0": "cpu", "cuda:1": "cpu"}),
        ("dict_to_device_str", {"cuda:0": "cpu", "cuda:1": "cpu", "cpu": "cpu"}),
        ("callable", lambda storage, tag: storage),
    ]


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("case", ["str", "device", "dict", "dict_to_device_str", "callable"])
def test_map_location_on_cuda_tagged_storages(case, mmap, helpers):
    torch = helpers.require_torch()
    path = helpers.fixture_path("cuda_tagged")
    map_location = dict(_map_location_cases(torch))[case]
    reference = torch.load(path, weights_only=True, map_location=map_location)
    result = ckpt.load(path, map_location=map_location, mmap=mmap)
    helpers.compare_loaded(result, reference, check_empty_storages=not mmap)
    helpers.compare_to_expected(result, helpers.expected("cuda_tagged"), "torch", check_empty_storages=not mmap)


def test_map_location_dict_to_meta(helpers):
    """A dict that sends tags to 'meta': storages read, then restored on meta (never shared)."""
    torch = helpers.require_torch()
    path = helpers.fixture_path("cuda_tagged")
    map_location = {"cuda:0": "meta", "cuda:1": "cpu", "cpu": "meta"}
    reference = torch.load(path, weights_only=True, map_location=map_location)
    assert reference["w0"].device.type == "meta" and reference["w1"].device.type == "cpu"
    helpers.compare_loaded(ckpt.load(path, map_location=map_location), reference)


def test_map_location_bytes_is_read_as_text(helpers):
    """A documented leniency: map_location=b'cpu' works in ckpt; torch 2.13 raises TypeError
    (its tag regex is a str pattern) although its docs accept bytes."""
    torch = helpers.require_torch()
    path = helpers.fixture_path("cuda_tagged")
    with pytest.raises(TypeError):
        torch.load(path, weights_only=True, map_location=b"cpu")
    reference = torch.load(path, weights_only=True, map_location="cpu")
    helpers.compare_loaded(ckpt.load(path, map_location=b"cpu"), reference)


def test_map_location_callable_sees_what_torch_shows_it(helpers):
    """A callable map_location is called once per storage with a CPU UntypedStorage and the tag."""
    torch = helpers.require_torch()
    path = helpers.fixture_path("cuda_tagged")

    def recorder(calls: list[tuple[Any, ...]]) -> Any:
        def f(storage: Any, tag: str) -> Any:
            calls.append((type(storage).__name__, str(storage.device), storage.nbytes(), tag))
            return storage

        return f

    theirs: list[tuple[Any, ...]] = []
    ours: list[tuple[Any, ...]] = []
    reference = torch.load(path, weights_only=True, map_location=recorder(theirs))
    result = ckpt.load(path, map_location=recorder(ours))
    assert ours == theirs
    assert sorted({c[3] for c in ours}) == ["cpu", "cuda:0", "cuda:1"]
    helpers.compare_loaded(result, reference)


def test_map_location_callable_returning_none_falls_back_to_the_tag(helpers):
    torch = helpers.require_torch()
    path = helpers.fixture_path("views")
    reference = torch.load(path, weights_only=True, map_location=lambda s, tag: None)
    helpers.compare_loaded(ckpt.load(path, map_location=lambda s, tag: None), reference)


@pytest.mark.parametrize("map_location", [None, "partial_dict"])
def test_map_location_that_leaves_cuda_fails_like_torch(map_location, helpers):
    """Without CUDA, cuda-tagged storages fail in ckpt exactly as in torch (same error, same text)."""
    torch = helpers.require_torch()
    if map_location == "partial_dict":
        map_location = {"cuda:0": "cpu"}  # leaves cuda:1 as it is
        need = 2
    else:
        need = 2
    if _cuda_count(torch) >= need:
        pytest.skip("this machine has the GPUs the file names")
    path = helpers.fixture_path("cuda_tagged")
    with pytest.raises(Exception) as theirs:
        torch.load(path, weights_only=True, map_location=map_location)
    with pytest.raises(Exception) as ours:
        ckpt.load(path, map_location=map_location)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
    assert helpers.expected("cuda_tagged")["torch_load_default_map_location"]["error"] == type(theirs.value).__name__


@pytest.mark.cuda
def test_map_location_none_restores_cuda_storages(helpers):
    """On a machine with CUDA: storages tagged cuda:N land on cuda:N, as torch puts them."""
    torch = helpers.require_torch()
    if _cuda_count(torch) < 1:
        pytest.skip("needs CUDA")
    path = helpers.fixture_path("cuda_tagged")
    map_location = None if _cuda_count(torch) >= 2 else {"cuda:1": "cuda:0"}
    reference = torch.load(path, weights_only=True, map_location=map_location)
    result = ckpt.load(path, map_location=map_location)
    helpers.compare_loaded(result, reference)
    assert result["w0"].device.type == "cuda"


@pytest.mark.parametrize("meta", ["meta", "device"])
def test_map_location_meta_reads_no_data(oracle_name, meta, helpers):
    """map_location='meta' (or torch.device('meta')): metadata and storage sharing as torch gives them."""
    torch = helpers.require_torch()
    if _refusal(oracle_name):
        pytest.skip("refused on purpose")
    if oracle_name == "big_endian":
        pytest.skip("torch 2.13 segfaults here (byteswap of a meta storage); see the test below")
    map_location = "meta" if meta == "meta" else torch.device("meta")
    if oracle_name == "quantized":  # torch has no quantized meta tensors; ckpt says so
        with pytest.raises(NotImplementedError):
            _torch_reference(helpers, oracle_name, map_location=map_location)
        with pytest.raises(ckpt.UnsupportedFeatureError, match="meta"):
            ckpt.load(helpers.fixture_path(oracle_name), map_location=map_location)
        return
    reference = _torch_reference(helpers, oracle_name, map_location=map_location)
    result = ckpt.load(helpers.fixture_path(oracle_name), map_location=map_location)
    helpers.compare_loaded(result, reference, check_bytes=False)


def test_map_location_meta_on_a_big_endian_file(helpers):
    """torch.load(big-endian file, map_location='meta') crashes torch 2.13 (it byteswaps the meta
    storage); ckpt returns the meta tensors, no storage shared, metadata as torch's normal load."""
    torch = helpers.require_torch()
    path = helpers.fixture_path("big_endian")
    reference = torch.load(path, weights_only=True)
    result = ckpt.load(path, map_location="meta")
    assert list(result) == list(reference)
    storages = set()
    for key, t in result.items():
        ref = reference[key]
        assert t.device.type == "meta", key
        assert (t.dtype, t.shape, t.stride(), t.storage_offset(), type(t)) == (
            ref.dtype, ref.shape, ref.stride(), ref.storage_offset(), type(ref)), key
        assert t.untyped_storage().nbytes() == ref.untyped_storage().nbytes(), key
        storages.add(t.untyped_storage()._cdata)
    assert len(storages) == len(result)  # as torch does for meta: every tensor its own storage


# -- the numpy flavour (no torch needed) ------------------------------------------------------------

NUMPY_REFUSED = {
    "meta": (ckpt.UnsupportedFeatureError, "meta"),
    # float4_e2m1fn_x2 packs two values per byte: no exact numpy upcast (documented in ckpt.numpy_out)
    "dtypes": (ckpt.UnsupportedFeatureError, "float4_e2m1fn_x2"),
}


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("unsupported_dtype", ["upcast", "raw"])
def test_numpy_flavour_matches_recorded_torch(oracle_name, unsupported_dtype, mmap, helpers):
    exp = helpers.expected(oracle_name)
    path = helpers.fixture_path(oracle_name)
    refused = _refusal(oracle_name) or (
        NUMPY_REFUSED.get(oracle_name) if (oracle_name != "dtypes" or unsupported_dtype == "upcast") else None
    )
    kw = {"as_": "numpy", "unsupported_dtype": unsupported_dtype, "mmap": mmap}
    if oracle_name == "cuda_tagged":
        kw["map_location"] = "cpu"
    if refused:
        with pytest.raises(refused[0], match=refused[1]):
            ckpt.load(path, **kw)
        return
    result = ckpt.load(path, **kw)
    original = None
    if oracle_name == "big_endian":
        # the numpy flavour honours the byteorder record for every dtype; torch skips v3 dtypes
        original = exp["original"]
    if oracle_name == "quantized":
        # numpy has no quantized arrays: a record of the stored integers and the quantizer
        q = result.pop("q")
        assert q.type == "torch.quantized" and q["qscheme"] == "per_tensor_affine"
        assert (q["scale"], q["zero_point"], q["int_repr"].tolist()) == (0.5, 1, [2, 3, 0])
        exp = {**exp, "root": {**exp["root"], "items": [i for i in exp["root"]["items"] if i[0] != "q"]}}
    helpers.compare_to_expected(result, exp, "numpy", unsupported_dtype=unsupported_dtype, original=original)


def test_numpy_upcast_of_exotic_dtypes_equals_torch_conversion(helpers):
    """bfloat16, float8 (all five) and complex32 upcast to what torch's .to(float32/complex64) gives."""
    exp = helpers.expected("dtypes")
    rows = {r["path"]: r for r in exp["tensors"]}
    seen = set()
    with ckpt.open(helpers.fixture_path("dtypes")) as ck:
        for path, ref in ck.tensors():
            row = rows[path]
            if "upcast" not in row:
                continue
            arr = ref.numpy(unsupported_dtype="upcast")
            want = np.frombuffer(bytes.fromhex(row["upcast"]["data"]), dtype=row["upcast"]["dtype"]).reshape(arr.shape)
            assert helpers.same_values(arr, want), (path, arr, want)
            raw = ref.numpy(unsupported_dtype="raw")
            assert helpers.array_bytes(raw).hex() == row["data"], path
            seen.add(row["dtype"])
    assert seen == {"bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz",
                    "float8_e8m0fnu", "complex32"}


def test_numpy_error_mode_names_the_dtype(helpers):
    with pytest.raises(ckpt.UnsupportedFeatureError, match="bfloat16"):
        ckpt.load(helpers.fixture_path("shapes"), as_="numpy", unsupported_dtype="error")


def test_numpy_flavour_refuses_other_devices(helpers):
    with pytest.raises(ValueError, match="map_location"):
        ckpt.load(helpers.fixture_path("views"), as_="numpy", map_location="meta")
