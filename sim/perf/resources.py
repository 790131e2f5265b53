"""Clock and FPGA resources of a layer-engine configuration, from recorded synthesis runs or a fitted model.

``sim/perf/synth_table.json`` records synthesized configurations of the layer engine (docs/hardware.md,
"ECP5 synthesis and Fmax"): array size, code widths, the other build parameters, Fmax after place and
route, the cell counts and the command and commit that produced them. This module answers, for an
``R x C`` ``wXaY`` configuration (docs/estimator.md, "Clock and resources"):

* :func:`engine_clock` -- the clock to quote: a clock the user gave, the *measured* Fmax of the
  configuration, a *modelled* Fmax (the measured Fmax of the nearest synthesized configuration, only
  when asked for), or an explicitly *assumed* default;
* :func:`engine_resources` -- LUT4 / CCU2C / TRELLIS_COMB / FF / DSP / BRAM: *measured* when the table
  has the configuration, otherwise from :func:`fit_resource`, a least-squares model over the recorded
  configurations with fixed, per-PE, per-column and per-row terms (as many as the recorded points can
  determine) -- flagged as estimated;
* a build with shared requantisers (``requant_share`` S > 1) is looked up when recorded, otherwise
  it is the unshared build less :func:`fit_share_saving`'s saving per shared-away column;
* :func:`check_fit` -- whether the resources fit a device (TRELLIS_COMB, TRELLIS_FF, MULT18X18D,
  DP16KD of ``devices`` in the table); :func:`sram_bram` -- the DP16KD blocks of the on-chip buffer;
* :func:`loo_errors` -- the model's error on each recorded configuration when that point is held back.

A run that was synthesized but not placed has no ``TRELLIS_COMB``; :func:`resource_value` derives it
from its ``LUT4 + 2 CCU2C`` and the packing ratio nextpnr showed on the placed runs (:func:`packing_ratio`;
docs/estimator.md quotes its current value).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("synth_table.json")
#: Resource columns of a table entry.
RESOURCES = ("LUT4", "CCU2C", "TRELLIS_COMB", "FF", "DSP", "BRAM")
#: Device limit key of each resource that is checked against a device.
DEVICE_KEYS = {"TRELLIS_COMB": "TRELLIS_COMB", "FF": "TRELLIS_FF", "DSP": "MULT18X18D", "BRAM": "DP16KD"}
DEFAULT_DEVICE = "LFE5U-85F"
#: Clock quoted (and labelled "assumed") when neither a measurement nor ``--freq`` is available.
ASSUMED_MHZ = 200.0
#: Data bytes of one ECP5 DP16KD block (16 Kbit).
BRAM_BYTES = 2048

#: Model terms: name -> feature of an ``R x C`` array.
TERMS = {"fixed": lambda r, c: 1.0, "per_pe": lambda r, c: float(r * c), "per_col": lambda r, c: float(c),
         "per_row": lambda r, c: float(r)}
#: Order in which terms enter the fit as recorded points allow (logic grows with the PEs; the DSPs and
#: BRAMs of the engine sit in the per-column requantisers, drain and B banks).
TERM_ORDER = {res: ("per_pe", "fixed", "per_col", "per_row") for res in ("LUT4", "CCU2C", "TRELLIS_COMB", "FF")}
TERM_ORDER.update(DSP=("per_col", "fixed", "per_row", "per_pe"), BRAM=("per_col", "fixed", "per_row", "per_pe"))

_BUILD_FIELDS = ("acc_bits", "max_k", "outlier_capacity", "outlier_lanes", "requant_share")


def label(rows: int, cols: int, a_bits: int, b_bits: int) -> str:
    """``RxC wXaY`` (``w`` = B / weight code bits, ``a`` = A / activation code bits)."""
    return f"{rows}x{cols} w{b_bits}a{a_bits}"


@dataclass(frozen=True)
class SynthRecord:
    """One synthesis run (an entry of ``synth_table.json``; resource values ``None`` when not reported)."""

    rows: int
    cols: int
    a_bits: int
    b_bits: int
    acc_bits: int
    max_k: int
    outlier_capacity: int
    outlier_lanes: int
    fmax_mhz: float | None
    values: dict
    device: str
    placed: bool
    lut_mapper: str
    seed: int | None
    commit: str
    command: str
    doc: str = ""
    requant_share: int = 1
    fmax_by_seed: dict | None = None    # a seed sweep's Fmax of every seed ({"1": MHz, ...}); fmax_mhz is the best

    @property
    def label(self) -> str:
        return label(self.rows, self.cols, self.a_bits, self.b_bits)

    @property
    def key(self) -> tuple[int, int, int, int]:
        return self.rows, self.cols, self.a_bits, self.b_bits

    @property
    def origin(self) -> str:
        """Short provenance: tools, seed and commit."""
        if self.placed and self.fmax_by_seed and len(self.fmax_by_seed) > 1:
            others = [f"{v:g}" for k, v in self.fmax_by_seed.items() if k != str(self.seed) and v]
            how = (f"placed and routed, best of seeds {', '.join(self.fmax_by_seed)}: seed {self.seed}"
                   f" (the others {' / '.join(others) or '-'} MHz)")
        elif self.placed:
            how = f"placed and routed, seed {self.seed}"
        else:
            how = "yosys cell counts, not placed" + (f" (nextpnr seed {self.seed} stopped in the placer)"
                                                     if self.seed is not None else "")
        return f"{how}, commit {self.commit[:7]}"

    def build_differences(self, cfg) -> list[str]:
        """Build parameters of ``cfg`` (an EngineConfig or dict) that differ from this run."""
        get = (lambda k: cfg.get(k)) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
        return [f"{k} {get(k)} (synthesized: {getattr(self, k)})" for k in _BUILD_FIELDS
                if get(k) is not None and get(k) != getattr(self, k)]


@dataclass(frozen=True)
class SynthTable:
    """The recorded runs and device capacities."""

    entries: tuple[SynthRecord, ...]
    devices: dict
    path: str = ""

    @classmethod
    def from_dict(cls, doc: dict, path: str = "") -> "SynthTable":
        if doc.get("format") != "vitaccel-synth-table":
            raise ValueError(f"{path or 'synth table'}: not a vitaccel-synth-table document")
        recs = []
        for e in doc["entries"]:
            recs.append(SynthRecord(
                rows=e["rows"], cols=e["cols"], a_bits=e["a_bits"], b_bits=e["b_bits"], acc_bits=e["acc_bits"],
                max_k=e["max_k"], outlier_capacity=e["outlier_capacity"], outlier_lanes=e["outlier_lanes"],
                fmax_mhz=e.get("fmax_mhz"), values={k: e.get(k) for k in RESOURCES}, device=e["device"],
                placed=bool(e.get("placed")), lut_mapper=e.get("lut_mapper", ""), seed=e.get("seed"),
                commit=e.get("commit", ""), command=e.get("command", ""), doc=e.get("doc", ""),
                requant_share=e.get("requant_share", 1), fmax_by_seed=e.get("fmax_by_seed")))
        return cls(tuple(recs), dict(doc.get("devices", {})), path)

    def preferred(self, requant_share: int = 1) -> dict:
        """One record per configuration: placed runs first, then the most complete, then the default mapper.

        Only runs built with ``requant_share`` (default 1: one requantiser per column, the design the
        resource model is fitted on; shared builds are looked up, never fitted)."""
        best: dict = {}
        for r in (r for r in self.entries if r.requant_share == requant_share):
            score = (r.placed, r.fmax_mhz is not None, sum(v is not None for v in r.values.values()),
                     r.lut_mapper == "abc9")
            if r.key not in best or score > best[r.key][0]:
                best[r.key] = (score, r)
        return {k: v[1] for k, v in best.items()}

    def lookup(self, rows: int, cols: int, a_bits: int, b_bits: int, requant_share: int = 1) -> SynthRecord | None:
        return self.preferred(requant_share).get((rows, cols, a_bits, b_bits))

    def device(self, name: str) -> dict:
        if name not in self.devices:
            raise ValueError(f"unknown device {name!r}; the synthesis table knows {', '.join(sorted(self.devices))}")
        return self.devices[name]


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> SynthTable:
    """The synthesis table (default ``sim/perf/synth_table.json``)."""
    p = Path(path) if path else TABLE_PATH
    return SynthTable.from_dict(json.loads(p.read_text(encoding="utf-8")), str(p))


# ------------------------------------------------------------------------------------------- clock

@dataclass(frozen=True)
class Clock:
    """The clock quoted for a configuration. ``source``: ``given``, ``measured``, ``modelled`` or ``assumed``."""

    mhz: float
    source: str
    text: str

    @property
    def hz(self) -> float:
        return self.mhz * 1e6


def measured_fmax(table: SynthTable, rows: int, cols: int, a_bits: int, b_bits: int,
                  requant_share: int = 1) -> SynthRecord | None:
    """The placed run of exactly this array, widths and requantiser sharing with an Fmax, if any."""
    runs = [r for r in table.entries if r.key == (rows, cols, a_bits, b_bits) and r.fmax_mhz is not None
            and r.requant_share == requant_share]
    return max(runs, key=lambda r: (r.lut_mapper == "abc9", r.fmax_mhz)) if runs else None


def nearest_fmax(table: SynthTable, rows: int, cols: int, a_bits: int, b_bits: int) -> SynthRecord | None:
    """The measured configuration closest to ``rows x cols wXaY`` (PE count, aspect ratio, widths)."""
    runs = [r for r in table.entries if r.fmax_mhz is not None and r.requant_share == 1]

    def dist(r):
        return (abs(math.log2(r.rows * r.cols / (rows * cols))) + 0.5 * abs(math.log2(r.rows * cols / (r.cols * rows)))
                + 0.25 * (abs(r.a_bits - a_bits) + abs(r.b_bits - b_bits)))
    return min(runs, key=dist) if runs else None


def engine_clock(rows: int, cols: int, a_bits: int, b_bits: int, *, freq_mhz: float | None = None,
                 allow_model: bool = False, assumed_mhz: float = ASSUMED_MHZ,
                 table: SynthTable | None = None, requant_share: int = 1) -> Clock:
    """The clock of an ``rows x cols wXaY`` engine, and a one-line statement of where it comes from.

    ``freq_mhz`` (a user's ``--freq``) wins; then the measured Fmax of the configuration; then, with
    ``allow_model``, the measured Fmax of the nearest synthesized configuration (``modelled``); else
    ``assumed_mhz``, labelled as assumed.
    """
    table = table or load_table()
    lab = label(rows, cols, a_bits, b_bits)
    if freq_mhz is not None:
        return Clock(float(freq_mhz), "given", f"{freq_mhz:g} MHz (given with --freq)")
    if requant_share > 1:
        rec = measured_fmax(table, rows, cols, a_bits, b_bits, requant_share)
        if rec is not None:
            return Clock(rec.fmax_mhz, "measured", f"measured Fmax of {lab} with requant_share {requant_share} "
                                                   f"on {rec.device} ({rec.fmax_mhz:g} MHz; {rec.origin})")
    rec = measured_fmax(table, rows, cols, a_bits, b_bits)
    if rec is not None:
        if requant_share > 1:
            return Clock(rec.fmax_mhz, "modelled", f"modelled: {lab} with requant_share {requant_share} not placed, "
                                                   f"Fmax of the unshared build on {rec.device} ({rec.fmax_mhz:g} MHz; "
                                                   f"{rec.origin})")
        return Clock(rec.fmax_mhz, "measured", f"measured Fmax of {lab} on {rec.device} ({rec.fmax_mhz:g} MHz; "
                                               f"{rec.origin})")
    if allow_model:
        near = nearest_fmax(table, rows, cols, a_bits, b_bits)
        if near is not None:
            return Clock(near.fmax_mhz, "modelled",
                         f"modelled: {lab} not synthesized, Fmax of the nearest measured configuration "
                         f"{near.label} on {near.device} ({near.fmax_mhz:g} MHz)")
    return Clock(float(assumed_mhz), "assumed",
                 f"ASSUMED {assumed_mhz:g} MHz: no measured Fmax for {lab} in sim/perf/synth_table.json "
                 "(pass --freq to set the clock)")


# --------------------------------------------------------------------------------------- resources

@dataclass(frozen=True)
class ResourceFit:
    """Least-squares model of one resource: ``sum(coef[t] * TERMS[t](R, C))`` over ``points``."""

    resource: str
    terms: tuple[str, ...]
    coef: tuple[float, ...]
    points: tuple[str, ...]
    widths_extrapolated: bool = False
    wider_width: str | None = None   #: ``wXaY`` of the wider runs the fit used in place of its own width

    def predict(self, rows: int, cols: int) -> float:
        return sum(c * TERMS[t](rows, cols) for t, c in zip(self.terms, self.coef))

    @property
    def formula(self) -> str:
        return " + ".join(f"{c:.4g} {t}" for t, c in zip(self.terms, self.coef))


def packing_ratio(table: SynthTable) -> float | None:
    """nextpnr's ``TRELLIS_COMB`` over yosys' ``LUT4 + 2 CCU2C`` (the cells before packing), the mean over
    the placed runs of the table; ``None`` without a placed run."""
    ratios = [r.values["TRELLIS_COMB"] / (r.values["LUT4"] + 2 * r.values["CCU2C"])
              for r in table.preferred().values()
              if all(r.values.get(k) for k in ("TRELLIS_COMB", "LUT4", "CCU2C"))]
    return sum(ratios) / len(ratios) if ratios else None


def resource_value(rec: SynthRecord, resource: str, table: SynthTable) -> tuple[float | None, bool]:
    """``(value, derived)`` of ``resource`` for a recorded run: the recorded value, or for the
    ``TRELLIS_COMB`` of a run that was not placed, ``(LUT4 + 2 CCU2C) * packing_ratio`` (``derived``)."""
    v = rec.values.get(resource)
    if v is not None or resource != "TRELLIS_COMB":
        return v, False
    ratio = packing_ratio(table)
    if ratio is None or rec.values.get("LUT4") is None or rec.values.get("CCU2C") is None:
        return None, False
    return (rec.values["LUT4"] + 2 * rec.values["CCU2C"]) * ratio, True


def _fit_points(points: list[SynthRecord], resource: str, table: SynthTable) -> tuple[tuple[str, ...], tuple[float, ...]]:
    import numpy as np

    terms: list[str] = []
    X = np.zeros((len(points), 0))
    for t in TERM_ORDER[resource]:
        if len(terms) == len(points):
            break
        col = np.array([[TERMS[t](p.rows, p.cols)] for p in points])
        cand = np.hstack([X, col])
        if np.linalg.matrix_rank(cand) > X.shape[1]:
            terms.append(t)
            X = cand
    y = np.array([float(resource_value(p, resource, table)[0]) for p in points])
    coef = np.linalg.lstsq(X, y, rcond=None)[0] if terms else np.zeros(0)
    tiny = 1e-9 * max(1.0, float(np.abs(y).max()))
    return tuple(terms), tuple(0.0 if abs(c) < tiny else float(c) for c in coef)


def fit_resource(resource: str, a_bits: int, b_bits: int, *, table: SynthTable | None = None,
                 exclude: tuple = ()) -> ResourceFit | None:
    """Fit ``resource`` on the recorded configurations (one per array size and widths).

    Uses the configurations of the same widths when there are at least two; otherwise those of the
    narrowest *wider* synthesized widths (both codes at least as wide) with at least two runs, an
    upper bound (a 6-bit build from the 8-bit runs); otherwise every recorded configuration
    (``widths_extrapolated`` in both cases: the widths were not synthesized); a run that was not
    placed contributes its ``TRELLIS_COMB`` as :func:`resource_value` derives it. Terms enter in
    :data:`TERM_ORDER` while they raise the rank and there are more points than terms, so two recorded
    sizes give ``fixed + per-PE`` (logic) or ``fixed + per-column`` (DSP, BRAM). ``exclude`` holds
    configuration keys ``(R, C, a_bits, b_bits)`` to hold back. ``None`` when nothing is recorded.
    """
    table = table or load_table()
    pts = [r for k, r in sorted(table.preferred().items())
           if k not in exclude and resource_value(r, resource, table)[0] is not None]
    by_width: dict = {}
    for r in pts:
        by_width.setdefault((r.a_bits, r.b_bits), []).append(r)
    wider = sorted((w for w, rs in by_width.items() if len(rs) >= 2 and w[0] >= a_bits and w[1] >= b_bits),
                   key=lambda w: (w[0] + w[1], w))
    own = len(by_width.get((a_bits, b_bits), ())) >= 2
    use = by_width[(a_bits, b_bits)] if own else by_width[wider[0]] if wider else pts
    if not use:
        return None
    terms, coef = _fit_points(use, resource, table)
    return ResourceFit(resource, terms, coef, tuple(r.label for r in use),
                       any((r.a_bits, r.b_bits) != (a_bits, b_bits) for r in use),
                       None if own or not wider else f"w{wider[0][1]}a{wider[0][0]}")


@dataclass(frozen=True)
class ShareFit:
    """What sharing saves: ``per_column`` of ``resource`` for every column whose requantiser and drain
    lane are shared away (``cols - cols / S`` of them), fitted on ``points`` (``RxC wXaY:sS`` runs
    against their unshared build of the same size)."""

    resource: str
    per_column: float
    points: tuple[str, ...]
    widths_extrapolated: bool


def fit_share_saving(resource: str, a_bits: int, b_bits: int, *, table: SynthTable | None = None) -> ShareFit | None:
    """Least squares through the origin of ``saving = per_column * (C - C / S)`` over the recorded shared
    runs with an unshared run of the same size and widths; those of the widths asked for when there are
    any, else all of them (``widths_extrapolated``).  ``None`` without such a pair."""
    table = table or load_table()
    pairs = []
    for share in sorted({r.requant_share for r in table.entries if r.requant_share > 1}):
        for key, rec in sorted(table.preferred(share).items()):
            base = table.lookup(*key)
            vs = resource_value(rec, resource, table)[0]
            vb = resource_value(base, resource, table)[0] if base is not None else None
            if vs is not None and vb is not None:
                pairs.append((rec, rec.cols - rec.cols // share, vb - vs))
    own = [p for p in pairs if (p[0].a_bits, p[0].b_bits) == (a_bits, b_bits)]
    use = own or pairs
    if not use:
        return None
    per_col = sum(n * v for _, n, v in use) / sum(n * n for _, n, _ in use)
    return ShareFit(resource, per_col, tuple(f"{r.label}:s{r.requant_share}" for r, _, _ in use), not own)


def _shared_resources(base: "Resources", share: int, table: SynthTable) -> "Resources | None":
    """``base`` (the unshared build) less the fitted saving of ``cols - cols / share`` shared-away columns."""
    removed = base.cols - base.cols // share
    vals, used, extrap = dict(base.values), set(), False
    for k, v in base.values.items():
        f = fit_share_saving(k, base.a_bits, base.b_bits, table=table)
        if v is None or f is None:
            continue
        vals[k] = max(0, round(v - f.per_column * removed))
        used.update(f.points)
        extrap = extrap or f.widths_extrapolated
    if not used:
        return None
    notes = [*base.notes, f"requant_share {share} not synthesized for this size: the unshared build ({base.source}) "
             f"less {removed} columns' requantiser and drain lane, the saving per column fitted on "
             f"{', '.join(sorted(used))} (docs/estimator.md)"]
    if extrap:
        notes.append(f"w{base.b_bits}a{base.a_bits} shared builds not synthesized: saving per column of other widths")
    return Resources(base.rows, base.cols, base.a_bits, base.b_bits, vals, "model",
                     f"{base.basis}, less {removed} shared-away requantiser columns", tuple(notes))


@dataclass(frozen=True)
class Resources:
    """Resources of a configuration. ``source``: ``measured`` (a synthesis run) or ``model`` (estimated)."""

    rows: int
    cols: int
    a_bits: int
    b_bits: int
    values: dict
    source: str
    basis: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        return label(self.rows, self.cols, self.a_bits, self.b_bits)

    def text(self) -> str:
        vals = ", ".join(f"{k} {self.values[k]:,.0f}" for k in RESOURCES if self.values.get(k) is not None)
        return f"{vals} ({'measured' if self.source == 'measured' else 'ESTIMATED'}: {self.basis})"


def engine_resources(rows: int, cols: int, a_bits: int, b_bits: int, *, cfg=None,
                     table: SynthTable | None = None) -> Resources:
    """Measured resources of the configuration, or the fitted model's (``source = "model"``).

    ``cfg`` (EngineConfig or dict with ``acc_bits``, ``max_k``, ``outlier_capacity``, ``outlier_lanes``)
    adds a note for every build parameter that differs from the synthesized run.
    """
    table = table or load_table()
    share = (cfg.get("requant_share", 1) if isinstance(cfg, dict) else getattr(cfg, "requant_share", 1)) \
        if cfg is not None else 1
    if share > 1 and table.lookup(rows, cols, a_bits, b_bits, share) is None:
        cfg = {**(cfg if isinstance(cfg, dict) else cfg.to_dict()), "requant_share": 1}
        base = engine_resources(rows, cols, a_bits, b_bits, cfg=cfg, table=table)
        return _shared_resources(base, share, table) or replace(base, notes=(
            *base.notes, f"requant_share {share} not synthesized for this size: resources of the unshared build "
            "(an upper bound: sharing removes requantisers and drain lanes)"))
    rec = table.lookup(rows, cols, a_bits, b_bits, share)
    notes: list[str] = []
    if rec is not None:
        vals = dict(rec.values)
        missing = [k for k, v in vals.items() if v is None]
        derived = []
        for k in missing:
            v, was_derived = resource_value(rec, k, table)
            if was_derived:
                vals[k] = round(v)
                derived.append(k)
                continue
            f = fit_resource(k, a_bits, b_bits, table=table)
            vals[k] = round(f.predict(rows, cols)) if f else None
        if derived:
            notes.append(f"TRELLIS_COMB not reported (the run was not placed): LUT4 + 2 CCU2C times nextpnr's "
                         f"packing ratio of the placed runs ({packing_ratio(table):.3f})")
        if len(missing) > len(derived):
            notes.append(f"{', '.join(k for k in missing if k not in derived)} not reported by that run: "
                         "from the model")
        if cfg is not None and rec.build_differences(cfg):
            notes.append("synthesized with different build parameters: " + ", ".join(rec.build_differences(cfg)))
        shared = f" (requant_share {rec.requant_share})" if rec.requant_share > 1 else ""
        return Resources(rows, cols, a_bits, b_bits, vals, "measured",
                         f"{rec.label}{shared} on {rec.device}, {rec.origin}", tuple(notes))
    vals, pts, extrap, wider = {}, set(), False, set()
    for k in RESOURCES:
        f = fit_resource(k, a_bits, b_bits, table=table)
        vals[k] = max(0, round(f.predict(rows, cols))) if f else None
        if f:
            pts.update(f.points)
            extrap = extrap or f.widths_extrapolated
            wider.add(f.wider_width)
    if extrap and len(wider) == 1 and None not in wider:
        notes.append(f"w{b_bits}a{a_bits} not synthesized: model of the {wider.pop()} runs (the next wider "
                     "synthesized width: an upper bound)")
    elif extrap:
        notes.append(f"w{b_bits}a{a_bits} not synthesized: fitted on other widths, no width dependence modelled")
    return Resources(rows, cols, a_bits, b_bits, vals, "model",
                     f"model fitted on {', '.join(sorted(pts))} (docs/estimator.md)", tuple(notes))


def loo_errors(table: SynthTable | None = None) -> list[dict]:
    """Leave-one-out: each recorded configuration predicted by the model fitted on the others."""
    table = table or load_table()
    out = []
    for key, rec in sorted(table.preferred().items()):
        for res in RESOURCES:
            if rec.values.get(res) is None:       # only recorded values are checked (not derived ones)
                continue
            f = fit_resource(res, rec.a_bits, rec.b_bits, table=table, exclude=(key,))
            if f is None:
                continue
            pred = f.predict(rec.rows, rec.cols)
            out.append(dict(config=rec.label, resource=res, recorded=rec.values[res], predicted=pred,
                            error_pct=100 * (pred - rec.values[res]) / rec.values[res], terms=f.terms,
                            fitted_on=f.points))
    return out


# ------------------------------------------------------------------------------------------ device

def sram_bram(sram_bytes: int, engine_bank_bytes: int) -> int:
    """DP16KD blocks of the on-chip buffer beyond the engine's own B banks (counted in the engine's BRAM)."""
    return max(0, math.ceil((sram_bytes - engine_bank_bytes) / BRAM_BYTES))


@dataclass(frozen=True)
class DeviceFit:
    """``use[resource] = (needed, available)``; ``limiting`` the resource with the highest ratio."""

    device: str
    fits: bool
    use: dict
    limiting: str

    def text(self) -> str:
        parts = ", ".join(f"{k} {n:,.0f}/{a:,} ({100 * n / a:.0f} %)" for k, (n, a) in self.use.items())
        return f"{'fits' if self.fits else 'DOES NOT FIT'} {self.device}: {parts}"


def check_fit(values: dict, device: str = DEFAULT_DEVICE, *, extra_bram: int = 0,
              table: SynthTable | None = None) -> DeviceFit:
    """Compare TRELLIS_COMB / FF / DSP / BRAM (+ ``extra_bram`` buffer blocks) with ``device``."""
    table = table or load_table()
    cap = table.device(device)
    use = {}
    for res, key in DEVICE_KEYS.items():
        need = values.get(res)
        if need is None:
            continue
        use[res] = (need + (extra_bram if res == "BRAM" else 0), cap[key])
    limiting = max(use, key=lambda k: use[k][0] / use[k][1]) if use else ""
    return DeviceFit(device, all(n <= a for n, a in use.values()), use, limiting)
