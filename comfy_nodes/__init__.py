"""ComfyUI adapter of PinStream: nodes, ModelPatcher integration, stats.

``exports()`` returns the names the pack's ``__init__.py`` publishes: the V3
``comfy_entrypoint`` where the running ComfyUI validates V3 nodes' inputs as it
validates classic ones, else the classic ``NODE_CLASS_MAPPINGS``; never both (ComfyUI
would load only the classic).

Why not V3 wherever ``comfy_api.latest`` exists: before ComfyUI 0.8.0 (0.3.64, 0.3.75 and up
to 0.7.0) the prompt validator checks a combo value only when the input's type is the list
of options, the classic form; a V3 combo's type is "COMBO", so a wrong ``mode`` passed
submission and failed only when the node ran. ``v3_combo_values_validated()`` asks this
ComfyUI's own validator.
"""

from __future__ import annotations

import functools
import inspect
import logging

log = logging.getLogger("PinStream")

_PROBE_ID = "PinStreamComboValidationProbe"


def has_v3_api() -> bool:
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401

        return hasattr(io, "ComfyNode")
    except Exception:  # noqa: BLE001
        return False


def _finish(result):
    """The value of what validate_inputs returned: itself, or, for the async validator, the
    coroutine run to its end here (a probe with one constant input awaits nothing). A
    coroutine that would suspend is closed and counts as an answer we do not have."""
    if not inspect.iscoroutine(result):
        return result
    try:
        result.send(None)
    except StopIteration as done:
        return done.value
    result.close()
    raise RuntimeError("execution.validate_inputs suspended on a one-input probe node")


def _validate_probe(execution, value) -> tuple[bool, list]:
    prompt = {"1": {"class_type": _PROBE_ID, "inputs": {"choice": value}}}
    params = list(inspect.signature(execution.validate_inputs).parameters)
    args = (prompt, "1", {}) if params[0] == "prompt" else ("pinstream-combo-probe", prompt, "1", {})
    result = _finish(execution.validate_inputs(*args))
    return bool(result[0]), list(result[1])


@functools.lru_cache(maxsize=1)
def v3_combo_values_validated() -> bool:
    """Whether this ComfyUI's prompt validation rejects a V3 combo input's value that is not
    one of its options, asked of ComfyUI itself: a one-input V3 probe node is registered for
    a moment and ``execution.validate_inputs`` is given an allowed value (must pass) and one
    that is not (must fail with "value_not_in_list"). False when there is no V3 API or the
    answer is unclear (then the classic nodes, which every release validates, are used)."""
    if not has_v3_api():
        return False
    try:
        import execution
        import nodes as core_nodes
        from comfy_api.latest import io
    except Exception as e:  # noqa: BLE001 - not inside ComfyUI
        log.debug("PinStream: no ComfyUI validator to ask (%s); classic nodes", e)
        return False

    class ComboProbe(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id=_PROBE_ID, display_name=_PROBE_ID, category="PinStream",
                             inputs=[io.Combo.Input("choice", options=["allowed"])], outputs=[])

        @classmethod
        def execute(cls, choice):
            return io.NodeOutput()

    registry = core_nodes.NODE_CLASS_MAPPINGS
    if _PROBE_ID in registry:
        return False
    registry[_PROBE_ID] = ComboProbe
    try:
        ok_allowed, errors_allowed = _validate_probe(execution, "allowed")
        ok_other, errors_other = _validate_probe(execution, "not one of the options")
    except Exception as e:  # noqa: BLE001 - a validator we cannot drive: assume the worst
        log.warning("PinStream: could not ask ComfyUI's validator about V3 combos (%s); using classic nodes", e)
        return False
    finally:
        registry.pop(_PROBE_ID, None)
    if not ok_allowed:
        log.warning("PinStream: ComfyUI's validator refused the V3 probe's allowed value (%s); using classic nodes",
                    errors_allowed)
        return False
    return not ok_other and any(e.get("type") == "value_not_in_list" for e in errors_other)


def use_v3() -> bool:
    """Export the V3 nodes: the V3 API exists and submission validates its combo values."""
    return has_v3_api() and v3_combo_values_validated()


def exports(prefer_v3: bool = True) -> dict:
    from pinstream.native import native_available, native_error

    if not native_available():
        log.warning("PinStream: the native runtime is not built (%s). The nodes load and pass models through "
                    "unchanged; run `python install.py` in the PinStream folder and restart ComfyUI.", native_error())
    if prefer_v3 and use_v3():
        from .v3 import comfy_entrypoint

        return {"comfy_entrypoint": comfy_entrypoint}
    from .classic import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    return {"NODE_CLASS_MAPPINGS": NODE_CLASS_MAPPINGS, "NODE_DISPLAY_NAME_MAPPINGS": NODE_DISPLAY_NAME_MAPPINGS}
