"""Loading the native runtime (pinstream._C), with an error that says how to build it."""

from __future__ import annotations

_NATIVE = None
_ERROR: str | None = None


class NativeUnavailable(ImportError):
    """pinstream._C is missing or does not import."""


def load_native():
    """Return the pinstream._C module or raise NativeUnavailable with the fix."""
    global _NATIVE, _ERROR
    if _NATIVE is not None:
        return _NATIVE
    try:
        import torch  # noqa: F401 - the extension links against torch's libraries

        from . import _C  # type: ignore[attr-defined]
    except ImportError as e:
        _ERROR = str(e)
        raise NativeUnavailable(
            "PinStream's native runtime (pinstream._C) is not built or does not import "
            f"({e}). Build it with `python install.py` in the PinStream folder "
            "(inside ComfyUI's Python environment when used as a node pack)."
        ) from e
    _NATIVE = _C
    return _C


def native_available() -> bool:
    try:
        load_native()
        return True
    except NativeUnavailable:
        return False


def native_error() -> str | None:
    return _ERROR
