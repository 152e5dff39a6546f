"""How the restricted unpickler answers a global: the strict and inspect policies.

* ``strict`` (the default of :func:`ckpt.load`): a global outside the allowlist raises
  :class:`~ckpt.errors.UnsafeGlobalError` at once, naming it and how to allow it.
* ``inspect``: it becomes an inert :class:`~ckpt.values.GlobalRef` and a :class:`Finding`.

In both, names the caller lists in ``allow`` become inert data (never imports), and names in
``trust`` resolve to the real constructor the caller passed: an explicit choice to run it.
Globals ckpt has a :mod:`profile <ckpt.profiles>` for become what the profile builds when their
group is selected (``profiles``; by default the plain-value groups) or their name is allowed;
the inspect policy shows every profiled object as data, and still lists the ones outside the
selection as findings.

>>> p = Policy("strict", allow=["argparse.Namespace"])
>>> p.allows("argparse.Namespace"), p.allows("os.system")
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from .errors import UnsafeGlobalError
from .pickle_vm import Trusted
from .profiles import BY_NAME as PROFILES
from .profiles import groups as profile_groups
from .rebuild import Builder, canonical_name
from .values import GlobalRef
from .verdicts import verdict_for

MODES = ("strict", "inspect")


class Finding(NamedTuple):
    """Something in a file that a user should know before trusting it.

    ``verdict`` is ``dangerous`` (known to run code or touch the system) or ``unknown`` (not on
    ckpt's allowlist: ckpt never runs it, but ``pickle.load`` or ``torch.load(weights_only=False)``
    would); ``name`` the ``module.name`` asked for; ``record`` where, ``offset`` the opcode's byte
    offset in that pickle.
    """

    verdict: str
    name: str
    record: str | None
    offset: int | None
    message: str
    kind: str = "global"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "verdict": self.verdict,
            "global": self.name,
            "record": self.record,
            "offset": self.offset,
            "message": self.message,
        }


class Policy:
    """Which globals a load may reference beyond ckpt's allowlist, and what they become."""

    def __init__(
        self,
        mode: str = "strict",
        *,
        allow: Iterable[str] = (),
        trust: Mapping[str, Callable[..., Any]] | None = None,
        profiles: str | Iterable[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"policy mode must be one of {MODES}, not {mode!r}")
        if isinstance(allow, str):
            allow = [allow]
        self.mode = mode
        self.allow = frozenset(allow)
        self.trust = dict(trust or {})
        self.profiles = profile_groups(profiles)
        """The profile groups whose globals are read without being named in ``allow``."""
        for name, obj in self.trust.items():
            if not callable(obj):
                raise TypeError(f"trust[{name!r}] must be a callable (the constructor to run)")

    def allows(self, qualname: str) -> bool:
        return qualname in self.allow or qualname in self.trust


class Resolver:
    """The ``resolve(module, name, offset)`` callback for one pickle: allowlist, then policy.

    Collects :class:`Finding` objects in ``findings`` (inspect mode).
    """

    def __init__(
        self,
        policy: Policy,
        builder: Builder,
        *,
        path: str | None,
        record: str | None,
        findings: list[Finding],
    ) -> None:
        self.policy = policy
        self.builder = builder
        self.table = builder.table
        self.path = path
        self.record = record
        self.findings = findings
        self._seen: dict[str, Any] = {}

    def __call__(self, module: str, name: str, offset: int | None = None) -> Any:
        module, name = canonical_name(module, name)
        qualname = f"{module}.{name}"
        value = self.table.get(qualname)
        if value is not None:
            return value
        policy = self.policy
        if qualname in policy.trust:
            return Trusted(qualname, policy.trust[qualname])
        profile = PROFILES.get(qualname)
        if profile is not None and (profile.group in policy.profiles or qualname in policy.allow):
            return self.builder.profile_value(qualname)
        if qualname in policy.allow:
            return GlobalRef(module, name)
        if policy.mode == "strict":
            hint = None
            if profile is not None:
                hint = (
                    f"nothing was executed; ckpt reads it as inert data with its {profile.group!r} profile if you "
                    f"ask: profiles=[{profile.group!r}] or allow=[{qualname!r}] (CLI: --allow {qualname})"
                )
            raise UnsafeGlobalError(qualname, path=self.path, record=self.record, hint=hint)
        if qualname not in self._seen:
            if profile is not None:
                verdict, why = "unknown", (
                    f"{qualname} is shown as data by ckpt's {profile.group!r} profile; ckpt.load reads it only "
                    f"when asked (profiles=[{profile.group!r}] or allow=[{qualname!r}])"
                )
            else:
                verdict, why = verdict_for(qualname, name)
            self.findings.append(
                Finding(verdict, qualname, self.record, offset, why)
            )
            self._seen[qualname] = True
        if profile is not None:
            return self.builder.profile_value(qualname)
        return GlobalRef(module, name)
