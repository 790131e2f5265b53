"""Hand-derived test vectors of the integer datapath: one table every implementation is checked against.

Every expected value below was worked out by hand from docs/datapath.md (the section is named at each
table; the derivation is the comment beside the value) and is **not** computed by any code of
vitaccel. ``tests/test_shared_vectors.py`` runs the same table through the four independent
implementations (numpy reference ``sim/reference.py``, numba kernels ``sim/kernels_*.py``, torch integer
grid ``golden/integer_grid.py`` and the Amaranth units of ``hw/`` in the Amaranth simulator), so an
implementation that drifts from the spec fails here even when the others drift with it.

The tables are plain Python data (ints, lists, tuples, dicts) so any language can read them. Where a
value is an *input* derived from the spec by formula (the scale ladder of section 8.1.1) the formula is
given; expected outputs are always literal.

Notation in the comments: ``rs(x, s)`` is ``round_shift(x, s) = (x + 2^(s-1)) >> s`` (section 1),
``>>`` the flooring shift, ``rhu`` round half up, ``rl2`` ``round_log2``, ``rls2`` ``round_log_sqrt2``.
"""
from __future__ import annotations

__all__ = ["ROUND_SHIFT", "ROUND_HALF_UP", "SATURATE", "TO_FIXED", "ROUND_LOG", "DECODE", "INVALID",
           "ENCODE_UNIFORM", "ENCODE_PER_PATCH", "ENCODE_DYNAMIC", "ENCODE_LOG2", "ENCODE_SHIFTLOG2",
           "ENCODE_THREE_REGION", "REQUANTIZE"]

# ------------------------------------------------------------------------------------------------
# Section 1: round_shift, round half up, saturation, host -> fixed point
# ------------------------------------------------------------------------------------------------

#: ``(x, s, round_shift(x, s))``: divide by 2^s, round to nearest, ties toward +infinity.
ROUND_SHIFT = [
    (0, 0, 0),                   # s = 0: x unchanged
    (7, 0, 7),
    (-7, 0, -7),
    (5, 1, 3),                   # 2.5 -> 3        (spec example)
    (-5, 1, -2),                 # -2.5 -> -2      (spec example)
    (-6, 2, -1),                 # -1.5 -> -1      (spec example)
    (7, 2, 2),                   # 1.75 -> 2       (spec example)
    (1, 1, 1),                   # 0.5 -> 1        (tie up)
    (-1, 1, 0),                  # -0.5 -> 0       (tie up, not away from zero)
    (3, 1, 2),                   # 1.5 -> 2
    (-3, 1, -1),                 # -1.5 -> -1      (not -2: not round-half-even, not away from zero)
    (5, 2, 1),                   # 1.25 -> 1
    (-5, 2, -1),                 # -1.25 -> -1
    (6, 2, 2),                   # 1.5 -> 2
    (-7, 2, -2),                 # -1.75 -> -2
    (2**40 + 2**19, 20, 2**20 + 1),    # 2^20 + 0.5 -> 2^20 + 1
    (-(2**40) - 2**19, 20, -(2**20)),  # -2^20 - 0.5 -> -2^20
    (2**62 - 1, 1, 2**61),       # 2^61 - 0.5 -> 2^61 (largest |x| the spec allows: < 2^62)
    (2**61, 62, 1),              # 0.5 -> 1 at the largest shift
    (-(2**61), 62, 0),           # -0.5 -> 0
]

#: ``(v, round_half_up(v))`` of real numbers, ``floor(v + 0.5)`` (section 1: "the front end rounds with
#: floor(v + 0.5)"; used for ``Bq``, ``Zs``, ``SH`` in sections 4.3, 7, 8.2). Every ``v`` is exact in float64.
ROUND_HALF_UP = [
    (2.5, 3),
    (-2.5, -2),
    (0.5, 1),
    (-0.5, 0),
    (-1.5, -1),
    (1.25, 1),
    (-7.75, -8),
    (0.0, 0),
    (1e15 + 0.5, 10**15 + 1),    # exact in float64 (spacing 0.125 at 1e15)
]

#: ``(x, lo, hi, clamped, count)``: clamp to [lo, hi] and count the clamped elements (section 1).
SATURATE = [
    ([-9, -8, 0, 7, 8], -8, 7, [-8, -8, 0, 7, 7], 2),   # -9 and 8 clamp; -8 and 7 are the ends, not counted
    ([0, 15, 16], 0, 15, [0, 15, 15], 1),
    ([-(2**40), 2**40], -(2**31), 2**31 - 1, [-(2**31), 2**31 - 1], 2),
]

#: ``(x, frac_bits, bits, x_fx, saturations)``: ``saturate(floor(x * 2^F + 0.5), -2^(bits-1), 2^(bits-1)-1)``
#: (section 1, host -> fixed point). Every ``x`` is exact in float32.
TO_FIXED = [
    (0.75, 4, 32, 12, 0),         # 12.0
    (0.03125, 4, 32, 1, 0),       # 0.5 -> floor(1.0) = 1
    (-0.03125, 4, 32, 0, 0),      # -0.5 -> floor(0.0) = 0 (tie toward +inf)
    (-0.09375, 4, 32, -1, 0),     # -1.5 -> floor(-1.0) = -1
    (2.0, 15, 16, 32767, 1),      # 65536 > 2^15 - 1: saturates, counted
    (-1.0, 15, 16, -32768, 0),    # exactly -2^15: the low end, not counted
    (-1.5, 15, 16, -32768, 1),    # -49152 < -2^15
    (1.0, 31, 32, 2**31 - 1, 1),  # 2^31 > 2^31 - 1
]

# ------------------------------------------------------------------------------------------------
# Section 8.2: round_log2 / round_log_sqrt2 (16-bit mantissa thresholds 46341; 38968, 55109)
# ------------------------------------------------------------------------------------------------

#: ``(v, round_log2(v), round_log_sqrt2(v))``. ``p = bit_length(v) - 1``, ``m = v << (15 - p)`` (or
#: ``v >> (p - 15)``); ``rl2 = p + (m >= 46341)``, ``rls2 = 2p + (m >= 38968) + (m >= 55109)``.
ROUND_LOG = [
    (1, 0, 0),            # p 0, m 32768: below every threshold
    (2, 1, 2),            # p 1, m 32768
    (3, 2, 3),            # p 1, m 49152: >= 46341; >= 38968, < 55109 (log2 3 = 1.585, 2 log2 3 = 3.17)
    (5, 2, 5),            # p 2, m 40960: < 46341; >= 38968 (2.32; 4.64)
    (7, 3, 6),            # p 2, m 57344: >= 46341; >= 55109 (2.81; 5.61)
    (181, 7, 15),         # p 7, m 46336: < 46341 (log2 181 = 7.4998); >= 38968 (14.9997)
    (182, 8, 15),         # p 7, m 46592: >= 46341 (7.5078); < 55109 (15.016)
    (38967, 15, 30),      # p 15, m 38967: < 38968 (2 log2 = 30.49996)
    (38968, 15, 31),      # m 38968: >= 38968 (30.50003)
    (46340, 15, 31),      # m 46340 < 46341 (15.49999)
    (46341, 16, 31),      # m 46341 (15.50001)
    (55108, 16, 31),      # m 55108 < 55109 (2 log2 = 31.49998)
    (55109, 16, 32),      # (31.50003)
    (65535, 16, 32),      # p 15, m 65535
    (65536, 16, 32),      # p 16, m = v >> 1 = 32768
    (3 << 19, 21, 41),    # p 20, m = v >> 5 = 49152 (mantissa truncated above 2^16: 20.58; 41.17)
    (1 << 40, 40, 80),    # p 40, m 32768
]

# ------------------------------------------------------------------------------------------------
# Section 4: decode of every A format. Entries ``(code, neg, mag, sh, D)``, D = (-1)^neg * mag << sh.
# ------------------------------------------------------------------------------------------------

#: One group per format configuration: ``kind``, ``bits``, ``base`` (shiftlog2), ``m0``/``m1``
#: (three_region) and the valid ``codes`` with their triple and ``D``.
DECODE = [
    # 4.1 uniform: (0, q, 0)
    {"kind": "uniform", "bits": 4, "codes": [(0, 0, 0, 0, 0), (9, 0, 9, 0, 9), (15, 0, 15, 0, 15)]},
    {"kind": "uniform", "bits": 8, "codes": [(255, 0, 255, 0, 255)]},
    # 4.2 log2: (0, 1, QMAX - q); ZERO -> (0, 0, 0). k=4: QMAX 14, ZERO 15; k>=6: QMAX 15, ZERO 2^k - 1
    {"kind": "log2", "bits": 4, "codes": [(0, 0, 1, 14, 16384), (14, 0, 1, 0, 1), (15, 0, 0, 0, 0),
                                          (5, 0, 1, 9, 512)]},
    {"kind": "log2", "bits": 6, "codes": [(0, 0, 1, 15, 32768), (15, 0, 1, 0, 1), (63, 0, 0, 0, 0)]},
    {"kind": "log2", "bits": 8, "codes": [(5, 0, 1, 10, 1024), (255, 0, 0, 0, 0)]},
    # 4.3 shiftlog2 base 2: C = (1, 1), e = q, H = QMAX = 15 for every k
    {"kind": "shiftlog2", "bits": 4, "base": "2",
     "codes": [(0, 0, 1, 15, 32768), (7, 0, 1, 8, 256), (15, 0, 1, 0, 1)]},
    {"kind": "shiftlog2", "bits": 6, "base": "2", "codes": [(15, 0, 1, 0, 1)]},
    {"kind": "shiftlog2", "bits": 8, "base": "2", "codes": [(3, 0, 1, 12, 4096)]},
    # 4.3 shiftlog2 base sqrt(2): C = (256, 181) by q & 1, e = q >> 1; k=4: QMAX 15, H 7; k>=6: QMAX 31, H 15
    {"kind": "shiftlog2", "bits": 4, "base": "sqrt2",
     "codes": [(0, 0, 256, 7, 32768),      # 256 << 7
               (1, 0, 181, 7, 23168),      # 181 << 7
               (2, 0, 256, 6, 16384),
               (14, 0, 256, 0, 256),
               (15, 0, 181, 0, 181)]},
    {"kind": "shiftlog2", "bits": 6, "base": "sqrt2",
     "codes": [(0, 0, 256, 15, 8388608),   # 256 << 15 = 2^23, the largest |D| of any format
               (1, 0, 181, 15, 5931008),   # 181 << 15
               (30, 0, 256, 0, 256),
               (31, 0, 181, 0, 181)]},
    {"kind": "shiftlog2", "bits": 8, "base": "sqrt2", "codes": [(31, 0, 181, 0, 181), (20, 0, 256, 5, 8192)]},
    # 4.4 three_region [r | g | mag]: g=0 -> (0, mag, m0 if r == 0 else m1); g=1 -> (1, (r << (k-2)) | mag, 0)
    {"kind": "three_region", "bits": 4, "m0": 2, "m1": 5,
     "codes": [(0b0000, 0, 0, 2, 0),
               (0b0011, 0, 3, 2, 12),      # R1, 3 << 2            (spec example)
               (0b1010, 0, 2, 5, 64),      # R2, 2 << 5            (spec example)
               (0b1011, 0, 3, 5, 96),      # R2, 3 << 5
               (0b0111, 1, 3, 0, -3),      # R0, -(0 << 2 | 3)     (spec example)
               (0b1101, 1, 5, 0, -5),      # R0, -(1 << 2 | 1)     (spec example)
               (0b0100, 1, 0, 0, 0),       # g = 1, magnitude 0: valid, decodes to 0
               (0b1100, 1, 4, 0, -4),
               (0b1111, 1, 7, 0, -7)]},    # the most negative: -(2^(k-1) - 1)
    {"kind": "three_region", "bits": 6, "m0": 0, "m1": 15,
     "codes": [(0b001111, 0, 15, 0, 15),
               (0b101111, 0, 15, 15, 491520),   # 15 << 15
               (0b011111, 1, 15, 0, -15),
               (0b111111, 1, 31, 0, -31)]},     # -(1 << 4 | 15)
    {"kind": "three_region", "bits": 8, "m0": 3, "m1": 7,
     "codes": [(0b00111111, 0, 63, 3, 504),     # 63 << 3
               (0b10000001, 0, 1, 7, 128),
               (0b11000000, 1, 64, 0, -64),     # -(1 << 6 | 0)
               (0b11111111, 1, 127, 0, -127)]},
]

#: Codes that are not valid for the format (section 4): every implementation must reject them (the
#: numpy / numba simulators raise, the RTL decoder flags ``invalid`` and decodes (0, 0, 0)).
#: ``(kind, bits, base, code, why)``.
INVALID = [
    ("uniform", 4, "2", 16, "not a 4-bit code"),
    ("log2", 4, "2", 16, "not a 4-bit code"),
    ("log2", 6, "2", 16, "in (QMAX, ZERO) = (15, 63)"),
    ("log2", 6, "2", 62, "in (QMAX, ZERO)"),
    ("log2", 8, "2", 254, "in (QMAX, ZERO) = (15, 255)"),
    ("shiftlog2", 6, "2", 16, "above QMAX = 15"),
    ("shiftlog2", 8, "2", 255, "above QMAX = 15"),
    ("shiftlog2", 6, "sqrt2", 32, "above QMAX = 31"),
    ("shiftlog2", 8, "sqrt2", 255, "above QMAX = 31"),
    ("three_region", 4, "2", 16, "not a 4-bit code"),
]

# ------------------------------------------------------------------------------------------------
# Section 8: encoders. ``x`` are fixed-point inputs (int32, F fraction bits), rows of a (M, K) matrix.
# ------------------------------------------------------------------------------------------------

#: 8.1 ``encode_uniform``: ``q = saturate(rs(x * R[r], SE) + z[r], 0, 2^k - 1)``; ``saturations`` counts
#: the clamped codes.
ENCODE_UNIFORM = [
    {   # the spec example (k = 4, F = 4, s = 0.5, z = 8, R = 1, SE = 3), one row
        "bits": 4, "se": 3, "r": [1], "z": [8],
        "x": [[20, -13, 4, -4, 12, -12, 100, -100, 0, 56, -64]],
        "codes": [[11,     # rs(20, 3) = 24 >> 3 = 3; + 8                 (spec example)
                   6,      # rs(-13, 3) = -9 >> 3 = -2; + 8               (spec example)
                   9,      # rs(4, 3) = 8 >> 3 = 1 (0.5 -> 1)
                   8,      # rs(-4, 3) = 0 >> 3 = 0 (-0.5 -> 0)
                   10,     # rs(12, 3) = 16 >> 3 = 2 (1.5 -> 2)
                   7,      # rs(-12, 3) = -8 >> 3 = -1 (-1.5 -> -1)
                   15,     # rs(100, 3) = 104 >> 3 = 13; 21 -> 15, saturated
                   0,      # rs(-100, 3) = -96 >> 3 = -12; -4 -> 0, saturated
                   8,      # 0 + 8
                   15,     # rs(56, 3) = 60 >> 3 = 7; 15 = the top code exactly, not saturated
                   0]],    # rs(-64, 3) = -60 >> 3 = -8; 0 = the bottom exactly, not saturated
        "saturations": 2,
    },
    {   # per patch: each row its own R and z (shared SE)
        "bits": 4, "se": 3, "r": [1, 3], "z": [8, 2],
        "x": [[20, -13, 4, -4],
              [5, -5, 0, 20]],
        "codes": [[11, 6, 9, 8],   # row 0 as above
                  [4,              # rs(15, 3) = 19 >> 3 = 2 (1.875); + 2
                   0,              # rs(-15, 3) = -11 >> 3 = -2 (-1.875); + 2 = 0, the bottom exactly
                   2,              # 0 + 2
                   10]],           # rs(60, 3) = 64 >> 3 = 8; + 2
        "saturations": 0,
    },
]

#: 8.1 ``encode_per_patch`` with outliers: ``|x| > ALPHA`` -> dense code ``z[r]`` and the list entry
#: ``(row, col, saturate(rs(x * R[r], SE - FO), -2^15, 2^15 - 1))`` (FO = 2); an int16 saturation is an
#: outlier overflow (counted in ``overflows``; strict mode raises instead).
ENCODE_PER_PATCH = [
    {   # spec example extended (k = 4, F = 4, s = 0.5, R = 1, SE = 3, ALPHA = 32)
        "bits": 4, "se": 3, "r": [1, 1], "z": [8, 0], "alpha_fx": 32, "fo": 2,
        "x": [[20, -13, 40, 32, -33, -40],
              [1048576, -1048576, 0, 7, -12, 33]],
        "codes": [[11,    # rs(20, 3) + 8 = 11                                  (spec example)
                   6,     # rs(-13, 3) + 8 = 6                                  (spec example)
                   8,     # 40 > 32: outlier, dense code z = 8                  (spec example)
                   12,    # 32 = ALPHA is not an outlier (strictly greater): rs(32, 3) = 36 >> 3 = 4; + 8
                   8,     # -33: outlier
                   8],    # -40: outlier
                  [0,     # outlier, z = 0
                   0,     # outlier
                   0,     # 0 + 0
                   1,     # rs(7, 3) = 11 >> 3 = 1
                   0,     # rs(-12, 3) = -8 >> 3 = -1; -1 -> 0, saturated
                   0]],   # 33: outlier
        "outliers": [(0, 2, 20),       # rs(40, 1) = 41 >> 1 = 20                 (spec example)
                     (0, 4, -16),      # rs(-33, 1) = -32 >> 1 = -16 (-16.5 -> -16)
                     (0, 5, -20),      # rs(-40, 1) = -39 >> 1 = -20
                     (1, 0, 32767),    # rs(2^20, 1) = 2^19 > 2^15 - 1: overflow
                     (1, 1, -32768),   # rs(-2^20, 1) = -2^19 < -2^15: overflow
                     (1, 5, 17)],      # rs(33, 1) = 34 >> 1 = 17 (16.5 -> 17)
        "saturations": 1, "overflows": 2,
    },
]

#: Section 8.1.1 scale ladder of the spec example: ``J = 16``, ``s_top = 1``, ``k = 4``, ``F = 4``,
#: ``SE = 20``: ``R[j] = round(2^20 / (2^(-j/8) * 16)) = round(65536 * 2^(j/8))`` (inputs, by that
#: formula; ``R[15] = 240387`` as in the spec) and ``T[j] = floor(2^(-j/8) * 15 * 16)`` (the spec's list).
_LADDER_R = [65536, 71468, 77936, 84990, 92682, 101070, 110218, 120194,
             131072, 142935, 155872, 169979, 185364, 202141, 220436, 240387]
_LADDER_T = [240, 220, 201, 185, 169, 155, 142, 130, 120, 110, 100, 92, 84, 77, 71, 65]

#: 8.1.1 ``encode_per_patch_dynamic``: per row ``lo = min(0, min inliers)``, ``hi = max(0, max inliers)``,
#: ``j = max({0} | {j : T[j] >= hi - lo})``, ``z = saturate(rs(-lo * R[j], SE), 0, 2^k - 1)``, then 8.1.
ENCODE_DYNAMIC = [
    {   # the spec example
        "bits": 4, "se": 20, "ladder_r": _LADDER_R, "ladder_t": _LADDER_T, "alpha_fx": 32, "fo": 2,
        "x": [[20, -13, 40, 3]],
        "row_index": [15],     # inliers 20, -13, 3: lo -13, span 33; T[15] = 65 >= 33
        "row_zero": [3],       # rs(13 * 240387, 20) = (3125031 + 2^19) >> 20 = 3649319 >> 20 = 3
        "codes": [[8,          # rs(20 * 240387, 20) = 5332028 >> 20 = 5; + 3
                   0,          # rs(-13 * 240387, 20) = -2600743 >> 20 = -3; + 3
                   3,          # outlier: z
                   4]],        # rs(3 * 240387, 20) = 1245449 >> 20 = 1; + 3
        "outliers": [(0, 2, 37)],   # rs(40 * 240387, 18) = (9615480 + 2^17) >> 18 = 9746552 >> 18 = 37
        "saturations": 0, "overflows": 0,
    },
    {   # no outlier path: a span above T[0], an all-zero row, a span exactly at a threshold
        "bits": 4, "se": 20, "ladder_r": _LADDER_R, "ladder_t": _LADDER_T, "alpha_fx": None, "fo": 2,
        "x": [[300, -10, 0, 5],
              [0, 0, 0, 0],
              [185, 0, 0, 0]],
        "row_index": [0,       # span 310 > T[0] = 240: j = 0 (clips)
                      15,      # span 0: the finest scale
                      3],      # span 185 = T[3] (T[4] = 169 < 185)
        "row_zero": [1,        # rs(10 * 65536, 20) = (655360 + 2^19) >> 20 = 1  (0.625 -> 1)
                     0,
                     0],       # lo = 0
        "codes": [[15,         # rs(300 * 65536, 20) = 20185088 >> 20 = 19; 20 -> 15, saturated
                   0,          # rs(-655360, 20) = -131072 >> 20 = -1; + 1 = 0
                   1,          # 0 + 1
                   1],         # rs(5 * 65536, 20) = 851968 >> 20 = 0; + 1
                  [0, 0, 0, 0],
                  [15,         # rs(185 * 84990, 20) = (15723150 + 2^19) >> 20 = 16247438 >> 20 = 15 (top, not saturated)
                   0, 0, 0]],
        "outliers": [], "saturations": 1, "overflows": 0,
    },
]

#: 8.2 ``encode_log2``: ``a == 0 -> ZERO``; ``q = F - rl2(a)``, ``q < 0 -> 0``, ``q > QMAX -> ZERO``.
ENCODE_LOG2 = [
    {"bits": 4, "frac": 15,    # QMAX 14, ZERO 15
     "x": [8192, 3, 1, 0, 32768, 2, 46341, 46340, 23170, 23171],
     "codes": [2,      # rl2(8192) = 13; 15 - 13                          (spec example)
               13,     # rl2(3) = 2 (m 49152)                             (spec example)
               15,     # rl2(1) = 0; q = 15 > QMAX 14 -> ZERO             (spec example)
               15,     # a == 0 -> ZERO
               0,      # rl2(2^15) = 15 (a = 1.0)
               14,     # rl2(2) = 1; q = 14 = QMAX, valid
               0,      # rl2(46341) = 16; q = -1 -> 0
               0,      # rl2(46340) = 15
               1,      # p 14, m = 23170 << 1 = 46340 < 46341: rl2 = 14
               0]},    # m = 46342: rl2 = 15
    {"bits": 8, "frac": 15,    # QMAX 15, ZERO 255
     "x": [1, 0, 2, 32768],
     "codes": [15,     # rl2(1) = 0; q = 15 = QMAX, valid at k = 8
               255,    # ZERO
               14,
               0]},
]

#: 8.2 ``encode_shiftlog2``: ``u = x + SH``, ``w = rs(u * R, SE)``; ``u <= 0`` or ``w <= 0`` -> QMAX; base 2
#: ``q = saturate(16 - rl2(w), 0, QMAX)``, base sqrt(2) ``q = saturate(32 - rls2(w), 0, QMAX)``.
ENCODE_SHIFTLOG2 = [
    {   # base 2, k = 4 (QMAX 15), F = 4, shift 0.25 (SH = rhu(0.25 * 16) = 4), s = 1: R / 2^SE = 2^16 / 16
        "bits": 4, "base": "2", "sh": 4, "r": 4096, "se": 0,
        "x": [12, 4, -4, -5, 60, -3, 8],
        "codes": [0,     # u 16, w 65536 = 2^16 (x + shift = 1.0 = s): rl2 16; q 0
                  1,     # u 8, w 32768: rl2 15; q 1
                  15,    # u = 0 -> QMAX
                  15,    # u = -1 -> QMAX
                  0,     # u 64, w 2^18: q = -2 -> 0 (clipped at the top)
                  4,     # u 1, w 4096 = 2^12: q 4
                  0]},   # u 12, w 49152: rl2 16 (m >= 46341); q 0
    {   # base 2, R = 1, SE = 2: w can be 0 with u > 0
        "bits": 4, "base": "2", "sh": 0, "r": 1, "se": 2,
        "x": [1, 2, 262144],
        "codes": [15,    # u 1, w = rs(1, 2) = 3 >> 2 = 0 -> QMAX
                  15,    # w = rs(2, 2) = 1: rl2 0; q = 16 -> 15 (saturated at QMAX: underflow)
                  0]},   # w = rs(262144, 2) = 65536: q 0
    {   # base sqrt(2), k = 6 (QMAX 31), SH = 4, R = 1, SE = 0: w = u = x + 4
        "bits": 6, "base": "sqrt2", "sh": 4, "r": 1, "se": 0,
        "x": [46337, 38963, 38964, 65532, 131068, -3, -4, -2],
        "codes": [1,     # w 46341: rls2 31; 32 - 31
                  2,     # w 38967: rls2 30 (m < 38968)
                  1,     # w 38968: rls2 31
                  0,     # w 65536: rls2 32
                  0,     # w 2^17: rls2 34; q = -2 -> 0
                  31,    # w 1: rls2 0; q = 32 -> 31 (saturated at QMAX)
                  31,    # u = 0 -> QMAX
                  30]},  # w 2: rls2 2
    {   # base sqrt(2), k = 4 (QMAX 15), SH = 4, R = 1, SE = 0
        "bits": 4, "base": "sqrt2", "sh": 4, "r": 1, "se": 0,
        "x": [-2, 65532, 16380],
        "codes": [15,    # w 2: q = 30 -> 15
                  0,     # w 65536: q 0
                  4]},   # w 16384 = 2^14: rls2 28; q 4
]

#: 8.3 ``encode_three_region``: ``w = rs(x * R, SE)``, ``P = 2^(k-2) - 1``; ``w < 0``: ``n = min(rs(-w, 16),
#: 2^(k-1) - 1)``, ``n == 0 -> 0`` else ``(n >> (k-2)) << (k-1) | 1 << (k-2) | (n & P)``; ``w >= 0``:
#: ``n1 = rs(w, 16 + m0)``, ``n1 <= P -> n1`` else ``1 << (k-1) | min(rs(w, 16 + m1), P)``.
ENCODE_THREE_REGION = [
    {   # the spec example: k = 4, m0 = 2, m1 = 5 (P = 3), R = 1, SE = 0 so w = x
        "bits": 4, "m0": 2, "m1": 5, "r": 1, "se": 0,
        "x": [694682, 2621440, 917503, 917504, 0, -196608, -327680, -32768, -32767, -6553600, 209715200,
              3145728],
        "codes": [0b0011,   # w ~ 10.6 * 2^16: n1 = (694682 + 2^17) >> 18 = 3 <= 3     (spec example)
                  0b1001,   # w = 40 * 2^16: n1 = 10 > 3; rs(w, 21) = 3670016 >> 21 = 1 (spec example)
                  0b0011,   # just below the R1/R2 boundary (P + 1/2) * 2^m0 = 14: n1 = 1048575 >> 18 = 3
                  0b1000,   # w = 14 * 2^16: n1 = 2^20 >> 18 = 4 > 3; rs(w, 21) = 1966080 >> 21 = 0
                  0,        # w = 0: R1, n1 = 0
                  0b0111,   # w = -3 * 2^16: n = rs(196608, 16) = 3; 0 << 3 | 4 | 3  (decodes to -3)
                  0b1101,   # w = -5 * 2^16: n = 5; 1 << 3 | 4 | 1                  (decodes to -5)
                  0b0101,   # w = -0.5 * 2^16: n = rs(32768, 16) = 1 (tie up)
                  0,        # w = -32767: n = 65535 >> 16 = 0 -> code 0
                  0b1111,   # w = -100 * 2^16: n = min(100, 7) = 7; 8 | 4 | 3
                  0b1011,   # w = 100 * 2^21: R2, min(100, 3) = 3
                  0b1010]}, # w = 1.5 * 2^21: n1 = 12; R2, rs(w, 21) = 4194304 >> 21 = 2 (1.5 -> 2)
    {   # k = 8, m0 = 0, m1 = 4 (P = 63), R = 3, SE = 2: w = rs(3x, 2)
        "bits": 8, "m0": 0, "m1": 4, "r": 3, "se": 2,
        "x": [65536, -65536, 1398101, 5592405, -5592405, -22369622],
        "codes": [1,        # w = 49152 (0.75 * 2^16): n1 = rs(49152, 16) = 1
                  65,       # w = rs(-196608, 2) = -49152: n = 1; 0 | 64 | 1
                  16,       # w = rs(4194303, 2) = 4194305 >> 2 = 2^20: n1 = 16
                  132,      # w = rs(16777215, 2) = 2^22: n1 = 64 > 63; rs(2^22, 20) = 4718592 >> 20 = 4; 128 | 4
                  192,      # w = rs(-16777215, 2) = -16777213 >> 2 = -2^22: n = 64; 1 << 7 | 64 | 0
                  255]},    # w = -2^24: n = min(256, 127) = 127; 128 | 64 | 63
]

# ------------------------------------------------------------------------------------------------
# Section 7: requantization
# ------------------------------------------------------------------------------------------------

#: ``t = rs(acc * Mr[r], Sr)``, ``v = rs(t * Mc[c] + Bq[c], Sc[c])``, ``out = saturate(v + z_out, lo, hi)``.
REQUANTIZE = [
    {   # the spec example: t = rs(3000, 2) = 750; v = rs(3758, 4) = 3766 >> 4 = 235; + 20 = 255 = hi exactly
        "acc": [[1000]], "mr": [3], "sr": 2, "mc": [5], "sc": [4], "bq": [8], "z_out": 20,
        "out_fmt": "ucode", "out_bits": 8, "out": [[255]], "saturations": 0},
    {   # the spec example with z_out = 21: 256 -> 255, counted
        "acc": [[1000]], "mr": [3], "sr": 2, "mc": [5], "sc": [4], "bq": [8], "z_out": 21,
        "out_fmt": "ucode", "out_bits": 8, "out": [[255]], "saturations": 1},
    {   # negative: t = rs(-3003, 2) = -3001 >> 2 = -751 (-750.75); v = rs(-3747, 4) = -3739 >> 4 = -234
        "acc": [[-1001]], "mr": [3], "sr": 2, "mc": [5], "sc": [4], "bq": [8], "z_out": 0,
        "out_fmt": "fixed16", "out_bits": 16, "out": [[-234]], "saturations": 0},
    {   # the same into an 8-bit scode: -234 < -127
        "acc": [[-1001]], "mr": [3], "sr": 2, "mc": [5], "sc": [4], "bq": [8], "z_out": 0,
        "out_fmt": "scode", "out_bits": 8, "out": [[-127]], "saturations": 1},
    {   # per-row gains (per-patch scale pipeline), ties in the row stage; ucode k = 4, z_out = 8
        "acc": [[5, -5], [5, -5]], "mr": [4, 2], "sr": 2, "mc": [1, 1], "sc": [0, 0], "bq": [0, 0], "z_out": 8,
        "out_fmt": "ucode", "out_bits": 4,
        "out": [[13, 3],     # row 0: Mr / 2^Sr = 1: t = 5, -5
                [11, 6]],    # row 1: rs(10, 2) = 12 >> 2 = 3 (2.5); rs(-10, 2) = -8 >> 2 = -2 (-2.5)
        "saturations": 0},
    {   # per-column Mc, Sc, Bq; fixed32
        "acc": [[7, 7, 7]], "mr": [1], "sr": 0, "mc": [3, 1, 1], "sc": [1, 0, 3], "bq": [0, -7, 4], "z_out": 0,
        "out_fmt": "fixed32", "out_bits": 32,
        "out": [[11,         # rs(21, 1) = 22 >> 1 = 11 (10.5 -> 11)
                 0,          # 7 - 7
                 1]],        # rs(11, 3) = 15 >> 3 = 1 (1.375)
        "saturations": 0},
    {   # fixed16 saturation at both ends (identity requantizer)
        "acc": [[40000, -40000, 32767, -32768]], "mr": [1], "sr": 0, "mc": [1], "sc": [0], "bq": [0], "z_out": 0,
        "out_fmt": "fixed16", "out_bits": 16, "out": [[32767, -32768, 32767, -32768]], "saturations": 2},
    {   # scode k = 4: [-7, 7]; -8 (the invalid sym code) saturates
        "acc": [[-8, -7, 7, 8]], "mr": [1], "sr": 0, "mc": [1], "sc": [0], "bq": [0], "z_out": 0,
        "out_fmt": "scode", "out_bits": 4, "out": [[-7, -7, 7, 7]], "saturations": 2},
    {   # ucode k = 6, z_out = 31: v + 31 = -1, 0, 63, 64
        "acc": [[-32, -31, 32, 33]], "mr": [1], "sr": 0, "mc": [1], "sc": [0], "bq": [0], "z_out": 31,
        "out_fmt": "ucode", "out_bits": 6, "out": [[0, 0, 63, 63]], "saturations": 2},
    {   # wide: t = 2^40; t * Mc + Bq = 2^56 - 2^40 + 2^46; rs(., 47) = (2^56 - 2^40 + 2^47) >> 47 = 512
        "acc": [[2**40]], "mr": [1], "sr": 0, "mc": [65535], "sc": [47], "bq": [2**46], "z_out": 0,
        "out_fmt": "fixed32", "out_bits": 32, "out": [[512]], "saturations": 0},
    {   # largest row shift: rs(3 * 21846, 16) = (65538 + 2^15) >> 16 = 1; rs(-65538, 16) = -32770 >> 16 = -1
        "acc": [[3, -3]], "mr": [21846], "sr": 16, "mc": [1, 1], "sc": [0, 0], "bq": [0, 0], "z_out": 0,
        "out_fmt": "fixed16", "out_bits": 16, "out": [[1, -1]], "saturations": 0},
]
