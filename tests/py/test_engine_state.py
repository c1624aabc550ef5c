"""The offloaded model's state between and around passes.

  state_dict() / detach() taken between passes: never aliases a slot that later uploads refill
  load_state_dict() between passes, every mode: the next passes and state_dict() see the new values
  KeyboardInterrupt inside a block (torch skips the hooks that end the pass): next pass and unload() work
  a model built under torch.inference_mode(), offloaded and run outside it (and the reverse)
  gradients: refused with a clear error where blocks stream, correct where they do not
  two threads running forwards of one offloaded model: the second is refused, the first is right
  module.double()/.half() while offloaded: a clear error naming the weight, never a silent revert
"""

import threading

import pytest
import torch
from torch import nn

import pinstream

GIB = 1024**3
D = 16


class Blk(nn.Module):
    def __init__(self, d=D):
        super().__init__()
        self.l1 = nn.Linear(d, d)
        self.l2 = nn.Linear(d, d)
        self.fail = None   # an exception to raise mid-forward
        self.gate = None   # (entered, release) events: wait inside the block

    def forward(self, x):
        x = torch.tanh(self.l1(x))
        if self.fail is not None:
            raise self.fail
        if self.gate is not None and threading.current_thread() is not threading.main_thread():
            entered, release = self.gate
            entered.set()
            assert release.wait(30)
        return self.l2(x)


class Net(nn.Module):
    def __init__(self, n=6, d=D):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList(Blk(d) for _ in range(n))
        self.order = None  # which blocks run (a conditional model skips some)

    def forward(self, x):
        x = self.inp(x)
        for i in (self.order if self.order is not None else range(len(self.blocks))):
            x = x + self.blocks[i](x)
        return x


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().eval()


def _bytes(m):
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _budget_kw(m, prefetch=1, fraction=0.6):
    """A budget that keeps some blocks resident and streams the rest (at least the
    plan's minimum: the non-block part and prefetch + 1 slots, with room to spare)."""
    from pinstream.discovery import discover_blocks

    d = discover_blocks(m)
    need = d.nonblock_bytes + (prefetch + 2) * d.largest_block_bytes + 4096
    return {"budget_gb": max(fraction * _bytes(m), need) / GIB}


MODES = [("full_load", {}), ("model_offload", {}), ("sequential", {}), ("budget", "budget")]


def _offload(m, mode, kw, prefetch, target):
    engine, device = target
    if kw == "budget":
        kw = _budget_kw(m, prefetch)
    return pinstream.offload(m, mode=mode, prefetch=prefetch, device=device, engine=engine, **kw)


def _clone_sd(m):
    return {k: v.detach().to("cpu").clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_state_dict_between_passes_does_not_alias_slots(prefetch, target):
    """Tensors taken from state_dict() or .detach() between passes keep their values
    when the slot the block ran in is refilled by later passes' uploads."""
    engine, device = target
    m = _net().to(device)
    x = torch.randn(2, D, device=device)
    ref_sd = _clone_sd(m)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, mode="sequential", prefetch=prefetch, device=device, engine=engine)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    sd = m.state_dict()
    w5 = m.blocks[5].l1.weight.detach()
    m.order = [0, 1, 2]  # later passes refill the slots without running block 5
    with torch.no_grad():
        for _ in range(3):
            m(x)
    changed = [k for k, v in sd.items() if not torch.equal(v.to("cpu"), ref_sd[k])]
    assert changed == []
    assert torch.equal(w5.to("cpu"), ref_sd["blocks.5.l1.weight"])
    m.order = None
    h.reset_stats()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    st = h.stats()
    assert st["hits"] + st["misses"] == st["acquires"] == 6
    h.detach()
    assert all(torch.equal(v.to("cpu"), ref_sd[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("mode,kw", MODES)
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_load_state_dict_between_passes_every_mode(mode, kw, prefetch, target):
    """load_state_dict() after a pass lands in the host copy: the next passes, state_dict(),
    unload() and detach() all see the new values."""
    _engine, device = target
    x = torch.randn(2, D, device=device)
    new = _net(seed=1).to(device)
    new_sd = _clone_sd(new)
    with torch.no_grad():
        ref_new = new(x)
    m = _net(seed=0).to(device)
    h = _offload(m, mode, kw, prefetch, target)
    with torch.no_grad():
        m(x)
        m(x)
    m.load_state_dict(new.state_dict())
    with torch.no_grad():
        assert torch.equal(m(x), ref_new)
        assert torch.equal(m(x), ref_new)
    sd = m.state_dict()
    assert [k for k, v in sd.items() if not torch.equal(v.to("cpu"), new_sd[k])] == []
    h.unload()
    with torch.no_grad():
        assert torch.equal(m(x), ref_new)
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref_new)


def test_load_state_dict_into_one_block_and_assign_refused(target):
    engine, device = target
    x = torch.randn(2, D, device=device)
    new = _net(seed=1).to(device)
    m = _net(seed=0).to(device)
    expect = _net(seed=0).to(device)
    expect.blocks[0].load_state_dict(new.blocks[0].state_dict())
    with torch.no_grad():
        ref = expect(x)
    h = pinstream.offload(m, mode="sequential", prefetch=1, device=device, engine=engine)
    with torch.no_grad():
        m(x)  # its last acquire prefetched block 0 for the next pass
    m.blocks[0].load_state_dict(new.blocks[0].state_dict())
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    with pytest.raises(RuntimeError, match=r"assign=True.*assign=False"):
        m.load_state_dict(new.state_dict(), assign=True)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_load_state_dict_with_fp8_transfer_is_refused(target):
    """fp8 transfer codes are made from the weights at offload(): loading new values
    into the host copy would leave the device streaming the old ones."""
    engine, device = target
    x = torch.randn(2, D, device=device)
    m = _net(seed=0).to(device)
    h = pinstream.offload(m, mode="sequential", prefetch=1, device=device, engine=engine,
                          transfer_dtype="fp8_e4m3")
    with torch.no_grad():
        before = m(x)
    with pytest.raises(RuntimeError, match=r"transfer_dtype 'fp8_e4m3'.*detach\(\) the handle, load, then offload"):
        m.load_state_dict(_net(seed=1).state_dict())
    with torch.no_grad():
        assert torch.equal(m(x), before)
    h.detach()


@pytest.mark.parametrize("prefetch", [0, 1])
def test_keyboard_interrupt_inside_a_block(prefetch, target):
    """torch runs a forward's always_call hooks for Exception only: a KeyboardInterrupt
    inside a block leaves it acquired and the pass open. The next forward ends that pass
    first and is right; unload() right after the interrupt works too."""
    engine, device = target
    m = _net().to(device)
    x = torch.randn(2, D, device=device)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, mode="sequential", prefetch=prefetch, device=device, engine=engine)
    with torch.no_grad():
        m(x)
    for then_unload in (False, True):
        m.blocks[3].fail = KeyboardInterrupt("interrupted")
        with torch.no_grad(), pytest.raises(KeyboardInterrupt):
            m(x)
        m.blocks[3].fail = None
        if then_unload:
            h.unload()
            assert not h.loaded
        with torch.no_grad():
            assert torch.equal(m(x), ref)
            assert torch.equal(m(x), ref)
    h.unload()
    assert not h.loaded
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


class Interrupt(nn.Module):
    fail = False

    def forward(self, x):
        if self.fail:
            raise KeyboardInterrupt("interrupted")
        return x


class SeqNet(nn.Module):
    """Sequential blocks: PinStream hooks their children (touch), as for ComfyUI's UNet."""

    def __init__(self, n=6, d=D):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, d), Interrupt(), nn.Linear(d, d)) for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


def test_keyboard_interrupt_inside_a_sequential_block(target):
    engine, device = target
    torch.manual_seed(0)
    m = SeqNet().eval().to(device)
    x = torch.randn(2, D, device=device)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, mode="sequential", prefetch=0, device=device, engine=engine)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    m.blocks[2][1].fail = True
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        m(x)
    m.blocks[2][1].fail = False
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    m.blocks[4][1].fail = True
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        m(x)
    m.blocks[4][1].fail = False
    h.unload()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


@pytest.mark.parametrize("mode,kw", MODES)
def test_model_built_under_inference_mode_offloaded_and_run_outside_it(mode, kw, target):
    """Inference tensors have no version counter; re-pointed, they stay inference tensors,
    so the model runs under no_grad and inference_mode, unloads and detaches."""
    _engine, device = target
    x = torch.randn(4, D, device=device)
    with torch.inference_mode():
        m = _net().to(device)
        ref = m(x)
    h = _offload(m, mode, kw, 1, target)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    with torch.inference_mode():
        assert torch.equal(m(x), ref)
    h.unload()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    assert h.stats()["writebacks"] == 0
    h.detach()
    assert m.blocks[0].l1.weight.is_inference()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


@pytest.mark.parametrize("mode", ["model_offload", "sequential"])
def test_model_offloaded_under_inference_mode_stays_normal(mode, target):
    """The reverse: a normal model offloaded and run inside inference_mode keeps normal
    tensors with version counters: an in-place edit of a loaded weight outside
    inference_mode is written back to the host copy at unload."""
    engine, device = target
    x = torch.randn(4, D, device=device)
    m = _net().to(device)
    expect = _net().to(device)
    with torch.no_grad():
        ref = m(x)
        expect.inp.bias.mul_(2.0)
        ref2 = expect(x)
    with torch.inference_mode():
        h = pinstream.offload(m, mode=mode, prefetch=1, device=device, engine=engine)
        assert torch.equal(m(x), ref)
    assert not any(p.is_inference() for p in m.parameters())
    with torch.no_grad():
        assert torch.equal(m(x), ref)
        m.inp.bias.mul_(2.0)  # the resident (non-block) part: its device copy
    h.unload()
    assert h.stats()["writebacks"] >= 1
    with torch.no_grad():
        assert torch.equal(m(x), ref2)
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref2)


@pytest.mark.parametrize("mode", ["sequential", "budget"])
def test_gradients_through_streamed_blocks_are_refused(mode, target):
    engine, device = target
    m = _net().to(device)
    x = torch.randn(2, D, device=device)
    with torch.no_grad():
        ref = m(x)
    kw = _budget_kw(m) if mode == "budget" else {}
    h = pinstream.offload(m, mode=mode, prefetch=1, device=device, engine=engine, **kw)
    assert h.stats()["plan"]["streamed_blocks"] + h.stats()["plan"]["split_blocks"] > 0
    with pytest.raises(RuntimeError, match=r"gradients cannot be computed.*torch\.no_grad\(\).*full_load"):
        m(x)
    for p in m.parameters():  # frozen weights, but an input that requires grad
        p.requires_grad_(False)
    with pytest.raises(RuntimeError, match="gradients cannot be computed"):
        m(x.clone().requires_grad_(True))
    out = m(x)  # grad mode on, nothing requires grad: no graph, allowed
    assert not out.requires_grad and torch.equal(out, ref)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    with torch.inference_mode():
        assert torch.equal(m(x), ref)
    h.detach()
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("mode", ["full_load", "model_offload"])
def test_gradients_where_nothing_streams_are_right(mode, target):
    engine, device = target
    m = _net().to(device)
    x = torch.randn(2, D, device=device)
    m(x).square().sum().backward()
    ref_g = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    h = pinstream.offload(m, mode=mode, prefetch=1, device=device, engine=engine)
    m(x).square().sum().backward()
    bad = [n for n, p in m.named_parameters() if p.grad is None or not torch.equal(p.grad, ref_g[n])]
    assert bad == []
    h.detach()


def test_two_threads_one_forward_at_a_time(target):
    """A forward from a second thread while one runs is refused with a clear error (the
    slots are the model's); the running forward stays right, and so does the next one."""
    engine, device = target
    m = _net().to(device)
    xa, xb = torch.randn(2, D, device=device), torch.randn(2, D, device=device)
    with torch.no_grad():
        ref_a, ref_b = m(xa), m(xb)
    h = pinstream.offload(m, mode="sequential", prefetch=1, device=device, engine=engine)
    entered, release = threading.Event(), threading.Event()
    m.blocks[2].gate = (entered, release)  # the worker thread waits inside block 2
    result = {}

    def worker():
        try:
            with torch.no_grad():
                result["out"] = m(xa)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=worker, name="pinstream-test-worker")
    t.start()
    try:
        assert entered.wait(30)
        with torch.no_grad(), pytest.raises(RuntimeError, match="already running in thread .pinstream-test-worker.; one forward at a time"):
            m(xb)
        with pytest.raises(RuntimeError, match="unload\\(\\) while a forward .* is running"):
            h.unload()
    finally:
        release.set()
        t.join(30)
    assert "error" not in result, result.get("error")
    assert torch.equal(result["out"], ref_a)
    m.blocks[2].gate = None
    with torch.no_grad():
        assert torch.equal(m(xb), ref_b)
        assert torch.equal(m(xa), ref_a)
    h.unload()
    h.detach()


@pytest.mark.parametrize("case", ["before_any_pass", "after_a_pass"])
@pytest.mark.parametrize("mode,kw", [("sequential", {}), ("budget", "budget")])
def test_dtype_conversion_while_offloaded_is_a_clear_error(case, mode, kw, target):
    _engine, device = target
    x = torch.randn(2, D, device=device)
    m = _net().to(device)
    with torch.no_grad():
        ref64 = _net().to(device).double()(x.double())
    h = _offload(m, mode, kw, 1, target)
    if case == "after_a_pass":
        with torch.no_grad():
            m(x)
    m.double()
    with torch.no_grad(), pytest.raises(
            RuntimeError, match=r"(inp|blocks\.\d)\.\S+ was converted to Double while offloaded by PinStream "
                                r"\(stored as Float\); detach\(\) the handle, convert, then offload again"):
        m(x.double())
    h.detach()
    m.double()
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    with torch.no_grad():
        assert torch.equal(m(x.double()), ref64)


def test_dtype_conversion_of_a_loaded_model_is_not_undone_by_unload(target):
    engine, device = target
    x = torch.randn(2, D, device=device)
    m = _net().to(device)
    h = pinstream.offload(m, mode="model_offload", device=device, engine=engine)
    with torch.no_grad():
        m(x)
    m.half()
    with pytest.raises(RuntimeError, match=r"was converted to Half while offloaded by PinStream \(stored as Float\)"):
        h.unload()
    h.detach()


def test_detach_move_keeps_each_tensor_kind():
    """The move detach makes back to a GPU keeps inference tensors inference tensors and
    normal ones normal, in the same Parameter objects. A dtype stands in for the device
    here: ``Module.to`` converts both the same way, and strips the inference kind the same way."""
    from pinstream.wrappers import to_keeping_inference

    with torch.inference_mode():
        frozen = nn.Linear(4, 4)
        frozen.register_buffer("table", torch.arange(3.0))
    plain = nn.Linear(4, 4)
    m = nn.Sequential(frozen, plain)
    held = frozen.weight
    # What plain Module.to does to a model built under inference mode (the failure this guards).
    with torch.inference_mode():
        probe = nn.Linear(2, 2)
    assert not probe.to(torch.float64).weight.is_inference()

    to_keeping_inference(m, torch.float64)
    assert frozen.weight is held and held.dtype == torch.float64 and held.is_inference()
    assert frozen.table.is_inference() and frozen.table.dtype == torch.float64
    assert torch.equal(frozen.table, torch.arange(3.0, dtype=torch.float64))
    assert plain.weight.dtype == torch.float64 and not plain.weight.is_inference()
    assert plain.weight.requires_grad
    with torch.no_grad():
        m(torch.randn(2, 4, dtype=torch.float64))
