"""TorchScript archives (torch.jit.save): tensors read, code never compiled or run.

The committed fixtures were made by torch.jit.script/trace + torch.jit.save; their answers are the
modules' own ``state_dict()`` (the generator checked that torch.jit.load gives the same on the files
it wrote; the tests never run an archive's code). Hand-made archives carry harmless payloads in
data.pkl, constants.pkl and code/ that would create a marker file if anything ran them.
"""

from __future__ import annotations

import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest

import ckpt
from ckpt.tensors import StorageRef, TensorRef
from ckpt.torchscript import TorchScriptReader, parse_code
from ckpt.values import InertObject
from formats_support import ReadRecorder, Raw, answer, call, fixture, glob, pk, pickle2, system_call

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_torch_refuses_weights_only_on_torchscript():
    status = answer("script")["torch_load"]
    assert status["error"] == "RuntimeError" and "TorchScript archives" in status["message"]


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("name", ["script", "traced"])
def test_load_is_the_state_dict(name, mmap, helpers):
    """ckpt.load returns the flat state dict torch.jit.load(path).state_dict() gives: the same keys
    in the same order, detached tensors, the tied weight sharing one storage, _metadata."""
    helpers.require_torch()
    result = ckpt.load(fixture(name), mmap=mmap)
    assert type(result) is OrderedDict
    helpers.compare_to_expected(result, answer(name), "torch")


@pytest.mark.parametrize("name", ["script", "traced"])
def test_numpy_flavour_is_the_state_dict(name, helpers):
    result = ckpt.load(fixture(name), as_="numpy")
    helpers.compare_to_expected(result, answer(name), "numpy")


def test_state_dict_of_a_module_scripted_here(tmp_path, helpers):
    """Live oracle: a module scripted and saved in this test, against its own state_dict()."""
    torch = helpers.require_torch()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1, bias=False))
            self.b = torch.nn.BatchNorm1d(3)
            self.register_buffer("mask", torch.tensor([True, False]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x * self.mask.float())

    torch.manual_seed(0)
    scripted = torch.jit.script(Net())
    path = tmp_path / "net.pt"
    torch.jit.save(scripted, str(path))
    reference = scripted.state_dict()
    loaded = ckpt.load(path)
    helpers.compare_loaded(loaded, reference)
    assert list(loaded) == ["mask", "a.0.weight", "a.0.bias", "a.2.weight", "b.weight", "b.bias",
                            "b.running_mean", "b.running_var", "b.num_batches_tracked"]


def test_open_shows_the_module_tree():
    exp = answer("script")
    with ckpt.open(fixture("script")) as ck:
        facts = ck.facts
        root = ck.root
        tensors = dict(ck.tensors())
    assert ck.format == "torchscript" and facts["format"] == "torchscript"
    assert type(root) is InertObject and root.global_name == "__torch__.ScriptNet"
    assert [m["path"] for m in facts["modules"]] == exp["module_paths"]
    rows = {m["path"]: m for m in facts["modules"]}
    assert rows[""]["parameters"] == ["scale"] and rows[""]["buffers"] == ["steps", "scratch"]
    assert rows["blocks.0.proj"] == {"path": "blocks.0.proj", "type": rows["blocks.0.proj"]["type"],
                                     "parameters": ["weight", "bias"], "buffers": [], "declared": True}
    assert rows["blocks.0.proj"]["type"].startswith("__torch__.torch.nn.modules.linear")
    assert all(m["declared"] for m in facts["modules"])
    # every tensor of the tree, state-dict ones and the rest (a plain attribute, a dict of tensors)
    assert set(exp["tensors"][i]["path"] for i in range(len(exp["tensors"]))) <= set(tensors)
    assert {"table", "lookup.k"} <= set(tensors)
    assert tensors["scale"].is_parameter and tensors["embed.weight"].is_parameter
    assert not tensors["steps"].is_parameter and not tensors["table"].is_parameter
    assert tensors["blocks.1.proj.weight"] is tensors["blocks.0.proj.weight"]  # tied
    assert facts["code_files"] and all(f.startswith("code/") and f.endswith(".py") for f in facts["code_files"])
    assert facts["debug_files"] == len(facts["code_files"])
    assert facts["extra_files"] == ["extra/meta.json"]
    assert facts["constants"] == {"values": 0, "tensors": 0, "nbytes": 0}
    assert any("never does" in n for n in facts["notes"])


def test_traced_constants_and_records():
    with ckpt.open(fixture("traced")) as ck:
        facts = ck.facts
    assert facts["constants"] == {"values": 1, "tensors": 1, "nbytes": 8}
    assert facts["other_records"] == ["traced_inputs.pkl"]
    assert [m["path"] for m in facts["modules"]] == ["", "lin"]


def _record_data_spans(path: Path, select: str) -> list[tuple[int, int]]:
    """``[start, stop)`` of the data of the records whose name contains ``select`` (local headers
    parsed here)."""
    raw = path.read_bytes()
    spans = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if select in info.filename and info.compress_size:
                nlen, xlen = struct.unpack_from("<2H", raw, info.header_offset + 26)
                start = info.header_offset + 30 + nlen + xlen
                spans.append((start, start + info.compress_size))
    return spans


def test_inspect_reads_no_tensor_bytes_and_runs_nothing(monkeypatch):
    """Inspect reads data.pkl, constants.pkl and the code's text; no storage and no debug pickle.
    (On a file this small the end-of-directory probe reads the whole file at once: that one read is
    the zip reader's and is bounded on large files; every other read is checked.)"""
    path = fixture("script")
    monkeypatch.setattr(StorageRef, "read", lambda *a: pytest.fail("inspect read a storage"))
    monkeypatch.setattr(TorchScriptReader, "readinto", lambda *a: pytest.fail("inspect read a storage"))
    recorder = ReadRecorder(monkeypatch, path)
    summary = ckpt.inspect(path)
    assert summary.findings == [] and summary.totals["tensors"] >= 9
    size = path.stat().st_size
    eocd_window = size - min(size, 22 + 0xFFFF)
    reads = [(a, b) for a, b in recorder.of(path) if not (a >= eocd_window and b == size) and not (a == 0 and b <= 512)]
    assert reads
    for start, stop in _record_data_spans(path, "/data/") + _record_data_spans(path, ".debug_pkl"):
        for a, b in reads:
            assert b <= start or a >= stop, (a, b, start, stop)


def test_cli_shows_modules_and_code(helpers):
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    result = CliRunner().invoke(cli, ["inspect", str(fixture("script"))])
    assert result.exit_code == 0, result.output
    assert "torchscript" in result.output and "modules:" in result.output
    assert "blocks.0.proj: __torch__.torch.nn.modules.linear" in result.output
    assert "code (never run by ckpt)" in result.output


def test_parse_code_reads_declarations_only():
    src = (
        "class A(Module):\n  __parameters__ = [\"w\", \"b\", ]\n  __buffers__ = [\"run\\\"x\", ]\n"
        "  w : Tensor\n  def forward(self: __torch__.A) -> Tensor:\n    __parameters__ = [\"not\", ]\n"
        "class B(object):\n  x : int\n"
    )
    classes = parse_code("__torch__.m", src)
    assert classes["__torch__.m.A"].parameters == ["w", "b"] and classes["__torch__.m.A"].buffers == ['run"x']
    assert classes["__torch__.m.A"].is_module and not classes["__torch__.m.B"].is_module


# -- hand-made archives: what is inert stays inert -------------------------------------------------------


def _tensor(key: str, numel: int, shape: tuple[int, ...], grad: bool = False) -> Raw:
    pid = Raw(b"(" + pk("storage") + bytes(glob("torch", "FloatStorage")) + pk(key) + pk("cpu") + pk(numel) + b"tQ")
    stride = tuple(1 for _ in shape)
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid, 0, shape, stride, grad,
                call(glob("collections", "OrderedDict")))


def _module(cls: str, attrs: dict) -> Raw:
    module, _, name = cls.rpartition(".")
    return Raw(bytes(glob(module, name)) + b")\x81" + pk(attrs) + b"b")


def _archive(path: Path, data_pkl: bytes, *, code: dict[str, str] | None = None, constants: bytes | None = None,
             storages: dict[str, int] | None = None, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for key, n in (storages or {"0": 2}).items():
            z.writestr(f"a/data/{key}", bytes(4 * n))
        z.writestr("a/data.pkl", data_pkl)
        for name, text in (code if code is not None else {
            "__torch__.py": 'class M(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n'
        }).items():
            z.writestr(f"a/code/{name}", text, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("a/constants.pkl", constants if constants is not None else b"\x80\x02).")
        for name, blob in (extra or {}).items():
            z.writestr(f"a/{name}", blob)
        z.writestr("a/version", "3\n")
    return path


def test_code_and_globals_in_an_archive_are_never_run(tmp_path, helpers):
    """Code under code/ that would create the marker, __torch__ names that spell os.system, a
    payload in constants.pkl and in data.pkl: nothing runs; the payloads meet the policy."""
    marker = tmp_path / "MARKER"
    evil_code = {
        "__torch__.py": f'import os\nos.system("touch {marker}")\nclass M(Module):\n  __parameters__ = ["w", ]\n'
                        f'  def __setstate__(self, state):\n    os.system("touch {marker}")\n',
    }
    tricky = pickle2(_module("__torch__.M", {"training": True, "w": _tensor("0", 2, (2,), True),
                                             "x": call(glob("__torch__.os", "system"), f"touch {marker}")}))
    path = _archive(tmp_path / "tricky.pt", tricky, code=evil_code)
    loaded = ckpt.load(path, as_="numpy")
    assert list(loaded) == ["w"]
    with ckpt.open(path) as ck:
        x = ck.root.state["x"]
        assert type(x) is InertObject and x.global_name == "__torch__.os.system" and x.args == (f"touch {marker}",)
    assert not marker.exists()

    evil_data = pickle2(_module("__torch__.M", {"training": True, "w": _tensor("0", 2, (2,)),
                                                "hook": system_call(marker)}))
    path = _archive(tmp_path / "evil_data.pt", evil_data)
    with pytest.raises(ckpt.UnsafeGlobalError, match="posix.system"):
        ckpt.load(path, as_="numpy")
    if helpers.HAS_TORCH:
        with pytest.raises(ckpt.UnsafeGlobalError, match="posix.system"):
            ckpt.load(path)
    summary = ckpt.inspect(path)
    assert [(f.name, f.verdict) for f in summary.findings] == [("posix.system", "dangerous")]

    evil_constants = pickle2((system_call(marker),))
    path = _archive(tmp_path / "evil_constants.pt", pickle2(_module("__torch__.M", {"w": _tensor("0", 2, (2,))})),
                    constants=evil_constants)
    with pytest.raises(ckpt.UnsafeGlobalError, match="posix.system"):
        ckpt.open(path)
    summary = ckpt.inspect(path)
    assert [f.name for f in summary.findings] == ["posix.system"] and summary.findings[0].record.endswith("constants.pkl")
    assert not marker.exists()


def test_declarations_missing_fall_back_to_requires_grad(tmp_path):
    data = pickle2(_module("__torch__.M", {"training": True, "p": _tensor("0", 2, (2,), True),
                                           "b": _tensor("1", 3, (3,), False)}))
    path = _archive(tmp_path / "nocode.pt", data, code={}, storages={"0": 2, "1": 3})
    loaded = ckpt.load(path, as_="numpy")
    assert list(loaded) == ["p", "b"]
    with ckpt.open(path) as ck:
        row = ck.facts["modules"][0]
        assert (row["parameters"], row["buffers"], row["declared"]) == (["p"], ["b"], False)
        assert any("told apart by requires_grad" in n for n in ck.facts["notes"])


def test_declared_parameter_that_is_not_a_tensor_is_an_error(tmp_path):
    data = pickle2(_module("__torch__.M", {"training": True, "w": "text"}))
    path = _archive(tmp_path / "bad.pt", data)
    with pytest.raises(ckpt.CorruptCheckpointError, match="w is declared a parameter or buffer but holds a str"):
        ckpt.load(path, as_="numpy")


def test_root_must_be_a_module(tmp_path):
    """No module tree, no state dict: ckpt.load refuses; inspect shows what is there, with a note."""
    path = _archive(tmp_path / "list.pt", pickle2([1, 2]))
    with pytest.raises(ckpt.CorruptCheckpointError, match="does not hold a TorchScript module"):
        ckpt.load(path, as_="numpy")
    summary = ckpt.inspect(path)
    assert summary.facts["modules"] == [] and any("not a TorchScript module" in n for n in summary.facts["notes"])


def test_pre_1_3_model_json_archives_are_refused(tmp_path):
    path = tmp_path / "old_script.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("old/model.json", "{}")
        z.writestr("old/constants.pkl", b"\x80\x02).")
        z.writestr("old/tensors/0", bytes(4))
    with pytest.raises(ckpt.UnsupportedFormatError, match="model.json"):
        ckpt.inspect(path)


def test_tensor_refs_of_the_tree(tmp_path):
    data = pickle2(_module("__torch__.M", {"training": True, "w": _tensor("0", 2, (2,), True)}))
    path = _archive(tmp_path / "one.pt", data)
    with ckpt.open(path) as ck:
        (name, ref), = ck.tensors()
        assert name == "w" and type(ref) is TensorRef and ref.is_parameter and ref.requires_grad
        assert ref.storage.read() == bytes(8)
