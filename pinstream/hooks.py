"""The forward hooks that drive a handle's runtime, and the pass lock.

* root pre-hook        ``begin_pass``  (learning the block order on the first pass)
* block pre-hook       ``acquire(i)``  compute waits for block i's upload; the next
                                         ``prefetch`` blocks are queued on the copy queue
* block post-hook      ``release(i)``  (runs even when the block raises)
* root post-hook       ``end_pass``    (runs even when the forward raises)

One forward at a time per offloaded model: the slots and the learned order are the
model's, not the thread's. The module owns its handle; no hook holds the handle itself
(only a weak reference), so there is no reference cycle through the module and a
dropped model gives its pinned memory back by reference counting.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

from .wrappers import show_all


class PassHooks:
    def __init__(self, handle):
        self._handle = weakref.ref(handle)
        self._removables: list = []
        self._lock = threading.Lock()
        self.pass_owner: threading.Thread | None = None
        self.per_block = False  # block hooks installed (streaming plans, fp8 transfer)

    # ---- installing ------------------------------------------------------------------
    def install(self, module: nn.Module, *, rt, whole_model: bool, per_block: bool, block_ids, blocks,
                wrappers: dict) -> None:
        """Hooks for ``module``: load_state_dict into the host copy always; a reload on use
        (``whole_model``: model_offload / full_load as stored); or the pass and per-block
        hooks (``per_block``)."""
        ref = self._handle
        # load_state_dict() (on the model or any of its modules) writes into the host
        # copy: the device copies and prefetched slots are dropped first.
        def before_load_state_dict(*args):
            h = ref()
            if h is not None:
                h._before_load_state_dict(*args)

        for sub in module.modules():
            if hasattr(sub, "register_load_state_dict_pre_hook"):
                self._removables.append(sub.register_load_state_dict_pre_hook(before_load_state_dict))
            else:  # torch before its public form
                self._removables.append(sub._register_load_state_dict_pre_hook(before_load_state_dict,
                                                                                with_module=True))
        if whole_model:
            def reload(_mod, _args):
                h = ref()
                if h is not None and not rt.loaded:
                    h.load()
                rt.check_placement()

            self._removables.append(module.register_forward_pre_hook(reload))
            return
        if per_block:
            self._install_pass_hooks(module, rt, block_ids, blocks, wrappers)

    def _install_pass_hooks(self, module, rt, block_ids, blocks, wrappers) -> None:
        ref = self._handle
        wrapped_blocks = [k for k in wrappers if k is not None]

        def begin(_mod, args, kwargs):
            me = threading.current_thread()
            with self._lock:
                owner = self.pass_owner
                if owner is not None and owner is not me and owner.is_alive():
                    raise RuntimeError(
                        f"PinStream: a forward of this offloaded model is already running in thread "
                        f"{owner.name!r}; one forward at a time per offloaded model (its device slots "
                        f"are shared). Run the forwards one after another (e.g. under a lock), or "
                        f"offload a separate copy of the model per thread")
                # Same thread (or a thread that died): a pass left open by a forward that a
                # BaseException (KeyboardInterrupt) interrupted; begin_pass() ends it.
                self.pass_owner = me
            h = ref()
            if h is not None:
                if torch.is_grad_enabled():
                    h._check_no_grad(args, kwargs)
                h._follow_ram(kwargs)
                if not rt.loaded:
                    h.load()
            rt.begin_pass()

        def end(_mod, _args, _out):
            owner = self.pass_owner
            if owner is not None and owner is not threading.current_thread():
                return  # this thread's begin was refused: the open pass is another thread's
            try:
                rt.end_pass()
            finally:
                self.pass_owner = None
            h = ref()
            if h is not None:
                h._warm_others()
            for k in wrapped_blocks:
                show_all(wrappers[k], False)

        begin_handle = module.register_forward_pre_hook(begin, with_kwargs=True)
        self._removables.append(begin_handle)
        self._removables.append(module.register_forward_hook(end, always_call=True))
        self.per_block = True
        for index, (bid, (_name, block)) in enumerate(zip(block_ids, blocks)):
            slots = wrappers.get(index)
            if isinstance(block, nn.Sequential):
                # A Sequential block may be iterated without being called (ComfyUI's
                # UNet runs a TimestepEmbedSequential's children itself): hook every
                # child that holds weights; touch() acquires on first use and
                # releases the block used before.
                acquire, release = rt.touch, rt.release_touched
                if slots:
                    def acquire(_id, _touch=rt.touch, _index=index):
                        _touch(_id)  # releases the block touched before: its wrappers go back
                        for k in wrapped_blocks:
                            show_all(wrappers[k], k == _index)

                for sub in block.modules():
                    if sub is not block and (any(True for _ in sub.parameters(recurse=False))
                                             or any(True for _ in sub.buffers(recurse=False))):
                        self._removables.append(sub.register_forward_pre_hook(
                            lambda _m, _a, _t=acquire, _id=bid: _t(_id)))
            else:
                acquire, release = rt.acquire, rt.release_if_acquired
                if slots:
                    def acquire(_id, _acquire=acquire, _slots=slots):
                        _acquire(_id)
                        show_all(_slots, True)
            if slots:
                def release(_id, _release=release, _slots=slots):
                    _release(_id)
                    show_all(_slots, False)

            def pre(_mod, _args, _acquire=acquire, _id=bid):
                _acquire(_id)

            def post(_mod, _args, _out, _release=release, _id=bid):
                _release(_id)

            self._removables.append(block.register_forward_pre_hook(pre))
            self._removables.append(block.register_forward_hook(post, always_call=True))

    def keep(self, removable) -> None:
        """A hook installed elsewhere, removed with these."""
        self._removables.append(removable)

    def remove(self) -> None:
        for r in self._removables:
            r.remove()
        self._removables.clear()
        self.per_block = False

    # ---- the pass lock -----------------------------------------------------------------
    def end_open_pass(self, rt, what: str) -> None:
        """Ends a pass left open (a forward interrupted by KeyboardInterrupt skips the hooks
        that end it); a forward running in another thread is an error."""
        me = threading.current_thread()
        with self._lock:
            owner = self.pass_owner
            if owner is not None and owner is not me and owner.is_alive():
                raise RuntimeError(f"PinStream: {what} while a forward of this offloaded model is running in "
                                   f"thread {owner.name!r}; call it after that forward returns")
            self.pass_owner = None
        rt.end_pass()
