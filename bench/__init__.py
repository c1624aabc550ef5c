"""`python -m pinstream bench overhead|plot|gpu|compress|comfyui|disk`."""

from __future__ import annotations

import sys

USAGE = """usage: python -m pinstream bench {overhead,plot,gpu,compress,comfyui,disk} [options]

  overhead            host-side cost of acquire+release per block through forward hooks
  plot RESULTS.json   PNG charts of a GPU check's results (needs matplotlib)
  gpu                 the GPU benchmarks of bench/gpu_check.sh (--dry-run: tiny sizes, host engine)
  compress            the exact coded form on the CPU: ratio, encode and decode rate, other codings
  comfyui             ComfyUI prompts on ComfyUI's Wan 2.1 14B class: PinStream against ComfyUI's Dynamic VRAM
                      and legacy loader at equal VRAM, and Wan 2.2's expert switch (--dry-run: CPU, tiny)
  disk                the disk tier on this machine: the disk's own read rate (O_DIRECT, buffered) against
                      PinStream streaming the demo model from a spill file, as stored and coded (--quick: seconds)"""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "overhead":
        from .overhead import main as run
    elif cmd == "plot":
        from .plot import main as run
    elif cmd == "gpu":
        from .gpu import main as run
    elif cmd == "compress":
        from .compress import main as run
    elif cmd == "comfyui":
        from .comfyui_prompt import main as run
    elif cmd == "disk":
        from .disk import main as run
    else:
        print(f"unknown bench {cmd!r}\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)
