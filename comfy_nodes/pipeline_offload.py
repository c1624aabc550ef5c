"""PinStream Offload (Pipeline): each torch module of a pipeline under a mode of its own.

What it takes: an ``nn.Module``; a diffusers pipeline (the modules in its ``components``);
or a dict holding modules and pipelines, like ComfyUI-FlashPortrait's
``FLASH_PORTRAIT_PIPE`` (a ``WanI2VLongPipeline`` plus its transformer, VAE, text encoder,
CLIP image encoder and portrait encoder under their own keys). A module found under two
names (the dict's ``clip_image_encoder`` and the pipeline's ``image_encoder``) is one
component, named by the dict.

What it does, in order:

1. **accelerate's hooks off.** A pipeline loaded with diffusers'
   ``enable_sequential_cpu_offload`` / ``enable_model_cpu_offload`` or accelerate's
   ``cpu_offload`` has hooks that move weights on every call, and sequential offload keeps
   the weights on the meta device with their values in the hook's weights map.
   ``remove_hook_from_module(m, recurse=True)`` puts every weight back where it was
   before the offload, with its value from the weights map; diffusers' offload state
   (``_all_hooks``, ``_offload_device``, ``_offload_gpu_id``) is reset so the pipeline
   does not put the hooks back after a run. A weight still on the meta device after that
   is an error that says what to do.
2. **Each component under its mode**, through :func:`pinstream.offload`: the weights
   are taken from wherever they are (CPU or GPU) into pinned host memory; nothing is
   uploaded until the component is used, and nothing moves the whole pipeline onto the
   GPU.
3. **The pipeline's own code keeps working.** A component's class gains
   :class:`ManagedComponent`: ``.to(device)``, ``.cuda()`` and ``.cpu()`` leave the
   weights where PinStream placed them (diffusers pipelines call them), and ``.device``
   is the device the component computes on (diffusers' ``_execution_device`` and
   FlashPortrait's pipeline create their tensors there). A component run whole
   (``model_offload``, ``full_load``) is loaded by the first use of any of its
   submodules, so entry points other than ``forward`` (``vae.decode``,
   ``portrait_encoder.get_adapter_proj``) work too.
   Every component is checked before any is managed.
4. **The components take turns on the device** (see :func:`_make_room`): the encoders,
   then the denoiser's budget, then the VAE, each with the room the others left. A switch
   costs an upload of the resident part, never a device-to-host copy.

Each component is listed by PinStream Stats as ``<pipeline>.<component>``. The memory
of a dropped pipeline comes back when its last reference goes: PinStream adds no
reference to it, and takes out the cycles accelerate's hook removal leaves.
"""

from __future__ import annotations

import logging
import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .patcher import _MANAGED, GIB, OffloadConfig, PinStreamState, _offload, disk_note

log = logging.getLogger("PinStream")

SKIP = "skip"
COMPONENT_MODES = ("auto", "full_load", "model_offload", "sequential", "budget", SKIP)


class PipelineError(ValueError):
    """A pipeline or a mode string this node cannot use; the message says what to do."""


# ---- finding the components --------------------------------------------------------------

def _pipeline_modules(obj) -> dict | None:
    """A diffusers-style pipeline's torch modules by name, or None when ``obj`` is none."""
    comps = getattr(obj, "components", None)
    if isinstance(obj, nn.Module) or not isinstance(comps, dict):
        return None
    return {k: v for k, v in comps.items() if isinstance(v, nn.Module)}


@dataclass
class Found:
    components: dict  # name -> nn.Module
    pipelines: list  # diffusers-style pipeline objects (their offload state is reset)
    label: str


def find_components(obj) -> Found:
    """The torch modules ``obj`` holds, by name (see the module docstring)."""
    comps: dict[str, nn.Module] = {}
    pipelines: list = []
    if isinstance(obj, nn.Module):
        return Found({"model": obj}, [], type(obj).__name__)
    own = _pipeline_modules(obj)
    if own is not None:
        return Found(dict(own), [obj], type(obj).__name__)
    if not isinstance(obj, dict):
        raise PipelineError(
            f"PinStream Offload (Pipeline) found no torch modules in a {type(obj).__name__}; it takes a torch "
            "nn.Module, a diffusers pipeline (its components), or a dict holding modules and pipelines (like "
            "FlashPortrait's FLASH_PORTRAIT_PIPE)")
    for key, value in obj.items():
        if isinstance(value, nn.Module):
            comps[str(key)] = value
        elif _pipeline_modules(value) is not None:
            pipelines.append((str(key), value))
    seen = {id(m) for m in comps.values()}
    for key, pipe in pipelines:
        for name, module in _pipeline_modules(pipe).items():
            if id(module) in seen:
                continue
            seen.add(id(module))
            comps[name if name not in comps else f"{key}.{name}"] = module
    if not comps:
        raise PipelineError(
            f"PinStream Offload (Pipeline) found no torch modules in this dict (keys: {', '.join(map(str, obj)) or 'none'}); "
            "it takes a torch nn.Module, a diffusers pipeline, or a dict holding modules and pipelines (like "
            "FlashPortrait's FLASH_PORTRAIT_PIPE)")
    label = type(pipelines[0][1]).__name__ if pipelines else "pipe"
    return Found(comps, [p for _k, p in pipelines], label)


_DENOISER_WORDS = {"transformer", "unet", "denoiser", "dit", "model", "prior", "controlnet"}


def role_of(name: str, module: nn.Module) -> str:
    """denoiser (transformer, unet, and a ControlNet, which runs at every step beside it),
    encoder (text, CLIP image, portrait encoders), vae, or other."""
    n = name.lower().rsplit(".", 1)[-1]
    words = set(re.split(r"[^a-z0-9]+", n.replace("_", " ")))
    cls = type(module).__name__.lower()
    if "vae" in words or "autoencoder" in n or cls.startswith("autoencoder"):
        return "vae"
    if "encoder" in n:
        return "encoder"
    if words & _DENOISER_WORDS or "transformer" in cls or "unet" in cls or "controlnet" in cls:
        return "denoiser"
    if "encoder" in cls or "clip" in cls or "t5" in cls:
        return "encoder"
    return "other"


def default_mode(role: str, vram_budget_gb: float) -> tuple[str, float | None]:
    """The denoiser streams (budget within vram_budget_gb when one is set, else
    sequential); encoders, the VAE and the rest are model-offloaded (on the device only
    while they run, one at a time)."""
    if role == "denoiser":
        return ("budget", vram_budget_gb) if vram_budget_gb > 0 else ("sequential", None)
    return "model_offload", None


# ---- the mode string -------------------------------------------------------------------------

@dataclass
class ComponentMode:
    mode: str  # one of COMPONENT_MODES
    budget_gb: float | None = None
    transfer_dtype: str = "auto"
    given: bool = False  # named in the mode string (else the role's default)


def _allowed_modes() -> str:
    from pinstream.modes import ALIASES

    return f"{', '.join(COMPONENT_MODES)} (or {', '.join(ALIASES)})"


_SYNTAX = ("write one component=mode per line or comma, e.g. 'transformer=budget:20, text_encoder=model_offload' "
           "(budget takes the GiB after a colon; skip leaves a component as it is)")


def parse_modes(text: str, names, vram_budget_gb: float = 0.0) -> dict[str, ComponentMode]:
    """{component: ComponentMode} from ``text`` ('transformer=budget:20, vae=model_offload');
    ``names`` are the pipeline's components. A PipelineError says what was wrong and
    what is allowed."""
    from pinstream.modes import ModeError, normalize_mode

    names = list(names)
    out: dict[str, ComponentMode] = {}
    for raw in re.split(r"[,;\n]", text or ""):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item:
            raise PipelineError(f"'{item}' has no '=': {_SYNTAX}. Components: {', '.join(names)}")
        name, _, spec = (s.strip() for s in item.partition("="))
        if name not in names:
            raise PipelineError(f"component '{name}' is not in this pipeline; its components: {', '.join(names)}")
        if name in out:
            raise PipelineError(f"component '{name}' is given a mode twice; give each component one mode")
        mode, _, gib = (s.strip() for s in spec.partition(":"))
        mode = mode.lower()
        transfer = "auto"
        if mode != SKIP:
            try:
                mode, transfer = normalize_mode(mode)
            except ModeError:
                raise PipelineError(f"mode '{spec}' for {name} is not one of {_allowed_modes()}; {_SYNTAX}") from None
        budget = None
        if gib:
            if mode not in ("budget", "auto"):
                raise PipelineError(f"'{item}': only budget and auto take GiB after a colon (budget:20); "
                                    f"{mode} takes none")
            try:
                budget = float(gib)
            except ValueError:
                budget = float("nan")
            if not budget > 0 or budget == float("inf"):
                raise PipelineError(f"'{item}': the GiB after the colon must be a number > 0, got '{gib}'")
        elif mode == "budget":
            if vram_budget_gb <= 0:
                raise PipelineError(f"'{item}': budget needs the VRAM this component may use: write {name}=budget:GiB "
                                    "(e.g. budget:20) or set vram_budget_gb")
            budget = vram_budget_gb
        out[name] = ComponentMode(mode, budget, transfer, given=True)
    return out


def plan_modes(found: Found, text: str, vram_budget_gb: float) -> dict[str, ComponentMode]:
    """The mode of every component: the one the text names, else its role's default."""
    given = parse_modes(text, found.components, vram_budget_gb)
    out = {}
    for name, module in found.components.items():
        if name in given:
            out[name] = given[name]
        else:
            mode, budget = default_mode(role_of(name, module), vram_budget_gb)
            out[name] = ComponentMode(mode, budget)
    return out


# ---- accelerate's hooks ----------------------------------------------------------------------

def _has_accelerate_hooks(module: nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def _group_offloaded(module: nn.Module) -> bool:
    try:
        from diffusers.hooks.group_offloading import _is_group_offload_enabled
    except Exception:  # noqa: BLE001 - no diffusers, or a release without group offloading
        return False
    try:
        return bool(_is_group_offload_enabled(module))
    except Exception:  # noqa: BLE001
        return False


def _drop_restored_forwards(module: nn.Module) -> None:
    """accelerate's hook removal puts each module's own forward back as an instance
    attribute (``module.forward = module._old_forward``, a method bound to the module): a
    reference cycle, so the module, and the memory PinStream gives it, would outlive its
    last reference until the next garbage collection. Where that attribute is just the
    class's forward, it goes (the class's is the same method)."""
    for m in module.modules():
        bound = m.__dict__.get("forward")
        if (bound is not None and getattr(bound, "__self__", None) is m
                and getattr(bound, "__func__", None) is getattr(type(m), "forward", None)):
            del m.__dict__["forward"]


def remove_offload_hooks(found: Found, keep=()) -> list[str]:
    """accelerate's hooks off every component but those named in ``keep`` (weights back
    where they were before the offload, values from the weights map), diffusers' offload
    state reset. Returns the components that had hooks."""
    hooked = []
    for name, module in found.components.items():
        if name in keep:
            continue  # skip: left as it is, accelerate's hooks included
        if _group_offloaded(module):
            raise PipelineError(f"component {name} uses diffusers' group offloading (enable_group_offload), which "
                                "moves its weights itself; load the pipeline without it, then give it to PinStream")
        if not _has_accelerate_hooks(module):
            continue
        from accelerate.hooks import remove_hook_from_module

        try:
            remove_hook_from_module(module, recurse=True)
        except Exception as e:  # noqa: BLE001 - accelerate's own error, said with what to do
            raise PipelineError(
                f"component {name}: accelerate could not put its weights back when its offload hooks were removed "
                f"({type(e).__name__}: {e}). Load the pipeline again (FlashPortrait: GPU_memory_mode "
                f"sequential_cpu_offload or default) and connect it to this node directly, or give the component the "
                f"mode skip ('{name}={SKIP}')") from e
        _drop_restored_forwards(module)
        hooked.append(name)
    for pipe in found.pipelines:
        if getattr(pipe, "_all_hooks", None):
            pipe._all_hooks = []
        for attr in ("_offload_device", "_offload_gpu_id"):
            if attr in getattr(pipe, "__dict__", {}):
                delattr(pipe, attr)
    return hooked


def _casts_its_weights(module: nn.Module) -> str | None:
    """A submodule whose forward was wrapped to convert its own weights on every call
    (VideoX-Fun's and FlashPortrait's qfloat8 mode: ``module.to(bf16)``, compute,
    ``module.to(fp8)``), or None."""
    for name, m in module.named_modules():
        if "forward" in vars(m) and "original_forward" in vars(m):
            return name or "(the component itself)"
    return None


def _meta_weight(module: nn.Module) -> str | None:
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t is not None and t.device.type == "meta":
            return name
    return None


# ---- a managed component's class --------------------------------------------------------------

def _handle(module):
    from pinstream import handle_of

    return handle_of(module)


class ManagedComponent:
    """What a pipeline component's class gains while PinStream manages it: moves by the
    pipeline's own code (``.to(device)``, ``.cuda()``, ``.cpu()``) leave its weights where
    PinStream placed them, and ``.device`` is the device it computes on. Once the handle
    is detached, everything is the component's own again."""

    def to(self, *args, **kwargs):
        h = _handle(self)
        if h is None:
            return super().to(*args, **kwargs)
        _device, dtype, _non_blocking, _fmt = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            other = next((f"{n} ({p.dtype})" for n, p in self.named_parameters()
                          if p.is_floating_point() and p.dtype != dtype), None)
            if other is not None:
                raise RuntimeError(
                    f"PinStream: .to({dtype}) on {type(self).__name__}, whose weights PinStream manages as they were "
                    f"given ({other}): PinStream keeps the dtype. Convert the component before the PinStream Offload "
                    "(Pipeline) node, or give it the mode skip")
        return self

    def cuda(self, device=None):
        return self if _handle(self) is not None else super().cuda(device)

    def cpu(self):
        return self if _handle(self) is not None else super().cpu()

    @property
    def device(self) -> torch.device:
        h = _handle(self)
        if h is not None:
            return h.device
        try:
            return super().device
        except AttributeError:
            for t in self.parameters():
                return t.device
            return torch.device("cpu")


_CLASSES: dict = {}


def managed_class(base: type) -> type:
    """``base`` with :class:`ManagedComponent` first in its MRO (same name and module, so
    code that checks a class name still sees the component's own)."""
    if issubclass(base, ManagedComponent):
        return base
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(base.__name__, (ManagedComponent, base), {"__module__": base.__module__,
                                                            "__qualname__": base.__qualname__,
                                                            "_pinstream_base": base})
        _CLASSES[base] = cls
    return cls


def _make_room(me: nn.Module, siblings: list, streamed: bool) -> None:
    """Before ``me`` loads, the pipeline's other components leave the device: all of them
    when ``me`` runs whole (an encoder, the VAE), only those that run whole when ``me``
    streams (two streamed components used at every step, a ControlNet beside the
    transformer, each keep their budget instead of evicting each other at every step).
    full_load components stay (by choice), and so does one whose forward is running. So
    the encoders, the denoiser's budget and the VAE each get the room the others left."""
    for ref in siblings:
        m = ref()
        if m is None or m is me:
            continue
        h = _handle(m)
        if (h is None or not h.loaded or h.mode.name == "full_load" or h._hooks.pass_owner is not None
                or (streamed and h._hooks.per_block)):
            continue
        h.unload()


def _take_turns(module: nn.Module, handle, siblings: list) -> None:
    """Load-on-use hooks of a component: the other components make room first (see
    :func:`_make_room`). A whole-model component also loads at the first use of any
    submodule holding weights (entry points other than forward: vae.decode, an encoder's
    own method). The hooks hold the handle and the components weakly."""
    ref, me = weakref.ref(handle), weakref.ref(module)
    whole = not handle._hooks.per_block

    def load(_mod, _args):
        h = ref()
        if h is not None and not h.detached and not h.loaded:
            _make_room(me(), siblings, streamed=not whole)
            if whole:
                h.load()  # a streaming component loads in its own pass hook, next

    # before PinStream's own root hook, which loads
    handle._hooks.keep(module.register_forward_pre_hook(load, prepend=True))
    if not whole:
        return
    for sub in module.modules():
        if sub is not module and (any(True for _ in sub.parameters(recurse=False))
                                  or any(True for _ in sub.buffers(recurse=False))):
            handle._hooks.keep(sub.register_forward_pre_hook(load))


# ---- offloading --------------------------------------------------------------------------------

def _default_device():
    try:
        import comfy.model_management as mm

        return mm.get_torch_device()
    except Exception:  # noqa: BLE001 - outside ComfyUI
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _same_config(st, cfg: OffloadConfig) -> bool:
    old = st.config
    return (old.mode, old.vram_budget_gb, old.prefetch_blocks, old.pin_memory, old.transfer_dtype,
            old.ram_budget_gb) == (cfg.mode, cfg.vram_budget_gb, cfg.prefetch_blocks, cfg.pin_memory,
                                   cfg.transfer_dtype, cfg.ram_budget_gb)


def _check_shared(found: Found, modes: dict) -> None:
    owner: dict[int, str] = {}
    for name, module in found.components.items():
        if modes[name].mode == SKIP:
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            other = owner.setdefault(id(t), name)
            if other != name:
                raise PipelineError(f"components {other} and {name} share weights (one holds the other, or they are "
                                    f"tied); give one of them the mode skip, e.g. '{name}={SKIP}'")


def _check_manageable(name: str, module: nn.Module, *, hooked: bool) -> None:
    """A PipelineError, with what to do, when PinStream cannot take this component's weights."""
    from .patcher import unsupported_reason

    missing = _meta_weight(module)
    if missing is not None:
        where = " after accelerate's hooks were removed (their weights map did not hold it)" if hooked else ""
        raise PipelineError(
            f"weight {missing} of component {name} is on the meta device{where}, so its values are not in memory. "
            "Load the pipeline with its weights in memory (FlashPortrait: GPU_memory_mode sequential_cpu_offload "
            f"or default; diffusers: without device_map='meta'), or give it the mode skip ('{name}={SKIP}')")
    casting = _casts_its_weights(module)
    if casting is not None:
        raise PipelineError(
            f"component {name} converts its own weights on every call (its submodule {casting} has a forward "
            "wrapped to cast them: FlashPortrait's GPU_memory_mode model_cpu_offload_and_qfloat8), which "
            "PinStream cannot manage: it keeps each weight as it was given. Load the pipeline with "
            "GPU_memory_mode sequential_cpu_offload or default instead (for fewer bytes per upload, set this "
            f"node's transfer_dtype to fp8_e4m3 or compressed), or give the component the mode skip ('{name}={SKIP}')")
    reason = unsupported_reason(module)
    if reason:
        raise PipelineError(f"component {name}: {reason}; or give it the mode skip ('{name}={SKIP}')")


def _release(module: nn.Module) -> bool:
    """PinStream off one component (weights back in ordinary host memory, its class its own);
    whether it was managed."""
    h = _handle(module)
    if h is not None:
        h._original_device = torch.device("cpu")
        h.detach()
    base = getattr(type(module), "_pinstream_base", None)
    if base is not None:
        module.__class__ = base
    module.__dict__.pop("pinstream_state", None)
    return h is not None


def offload_pipeline(obj, modes: str = "", vram_budget_gb: float = 0.0, prefetch_blocks: int = 1,
                     pin_memory: bool = True, transfer_dtype: str = "auto", *, ram_budget_gb: float = 0.0,
                     device=None, engine: str = "auto", progress=None) -> tuple[object, list[str]]:
    """Put each component of ``obj`` under its mode; returns ``obj`` (the same object) and
    one line per component saying what it runs. ``ram_budget_gb`` (> 0) is the host RAM of
    each denoiser (transformer, unet, ControlNet): its blocks beyond it live on disk; the
    other components stay in RAM. Raises PipelineError for a pipeline or a mode string that
    cannot be used."""
    found = find_components(obj)
    plan = plan_modes(found, modes, float(vram_budget_gb or 0.0))
    _check_shared(found, plan)
    hooked = remove_offload_hooks(found, keep={n for n, m in plan.items() if m.mode == SKIP})
    on_gpu = any(t.device.type == "cuda" for n, module in found.components.items() if plan[n].mode != SKIP
                 for t in list(module.parameters()) + list(module.buffers()))
    lines = []
    if hooked:
        lines.append(f"accelerate's offload hooks removed from {', '.join(hooked)}")
    dev = torch.device(device) if device is not None else torch.device(_default_device())
    if engine == "auto":
        engine = "cuda" if dev.type == "cuda" else "host"
    for name, module in found.components.items():
        if plan[name].mode != SKIP:
            _check_manageable(name, module, hooked=name in hooked)
    siblings = [weakref.ref(m) for m in found.components.values()]
    for name, module in found.components.items():
        m = plan[name]
        label = f"{found.label}.{name}"
        if m.mode == SKIP:
            released = _release(module)
            where = next((str(t.device) for t in module.parameters()), "no weights")
            lines.append(f"PinStream {label}: skip (not managed{'; PinStream released it' if released else ''}; "
                         f"its weights are on {where})")
            continue
        transfer = m.transfer_dtype if m.transfer_dtype != "auto" else transfer_dtype
        if transfer == "fp8_e4m3" and m.transfer_dtype == "auto" and m.mode not in ("sequential", "budget"):
            transfer = "auto"  # the node's fp8 transfer is for the streamed blocks; a whole model goes as stored
        ram = float(ram_budget_gb or 0.0) if role_of(name, module) == "denoiser" else 0.0
        cfg = OffloadConfig(mode=m.mode, vram_budget_gb=float(m.budget_gb or 0.0), prefetch_blocks=int(prefetch_blocks),
                            pin_memory=bool(pin_memory), transfer_dtype=transfer, label=label, ram_budget_gb=ram)
        st = getattr(module, "pinstream_state", None)
        h = _handle(module)
        if h is not None and isinstance(st, PinStreamState) and st.handle is h and _same_config(st, cfg):
            lines.append(f"PinStream {label}: {h.mode.name} ({h.mode.reason}); {h.plan['describe']}{disk_note(h)} "
                         "(unchanged)")
            continue
        if h is not None:
            # A new mode for a managed component: its weights go back to the host (never to
            # the GPU they may have come from) and are offloaded again.
            h._original_device = torch.device("cpu")
            h.detach()
        free = None
        if cfg.mode == "auto" and cfg.vram_budget_gb > 0:
            free = int(cfg.vram_budget_gb * GIB)
        handle = _offload(module, cfg, mode=cfg.mode,
                          budget_gb=cfg.vram_budget_gb if cfg.mode in ("budget", "auto") and cfg.vram_budget_gb else None,
                          load_device=dev, engine=engine, free=free, progress=progress)
        # Between uses a pipeline's weights belong on the host: a later detach puts them there.
        handle._original_device = torch.device("cpu")
        _take_turns(module, handle, siblings)
        if not isinstance(module, ManagedComponent):
            module.__class__ = managed_class(type(module))
        state = PinStreamState(config=cfg, handle=handle, engine=engine)
        module.pinstream_state = state
        _MANAGED.add(state)
        lines.append(f"PinStream {label}: {handle.mode.name} ({handle.mode.reason}); {handle.plan['describe']}"
                     f"{disk_note(handle)}")
    if on_gpu and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the GPU copies the weights were taken from
    for line in lines:
        log.info("%s", line)
    return obj, lines


def managed_components(obj) -> dict:
    """{name: handle} of the components of ``obj`` PinStream manages now."""
    found = find_components(obj)
    return {n: h for n, h in ((n, _handle(m)) for n, m in found.components.items()) if h is not None}


def unload_pipeline(obj) -> None:
    """Every managed component of ``obj`` off the device (its pinned host copy stays)."""
    for h in managed_components(obj).values():
        h.unload()


def release_pipeline(obj) -> None:
    """PinStream off every component of ``obj``: hooks removed, pinned and device memory
    freed, weights back in ordinary host memory, each class its own again."""
    for module in find_components(obj).components.values():
        _release(module)
