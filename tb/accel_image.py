"""Program loader of the accelerator top: one image's GEMM operands -> one memory image + descriptor list.

:func:`build_image` lays out every layer of a list of :class:`ImageLayer` (operands of one GEMM as
the host hands them over: A codes, outlier list, B codes, row / column requantiser parameters) in
the format of docs/program-format.md ("Accelerator memory image") and :mod:`sim.accelerator`:

* a descriptor table at address 0 (one :data:`sim.accelerator.DESC_BITS`-bit descriptor per layer,
  the last one flagged ``last``),
* a status table (one :data:`sim.accelerator.STATUS_BITS`-bit record per layer, written by the
  sequencer),
* per layer its five input regions and its output region, each on a 4 KiB boundary.

:func:`layers_from_golden` takes the layers of one image from golden vectors
(:func:`golden.golden_vectors.load_golden`): the golden export already did the host's float work
between the GEMMs (LayerNorm, softmax, GELU, residual adds, the encoders), so all layers of the image
are in memory at once and the sequencer runs them back to back.  In a deployment the host would
write each layer's A operand after the previous layer's ``done`` / pause interrupt instead.

:func:`read_outputs` unpacks a memory dump: every layer's output matrix and status record.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitaccel.sim import accelerator as spec
from vitaccel.sim.accelerator import AccelError, AcceleratorConfig, LayerGeometry, LayerPlan, layer_plan
from vitaccel.sim.errors import UserError

__all__ = ["ImageLayer", "MemoryImage", "build_image", "layers_from_golden", "read_outputs", "read_status",
           "pack_bits", "random_image_layer"]


@dataclass
class ImageLayer:
    """The operands of one GEMM (docs/datapath.md section 9) as integers."""

    name: str
    q: np.ndarray            # (M, K) A codes
    b: np.ndarray            # (K, N) sym codes
    a_kind: str
    a_bits: int
    b_bits: int
    za: np.ndarray           # (M,)
    mr: np.ndarray           # (M,)
    sr: int
    mc: np.ndarray           # (N,)
    sc: np.ndarray           # (N,)
    bq: np.ndarray           # (N,)
    out_fmt: str
    out_bits: int
    z_out: int = 0
    fo: int = 0
    outliers: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    a_base: str = "2"
    m0: int = 0
    m1: int = 0
    expected: np.ndarray | None = None   # (M, N) golden output
    op: str = "linear"                   # linear, qk, av
    capacity: int | None = None          # the program's outlier capacity per tile (None: unlimited)

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.q.shape[0]), int(self.q.shape[1]), int(self.b.shape[1])

    def geometry(self, rows: int) -> LayerGeometry:
        from vitaccel.sim import reference as ref

        M, K, N = self.shape
        counts = ref.outliers_per_tile(self.outliers, M, rows) if len(self.outliers) else np.zeros(-(-M // rows))
        return LayerGeometry(self.name, M, K, N, self.a_bits, self.b_bits, self.out_fmt, self.out_bits,
                             tuple(int(c) for c in counts))


@dataclass
class MemoryImage:
    """A memory image and where everything is (byte addresses)."""

    cfg: AcceleratorConfig
    data: bytearray
    layers: list            # [ImageLayer]
    plans: list             # [LayerPlan]
    desc_addr: int
    status_addr: list
    region_addr: list       # [{region: addr}] (regions with words > 0)
    out_addr: list
    size: int               # bytes of memory the run needs (outputs included)

    def region_map(self) -> list[tuple[int, int, int, str]]:
        """``(start, end, layer, operand)`` byte ranges: every region, descriptor, output and status
        record (what the bench uses to attribute the bus traffic it logs)."""
        out = []
        ds = spec.DESC_BITS // 8
        for i, (plan, regs) in enumerate(zip(self.plans, self.region_addr)):
            out.append((self.desc_addr + i * ds, self.desc_addr + (i + 1) * ds, i, "desc"))
            for name, addr in regs.items():
                out.append((addr, addr + plan.regions[name].words * self.cfg.bus_bytes, i, name))
            out.append((self.out_addr[i], self.out_addr[i] + plan.out_words * self.cfg.bus_bytes, i, "out"))
            out.append((self.status_addr[i], self.status_addr[i] + spec.STATUS_BITS // 8, i, "status"))
        return sorted(out)


# ------------------------------------------------------------------------------------------- packing
def _bits(values, width: int) -> np.ndarray:
    """``(..., n)`` integers -> ``(..., n * width)`` bits (two's complement, LSB first per value)."""
    v = np.asarray(values, dtype=np.int64) & ((1 << width) - 1)
    sh = np.arange(width, dtype=np.int64)
    out = ((v[..., None] >> sh) & 1).astype(np.uint8)
    return out.reshape(*v.shape[:-1], v.shape[-1] * width)


def pack_bits(rows: np.ndarray, slot_bits: int, bus_bits: int) -> bytes:
    """Beats (``(beats, beat_bits)`` bit matrix) -> region bytes: each beat padded to ``slot_bits``,
    the slots concatenated and padded to whole ``bus_bits`` words (little endian)."""
    n, w = rows.shape
    if w > slot_bits:
        raise ValueError(f"beat of {w} bits does not fit a {slot_bits}-bit slot")
    flat = np.zeros((n, slot_bits), np.uint8)
    flat[:, :w] = rows
    flat = flat.reshape(-1)
    pad = (-len(flat)) % bus_bits
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, np.uint8)])
    return np.packbits(flat, bitorder="little").tobytes()


def _tile(mat: np.ndarray, tile: int, axis: int) -> np.ndarray:
    """Pad ``axis`` of ``mat`` to a multiple of ``tile`` with zeros."""
    pad = (-mat.shape[axis]) % tile
    if not pad:
        return mat
    widths = [(0, 0)] * mat.ndim
    widths[axis] = (0, pad)
    return np.pad(mat, widths)


def _region_beats(cfg: AcceleratorConfig, lay: ImageLayer, plan: LayerPlan) -> dict:
    """Bit matrices of the five regions' beats (engine stream order, hw/engine.py)."""
    from vitaccel.sim import reference as ref

    e = cfg.engine
    R, C, L = e.rows, e.cols, e.outlier_lanes
    M, K, N = lay.shape
    q = _tile(np.asarray(lay.q, np.int64), R, 0)                       # (nM*R, K)
    a = q.reshape(-1, R, K).transpose(0, 2, 1).reshape(-1, R)          # beat (t, k): lanes r
    b = _tile(np.asarray(lay.b, np.int64), C, 1)                       # (K, nN*C)
    bb = b.reshape(K, -1, C).transpose(1, 0, 2).reshape(-1, C)         # beat (j, k): lanes c
    mr = _tile(np.broadcast_to(np.asarray(lay.mr, np.int64).reshape(-1), (M,)), R, 0).reshape(-1, R)
    za = _tile(np.broadcast_to(np.asarray(lay.za, np.int64).reshape(-1), (M,)), R, 0).reshape(-1, R)
    o = np.asarray(lay.outliers, np.int64).reshape(-1, 3)
    counts = ref.outliers_per_tile(o, M, R) if len(o) else np.zeros(plan.n_row_tiles, np.int64)
    rowp = np.concatenate([_bits(mr, 16), _bits(za, spec.ZA_BITS), _bits(counts[:, None], 16)], axis=1)
    cols = {}
    for name in ("mc", "sc", "bq"):
        v = np.broadcast_to(np.asarray(getattr(lay, name), np.int64).reshape(-1), (N,))
        cols[name] = _tile(v, C, 0).reshape(-1, C)
    colp = np.concatenate([np.concatenate([_bits(cols["mc"][:, c:c + 1], 16), _bits(cols["sc"][:, c:c + 1], 6),
                                           _bits(cols["bq"][:, c:c + 1], 48)], axis=1) for c in range(C)], axis=1)
    beats = {"a": _bits(a, lay.a_bits), "b": _bits(bb, lay.b_bits), "rowp": rowp, "colp": colp}
    ent = []
    for t in range(plan.n_row_tiles):
        sel = o[(o[:, 0] >= t * R) & (o[:, 0] < (t + 1) * R)] if len(o) else o
        for i in range(0, len(sel), L):
            chunk = sel[i:i + L]
            row = np.zeros((L, 4), np.int64)
            row[:len(chunk), :3] = chunk
            row[:len(chunk), 3] = 1
            ent.append(row)
    if ent:
        ent = np.stack(ent)                                             # (beats, L, 4)
        beats["outl"] = np.concatenate([np.concatenate([_bits(ent[:, l, 0:1], 16), _bits(ent[:, l, 1:2], 16),
                                                        _bits(ent[:, l, 2:3], 16), _bits(ent[:, l, 3:4], 1)], axis=1)
                                        for l in range(L)], axis=1)
    else:
        beats["outl"] = np.zeros((0, spec.OUTL_ENTRY_BITS * L), np.uint8)
    return beats


def _cmd_word(lay: ImageLayer) -> int:
    from vitaccel.hw.engine import cmd_layout
    from vitaccel.tb.engine_streams import _OUT, _code_format, _pack

    M, K, N = lay.shape
    return _pack(cmd_layout, {
        "m": M, "k": K, "n": N, "a_fmt": _code_format(lay.a_kind, lay.a_base), "a_k": lay.a_bits, "m0": lay.m0,
        "m1": lay.m1, "fo": lay.fo, "sr": lay.sr, "z_out": lay.z_out, "out_fmt": _OUT[lay.out_fmt],
        "out_k": lay.out_bits if lay.out_bits <= 8 else 0})


def _pack_fields(fields, values: dict, total_bits: int) -> bytes:
    word, pos = 0, 0
    for name, bits in fields:
        v = int(values.get(name, 0))
        if not 0 <= v < (1 << bits):
            raise ValueError(f"descriptor field {name} = {v} does not fit {bits} bits")
        word |= v << pos
        pos += bits
    return word.to_bytes(total_bits // 8, "little")


def _align(x: int, a: int = spec.REGION_ALIGN) -> int:
    return -(-x // a) * a


def build_image(cfg: AcceleratorConfig, layers: list, *, pause_after: set | None = None) -> MemoryImage:
    """Lay out ``layers`` (:class:`ImageLayer`) for the accelerator ``cfg`` (see the module docstring).

    Raises
    ------
    UserError
        When a layer does not fit the build (:func:`sim.accelerator.layer_plan`: buffers, ``max_k``,
        widths, outlier capacity, output row width); the message names the layer and the limit.
    """
    if not layers:
        raise UserError("the accelerator image needs at least one layer")
    from vitaccel.sim.engine_config import ConfigError, check_layer_acc

    plans = []
    for lay in layers:
        try:
            plans.append(layer_plan(cfg, lay.geometry(cfg.engine.rows)))
            check_layer_acc(cfg.engine, lay.shape[1], lay.a_kind, lay.a_bits, lay.b_bits,
                            int(np.max(lay.za)) if np.size(lay.za) else 0, lay.fo, a_base=lay.a_base,
                            m0=lay.m0, m1=lay.m1)
        except AccelError as exc:
            raise UserError(f"layer {exc}") from None
        except ConfigError as exc:
            raise UserError(f"layer {lay.name}: {str(exc).removeprefix('layer: ')} (--acc-bits)") from None
    n = len(layers)
    ds, ss = spec.DESC_BITS // 8, spec.STATUS_BITS // 8
    desc_addr = 0
    status0 = _align(n * ds)
    addr = _align(status0 + n * ss)
    region_addr, out_addr = [], []
    for plan in plans:
        regs = {}
        for name in spec.REGIONS:
            if plan.regions[name].words:
                regs[name] = addr
                addr = _align(addr + plan.regions[name].words * cfg.bus_bytes)
        region_addr.append(regs)
        out_addr.append(addr)
        addr = _align(addr + plan.out_words * cfg.bus_bytes)
    mem = bytearray(addr)
    pause_after = pause_after or set()
    for i, (lay, plan, regs) in enumerate(zip(layers, plans, region_addr)):
        beats = _region_beats(cfg, lay, plan)
        for name, a in regs.items():
            r = plan.regions[name]
            blob = pack_bits(beats[name], r.slot_bits, cfg.bus_bits)
            if len(blob) != r.words * cfg.bus_bytes:
                raise AssertionError(f"{lay.name}/{name}: packed {len(blob)} bytes, plan {r.words} words")
            mem[a:a + len(blob)] = blob
        vals = {"cmd": _cmd_word(lay), "last": int(i == n - 1), "pause": int(i in pause_after), "b_k": lay.b_bits,
                "n_blocks": plan.n_blocks, "n_row_tiles": plan.n_row_tiles, "layer_id": i,
                "out_addr": out_addr[i], "status_addr": status0 + i * ss,
                "a_beats": plan.regions["a"].beats, "outl_beats": plan.regions["outl"].beats,
                "b_beats": plan.regions["b"].beats}
        for name in spec.REGIONS:
            vals[f"{name}_addr"] = regs.get(name, 0)
            vals[f"{name}_words"] = plan.regions[name].words
        mem[desc_addr + i * ds:desc_addr + (i + 1) * ds] = _pack_fields(spec.DESC_FIELDS, vals, spec.DESC_BITS)
    return MemoryImage(cfg=cfg, data=mem, layers=list(layers), plans=plans, desc_addr=desc_addr,
                       status_addr=[status0 + i * ss for i in range(n)], region_addr=region_addr,
                       out_addr=out_addr, size=addr)


# ------------------------------------------------------------------------------------------- golden
def layers_from_golden(vec: dict, image: int, records=None) -> list:
    """:class:`ImageLayer` of every GEMM record (or ``records``) of image ``image`` of golden vectors
    (:func:`golden.golden_vectors.load_golden`), in the order the program ran them."""
    from vitaccel.golden.golden_vectors import image_spec

    names = list(vec) if records is None else list(records)
    out = []
    for name in names:
        rec = vec[name]
        n_img = rec["a_codes"].shape[0]
        if not 0 <= image < n_img:
            raise UserError(f"image {image} out of range (the golden vectors hold {n_img} images)")
        s = image_spec(rec, image)
        q = np.asarray(rec["a_codes"][image], np.int64)
        b = np.asarray(rec["b"][image] if rec["b"] is not None else s.b, np.int64)
        M, N = q.shape[0], b.shape[1]
        out.append(ImageLayer(
            name=name, q=q, b=b, a_kind=s.a_kind, a_bits=s.a_bits, b_bits=s.b_bits,
            za=np.broadcast_to(np.asarray(s.za, np.int64).reshape(-1), (M,)),
            mr=np.broadcast_to(np.asarray(s.mr, np.int64).reshape(-1), (M,)), sr=int(s.sr),
            mc=np.broadcast_to(np.asarray(s.mc, np.int64).reshape(-1), (N,)),
            sc=np.broadcast_to(np.asarray(s.sc, np.int64).reshape(-1), (N,)),
            bq=np.broadcast_to(np.asarray(s.bq, np.int64).reshape(-1), (N,)),
            out_fmt=s.out_fmt, out_bits=int(s.out_bits), z_out=int(s.z_out), fo=int(s.fo),
            outliers=np.asarray(rec["outliers"][image], np.int64).reshape(-1, 3), a_base=s.a_base,
            m0=int(s.m0), m1=int(s.m1), expected=np.asarray(rec["out"][image], np.int64), op=s.op,
            capacity=s.outlier_capacity))
    return out


# ------------------------------------------------------------------------------------------- results
def read_outputs(img: MemoryImage, mem: bytes, i: int) -> np.ndarray:
    """Layer ``i``'s output matrix ``(M, N)`` from a memory dump (lanes sign-extended for ``scode`` and
    fixed point, zero-extended for ``ucode``)."""
    plan, lay = img.plans[i], img.layers[i]
    C = img.cfg.engine.cols
    M, _K, N = lay.shape
    ob, slot = plan.out_lane_bits, plan.out_slot_bits
    a = img.out_addr[i]
    raw = np.frombuffer(bytes(mem[a:a + plan.out_words * img.cfg.bus_bytes]), np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[:plan.out_rows * slot].reshape(plan.out_rows, slot)[:, :C * ob]
    lanes = bits.reshape(plan.out_rows, C, ob).astype(np.int64)
    vals = (lanes << np.arange(ob, dtype=np.int64)).sum(axis=2)
    if lay.out_fmt != "ucode":
        vals = np.where(vals >= (1 << (ob - 1)), vals - (1 << ob), vals)
    blocks = vals.reshape(plan.n_blocks, M, C).transpose(1, 0, 2).reshape(M, plan.n_blocks * C)
    return blocks[:, :N]


def read_status(img: MemoryImage, mem: bytes, i: int) -> dict:
    """Layer ``i``'s status record (:data:`sim.accelerator.STATUS_FIELDS`) from a memory dump."""
    a = img.status_addr[i]
    word = int.from_bytes(bytes(mem[a:a + spec.STATUS_BITS // 8]), "little")
    out, pos = {}, 0
    for name, bits in spec.STATUS_FIELDS:
        out[name] = (word >> pos) & ((1 << bits) - 1)
        pos += bits
    return out


def random_image_layer(rng: np.random.Generator, name: str, M: int, K: int, N: int, *, rows: int,
                       a_kind: str = "uniform", a_bits: int = 8, b_bits: int = 8, base: str = "2",
                       out_fmt: str = "fixed32", out_bits: int = 32, outliers_per_tile: int = 0) -> ImageLayer:
    """A random valid layer (every code type of the format, per-row zero points and gains, outliers
    with their dense code set to the row's zero point) with its expected output from
    ``sim/reference.py``."""
    from vitaccel.sim import formats as F
    from vitaccel.sim import reference as ref
    from vitaccel.tb.engine_streams import random_codes

    q = random_codes(rng, a_kind, a_bits, (M, K), base)
    lo, hi = F.sym_range(b_bits)
    b = rng.integers(lo, hi + 1, (K, N))
    m0 = m1 = 0
    if a_kind == "uniform":
        za = rng.integers(0, 1 << a_bits, M)
    elif a_kind == "shiftlog2":
        za = np.full(M, int(rng.integers(0, 1 << 12)))
    else:
        za = np.zeros(M, np.int64)
    if a_kind == "three_region":
        m0 = int(rng.integers(0, 8))
        m1 = int(rng.integers(m0, 16))
    fo = 2 if outliers_per_tile else 0
    outl = []
    for t in range(-(-M // rows) if outliers_per_tile else 0):
        m = min(rows, M - t * rows)
        for cell in sorted(rng.choice(m * K, size=min(outliers_per_tile, m * K), replace=False)):
            r, k = t * rows + cell // K, cell % K
            outl.append((r, k, int(rng.integers(-(1 << 15), 1 << 15))))
            q[r, k] = za[r]
    outl = np.array(outl, np.int64).reshape(-1, 3)
    sr = int(rng.integers(0, 17))
    mr = np.minimum(rng.integers(0, (1 << sr) + 1, M), (1 << 16) - 1)
    d = ref.decode(q, a_kind, a_bits, base=base, m0=m0, m1=m1)
    _r, _d, acc = ref.accumulate(d, b, za, fo, outl)
    amax = max(1, int(np.abs(acc).max()))
    _lo, hi_out = F.out_range(out_fmt, out_bits)
    mc = rng.integers(1 << 14, 1 << 16, N)
    sc = np.clip(np.array([(amax * int(x)).bit_length() - max(1, hi_out).bit_length() for x in mc]), 0, 47)
    bq = rng.integers(-(1 << 20), 1 << 20, N) * (1 << np.minimum(sc, 26)) // (1 << 20)
    z_out = int(rng.integers(0, hi_out + 1)) if out_fmt == "ucode" else 0
    out, _sat = ref.requantize(acc, mr, sr, mc, sc, bq, z_out, out_fmt, out_bits)
    return ImageLayer(name, q, b, a_kind, a_bits, b_bits, za, mr, sr, mc, sc, bq, out_fmt, out_bits, z_out, fo,
                      outl, a_base=base, m0=m0, m1=m1, expected=out)
