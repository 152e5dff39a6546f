"""The one exception hierarchy of ckpt.

Every error ckpt raises on purpose derives from :class:`CheckpointError`. Messages name the file,
the record or key involved, and what to do next, so a CLI can print them on one line.

>>> try:
...     raise CorruptCheckpointError("truncated", path="m.pt", record="m/data.pkl")
... except CheckpointError as e:
...     print(e)
m.pt: m/data.pkl: truncated
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error ckpt raises about a checkpoint or a call.

    ``path`` is the file concerned (if known), ``record`` the zip record, pickle or key inside it,
    ``hint`` what the user can do about it.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        record: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.record = record
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [p for p in (self.path, self.record) if p]
        text = ": ".join([*parts, self.message])
        if self.hint:
            text += f" ({self.hint})"
        return text

    def with_context(self, *, path: str | None = None, record: str | None = None) -> CheckpointError:
        """Fill in a path/record that the raiser did not know; returns self for ``raise e.with_context()``."""
        if path and not self.path:
            self.path = path
        if record and not self.record:
            self.record = record
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()


class NotACheckpointError(CheckpointError):
    """The bytes are not a checkpoint at all (an LFS pointer, an HTML page, an empty file, ...)."""


class UnsupportedFormatError(CheckpointError):
    """A checkpoint format or feature that ckpt recognises but does not read (yet)."""


class UnsupportedFeatureError(UnsupportedFormatError):
    """A feature inside a readable format (e.g. quantized tensors) that ckpt does not rebuild."""


class CorruptCheckpointError(CheckpointError):
    """The file claims to be a checkpoint but is damaged, truncated, ambiguous or inconsistent."""


class ResourceLimitError(CorruptCheckpointError):
    """A declared size, count or depth exceeds a limit set to protect memory and time."""


class UnsafeGlobalError(CheckpointError):
    """A pickle names a global outside the allowlist (strict policy).

    ``global_name`` is the ``module.name`` the file asked for.
    """

    def __init__(
        self,
        global_name: str,
        *,
        path: str | None = None,
        record: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.global_name = global_name
        if hint is None:
            hint = (
                f"nothing was executed; if you trust this file, allow it with "
                f"allow=[{global_name!r}] (CLI: --allow {global_name}) to read it as inert data"
            )
        super().__init__(
            f"the pickle references {global_name}, which is not on ckpt's allowlist",
            path=path,
            record=record,
            hint=hint,
        )


class UnsavableObjectError(CheckpointError, TypeError):
    """``ckpt.save`` was given an object it cannot write so that ``torch.load(weights_only=True)``
    reads it back (a custom class, a numpy scalar, a tensor subclass, ...).

    ``where`` is the object's place in what was saved: ``root['model']['step']``.
    """

    def __init__(self, message: str, *, where: list[object] | None = None, hint: str | None = None) -> None:
        self.detail = message
        self.where: list[object] = list(where or [])
        super().__init__(message, hint=hint)

    def _render(self) -> str:
        text = f"{_place(getattr(self, 'where', []))}: {getattr(self, 'detail', self.message)}"
        if self.path:
            text = f"{self.path}: {text}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def inside(self, key: object) -> UnsavableObjectError:
        """Prefix the place of the object with ``key`` (called while the error unwinds)."""
        self.where.insert(0, key)
        self.args = (self._render(),)
        return self


def _place(where: list[object]) -> str:
    """``root['a'][0].__dict__`` for a list of keys (``.attr`` and ``<key ...>`` parts as they are)."""
    parts = ["root"]
    for k in where:
        if isinstance(k, str) and k.startswith("."):
            parts.append(k)
        elif isinstance(k, str) and k.startswith("<"):
            parts.append(" " + k)
        else:
            parts.append(f"[{k!r}]")
    return "".join(parts)
