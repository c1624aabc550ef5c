"""`python -m pinstream bench compress`: the exact coded form on the CPU.

For the demo's Wan-shaped model (its initialisation: normal weights of std 0.02, as the
Wan training code initialises its linear layers) in bf16 and fp16, and for trained weights
where a package that ships them is installed (facenet-pytorch's MTCNN: trained conv and
linear weights, cast to bf16 and fp16), it codes every weight PinStream would code and
prints:
  ratio                 coded bytes / stored bytes over the whole model (tensors that stay
                        as stored count as stored);
  encode / decode GB/s  per core (one thread), stored bytes per second;
and, for the choice of code, what the other codings would give on the same weights: the
top byte's entropy (the bound for any code of it), and a fixed-length code of k bits with
escapes (k = 3, 4; an escape costs the 8 bits of the byte after the k-bit escape symbol).
`--json PATH` writes {"results": [{"dtype", "source", "ratio", "encode_gbps_per_core",
"decode_gbps_per_core"}], "comparison": [...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import time

MIN_ELEMENTS = 4096  # as the runtime: smaller tensors stay as stored


def _weights_demo(preset: str, dtype):
    import torch

    from pinstream.demo_model import WanTransformer

    torch.manual_seed(0)
    model = WanTransformer.from_preset(preset, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)  # Wan's linear init
    return [p.detach().to(dtype).contiguous() for p in model.parameters()]


def _weights_trained(dtype):
    """facenet-pytorch's MTCNN weights (trained), if the package is installed."""
    import importlib.util
    import os

    import torch

    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None:
        return None
    data = os.path.join(os.path.dirname(spec.origin), "data")
    out = []
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        sd = torch.load(os.path.join(data, name), map_location="cpu", weights_only=True)
        out += [t.to(dtype).contiguous() for t in sd.values() if t.is_floating_point()]
    return out


def _fixed_length_ratio(top_hist, k: int) -> float:
    """Bits per element of a k-bit code of the 2^k - 1 most frequent top bytes plus an escape
    symbol followed by the 8-bit byte, over the 16 bits stored."""
    total = sum(top_hist)
    if total == 0:
        return 1.0
    covered = sum(sorted(top_hist, reverse=True)[: 2**k - 1])
    escapes = total - covered
    return (8 + k + 8 * escapes / total) / 16


def measure(tensors, threads: int):
    import torch

    from pinstream import _C

    stored = coded = 0
    enc_s = dec_s = 0.0
    coded_plain = 0
    hist = [0] * 256
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        stored += nbytes
        if t.numel() < MIN_ELEMENTS or t.element_size() > 2:
            coded += nbytes
            continue
        top = t.view(torch.uint8).view(-1, t.element_size())[:, -1]
        for v, n in enumerate(torch.bincount(top.to(torch.int64), minlength=256).tolist()):
            hist[v] += n
        t0 = time.perf_counter()
        out, layout, _entropy = _C.exact_code(t, threads)
        enc_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        back = _C.exact_decode(out, layout, threads)
        dec_s += time.perf_counter() - t0
        if not torch.equal(back, t.view(torch.uint8).reshape(-1)):
            raise AssertionError("exact round trip failed")
        used = min(out.numel(), nbytes)  # a tensor where coding does not pay stays as stored
        coded += used
        coded_plain += nbytes
    total = sum(hist)
    entropy = -sum(n / total * math.log2(n / total) for n in hist if n) if total else 0.0
    return {
        "ratio": coded / stored,
        "encode_gbps_per_core": coded_plain / enc_s / 1e9 if enc_s else 0.0,
        "decode_gbps_per_core": coded_plain / dec_s / 1e9 if dec_s else 0.0,
        "stored_bytes": stored,
        "top_entropy_bits": entropy,
        "entropy_bound_ratio": (8 + entropy) / 16,
        "fixed3_ratio": _fixed_length_ratio(hist, 3),
        "fixed4_ratio": _fixed_length_ratio(hist, 4),
    }


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python -m pinstream bench compress", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", help="the demo model's preset (default demo)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    results, comparison = [], []
    sources = [("wan-shaped, Wan's init (demo preset " + args.preset + ")", lambda d: _weights_demo(args.preset, d)),
               ("trained: facenet-pytorch MTCNN", _weights_trained)]
    for source, make in sources:
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            tensors = make(dtype)
            if tensors is None:
                print(f"{source}: not installed (pip install facenet-pytorch --no-deps), skipped")
                break
            r = measure(tensors, threads=1)
            results.append({"dtype": name, "source": source, "ratio": r["ratio"],
                            "encode_gbps_per_core": r["encode_gbps_per_core"],
                            "decode_gbps_per_core": r["decode_gbps_per_core"]})
            comparison.append({"dtype": name, "source": source, "huffman_ratio": r["ratio"],
                               "entropy_bound_ratio": r["entropy_bound_ratio"], "fixed3_ratio": r["fixed3_ratio"],
                               "fixed4_ratio": r["fixed4_ratio"], "top_entropy_bits": r["top_entropy_bits"]})
            print(f"{source:<46} {name}: ratio {r['ratio']:.3f} of {r['stored_bytes'] / 2**20:.1f} MiB "
                  f"(entropy bound {r['entropy_bound_ratio']:.3f}, fixed 3-bit {r['fixed3_ratio']:.3f}, "
                  f"4-bit {r['fixed4_ratio']:.3f}); encode {r['encode_gbps_per_core']:.2f} GB/s, decode "
                  f"{r['decode_gbps_per_core']:.2f} GB/s per core")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"results": results, "comparison": comparison}, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0
