"""The accelerator top around the layer engine: configuration, memory layout and exact cycle/byte model.

This module is the specification of :mod:`hw.accelerator` (docs/hardware.md, "Accelerator top") and
of the memory image the program loader writes (docs/program-format.md, "Accelerator memory image").
It sits in ``sim`` (the ground floor) because three layers use it: the RTL (:mod:`hw.accelerator`)
takes its sizes and descriptor layout from here, the loader and the bench (:mod:`tb.accel_image`,
:mod:`tb.accel_bench`) pack and unpack memory with it, and the estimator
(``vitaccel estimate --dataflow accelerator``, :mod:`sim.perf.accelerator`) reports its cycles and
bytes.

Operation (one layer, no overlap between phases)
------------------------------------------------
1. **Descriptor**: the sequencer reads the layer's :data:`DESC_BITS`-bit descriptor (one burst).
2. **Load**: the read DMA copies the layer's five input regions -- A codes, row parameters
   (``rowp``), outlier list (``outl``), B codes, column parameters (``colp``) -- into on-chip
   buffers (bursts of at most :func:`AcceleratorConfig.max_burst` words, up to
   :data:`DMA_OUTSTANDING` bursts in flight).
3. **Prime / run**: feeders stream the buffers into the engine's input streams (A and the outlier
   list once per column block, B once), the engine command is issued when every feeder holds its
   first beats, and the engine runs the whole layer without ever waiting for an operand (the
   buffers hold the layer, each feeder delivers one beat per cycle).  The output writer packs each
   output row and writes it with one single-beat write burst; the memory port accepts a write per
   cycle, so the engine never waits for the writer either.
4. **Status**: the sequencer writes a 128-bit status record (engine cycles, layer cycles, flags),
   then fetches the next descriptor, pauses (``pause`` flag: interrupt, wait for ``resume``) or
   stops (``last`` flag: ``done`` and interrupt).

Hence a layer's cycles are ``desc + load + prime + engine + tail + status``, each a closed form of
the layer's geometry and the memory latency: :func:`layer_cycles_top`.  The engine part is
:func:`sim.schedule.layer_cycles` (its en-cycles; the engine never stalls).

Memory layout of one layer (all regions start on a :data:`REGION_ALIGN`-byte boundary)
-------------------------------------------------------------------------------------
Memory words are ``bus_bits`` wide, byte addressed, little endian (byte ``i`` of a word holds
bits ``8i .. 8i+7``).  A region is a sequence of *slots*, one engine stream beat per slot:

* **packed** regions (slot ``<= bus_bits``; slot = the beat rounded up to a power of two, at least 8
  bits): ``bus_bits / slot`` beats per word, beat ``i`` in word ``i // per_word`` at bit
  ``(i % per_word) * slot``;
* **wide** regions (beat wider than one word): ``ceil(beat / bus_bits)`` words per beat.

=========  ============================================  ===================  =========  =======
region     beat (what one engine stream beat holds)      beat bits            beats      repeats
=========  ============================================  ===================  =========  =======
A          ``A[r0 + r, k]``, ``R`` lanes of ``a_k`` bits ``R * a_k``          ``nM * K``  ``nN``
rowp       ``Mr[r]`` (16), ``za[r]`` (24) x ``R``, count  ``R * 40 + 16``       ``nM``      ``nN``
outl       ``L`` entries (row, col, val, valid)           ``L * 49``            ``sum nb``  ``nN``
B          ``B[k, c0 + c]``, ``C`` lanes of ``b_k`` bits  ``C * b_k``           ``nN * K``  1
colp       ``Mc`` (16), ``Sc`` (6), ``Bq`` (48) x ``C``    ``C * 70``            ``nN``      1
out        one output row: ``C`` lanes of ``ob`` bits     ``C * ob``            ``nN * M``  (write)
=========  ============================================  ===================  =========  =======

(``nM = ceil(M / R)`` row tiles, ``nN = ceil(N / C)`` column blocks, ``nb`` outlier beats of a row
tile, ``ob`` the output lane width: ``out_bits`` for codes, 16 / 32 for ``fixed16`` / ``fixed32``.)
Beats are in the engine's stream order (:mod:`hw.engine`): A row tile by row tile, ``K`` beats each;
B column block by column block.  Lanes past the layer's edge are 0.  The output rows are written in
the order the engine produces them (column block outer, row inner).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

from .engine_config import BACK_END_DELAY, DIM_BITS, ConfigError, EngineConfig, check_layer_shape
from .schedule import CycleBreakdown, layer_cycles

__all__ = [
    "AcceleratorConfig", "AccelError", "LayerGeometry", "RegionPlan", "LayerPlan", "TopCycles",
    "layer_plan", "layer_cycles_top", "DESC_BITS", "DESC_FIELDS", "STATUS_BITS", "STATUS_FIELDS",
    "REGIONS", "REGION_ALIGN", "out_lane_bits", "desc_layout_bits", "default_bus_bits",
    "read_bursts", "ROWP_BEAT_BITS", "COLP_BEAT_BITS", "OUTL_ENTRY_BITS", "CMD_BITS", "status_flags",
    "sized_config", "model_traffic",
]

# ------------------------------------------------------------------------------------------- constants
#: Bits of the engine command (``hw.engine.cmd_layout``; tests/test_accelerator.py checks it).
CMD_BITS = 85
#: Width of a zero point ``za[r]`` in a row-parameter beat (``hw.engine.ZA_BITS``).
ZA_BITS = 24
#: Bits of one outlier entry: row, col (``DIM_BITS`` each), value (16), lane-valid bit.
OUTL_ENTRY_BITS = 2 * DIM_BITS + 16 + 1
#: Bits per column of a column-parameter beat: ``Mc`` (16), ``Sc`` (6), ``Bq`` (48).
COLP_COL_BITS = 16 + 6 + 48

#: Descriptor size in bits; descriptors are consecutive in memory (``DESC_BITS / 8`` bytes each).
DESC_BITS = 1024
#: Status record size in bits (written by the sequencer after each layer).
STATUS_BITS = 128
#: Regions start on this byte boundary (so no burst crosses an AXI 4 KiB boundary).
REGION_ALIGN = 4096
#: AXI4 largest burst (beats).
AXI_MAX_BURST = 256
#: Bursts the read DMA keeps in flight.
DMA_OUTSTANDING = 8
#: Byte-address width of the memory port.
ADDR_BITS = 32
#: Input regions in load order (``out`` is written, not loaded).
REGIONS = ("a", "rowp", "outl", "b", "colp")

#: Descriptor fields, LSB first: (name, bits).  Addresses are byte addresses; ``*_words`` are
#: region lengths in bus words, ``*_beats`` beats per repeat.
DESC_FIELDS = (
    ("cmd", 128),                 # engine command (hw.engine.cmd_layout), zero padded
    ("last", 1), ("pause", 1), ("rsv0", 6),
    ("b_k", 4), ("rsv1", 28),
    ("n_blocks", 16), ("n_row_tiles", 16), ("layer_id", 16),
    ("a_addr", 32), ("a_words", 24), ("a_beats", 24),
    ("rowp_addr", 32), ("rowp_words", 24),
    ("outl_addr", 32), ("outl_words", 24), ("outl_beats", 24),
    ("b_addr", 32), ("b_words", 24), ("b_beats", 24),
    ("colp_addr", 32), ("colp_words", 24),
    ("out_addr", 32), ("status_addr", 32),
)
#: Status record fields, LSB first.
STATUS_FIELDS = (
    ("engine_cycles", 32),   # the engine's cycle counter (sim.schedule.layer_cycles total)
    ("layer_cycles", 32),    # cycles from the descriptor read to the status write
    ("run_cycles", 32),      # cycles from the engine command to the last output write response
    ("flags", 8),            # status_flags() bits
    ("layer_id", 16),
    ("magic", 8),            # STATUS_MAGIC: the record was written
)
STATUS_MAGIC = 0xA5
#: Status flag bits (``flags`` field and the top's ``error`` port).
STATUS_FLAG_BITS = ("overflow", "range_error", "invalid_code", "acc_fault", "desc_error", "bus_error")


def status_flags(value: int) -> dict:
    """``{name: 0/1}`` of a status ``flags`` byte."""
    return {name: (value >> i) & 1 for i, name in enumerate(STATUS_FLAG_BITS)}


def desc_layout_bits() -> int:
    """Used bits of a descriptor (at most :data:`DESC_BITS`)."""
    return sum(b for _n, b in DESC_FIELDS)


def ROWP_BEAT_BITS(rows: int) -> int:
    """Bits of a row-parameter beat (``hw.engine.rowp_layout``)."""
    return rows * (16 + ZA_BITS) + DIM_BITS


def COLP_BEAT_BITS(cols: int) -> int:
    """Bits of a column-parameter beat (``hw.engine.colp_layout``)."""
    return cols * COLP_COL_BITS


def out_lane_bits(out_fmt: str, out_bits: int) -> int:
    """Bits an output element occupies in memory: ``out_bits`` for codes, 16 / 32 for fixed point."""
    if out_fmt in ("ucode", "scode"):
        return int(out_bits)
    return {"fixed16": 16, "fixed32": 32}[out_fmt]


def _pow2ceil(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _slot(beat_bits: int) -> int:
    return max(8, _pow2ceil(beat_bits))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_bus_bits(engine: EngineConfig) -> int:
    """Memory port width that lets the writer store one ``fixed32`` output row per cycle
    (``32 * cols`` bits, rounded up to a power of two, at least 128) and holds one A / B beat."""
    need = max(128, 32 * engine.cols, engine.rows * engine.a_bits, engine.cols * engine.b_bits,
               _slot(OUTL_ENTRY_BITS * engine.outlier_lanes) if engine.has_outliers else 0)
    return _pow2ceil(need)


class AccelError(ConfigError):
    """A layer the accelerator build cannot run (buffer, width or capacity), or a bad top configuration."""


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AcceleratorConfig:
    """Build-time parameters of the accelerator top (:class:`hw.accelerator.Accelerator`).

    Attributes
    ----------
    engine : EngineConfig
        The layer engine inside.
    bus_bits : int
        Data width of the AXI4 memory port (power of two, 128..1024).  Must hold one output row of
        the widest output format used (``cols * 32`` bits for ``fixed32``), see
        :func:`default_bus_bits`.
    a_buf_words, b_buf_words, outl_buf_words : int
        Depth (bus words) of the A, B and outlier buffers: the largest region a layer may have.
    rowp_buf_beats, colp_buf_beats : int
        Depth (beats) of the row- and column-parameter buffers: the most row tiles / column
        blocks a layer may have.
    mem_latency : int
        Read latency of the memory the cycle model assumes (cycles from the read-address handshake
        to the first data beat; the bench memory is built with it).  Not a property of the RTL,
        which works with any latency.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    bus_bits: int = 512
    a_buf_words: int = 4096
    b_buf_words: int = 4096
    outl_buf_words: int = 256
    rowp_buf_beats: int = 64
    colp_buf_beats: int = 128
    mem_latency: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.engine, EngineConfig):
            raise AccelError(f"accelerator config: engine must be an EngineConfig, got {type(self.engine).__name__}")
        for f in fields(self):
            if f.name == "engine":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise AccelError(f"accelerator config: {f.name} must be an integer, got {v!r}")
        if self.bus_bits not in (128, 256, 512, 1024):
            raise AccelError(f"accelerator config: bus_bits must be 128, 256, 512 or 1024, got {self.bus_bits}")
        e = self.engine
        for what, bits in (("an A beat (rows x a_bits)", e.rows * e.a_bits),
                           ("a B beat (cols x b_bits)", e.cols * e.b_bits),
                           ("an outlier beat", OUTL_ENTRY_BITS * e.outlier_lanes if e.has_outliers else 0)):
            if _slot(bits) > self.bus_bits:
                raise AccelError(f"accelerator config: bus_bits = {self.bus_bits} cannot hold {what} of "
                                 f"{_slot(bits)} bits; use --bus-bits {_pow2ceil(bits)} or more")
        for name in ("a_buf_words", "b_buf_words", "rowp_buf_beats", "colp_buf_beats"):
            if not 1 <= getattr(self, name) <= (1 << 24) - 1:
                raise AccelError(f"accelerator config: {name} must be in 1..{(1 << 24) - 1}, got {getattr(self, name)}")
        if not 0 <= self.outl_buf_words <= (1 << 24) - 1:
            raise AccelError(f"accelerator config: outl_buf_words must be in 0..{(1 << 24) - 1}")
        if not 1 <= self.mem_latency <= 1000:
            raise AccelError(f"accelerator config: mem_latency must be in 1..1000 cycles, got {self.mem_latency}")

    # -------------------------------------------------------------------------------- derived
    @property
    def bus_bytes(self) -> int:
        return self.bus_bits // 8

    @property
    def max_burst(self) -> int:
        """Largest burst (words): AXI4's 256 beats, and never more than 4 KiB."""
        return min(AXI_MAX_BURST, 4096 // self.bus_bytes)

    @property
    def desc_words(self) -> int:
        return _ceil_div(DESC_BITS, self.bus_bits)

    def region_kind(self, region: str) -> tuple[str, int]:
        """``("packed", largest slot bits)`` or ``("wide", words per beat)`` of an input region."""
        e = self.engine
        beat = {"a": e.rows * e.a_bits, "b": e.cols * e.b_bits, "rowp": ROWP_BEAT_BITS(e.rows),
                "colp": COLP_BEAT_BITS(e.cols), "outl": OUTL_ENTRY_BITS * e.outlier_lanes}[region]
        if _slot(beat) <= self.bus_bits:
            return "packed", _slot(beat)
        return "wide", _ceil_div(beat, self.bus_bits)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["engine"] = self.engine.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AcceleratorConfig":
        d = dict(d)
        eng = d.pop("engine", {})
        known = {f.name for f in fields(cls)} - {"engine"}
        unknown = set(d) - known
        if unknown:
            raise AccelError(f"accelerator config: unknown field(s) {sorted(unknown)}")
        return cls(engine=EngineConfig.from_dict(eng) if isinstance(eng, dict) else eng, **d)

    def replace(self, **kw) -> "AcceleratorConfig":
        return replace(self, **kw)


# ------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class LayerGeometry:
    """What the layout and the cycle model need to know about one layer (one GEMM instance).

    ``outliers_per_tile``: outliers in each row tile of ``engine.rows`` rows (``ceil(M / rows)``
    counts; an int means the same count in every tile).
    """

    name: str
    M: int
    K: int
    N: int
    a_bits: int
    b_bits: int
    out_fmt: str
    out_bits: int
    outliers_per_tile: tuple = ()

    def counts(self, rows: int) -> list[int]:
        n_m = _ceil_div(self.M, rows)
        o = self.outliers_per_tile
        if isinstance(o, int):
            return [int(o)] * n_m
        if not o:
            return [0] * n_m
        if len(o) != n_m:
            raise AccelError(f"{self.name}: {len(o)} outlier counts for {n_m} row tiles of {rows} rows")
        return [int(c) for c in o]


@dataclass(frozen=True)
class RegionPlan:
    """One input region of a layer: ``beats`` engine beats (per repeat) in ``words`` bus words."""

    name: str
    beats: int
    repeats: int
    kind: str           # "packed" or "wide"
    slot_bits: int      # packed: bits per beat slot; wide: words per beat * bus_bits
    words: int


@dataclass(frozen=True)
class LayerPlan:
    """Memory geometry of one layer on an accelerator (see the module docstring)."""

    geometry: LayerGeometry
    n_row_tiles: int
    n_blocks: int
    regions: dict          # name -> RegionPlan (a, rowp, outl, b, colp)
    out_rows: int
    out_lane_bits: int
    out_slot_bits: int
    out_words: int         # words the output region spans
    out_bytes: int         # bytes written (byte strobes): out_rows * out_slot_bits / 8
    bus_bits: int
    outlier_beats_per_tile: tuple

    def region_bytes(self, name: str) -> int:
        """Bytes read for an input region (whole words)."""
        return self.regions[name].words * self.bus_bits // 8

    @property
    def read_bytes(self) -> int:
        """Input bytes of the layer (the five regions, whole words; the descriptor is extra)."""
        return sum(self.region_bytes(r) for r in REGIONS)


def _region(name: str, beats: int, repeats: int, cfg: AcceleratorConfig, beat_bits: int) -> RegionPlan:
    kind, size = cfg.region_kind(name)
    if kind == "packed":
        slot = _slot(beat_bits)
        per_word = cfg.bus_bits // slot
        return RegionPlan(name, beats, repeats, "packed", slot, _ceil_div(beats, per_word))
    return RegionPlan(name, beats, repeats, "wide", size * cfg.bus_bits, beats * size)


def layer_plan(cfg: AcceleratorConfig, g: LayerGeometry) -> LayerPlan:
    """The memory geometry of layer ``g`` on ``cfg``; :class:`AccelError` when it does not fit.

    Checks (each error names the limit and the flag that raises it): shape and ``K <= max_k``
    (:func:`sim.engine_config.check_layer_shape`), code widths ``<= a_bits / b_bits``, an outlier
    count per row tile ``<= outlier_capacity``, an output row ``<= bus_bits``, every region
    ``<=`` its buffer.
    """
    e = cfg.engine
    try:
        check_layer_shape(e, g.M, g.K, g.N)
    except ConfigError as exc:
        raise AccelError(f"{g.name}: {exc} (--max-k)") from None
    if g.a_bits > e.a_bits or g.b_bits > e.b_bits:
        raise AccelError(f"{g.name}: w{g.b_bits}a{g.a_bits} codes exceed the engine's w{e.b_bits}a{e.a_bits} "
                         f"(--bits w{max(g.b_bits, e.b_bits)}a{max(g.a_bits, e.a_bits)})")
    R, C, L = e.rows, e.cols, e.outlier_lanes
    n_m, n_n = _ceil_div(g.M, R), _ceil_div(g.N, C)
    counts = g.counts(R)
    if any(counts):
        if not e.has_outliers:
            raise AccelError(f"{g.name}: the layer has outliers but the engine has no outlier unit "
                             f"(outlier_capacity = 0; --outlier-capacity)")
        worst = max(counts)
        if worst > e.outlier_capacity:
            raise AccelError(f"{g.name}: a row tile of {R} rows holds {worst} outliers, more than the engine's "
                             f"outlier_capacity = {e.outlier_capacity} (--outlier-capacity {worst})")
    nb = tuple(_ceil_div(c, L) for c in counts)
    ob = out_lane_bits(g.out_fmt, g.out_bits)
    out_slot = _slot(C * ob)
    if out_slot > cfg.bus_bits:
        raise AccelError(f"{g.name}: an output row of {C} x {ob} bits ({g.out_fmt}) does not fit the "
                         f"{cfg.bus_bits}-bit memory port (--bus-bits {out_slot})")
    regions = {
        "a": _region("a", n_m * g.K, n_n, cfg, R * g.a_bits),
        "rowp": _region("rowp", n_m, n_n, cfg, ROWP_BEAT_BITS(R)),
        "outl": _region("outl", sum(nb), n_n, cfg, OUTL_ENTRY_BITS * L),
        "b": _region("b", n_n * g.K, 1, cfg, C * g.b_bits),
        "colp": _region("colp", n_n, 1, cfg, COLP_BEAT_BITS(C)),
    }
    limits = {"a": ("a_buf_words", cfg.a_buf_words), "b": ("b_buf_words", cfg.b_buf_words),
              "outl": ("outl_buf_words", cfg.outl_buf_words), "rowp": ("rowp_buf_beats", cfg.rowp_buf_beats),
              "colp": ("colp_buf_beats", cfg.colp_buf_beats)}
    for name, reg in regions.items():
        key, limit = limits[name]
        need = reg.beats if key.endswith("_beats") else reg.words
        if need > limit:
            unit = "beats" if key.endswith("_beats") else "words"
            raise AccelError(f"{g.name}: its {name} region needs {need} {unit}, the accelerator's {key} = {limit} "
                             f"(--{key.replace('_', '-')} {need})")
    rows_out = n_n * g.M
    per_word = cfg.bus_bits // out_slot
    return LayerPlan(geometry=g, n_row_tiles=n_m, n_blocks=n_n, regions=regions, out_rows=rows_out,
                     out_lane_bits=ob, out_slot_bits=out_slot, out_words=_ceil_div(rows_out, per_word),
                     out_bytes=rows_out * out_slot // 8, bus_bits=cfg.bus_bits, outlier_beats_per_tile=nb)


# ------------------------------------------------------------------------------------------- cycles
#: Cycle constants of the sequencer (hw/accelerator.py); docs/hardware.md, "Accelerator cycles",
#: derives each one from the state machine, and the RTL tests check them.
#: Descriptor phase = ``DESC_OVERHEAD + mem_latency + desc_words``: the DESC state (request taken by
#: the DMA), the read address one cycle later, the data beats, the cycle the DMA turns idle, DECODE.
DESC_OVERHEAD = 3
#: Load phase = ``LOAD_OVERHEAD`` + the read timing of the bursts (:func:`_load_cycles`): the first
#: read address follows the first LOAD cycle, and the DMA turns idle one cycle after the last beat.
LOAD_OVERHEAD = 2
#: PRIME state: feeders read their first word (1), it enters the word FIFO (1), the unpacker takes
#: it (1), the sequencer sees every feeder primed (1).
PRIME_CYCLES = 4
#: CMD state (1) + the engine's uncounted start cycle (1) + its back end's delay behind the counted
#: cycles (BACK_END_DELAY) + output FIFO, writer register and write response after the last counted
#: engine cycle (3) + the cycle the sequencer sees it idle (1).
RUN_EXTRA = 6 + BACK_END_DELAY
#: STATUS state (1), the write's address/data handshake (1), its response (1), the cycle the
#: sequencer sees the writer idle (1).
STATUS_CYCLES = 4
#: Cycles between a write handshake and its response in the bench memory.
WRITE_RESPONSE_LATENCY = 1


def read_bursts(cfg: AcceleratorConfig, plan: LayerPlan) -> list[tuple[str, int]]:
    """The load phase's read bursts in issue order: ``(region, words)``."""
    out = []
    for name in REGIONS:
        words = plan.regions[name].words
        while words > 0:
            n = min(words, cfg.max_burst)
            out.append((name, n))
            words -= n
    return out


def _load_cycles(cfg: AcceleratorConfig, bursts: Sequence[int]) -> int:
    """Cycles from the first region read address to the last data beat (inclusive), exact for the
    bench memory: fixed latency ``mem_latency``, one beat per cycle, bursts served in order, and the
    DMA's read-address rule (one address per cycle, at most :data:`DMA_OUTSTANDING` in flight; a slot
    frees in the cycle after the burst's last beat)."""
    if not bursts:
        return 0
    lat = cfg.mem_latency
    ar, last = [], []
    for i, n in enumerate(bursts):
        t = 0 if i == 0 else ar[-1] + 1
        if i >= DMA_OUTSTANDING:
            t = max(t, last[i - DMA_OUTSTANDING] + 1)
        ar.append(t)
        first = t + lat if i == 0 else max(t + lat, last[-1] + 1)
        last.append(first + n - 1)
    return last[-1] + 1


@dataclass(frozen=True)
class TopCycles:
    """Cycles of one layer on the accelerator top (``total`` = sum of the phases)."""

    total: int
    desc: int
    load: int
    prime: int
    run: int
    status: int
    engine: CycleBreakdown

    @property
    def stall(self) -> int:
        """Cycles of the layer in which the engine does not advance (``total - engine.total``)."""
        return self.total - self.engine.total

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("total", "desc", "load", "prime", "run", "status")}
        d["stall"] = self.stall
        d["engine"] = self.engine.to_dict()
        return d


def layer_cycles_top(cfg: AcceleratorConfig, plan: LayerPlan) -> TopCycles:
    """Exact cycles of one layer on the top, from its first descriptor-read cycle to the first cycle
    of the next layer (the bench's ``layer_done`` pulses); the status record's ``layer_cycles`` is
    ``total - status``, its ``run_cycles`` is ``run - 1`` and ``engine_cycles`` is ``engine.total``."""
    g = plan.geometry
    eng = layer_cycles(cfg.engine, g.M, g.K, g.N, g.counts(cfg.engine.rows))
    desc = DESC_OVERHEAD + cfg.mem_latency + cfg.desc_words
    load = LOAD_OVERHEAD + _load_cycles(cfg, [n for _r, n in read_bursts(cfg, plan)])
    run = eng.total + RUN_EXTRA
    total = desc + load + PRIME_CYCLES + run + STATUS_CYCLES
    return TopCycles(total=total, desc=desc, load=load, prime=PRIME_CYCLES, run=run, status=STATUS_CYCLES,
                     engine=eng)


def model_traffic(cfg: AcceleratorConfig, plan: LayerPlan) -> dict:
    """Bytes on the memory port for one layer: per input region (read, whole words), ``desc``
    (read), ``out`` (written bytes, byte strobes) and ``status`` (written, 16 bytes)."""
    d = {r: plan.region_bytes(r) for r in REGIONS}
    d["desc"] = cfg.desc_words * cfg.bus_bytes
    d["out"] = plan.out_bytes
    d["status"] = STATUS_BITS // 8
    d["read"] = sum(d[r] for r in REGIONS) + d["desc"]
    d["write"] = d["out"] + d["status"]
    return d


def sized_config(engine: EngineConfig, layers: Sequence[LayerGeometry], *, bus_bits: int | None = None,
                 mem_latency: int = 20, exact: bool = False, **buffers) -> AcceleratorConfig:
    """An accelerator whose buffers hold the largest region of ``layers`` (give each layer the
    outlier counts it may have, e.g. the capacity in every tile, to size the outlier buffer for the
    worst case): each buffer is the :class:`AcceleratorConfig` default, or the next power of two
    when a layer needs more (so similar programs share one build); ``exact=True`` sizes each buffer
    to the largest region.  ``buffers`` (``a_buf_words=...``) override the sizes.  Raises
    :class:`AccelError` when a layer cannot run on ``engine`` or ``bus_bits``."""
    big = (1 << 24) - 1
    probe = AcceleratorConfig(engine=engine, bus_bits=bus_bits or default_bus_bits(engine), a_buf_words=big,
                              b_buf_words=big, outl_buf_words=big, rowp_buf_beats=big, colp_buf_beats=big,
                              mem_latency=mem_latency)
    need = {"a": 1, "b": 1, "outl": 0, "rowp": 1, "colp": 1}
    for g in layers:
        plan = layer_plan(probe, g)
        for name, reg in plan.regions.items():
            need[name] = max(need[name], reg.beats if name in ("rowp", "colp") else reg.words)
    sizes = {"a_buf_words": need["a"], "b_buf_words": need["b"], "outl_buf_words": need["outl"],
             "rowp_buf_beats": need["rowp"], "colp_buf_beats": need["colp"]}
    if not exact:
        default = AcceleratorConfig()
        sizes = {k: max(getattr(default, k), _pow2ceil(v)) for k, v in sizes.items()}
    sizes.update({k: v for k, v in buffers.items() if v is not None})
    return replace(probe, **sizes)
