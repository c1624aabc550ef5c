"""Block discovery: find the repeated blocks of any torch model that the engine streams.

No forward pass, no ComfyUI import; works on meta-device models (sizes come from
``numel * element_size``), so full-size presets can be planned without storage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["DEFAULT_MIN_CONTAINER_FRACTION", "BlockDiscovery", "DiscoveryError", "discover_blocks"]

# A container (or a lone block-like sibling) must hold at least this share of all bytes.
DEFAULT_MIN_CONTAINER_FRACTION = 0.05
# Share of a container's weight-holding children that must be of one class.
_DOMINANT_CLASS_SHARE = 0.75


class DiscoveryError(ValueError):
    """Explicit block names that cannot be used."""


@dataclass
class BlockDiscovery:
    """Result of :func:`discover_blocks`.

    * ``blocks``: (qualified name, module) in module order; names are relative to the module
      given to :func:`discover_blocks`.
    * ``containers``: the ModuleList/Sequential containers whose children were taken as blocks
      ("" when the module itself is the container). A lone block such as the UNet's
      ``middle_block`` is a block but not a container.
    * ``block_bytes[i]``: bytes of parameters and buffers of block i, tied tensors excluded.
    * ``nonblock_bytes``: everything else, including every tied tensor; so
      ``sum(block_bytes) + nonblock_bytes == total_bytes``.
    * ``shared_params``: one qualified name per tensor (parameter or buffer) that a block shares
      with another block or with the rest of the model; the engine must keep these resident
      and never re-point them per block. ``shared_aliases`` maps each to all its names.
    """

    blocks: list = field(default_factory=list)
    containers: list = field(default_factory=list)
    block_bytes: list = field(default_factory=list)
    nonblock_bytes: int = 0
    total_bytes: int = 0
    message: str = ""
    shared_params: list = field(default_factory=list)
    shared_aliases: dict = field(default_factory=dict)

    @property
    def names(self) -> list:
        return [n for n, _ in self.blocks]

    @property
    def has_blocks(self) -> bool:
        return bool(self.blocks)

    @property
    def largest_block_bytes(self) -> int:
        return max(self.block_bytes, default=0)

    @property
    def block_fraction(self) -> float:
        return sum(self.block_bytes) / self.total_bytes if self.total_bytes else 0.0


def format_bytes(n: int) -> str:
    """n bytes in the largest unit that keeps it >= 1, two decimals (e.g. "1.50 GiB")."""
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def storage_tensors(t: torch.Tensor) -> list:
    """The plain tensors that hold ``t``'s data: ``t`` itself, or for a wrapper tensor
    subclass (``__tensor_flatten__``: ComfyUI's QuantizedTensor for scaled fp8 and fp4
    weights, for one) its inner tensors, recursively."""
    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ctx = t.__tensor_flatten__()
    out = []
    for n in names:
        out.extend(storage_tensors(getattr(t, n)))
    return out


def _nbytes(t) -> int:
    """Bytes ``t`` really occupies (a quantized subclass: its storage, not its logical dtype)."""
    return sum(x.numel() * x.element_size() for x in storage_tensors(t))


class _Sizer:
    """Bytes of a module subtree (tied tensors counted once), memoised per module."""

    def __init__(self):
        self._memo = {}

    def __call__(self, m: nn.Module) -> int:
        key = id(m)
        if key not in self._memo:
            seen = {}
            for t in m.parameters():
                seen[id(t)] = _nbytes(t)
            for t in m.buffers():
                seen[id(t)] = _nbytes(t)
            self._memo[key] = sum(seen.values())
        return self._memo[key]


def _weighted_children(m: nn.Module, size: _Sizer) -> list:
    # _modules rather than named_children(): the latter drops a module listed twice
    return [(n, c) for n, c in m._modules.items() if c is not None and size(c) > 0]


def _is_composite(m: nn.Module, size: _Sizer) -> bool:
    """A module built from weight-holding submodules (a block), not a leaf layer."""
    return any(size(c) > 0 for c in m.children())


def _is_block_container(m: nn.Module, size: _Sizer) -> bool:
    if not isinstance(m, (nn.ModuleList, nn.Sequential)):
        return False
    kids = [c for _, c in _weighted_children(m, size)]
    if len(kids) < 2:
        return False
    cls, count = Counter(type(c) for c in kids).most_common(1)[0]
    if count < 2 or count < _DOMINANT_CLASS_SHARE * len(kids):
        return False
    return all(_is_composite(c, size) for c in kids if type(c) is cls)


def _looks_like_block(m: nn.Module, size: _Sizer) -> bool:
    """A lone module that is a block by itself (UNet ``middle_block``): at least two composite
    weight-holding children."""
    return sum(1 for _, c in _weighted_children(m, size) if _is_composite(c, size)) >= 2


def _search(m: nn.Module, prefix: str, size: _Sizer, min_bytes: int, containers: list, singles: list) -> None:
    kids = _weighted_children(m, size)
    chosen = {n for n, c in kids if size(c) >= min_bytes and _is_block_container(c, size)}
    for n, c in kids:
        q = _join(prefix, n)
        if n in chosen:
            containers.append(q)
        elif chosen and size(c) >= min_bytes and _looks_like_block(c, size):
            singles.append(q)
        elif not _is_block_container(c, size):
            # small repeated containers (e.g. a 2-layer refiner) are not searched: nothing big inside
            _search(c, q, size, min_bytes, containers, singles)


def _module_order(module: nn.Module) -> dict:
    order = {}
    for i, (name, _) in enumerate(module.named_modules(remove_duplicate=False)):
        order.setdefault(name, i)
    return order


def _account(module: nn.Module, block_names: list):
    """Per-block bytes, non-block bytes, total, and tensors shared across owners."""
    index = {n: i for i, n in enumerate(block_names)}
    tensors = {}  # id -> (tensor, [qualified names])
    for name, t in module.named_parameters(remove_duplicate=False):
        tensors.setdefault(id(t), (t, []))[1].append(name)
    for name, t in module.named_buffers(remove_duplicate=False):
        tensors.setdefault(id(t), (t, []))[1].append(name)

    def owner(qname: str) -> int:
        parts = qname.split(".")
        for k in range(len(parts) - 1, 0, -1):
            i = index.get(".".join(parts[:k]))
            if i is not None:
                return i
        return -1

    block_bytes = [0] * len(block_names)
    total = 0
    shared, aliases = [], {}
    for t, names in tensors.values():
        nb = _nbytes(t)
        total += nb
        owners = {owner(n) for n in names}
        if len(owners) == 1:
            o = owners.pop()
            if o >= 0:
                block_bytes[o] += nb
        elif any(o >= 0 for o in owners):
            shared.append(names[0])
            aliases[names[0]] = list(names)
    return block_bytes, total - sum(block_bytes), total, shared, aliases


def _explicit(module: nn.Module, names) -> list:
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise DiscoveryError(f"names must be a list of qualified module names, got {names!r}")
    top = ", ".join(n for n, _ in module.named_children()) or "(none)"
    seen = set()
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise DiscoveryError(
                f"block names must be non-empty qualified module names (e.g. 'blocks.0'), got {n!r}; "
                f"top-level children of {type(module).__name__}: {top}"
            )
        if n in seen:
            raise DiscoveryError(f"block name {n!r} is listed twice")
        seen.add(n)
        try:
            module.get_submodule(n)
        except AttributeError:
            parts = n.split(".")
            parent, have = module, []
            for p in parts:
                child = getattr(parent, "_modules", {}).get(p)
                if child is None:
                    break
                parent, have = child, have + [p]
            where = ""
            if have:
                kids = [k for k, _ in parent.named_children()]
                shown = ", ".join(kids[:12]) + (", ..." if len(kids) > 12 else "")
                where = f"; '{'.'.join(have)}' exists and its children are: {shown or '(none)'}"
            raise DiscoveryError(
                f"no submodule named {n!r} in {type(module).__name__}{where}; "
                f"top-level children of {type(module).__name__}: {top}"
            ) from None
    ordered = sorted(names, key=len)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.startswith(a + "."):
                raise DiscoveryError(f"block {a!r} is an ancestor of block {b!r}; list one or the other, not both")
    return list(names)


def discover_blocks(
    module: nn.Module,
    names: Sequence[str] | None = None,
    min_fraction: float = 0.5,
    *,
    min_container_fraction: float = DEFAULT_MIN_CONTAINER_FRACTION,
) -> BlockDiscovery:
    """Find the blocks the engine streams one at a time.

    Rule (no forward pass; sizes are parameter + buffer bytes, tied tensors counted once):

    1. A *block container* is an ``nn.ModuleList`` or ``nn.Sequential`` (subclasses included)
       with at least two weight-holding children, at least 3/4 of which (and at least two)
       share one class, and that class is *composite*: built from weight-holding submodules,
       not a leaf layer. So ``blocks`` of Wan qualifies, ``time_embedding`` (Linear, SiLU,
       Linear) and a plain MLP do not, and neither does the UNet's ``middle_block``
       (ResBlock, SpatialTransformer, ResBlock).
    2. The tree is searched top-down from ``module`` (so wrappers such as ComfyUI's
       ``diffusion_model`` are passed through). At each module, every child that is a block
       container holding at least ``min_container_fraction`` (5%) of all bytes is chosen, and
       the search does not descend into it (the outermost container wins; no nested double
       counting: Flux ``double_blocks`` AND ``single_blocks``, UNet ``input_blocks`` and
       ``output_blocks``, T5 ``encoder.block``, DiT ``transformer_blocks``).
    3. When a module has chosen containers, each sibling that is not one but holds at least
       ``min_container_fraction`` and has at least two composite weight-holding children is
       ONE block by itself (UNet ``middle_block``). Other siblings are searched in turn
       (rule 2); block containers below the size threshold are not searched.
    4. The blocks are the weight-holding children of the chosen containers plus those lone
       blocks, in module order. If they hold less than ``min_fraction`` of all bytes, or none
       were found, ``blocks`` is empty and ``message`` says that the model falls back to
       ``model_offload``.

    ``names`` (qualified module names relative to ``module``) overrides the search; each must
    exist and none may be an ancestor of another (:class:`DiscoveryError` otherwise).

    Tensors that one block shares with another block or with the rest of the model (tied
    weights, found by object identity) are listed in ``shared_params``; their bytes count as
    non-block bytes, and the engine must keep them resident.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"discover_blocks needs a torch.nn.Module, got {type(module).__name__}")
    for label, v in (("min_fraction", min_fraction), ("min_container_fraction", min_container_fraction)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{label} must be a number between 0 and 1, got {v!r}")
    mname = type(module).__name__
    order = _module_order(module)

    if names is not None:
        block_names = sorted(_explicit(module, names), key=lambda n: order.get(n, len(order)))
        parents = []
        for n in block_names:
            parent = n.rpartition(".")[0]
            if isinstance(module.get_submodule(parent), (nn.ModuleList, nn.Sequential)) and parent not in parents:
                parents.append(parent)
        bb, nonblock, total, shared, aliases = _account(module, block_names)
        share = sum(bb) / total if total else 0.0
        msg = f"{mname}: {len(block_names)} explicitly named blocks hold {share:.1%} of {format_bytes(total)}"
        if shared:
            msg += f"; {len(shared)} shared tensors stay resident"
        return BlockDiscovery(
            [(n, module.get_submodule(n)) for n in block_names], parents, bb, nonblock, total, msg, shared, aliases
        )

    size = _Sizer()
    total_est = size(module)
    empty_total = _account(module, [])[2]
    if total_est == 0:
        return BlockDiscovery(
            [],
            [],
            [],
            empty_total,
            empty_total,
            f"{mname} has no weights; there are no repeated blocks to stream (model_offload).",
        )
    min_bytes = min_container_fraction * total_est
    containers, singles = [], []
    if _is_block_container(module, size):
        containers.append("")
    else:
        _search(module, "", size, min_bytes, containers, singles)

    block_names = list(singles)
    for c in containers:
        parent = module.get_submodule(c) if c else module
        block_names += [_join(c, n) for n, _ in _weighted_children(parent, size)]
    block_names.sort(key=lambda n: order.get(n, len(order)))

    if not block_names:
        return BlockDiscovery(
            [],
            [],
            [],
            empty_total,
            empty_total,
            f"{mname} has no repeated blocks (no ModuleList/Sequential of weight-holding blocks with at "
            f"least {min_container_fraction:.0%} of its {format_bytes(empty_total)}); it falls back to model_offload.",
        )
    bb, nonblock, total, shared, aliases = _account(module, block_names)
    share = sum(bb) / total if total else 0.0
    where = ", ".join(repr(c) for c in containers) + (" + " + ", ".join(repr(s) for s in singles) if singles else "")
    if share < min_fraction:
        return BlockDiscovery(
            [],
            [],
            [],
            total,
            total,
            f"{mname} has no repeated blocks holding most of its weights: {len(block_names)} candidate blocks in "
            f"{where} hold {share:.1%} of {format_bytes(total)} (< min_fraction {min_fraction:.0%})"
            + (f", {len(shared)} of their tensors are shared and would stay resident" if shared else "")
            + "; it falls back to model_offload.",
        )
    msg = (
        f"{mname}: {len(block_names)} blocks in {where} hold {share:.1%} of {format_bytes(total)}; "
        f"largest block {format_bytes(max(bb))}, non-block part {format_bytes(nonblock)}"
    )
    if shared:
        msg += f"; {len(shared)} tensors shared across blocks stay resident: {', '.join(shared[:5])}"
        msg += ", ..." if len(shared) > 5 else ""
    return BlockDiscovery(
        [(n, module.get_submodule(n)) for n in block_names], containers, bb, nonblock, total, msg, shared, aliases
    )
