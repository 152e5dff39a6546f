"""Verdicts for globals that are not on ckpt's allowlist, kept as data.

Anything not allowlisted is at least ``unknown``: ckpt never runs it, but ``pickle.load`` or
``torch.load(weights_only=False)`` would. A name is ``dangerous`` when it (or a module it lives
in) is known to run code, spawn processes, touch files or the network, or resolve other names.

>>> verdict_for("os.system")[0], verdict_for("argparse.Namespace")[0]
('dangerous', 'unknown')
>>> verdict_for("posix.system")[0], verdict_for("builtins.eval")[0]
('dangerous', 'dangerous')
>>> verdict_for("pathlib.os.system", "os.system")[0]
'dangerous'

"""

from __future__ import annotations

# Whole modules (and their submodules) whose every callable can reach the system or run code.
DANGEROUS_MODULES: dict[str, str] = {
    "os": "operating-system calls (processes, files)",
    "posix": "operating-system calls (processes, files)",
    "nt": "operating-system calls (processes, files)",
    "subprocess": "runs programs",
    "sys": "interpreter internals",
    "runpy": "runs Python modules",
    "pickle": "unpickles nested data with no restrictions",
    "_pickle": "unpickles nested data with no restrictions",
    "cPickle": "unpickles nested data with no restrictions",
    "dill": "unpickles nested data with no restrictions",
    "cloudpickle": "rebuilds code objects",
    "marshal": "loads code objects",
    "importlib": "imports arbitrary modules",
    "pkgutil": "resolves arbitrary names",
    "pydoc": "resolves arbitrary names",
    "code": "runs Python source",
    "codeop": "compiles Python source",
    "pty": "spawns shells",
    "shutil": "copies, moves and deletes files",
    "socket": "opens network connections",
    "ctypes": "calls native code",
    "multiprocessing": "spawns processes",
    "asyncio": "spawns processes and opens connections",
    "webbrowser": "launches programs",
    "urllib": "network access",
    "http": "network access",
    "requests": "network access",
    "smtplib": "network access",
    "ftplib": "network access",
    "telnetlib": "network access",
    "ssl": "network access",
    "imaplib": "network access and command execution",
    "timeit": "runs Python source",
    "cProfile": "runs Python source",
    "profile": "runs Python source",
    "trace": "runs Python source",
    "doctest": "runs Python source",
    "pdb": "runs Python source",
    "bdb": "runs Python source",
    "idlelib": "runs Python source",
    "lib2to3": "runs Python source",
    "ensurepip": "runs pip",
    "pip": "installs and runs packages",
    "venv": "creates environments and runs programs",
    "distutils": "writes files and runs programs",
    "setuptools": "writes files and runs programs",
    "tempfile": "creates files",
    "glob": "reads the file system",
    "io": "opens files",
    "_io": "opens files",
    "fileinput": "opens files",
    "logging": "opens files",
    "operator": "attribute and item access on arbitrary objects (gadget builder)",
    "_operator": "attribute and item access on arbitrary objects (gadget builder)",
    "functools": "wraps arbitrary callables (gadget builder)",
    "types": "builds code and function objects",
    "uuid": "runs commands",
    "_osx_support": "runs commands",
    "_aix_support": "runs commands",
    "_pyrepl": "runs commands",
    "test": "runs commands",
    "_interpreters": "runs Python source",
    "_posixsubprocess": "runs programs",
    "numpy.f2py": "compiles and runs code",
    "numpy.testing": "runs Python source",
    "torch.utils.collect_env": "runs commands",
    "torch._inductor": "compiles and runs code",
    "torch.jit": "compiles and runs TorchScript",
    "torch.hub": "downloads and runs code",
    "torch.serialization": "loads nested checkpoints without restrictions",
    "torch.utils.bottleneck": "runs Python source",
    "torch._dynamo": "evaluates guard code",
    "torch.fx.experimental.symbolic_shapes": "evaluates guard code",
}

# Single names outside those modules.
DANGEROUS_NAMES: dict[str, str] = {
    "builtins.eval": "evaluates Python source",
    "builtins.exec": "runs Python source",
    "builtins.compile": "compiles Python source",
    "builtins.open": "opens files",
    "builtins.__import__": "imports arbitrary modules",
    "builtins.getattr": "reaches any attribute of any object",
    "builtins.setattr": "changes any attribute of any object",
    "builtins.delattr": "deletes attributes",
    "builtins.globals": "exposes interpreter state",
    "builtins.locals": "exposes interpreter state",
    "builtins.vars": "exposes interpreter state",
    "builtins.breakpoint": "starts a debugger",
    "builtins.input": "reads the terminal",
    "builtins.help": "starts a pager",
    "builtins.type": "builds classes",
    "builtins.object": "reaches every class through introspection",
    "builtins.super": "reaches parent classes",
    "builtins.memoryview": "exposes raw memory",
    "builtins.exit": "ends the process",
    "builtins.quit": "ends the process",
    "copyreg._reconstructor": "instantiates arbitrary classes",
    "copyreg.__newobj__": "instantiates arbitrary classes",
    "copyreg.__newobj_ex__": "instantiates arbitrary classes",
    "torch.load": "loads nested checkpoints without restrictions",
    "torch.storage._load_from_bytes": "loads nested checkpoints without restrictions",
    "torch.utils._config_module.ConfigModule.load_config": "unpickles nested data",
    "numpy.load": "loads nested files, possibly pickles",
    "numpy.lib.npyio.load": "loads nested files, possibly pickles",
    "pandas.read_pickle": "unpickles nested data",
    "pandas.io.pickle.read_pickle": "unpickles nested data",
    "joblib.load": "unpickles nested data",
    "string.Template": "formats attacker-chosen lookups",
    "collections.defaultdict": "calls an arbitrary factory on lookup",
    "weakref.finalize": "calls an arbitrary callback",
    "atexit.register": "runs a callback at exit",
    "signal.signal": "installs a handler",
    "copyreg.extension": "refers to the process-wide copyreg extension registry",
}


def verdict_for(qualname: str, name: str | None = None) -> tuple[str, str]:
    """``(verdict, reason)`` for a global that is not on ckpt's allowlist.

    ``name`` is the part after the module, when the caller knows it: a dotted name
    (``pathlib`` + ``os.system``) walks attributes the way ``pickle`` resolves it for protocol 4+,
    so it is judged by where it lands, and walking through special attributes (``__globals__``,
    ``__subclasses__``, ...) is an introspection chain.

    >>> verdict_for("pathlib.os.system", "os.system")[0]
    'dangerous'
    """
    verdict = _verdict(qualname)
    if verdict[0] == "dangerous" or not name or "." not in name:
        return verdict
    parts = name.split(".")
    special = [p for p in parts if p.startswith("__") and p.endswith("__")]
    if special:
        return "dangerous", f"{qualname} walks through the special attribute {special[0]} (an introspection chain)"
    for i in range(len(parts) - 1):
        inner = ".".join(parts[i:])
        inner_verdict, why = _verdict(inner)
        if inner_verdict == "dangerous":
            return "dangerous", f"{qualname} reaches {inner} by attribute access: {why}"
    return verdict


def _verdict(qualname: str) -> tuple[str, str]:
    if qualname in DANGEROUS_NAMES:
        return "dangerous", f"{qualname} {DANGEROUS_NAMES[qualname]}"
    module = qualname
    while "." in module:
        module = module.rsplit(".", 1)[0]
        if module in DANGEROUS_MODULES:
            return "dangerous", f"{qualname}: module {module} {DANGEROUS_MODULES[module]}"
        if module in DANGEROUS_NAMES:
            return "dangerous", f"{qualname}: {module} {DANGEROUS_NAMES[module]}"
    if qualname.startswith("copyreg.extension."):
        return "dangerous", f"{qualname}: an extension code resolved through process-wide copyreg state"
    return "unknown", f"{qualname} is not on ckpt's allowlist; ckpt did not run it, pickle.load would"
