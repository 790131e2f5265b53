"""Configuration of the layer engine (:mod:`hw.engine`) and its validation.

:class:`EngineConfig` holds the *build-time* parameters of one engine instance (array size, maximal
operand widths, accumulator width, outlier unit size, on-chip buffer depth).  Everything else (the
layer shape ``M x K x N``, the A code format and its run-time width, ``FO``, the requantiser
parameters) is *run-time* configuration written through the engine's command port, so one build
covers every format and every width up to ``a_bits`` / ``b_bits``.

The pipeline latencies below are part of the engine's contract: :mod:`sim.schedule` (the exact cycle
model) and :mod:`hw.engine` (the RTL) both use them, and the RTL tests check that the cycle counter of
the RTL equals the model.

Bad configurations raise :class:`ConfigError` (a ``ValueError``) with a message naming the field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from vitaccel.sim import formats as F
from vitaccel.sim.errors import UserError

__all__ = [
    "ConfigError", "EngineConfig", "MAC_LATENCY", "DRAIN_OFFSET", "FILL_MIN", "OUTLIER_LATENCY", "OUTLIER_LUT_PRODUCT_BITS", "outlier_latency",
    "PRE_REQUANT_LATENCY", "GATHER_LATENCY", "REQUANT_LATENCY", "BACK_END_DELAY", "DIM_BITS", "check_layer_shape", "check_layer_acc",
    "acc_bits_at_max_k", "check_acc_for_max_k", "default_acc_bits", "make_engine_config",
]

#: Register stages from issuing operand column ``k`` (A beat consumed, B row read address) to the PE
#: accumulator: decoder register, operand broadcast register (one copy per group of PEs), partial-sum
#: register, product register, accumulator (or shadow) register (hw/mac_array.py).
MAC_LATENCY = 5
#: Window cycle at which the drain of the previous tile starts: the last product of a tile is in
#: the shadow registers ``MAC_LATENCY - 1`` cycles after the window that issued it ends.
DRAIN_OFFSET = MAC_LATENCY - 1
#: Widest B code whose outlier product ``val * b`` is a shift-and-add in LUTs (two partial products,
#: then their sum); wider codes use a DSP block with its input and output registers
#: (:mod:`hw.dsp`) and one fabric register after it (issue #15, session 43: the combinational
#: ``MULT18X18D`` was the 8 x 8 W8A8 engine's worst path, 10.05 ns).
OUTLIER_LUT_PRODUCT_BITS = 4


def outlier_latency(b_bits: int) -> int:
    """Register stages after an outlier beat is issued (entry register, the product's stages, the
    correction register) minus one: the window must last this many cycles after the last outlier beat
    so that the next drain sees every correction.  3 for ``b_bits <= 4`` (partial product registers,
    product register), 4 for wider B codes (DSP input, output and fabric product registers).  The
    engine's controller relies on ``outlier_latency <= DRAIN_OFFSET`` (it ends outlier windows
    ``DRAIN_OFFSET`` cycles late), so the window formula of :mod:`sim.schedule` is the same for every
    build."""
    return 3 if b_bits <= OUTLIER_LUT_PRODUCT_BITS else 4


#: The longest :func:`outlier_latency` (8-bit B codes).  (3 since issue #15 split the product; 4 for
#: B codes wider than 4 bits since session 43.)
OUTLIER_LATENCY = outlier_latency(8)
assert OUTLIER_LATENCY <= DRAIN_OFFSET, "hw.engine_control ends outlier windows DRAIN_OFFSET cycles late"
#: Shortest fill window (``fill = max(K, FILL_MIN)``): the first tile's descriptor is read in the
#: fill's first cycle, its outlier beat count is registered in the second, and the controller's
#: second precompute stage (the first window's length and outlier end) is ready from the third, the
#: earliest boundary.  Every tile window is at least ``DRAIN_OFFSET`` long.  (3 since issue #15's
#: session 41; 2 before, which made ``K <= 2`` layers one cycle shorter.)
FILL_MIN = 3
assert FILL_MIN <= DRAIN_OFFSET, "hw.engine_control's second precompute stage needs windows of >= 3 cycles"
#: Drain stages before the requantiser: row select, zero-point partial products ``za * colsum``
#: (DSP blocks, input and output registers) and their sum, ``acc_d = acc_raw - za * colsum``,
#: ``(acc_d << FO) + corr``, truncation / range check.  (7 since issue #15's session 34; 6 before.)
PRE_REQUANT_LATENCY = 7
#: Extra drain stage of a build with shared requantisers (``requant_share > 1``): the drain's column
#: gather (``C`` columns spread over the array -> ``C / S`` lanes) takes a register stage of its own
#: (D0 at the columns, then the column-group multiplexer), and the outlier unit registers the read
#: address of its correction memories (issue #15, session 37: the 16 x 16 ``requant_share 4`` engine's
#: worst paths ran from the drain position through those multiplexers).  Builds without sharing are
#: unchanged.
GATHER_LATENCY = 1
#: Cycles from the requantiser input to the output FIFO push (:data:`hw.requantiser.LATENCY`).
REQUANT_LATENCY = 14
#: Cycles by which the engine's back end (MAC array, outlier unit, column parameters, drain,
#: requantisers, output FIFO) runs behind its front end (controller, stream buffers, decoder): every
#: signal between them passes this many registers, so no enable or control net of the front end
#: spans the array (issue #15; hw/stall.py).  It adds this many cycles of latency per layer, not to
#: the counted engine cycles.
BACK_END_DELAY = 2
#: Width of the run-time shape fields ``M``, ``K``, ``N`` and of outlier row/column indices.
DIM_BITS = 16


class ConfigError(UserError, ValueError):
    """An invalid engine configuration or a layer that the configured engine cannot run."""


@dataclass(frozen=True)
class EngineConfig:
    """Build-time parameters of the layer engine.

    Attributes
    ----------
    rows, cols : int
        MAC array size ``R x C`` (output tile ``R x C``), 1..64 each.
    a_bits : int
        Widest A code the engine accepts (4, 6 or 8); narrower widths are selected at run time.
    b_bits : int
        Widest B (``sym``) code (4, 6 or 8); narrower codes are sign-extended by the host.
    acc_bits : int
        PE accumulator / drain width (signed), at most 48.  Must satisfy the bound of
        docs/datapath.md section 6 for every layer run (:func:`check_layer_acc`).
    outlier_capacity : int
        Outliers per row tile the sparse outlier unit is sized for (``CAP`` of section 5); a tile
        announcing more raises the unit's ``overflow`` flag.  0 builds the engine without an
        outlier unit.
    outlier_lanes : int
        Outlier entries consumed per cycle (1, 2, 4 or 8).
    max_k : int
        Depth of the on-chip B buffer (each of its two banks): the largest ``K`` the engine runs.
    requant_share : int
        Columns per requantiser (1, 2, 4, ...; a power of two dividing ``cols``, default 1): the drain
        and the ``cols / requant_share`` requantisers take ``requant_share`` cycles per output row
        (one column group per cycle), so a tile's drain lasts ``requant_share * m`` cycles
        (:mod:`sim.schedule`); it stays hidden while ``K >= requant_share * rows + DRAIN_OFFSET``.
    """

    rows: int = 16
    cols: int = 16
    a_bits: int = 8
    b_bits: int = 8
    acc_bits: int = 32
    outlier_capacity: int = 32
    outlier_lanes: int = 1
    max_k: int = 1024
    requant_share: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"engine config: {f.name} must be an integer, got {v!r}")
        if not 1 <= self.rows <= 64:
            raise ConfigError(f"engine config: rows must be in 1..64, got {self.rows}")
        if not 1 <= self.cols <= 64:
            raise ConfigError(f"engine config: cols must be in 1..64, got {self.cols}")
        for name in ("a_bits", "b_bits"):
            if getattr(self, name) not in F.BITS:
                raise ConfigError(f"engine config: {name} must be one of {F.BITS}, got {getattr(self, name)}")
        if not 1 <= self.max_k <= (1 << DIM_BITS) - 1:
            raise ConfigError(f"engine config: max_k must be in 1..{(1 << DIM_BITS) - 1}, got {self.max_k}")
        if not 0 <= self.outlier_capacity <= 4096:
            raise ConfigError(f"engine config: outlier_capacity must be in 0..4096, got {self.outlier_capacity}")
        if self.outlier_lanes not in (1, 2, 4, 8):
            raise ConfigError(f"engine config: outlier_lanes must be 1, 2, 4 or 8, got {self.outlier_lanes}")
        s = self.requant_share
        if s < 1 or s & (s - 1) or self.cols % s:
            raise ConfigError(f"engine config: requant_share must be a power of two dividing cols = {self.cols}, "
                              f"got {s}")
        if self.acc_bits > F.ACC_BITS_MAX:
            raise ConfigError(f"engine config: acc_bits must be at most {F.ACC_BITS_MAX}, got {self.acc_bits}")
        need = self.min_acc_bits
        if self.acc_bits < need:
            raise ConfigError(
                f"engine config: acc_bits = {self.acc_bits} cannot hold even one product of a "
                f"{self.a_bits}-bit A operand and a {self.b_bits}-bit B code ({need} bits needed)")

    # ----------------------------------------------------------------------------------- derived
    @property
    def min_acc_bits(self) -> int:
        """Smallest accumulator that holds one product ``|D| * Bmax`` of the widest formats (K = 1)."""
        dmax = max(_dmax(kind, self.a_bits) for kind in ("uniform", "log2", "shiftlog2", "three_region"))
        return ((dmax + (1 << self.a_bits)) * ((1 << (self.b_bits - 1)) - 1)).bit_length() + 1

    @property
    def has_outliers(self) -> bool:
        """Whether the engine has a sparse outlier unit."""
        return self.outlier_capacity > 0

    @property
    def mag_bits(self) -> int:
        """Width of a decoded magnitude (section 4: at most 9 bits, ``C = 256``)."""
        return 9

    @property
    def sh_bits(self) -> int:
        """Width of a decoded shift (at most 15)."""
        return 4

    @property
    def colsum_bits(self) -> int:
        """Signed width of a column sum ``sum_k b[k, c]`` over at most ``max_k`` rows."""
        return ((1 << (self.b_bits - 1)) * self.max_k).bit_length() + 1

    @property
    def corr_bits(self) -> int:
        """Signed width of an outlier correction ``sum val * b`` over at most ``CAP`` entries."""
        cap = max(1, self.outlier_capacity)
        return (cap * (1 << 15) * ((1 << (self.b_bits - 1)) - 1)).bit_length() + 1

    @property
    def k_bits(self) -> int:
        """Width of a B buffer address."""
        return max(1, (self.max_k - 1).bit_length())

    @property
    def share_bits(self) -> int:
        """``log2(requant_share)``: bits of the drain's column-group phase."""
        return self.requant_share.bit_length() - 1

    @property
    def outlier_latency(self) -> int:
        """:func:`outlier_latency` of this build's ``b_bits``."""
        return outlier_latency(self.b_bits)

    @property
    def drain_lanes(self) -> int:
        """Columns drained and requantised per cycle (``cols / requant_share``)."""
        return self.cols // self.requant_share

    @property
    def requant_latency(self) -> int:
        """Pipeline stages of the requantiser on the drain path."""
        return REQUANT_LATENCY

    @property
    def a_copies(self) -> int:
        """Register copies of the decoded A column (the operand decoder's ``copies``, the MAC array's
        ``a_copies``): one per four columns from 16 columns on, else one.  In the 16 x 16 engine one
        decoder register drove the broadcast registers of all 16 columns of its row (8.8 ns nets,
        issue #15, session 37); no cycle changes."""
        return self.cols // 4 if self.cols >= 16 else 1

    @property
    def gather_stage(self) -> bool:
        """Whether the drain has the gather stage D0 (and registered correction read addresses):
        builds with ``requant_share > 1`` (:data:`GATHER_LATENCY`)."""
        return self.requant_share > 1

    @property
    def pre_requant_latency(self) -> int:
        """Drain stages before the requantisers: :data:`PRE_REQUANT_LATENCY`, plus
        :data:`GATHER_LATENCY` with :attr:`gather_stage`."""
        return PRE_REQUANT_LATENCY + (GATHER_LATENCY if self.gather_stage else 0)

    @property
    def drain_latency(self) -> int:
        """Cycles from a drain issue until the output row enters the output FIFO."""
        return self.pre_requant_latency + self.requant_latency

    # ----------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"engine config: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "EngineConfig":
        """Read a JSON file holding a subset of the fields."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read engine config {path}: {exc}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"engine config {path}: expected a JSON object")
        return cls.from_dict(d)

    def replace(self, **kw) -> "EngineConfig":
        return replace(self, **kw)


def _dmax(kind: str, bits: int) -> int:
    from vitaccel.sim import reference as ref
    return ref.format_dmax(kind, bits, base="sqrt2" if kind == "shiftlog2" else "2", m0=15, m1=15)


def check_layer_shape(cfg: EngineConfig, m: int, k: int, n: int) -> None:
    """Raise :class:`ConfigError` unless the engine can run an ``m x k x n`` GEMM."""
    for name, v in (("M", m), ("K", k), ("N", n)):
        if isinstance(v, bool) or int(v) != v:
            raise ConfigError(f"layer shape: {name} must be an integer, got {v!r}")
        if not 1 <= v <= (1 << DIM_BITS) - 1:
            raise ConfigError(f"layer shape: {name} must be in 1..{(1 << DIM_BITS) - 1}, got {v}")
    if k > cfg.max_k:
        raise ConfigError(f"layer shape: K = {k} exceeds the engine's B buffer depth max_k = {cfg.max_k}")


def check_layer_acc(cfg: EngineConfig, k: int, a_kind: str, a_bits: int, b_bits: int, zmax: int,
                    fo: int, *, a_base: str = "2", m0: int = 0, m1: int = 0) -> int:
    """Check the accumulator bound of section 6 for a layer; return the required width.

    Raises
    ------
    ConfigError
        If the layer's widths exceed the engine's, or ``acc_bits`` is narrower than
        ``acc_bits_required`` (with ``CAP = outlier_capacity`` when ``fo > 0``).
    """
    from vitaccel.sim import reference as ref
    if a_bits > cfg.a_bits:
        raise ConfigError(f"layer: A codes of {a_bits} bits exceed the engine's a_bits = {cfg.a_bits}")
    if b_bits > cfg.b_bits:
        raise ConfigError(f"layer: B codes of {b_bits} bits exceed the engine's b_bits = {cfg.b_bits}")
    if fo and not cfg.has_outliers:
        raise ConfigError("layer: FO > 0 (outlier path) but the engine has no outlier unit (capacity 0)")
    dmax = ref.format_dmax(a_kind, a_bits, base=a_base, m0=m0, m1=m1)
    cap = cfg.outlier_capacity if fo else 0
    need = ref.acc_bits_required(k, dmax, zmax, b_bits, fo, cap)
    if need > cfg.acc_bits:
        raise ConfigError(
            f"layer: K = {k} with {a_bits}-bit {a_kind} A codes, {b_bits}-bit B, FO = {fo} needs a "
            f"{need}-bit accumulator (docs/datapath.md section 6); the engine has acc_bits = {cfg.acc_bits}")
    return need


#: A formats (kind, base) whose accumulator need at ``K = max_k`` is reported by :func:`acc_bits_at_max_k`.
_ACC_FORMATS = (("uniform", "2"), ("log2", "2"), ("shiftlog2", "2"), ("shiftlog2", "sqrt2"), ("three_region", "2"))


def acc_bits_at_max_k(cfg: EngineConfig) -> dict:
    """``acc_bits_required`` (section 6) of each ``a_bits``-bit A format at ``K = max_k`` with
    ``b_bits``-bit B codes: zero point up to ``Dmax`` (``2^k - 1`` for uniform), no outliers, plus
    ``uniform+outliers`` (``FO = 2``, ``CAP = outlier_capacity``) when the engine has an outlier unit."""
    from vitaccel.sim import reference as ref
    out = {}
    for kind, base in _ACC_FORMATS:
        dmax = ref.format_dmax(kind, cfg.a_bits, base=base, m0=15, m1=15)
        zmax = dmax if kind in ("uniform", "shiftlog2") else 0
        out[kind if kind != "shiftlog2" else f"shiftlog2_{base}"] = ref.acc_bits_required(
            cfg.max_k, dmax, zmax, cfg.b_bits)
    if cfg.has_outliers:
        dmax = ref.format_dmax("uniform", cfg.a_bits)
        out["uniform+outliers"] = ref.acc_bits_required(cfg.max_k, dmax, dmax, cfg.b_bits, 2, cfg.outlier_capacity)
    return out


def check_acc_for_max_k(cfg: EngineConfig) -> None:
    """Raise :class:`ConfigError` when ``acc_bits`` cannot run even a plain ``uniform`` layer (zero
    point, no outliers) of ``K = max_k`` -- the engine's own largest layer (section 6 bound)."""
    need = acc_bits_at_max_k(cfg)["uniform"]
    if cfg.acc_bits < need:
        raise ConfigError(
            f"engine config: acc_bits = {cfg.acc_bits} is too narrow for K = max_k = {cfg.max_k}: a "
            f"{cfg.a_bits}-bit uniform A x {cfg.b_bits}-bit B layer needs {need} bits (docs/datapath.md "
            f"section 6); raise acc_bits or lower max_k")


def default_acc_bits(a_bits: int, b_bits: int, max_k: int, outlier_capacity: int) -> int:
    """Accumulator width that covers every A format of ``a_bits`` bits at ``K = max_k`` with a zero
    point up to ``Dmax`` and the outlier path (``FO = 2``, docs/datapath.md section 6), capped at 48."""
    from vitaccel.sim import reference as ref

    need = 0
    for kind, base in (("uniform", "2"), ("log2", "2"), ("shiftlog2", "2"), ("shiftlog2", "sqrt2"),
                       ("three_region", "2")):
        dmax = ref.format_dmax(kind, a_bits, base=base, m0=15, m1=15)
        fo = 2 if kind == "uniform" and outlier_capacity else 0
        need = max(need, ref.acc_bits_required(max_k, dmax, dmax, b_bits, fo, outlier_capacity if fo else 0))
    return min(48, need)


def make_engine_config(base: EngineConfig | dict | None = None, **overrides) -> EngineConfig:
    """An :class:`EngineConfig` from ``base`` (a config, a dict of fields or ``None`` for the defaults)
    with ``overrides`` (field values; ``None`` values are ignored).

    When neither ``base`` nor ``overrides`` sets ``acc_bits``, it is :func:`default_acc_bits` of the
    widths, ``max_k`` and outlier capacity (every A format at ``K = max_k``, section 6). The result
    passes :func:`check_acc_for_max_k`. This is what ``vitaccel hw generate``, ``hw synth``,
    ``tb run``, ``estimate`` and ``flow`` build from their shared engine flags.

    Raises
    ------
    ConfigError
        For an impossible configuration (message names the field and the allowed range).
    """
    if isinstance(base, EngineConfig):
        base = base.to_dict()
    merged = dict(base or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(merged) - {f.name for f in fields(EngineConfig)})
    if unknown:
        raise ConfigError(f"engine config: unknown field(s) {', '.join(unknown)}")
    if "acc_bits" not in merged:
        defaults = EngineConfig()
        pick = lambda k: merged.get(k, getattr(defaults, k))
        a, b = pick("a_bits"), pick("b_bits")
        if a not in F.BITS or b not in F.BITS:
            raise ConfigError(f"engine config: code widths must be one of {F.BITS} (got w{b}a{a})")
        merged["acc_bits"] = default_acc_bits(a, b, pick("max_k"), pick("outlier_capacity"))
    cfg = EngineConfig(**merged)
    check_acc_for_max_k(cfg)
    return cfg

