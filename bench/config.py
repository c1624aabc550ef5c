"""What ``bench gpu`` measures and at which sizes: the GPU run's configuration (the Wan
2.1 14B shape, block sizes, budgets, sequence lengths) and the dry run's (host engine,
tiny sizes), with the names ``--skip`` accepts."""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
MIB = 1024**2

SYSTEMS = ("pinstream", "naive_swap", "accelerate", "diffusers_block", "diffusers_leaf", "comfyui_lowvram")
# --skip accepts these names (sections and systems)
SKIPPABLE = ("link", "wan14b", "real_seq", "model_offload", "baselines", "naive_swap", "accelerate",
             "diffusers", "diffusers_block", "diffusers_leaf", "comfyui_lowvram", "fp8", "short_seq", "profile",
             "disk", "shared_ram")

# Wan 480p x 81 frames: latent (21, 60, 104) -> (1, 2, 2) patches -> 21 * 30 * 52 tokens
REAL_GRID = (21, 60, 104)
REAL_SEQ = 21 * 30 * 52  # 32,760


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    dry: bool
    device: str
    engine: str
    dtype_name: str
    wan: dict
    link_mb: list
    link_total_mb: float
    seq_candidates: list
    real_grid: tuple
    budgets_gb: list  # None: computed from the model size (dry run)
    budget_fractions: tuple = (0.45, 0.7, 1.4)
    prefetches: tuple = (1, 2, 3)
    budget_prefetch: int = 2
    real_prefetch: int = 2
    # a second, transfer-bound length (one block computes far faster than it uploads),
    # where PinStream, ComfyUI lowvram, diffusers and fp8 transfer are also compared
    short_seq: int = 2048
    warmup: int = 1
    timed: int = 3
    slow_timed: int = 2  # baselines and the real sequence length
    timed_disk: int = 3  # the disk tier's timed steps (per-step figures from the 2nd to the last)
    # one traced step (profile.py) of each judged comparison's runs, at both lengths
    profile: bool = True
    text_len: int = 512
    host_link_gbps: float = 25.0
    # the disk tier (disk_gpu.py): the model with this host budget (GiB), the rest in a spill
    # file; None: disk_budget_fraction of the model (the dry run's tiny one)
    disk_host_budget_gb: float | None = 8.0
    disk_budget_fraction: float = 0.3
    disk_prefetch: int = 2
    disk_raw_cap_gb: float = 4.0  # the spill file's O_DIRECT rate: at most this much read
    # the disk section's two models taking turns (bench/disk.py's shared_run): their shape
    # (over `wan`; empty: `wan`), the pinning cap as 2 x this fraction of one, steps per prompt
    shared_wan: dict = field(default_factory=dict)
    shared_fraction: float = 0.6
    shared_steps: int = 6
    # seconds a step must leave before the section's deadline to start another
    reserve_s: dict = field(default_factory=dict)

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def make_config(dry: bool) -> Config:
    if dry:
        return Config(
            dry=True, device="cpu", engine="host", dtype_name="float32",
            wan={"dim": 128, "ffn_dim": 512, "num_heads": 4, "num_layers": 8, "text_dim": 32, "freq_dim": 32},
            link_mb=[0.25, 1.0, 4.0], link_total_mb=16.0,
            seq_candidates=[16, 32, 64, 128], real_grid=(4, 16, 16), budgets_gb=None,
            text_len=16, timed=2, slow_timed=2, short_seq=8, disk_host_budget_gb=None, timed_disk=3,
            shared_steps=3, reserve_s={"build": 1, "run": 0.5, "system": 1, "disk": 1, "shared_ram": 1},
        )
    return Config(
        dry=False, device="cuda", engine="cuda", dtype_name="bfloat16",
        wan={"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "text_dim": 4096, "freq_dim": 256},
        link_mb=[4.0, 16.0, 64.0, 256.0, 1024.0], link_total_mb=1024.0,
        seq_candidates=[2048, 4096, 6144, 8192, 10240, 12288, 16384, 20480, 24576, REAL_SEQ],
        real_grid=REAL_GRID, budgets_gb=[10.0, 20.0, 40.0],
        # Wan 2.1 1.3B's shape: two of them fit the GPU machine's RAM and disk many times over
        shared_wan={"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
        reserve_s={"build": 20, "run": 3, "system": 25, "disk": 60, "shared_ram": 90},
    )
