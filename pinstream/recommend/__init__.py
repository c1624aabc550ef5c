"""``python -m pinstream recommend``: ComfyUI flags, GPU_MEMORY_MODE and a PinStream
mode for this machine (or another one), checked against the ComfyUI that will run.

Steps:

1. Machine.  GPU name, total and free VRAM (``nvidia-smi``, else torch; none means
   CPU) of the GPU ComfyUI will use (its ``--cuda-device N`` when given), system RAM
   and free RAM (psutil).  ``GPU_TIER`` plans for a RunPod tier; ``--vram-gb`` /
   ``--ram-gb`` / ``--no-gpu`` plan for another machine.  An nvidia-smi that is
   installed but fails is an error, not a CPU machine.
2. Model.  ``--model FILE.safetensors`` (only the header is read) or ``--model-gb N``
   give real sizes; without them the plan assumes Wan 2.1 14B bf16, the large video
   model the seed's GPU_MEMORY_MODE is about.
3. Plan.  :func:`pinstream.modes.choose_auto` picks the PinStream mode and budget
   from free VRAM, model size and largest block (``GPU_MEMORY_MODE`` overrides it);
   the RAM the plan needs starts from the seed's table and is refined with the
   bytes the engine pins.  A streamed model that does not fit in RAM gets the disk
   tier: a host RAM budget (``ram_budget_gb`` / ``host_budget_gb``), the rest on disk,
   and the bytes read from disk per step at ``--disk-gbps`` (3 GB/s, an NVMe SSD,
   assumed).
4. Flags.  The tier's ComfyUI flags (the seed's table) plus the user's own are
   checked against the argument parser of the target ComfyUI (run in a subprocess,
   nothing else of ComfyUI is imported).  Flags ComfyUI does not accept are replaced
   by their working equivalent or dropped, with a warning naming them.  Without a
   ComfyUI a built-in table of what every supported release (0.3.64 on) accepts is
   used, and the output says so; flags only newer releases accept are kept with a
   warning naming the release that rejects them.

"GB" in this module means GiB (1024**3 bytes), as in ComfyUI's ``--reserve-vram``.
Bad input (unknown tier or mode, sizes <= 0, NaN or above a million GB, unbalanced
quotes in --comfyui-args, a corrupt model file, a GPU nvidia-smi cannot read) exits 2
with one clear line, never a traceback.

Modules: :mod:`.machine` (step 1), :mod:`.model` (2), :mod:`.plan` (3),
:mod:`.comfyui_flags` (ComfyUI's flag tables and its parser probe) and
:mod:`.flag_check` (4), :mod:`.cli` (options and output), :mod:`.ram_table` (the
README's RAM table, from :mod:`.plan`).
"""

from .cli import build_parser, format_shell, format_text, main, recommend
from .comfyui_flags import (
    BUILTIN_FLAGS,
    DYNAMIC_VRAM_OFF_FLAGS,
    FOREIGN_FLAGS,
    OLDEST_COMFYUI,
    SEED_FLAGS,
    ParserProbeError,
    comfyui_parser_check,
    comfyui_parser_flags,
    comfyui_version,
    dynamic_vram_note,
)
from .flag_check import FlagCheck, check_comfyui_flags, validate_flags
from .machine import (
    TIERS,
    GpuDetectError,
    GpuInfo,
    Machine,
    RecommendError,
    comfyui_device,
    detect_gpu,
    detect_ram,
    resolve_machine,
    tier_for_vram,
)
from .model import ModelProfile, assumed_model, model_from_file, model_from_size
from .plan import Plan, plan_mode

__all__ = [
    "BUILTIN_FLAGS",
    "DYNAMIC_VRAM_OFF_FLAGS",
    "FOREIGN_FLAGS",
    "OLDEST_COMFYUI",
    "SEED_FLAGS",
    "TIERS",
    "FlagCheck",
    "GpuDetectError",
    "GpuInfo",
    "Machine",
    "ModelProfile",
    "ParserProbeError",
    "Plan",
    "RecommendError",
    "assumed_model",
    "build_parser",
    "check_comfyui_flags",
    "comfyui_device",
    "comfyui_parser_check",
    "comfyui_parser_flags",
    "comfyui_version",
    "detect_gpu",
    "detect_ram",
    "dynamic_vram_note",
    "format_shell",
    "format_text",
    "main",
    "model_from_file",
    "model_from_size",
    "plan_mode",
    "recommend",
    "resolve_machine",
    "tier_for_vram",
    "validate_flags",
]
