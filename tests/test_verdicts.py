"""The verdict lists (ckpt/verdicts.py), entry by entry, and end to end through the scanner.

Every entry of every list has a test here: a name inside each dangerous module, each dangerous
name, each dangerous attribute, each "only unknown" name. The published bypasses of other
scanners (user-needs-and-attacks.md §2 C1-C9) are each checked by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt.rebuild import Builder, canonical_name
from ckpt.scanner import allowlist, scan_file
from ckpt.verdicts import (
    DANGEROUS_ATTRIBUTES, DANGEROUS_MODULES, DANGEROUS_NAMES, NOT_DANGEROUS, verdict_for, worst,
)

import scan_kit as K


def _pickle_naming(module: str, name: str) -> bytes:
    """Protocol 4: STACK_GLOBAL of the name (dotted names work), called with a harmless argument."""
    return K.proto(4) + K.u(module) + K.u(name) + K.STACK_GLOBAL + K.u("touch /nonexistent/marker") + K.TUPLE1 + K.REDUCE + K.STOP


def _scan_verdict(tmp_path: Path, module: str, name: str) -> str:
    p = tmp_path / "v.pkl"
    p.write_bytes(_pickle_naming(module, name))
    report = scan_file(p)
    module, name = canonical_name(module, name)  # Python 2 names (cPickle, commands, ...) are mapped
    found = [g for g in report.globals if g.name == f"{module}.{name}"]
    assert found, report.globals
    return found[0].verdict


@pytest.mark.parametrize("module", sorted(DANGEROUS_MODULES))
def test_every_dangerous_module(tmp_path: Path, module: str) -> None:
    for qualname in (f"{module}.anything", f"{module}.sub.module.thing"):
        verdict, why = verdict_for(qualname)
        assert verdict == "dangerous" and module in why, qualname
    assert verdict_for(module)[0] == "dangerous"
    assert _scan_verdict(tmp_path, module, "thing") == "dangerous"


@pytest.mark.parametrize("qualname", sorted(DANGEROUS_NAMES))
def test_every_dangerous_name(tmp_path: Path, qualname: str) -> None:
    verdict, why = verdict_for(qualname)
    assert verdict == "dangerous" and DANGEROUS_NAMES[qualname] in why
    module, name = qualname.rsplit(".", 1)
    # the allowlist is decided first (collections.defaultdict has a profile that checks its factory)
    assert _scan_verdict(tmp_path, module, name) == ("safe" if qualname in allowlist() else "dangerous")


@pytest.mark.parametrize("attribute", sorted(DANGEROUS_ATTRIBUTES))
def test_every_dangerous_attribute(tmp_path: Path, attribute: str) -> None:
    assert verdict_for(f"somepkg.Thing.{attribute}", f"Thing.{attribute}")[0] == "dangerous"
    assert verdict_for(f"somepkg.{attribute}")[0] == "dangerous"
    assert _scan_verdict(tmp_path, "somepkg", f"Model.{attribute}") == "dangerous"


@pytest.mark.parametrize("qualname", sorted(NOT_DANGEROUS))
def test_every_plain_value_name_is_only_unknown(tmp_path: Path, qualname: str) -> None:
    assert verdict_for(qualname)[0] == "unknown"
    module, name = qualname.rsplit(".", 1)
    expected = "safe" if qualname in allowlist() else "unknown"
    assert _scan_verdict(tmp_path, module, name) == expected


@pytest.mark.parametrize("qualname", [
    # C1-C9 of the attack survey: published blocklist gaps of other scanners
    "pip.main", "pip._internal.main", "asyncio.unix_events._UnixSubprocessTransport._start",
    "pkgutil.resolve_name", "importlib.import_module", "marshal.loads", "pydoc.locate", "types.CodeType",
    "types.FunctionType", "cloudpickle.cloudpickle._make_function", "cloudpickle.cloudpickle.subimport",
    "uuid._get_command_stdout", "imaplib.IMAP4_stream", "_pyrepl.pager.pipe_pager", "_osx_support._read_output",
    "_aix_support._read_cmd_output", "test.support.script_helper.assert_python_ok", "cProfile.run",
    "cProfile.runctx", "profile.run", "timeit.timeit", "code.InteractiveInterpreter.runcode",
    "idlelib.pyshell.ModifiedInterpreter.runcode", "idlelib.autocomplete.AutoComplete.get_entity",
    "lib2to3.pgen2.grammar.Grammar.loads", "doctest.debug_script", "ensurepip._run_pip", "trace.Trace.run",
    "_interpreters.run_string", "operator.attrgetter", "operator.itemgetter", "_operator.methodcaller",
    "operator.getitem", "operator.call", "functools.partial", "functools.reduce", "logging.FileHandler", "_io.FileIO",
    "io.open", "distutils.file_util.write_file", "shutil.rmtree", "shutil.copyfile", "urllib.request.urlopen",
    "ssl.get_server_certificate", "requests.api.get", "aiohttp.ClientSession", "smtplib.SMTP", "socket.create_connection",
    "pandas.read_csv", "pandas.io.parsers.readers.read_csv", "pandas.read_pickle",
    "torch.utils.collect_env.run", "torch._inductor.codecache.compile_file",
    "torch.jit.unsupported_tensor_ops.execWrapper",
    "torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression", "torch._dynamo.guards.GuardBuilder.get",
    "torch.utils.bottleneck.__main__.run_cprofile", "torch.serialization.load", "torch.load",
    "torch.utils._config_module.ConfigModule.load_config", "torch.utils.data.datapipes.utils.decoder.basichandlers",
    "torch.storage._load_from_bytes", "torch.hub.load", "torch.ops.load_library",
    "numpy.f2py.crackfortran.getlincoef", "numpy.testing._private.utils.runstring", "numpy.load",
    "mlflow.projects.backend.local._run_entry_point", "multiprocessing.util.spawnv_passfds",
    "transformers.AutoTokenizer.from_pretrained", "joblib.load", "os.system", "posix.system", "nt.system",
    "subprocess.Popen", "builtins.eval", "builtins.exec", "builtins.getattr", "builtins.__import__",
    "builtins.open", "builtins.compile", "builtins.setattr", "builtins.breakpoint", "sys.modules",
    "runpy._run_code", "pickle.loads", "_pickle.loads", "dill.loads", "copyreg.add_extension",
    "copyreg.extension.1", "ctypes.CDLL", "webbrowser.open", "pty.spawn",
])
def test_published_bypasses_are_dangerous(qualname: str) -> None:
    assert verdict_for(qualname)[0] == "dangerous", qualname


@pytest.mark.parametrize("qualname", [
    "argparse.Namespace", "collections.ChainMap", "string.Template",
    "copyreg._reconstructor", "builtins.object", "builtins.ValueError", "builtins.slice", "pathlib.PosixPath",
    "numpy.core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar",
    "__main__.Net", "torch.nn.modules.linear.Linear", "mypkg.test.Config", "mypkg.code.Encoder",
    "lightning.fabric.utilities.data.AttributeDict", "omegaconf.dictconfig.DictConfig",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "datetime.datetime", "decimal.Decimal", "pathlib.os",
])
def test_ordinary_classes_are_unknown_not_dangerous(qualname: str) -> None:
    assert verdict_for(qualname)[0] == "unknown", qualname


def test_dotted_names_are_judged_by_where_they_land() -> None:
    assert verdict_for("pathlib.os.system", "os.system") == ("dangerous", (
        "pathlib.os.system reaches os.system by attribute access (pickle resolves dotted names attribute by "
        "attribute): os.system is in os: operating-system calls (processes, files, environment)"))
    assert verdict_for("torch.serialization.load", "serialization.load")[0] == "dangerous"
    assert verdict_for("numpy.__builtins__", "__builtins__")[0] == "dangerous"  # one attribute, an introspection gadget
    assert verdict_for("numpy.__version__", "__version__")[0] == "unknown"  # other special names are plain values
    assert verdict_for("numpy.core.__builtins__.eval", "core.__builtins__.eval")[0] == "dangerous"
    assert verdict_for("argparse.Namespace.__init__.__globals__", "Namespace.__init__.__globals__")[0] == "dangerous"
    assert verdict_for("argparse.Namespace.copy", "Namespace.copy")[0] == "unknown"


def test_allowlisted_names_in_dangerous_modules_are_few_and_known() -> None:
    """The allowlist wins over the lists (safe is decided first); only these allowlisted names sit
    inside a module the lists call dangerous (a defaultdict's factory is checked by its profile)."""
    overlap = {n for n in allowlist() if verdict_for(n)[0] == "dangerous"}
    assert overlap == {"torch.serialization._get_layout", "collections.defaultdict"}


def test_worst() -> None:
    assert worst() == "safe"
    assert worst("safe", "unknown") == "unknown"
    assert worst("unknown", "dangerous", "safe") == "dangerous"
