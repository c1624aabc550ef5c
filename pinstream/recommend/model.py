"""Model sizing for ``recommend``: a ``.safetensors`` header (``--model``), a size
(``--model-gb``), or, without either, Wan 2.1 14B bf16, the large video model the
seed's GPU_MEMORY_MODE is about."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pinstream.safetensors_header import SafetensorsError, summarize_file

from .machine import GIB, RecommendError

# Wan 2.1 14B bf16 (wan2.1_t2v_14B_bf16.safetensors, 14.29 B parameters, 28.6 GB
# on disk): 40 blocks of 351.4 M parameters (0.65 GiB each), 0.23 B parameters
# outside the blocks (patch/text/time embeddings, head).
WAN14B_BLOCK_BYTES = 702_788_608
WAN14B_NONBLOCK_BYTES = 465_438_848
WAN14B_BLOCKS = 40
# What a Wan workflow loads beside it: umt5-xxl text encoder in fp16 (11.4 GB file)
# and the Wan VAE (0.25 GB).
WAN14B_COMPANION_BYTES = 11_400_000_000 + 254_000_000

# --model-gb N: blocks hold this share of the bytes, in this many equal blocks.
SIZE_ONLY_BLOCK_SHARE = 0.95
SIZE_ONLY_BLOCKS = 40


@dataclass
class ModelProfile:
    name: str
    source: str  # "assumed", "file" or "size"
    total_bytes: int
    largest_block_bytes: int
    nonblock_bytes: int
    block_count: int
    companion_bytes: int = 0
    workload: str = "video"  # seed RAM table row: sd15, sdxl or video
    dtype_bytes: dict | None = None  # safetensors dtype -> bytes; None: unknown (--model-gb)

    @property
    def has_blocks(self) -> bool:
        return self.block_count >= 2


def workload_for_bytes(total_bytes: int) -> str:
    gb = total_bytes / GIB
    return "sd15" if gb < 3 else ("sdxl" if gb < 8 else "video")


def assumed_model() -> ModelProfile:
    return ModelProfile(
        name="Wan 2.1 14B bf16 (assumed)",
        source="assumed",
        total_bytes=WAN14B_BLOCKS * WAN14B_BLOCK_BYTES + WAN14B_NONBLOCK_BYTES,
        largest_block_bytes=WAN14B_BLOCK_BYTES,
        nonblock_bytes=WAN14B_NONBLOCK_BYTES,
        block_count=WAN14B_BLOCKS,
        companion_bytes=WAN14B_COMPANION_BYTES,
        workload="video",
        dtype_bytes={"BF16": WAN14B_BLOCKS * WAN14B_BLOCK_BYTES + WAN14B_NONBLOCK_BYTES},
    )


def model_from_size(model_gb: float, other_bytes: int = 0) -> ModelProfile:
    total = int(model_gb * GIB)
    block = int(total * SIZE_ONLY_BLOCK_SHARE / SIZE_ONLY_BLOCKS)
    return ModelProfile(
        name=f"model of {model_gb:g} GB (--model-gb)",
        source="size",
        total_bytes=total,
        largest_block_bytes=block,
        nonblock_bytes=total - SIZE_ONLY_BLOCKS * block,
        block_count=SIZE_ONLY_BLOCKS,
        companion_bytes=other_bytes,
        workload=workload_for_bytes(total),
    )


def model_from_file(path: str, other_bytes: int = 0) -> ModelProfile:
    try:
        sizes = summarize_file(path)
    except SafetensorsError as e:
        raise RecommendError(f"--model {e}") from None
    return ModelProfile(
        name=os.path.basename(path),
        source="file",
        total_bytes=sizes.total_bytes,
        largest_block_bytes=sizes.largest_block_bytes,
        nonblock_bytes=sizes.nonblock_bytes,
        block_count=sizes.block_count,
        companion_bytes=other_bytes,
        workload=workload_for_bytes(sizes.total_bytes),
        dtype_bytes=dict(sizes.dtypes),
    )
