"""What a model held in the exact coded form (``transfer_dtype="compressed"``) or on disk
(the disk tier, beyond a host budget) shows of its weights outside a forward.

The coded form (or the file) is the weights' only host copy; between uses they point at a
shared placeholder (NaN). ``state_dict()`` gives, for each such weight, a :class:`CodedValue`:
a tensor with the weight's shape and dtype whose values are decoded on the host the first
time something needs them, so listing the keys (what ComfyUI does to map a LoRA's keys)
costs nothing, and the values are exact.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._pytree import tree_map


class CodedValue(torch.Tensor):
    """A coded weight's values, decoded on the host on first use."""

    @staticmethod
    def __new__(cls, runtime_ref, block: int, index: int, like: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, like.shape, strides=like.stride(), dtype=like.dtype,
                                                   device=torch.device("cpu"), requires_grad=False)

    def __init__(self, runtime_ref, block: int, index: int, like: torch.Tensor):
        self._runtime_ref, self._block, self._index, self._value = runtime_ref, block, index, None

    def decoded(self) -> torch.Tensor:
        if self._value is None:
            rt = self._runtime_ref()
            if rt is None or rt.closed:
                raise RuntimeError("PinStream: this state_dict entry belonged to a model that was detached or "
                                   "dropped; take the state_dict again")
            self._value = rt.host_value(self._block, self._index)
        return self._value

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            return x.decoded() if isinstance(x, CodedValue) else x

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))

    def data_ptr(self):  # raw readers (safetensors' save) get the decoded values
        return self.decoded().data_ptr()

    def untyped_storage(self):
        return self.decoded().untyped_storage()

    def numpy(self, *args, **kwargs):
        return self.decoded().numpy(*args, **kwargs)

    def __repr__(self):
        return f"CodedValue(shape={tuple(self.shape)}, dtype={self.dtype}, decoded={self._value is not None})"

    __torch_function__ = torch._C._disabled_torch_function_impl


def install_state_dict_hook(module: torch.nn.Module, runtime, coded: dict, apart: set) -> object:
    """``coded``: a weight's name (relative to ``module``) -> (block, index) in ``runtime``.
    The state_dict entries of those whose block is in ``apart`` when the state_dict is taken
    (a set the handle keeps up to date) become :class:`CodedValue` s. Returns the hook's
    handle. The hook holds the runtime weakly (the module owns its handle, which owns the
    runtime)."""
    ref = weakref.ref(runtime)

    def hook(_module, state_dict, prefix, _local_metadata):
        for name, (block, index) in coded.items():
            if block not in apart:
                continue
            key = prefix + name
            value = state_dict.get(key)
            if value is not None and not isinstance(value, CodedValue):
                state_dict[key] = CodedValue(ref, block, index, value)
        return state_dict

    return module._register_state_dict_hook(hook)
