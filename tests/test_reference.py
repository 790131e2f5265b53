"""The numpy reference reproduces every worked example of docs/datapath.md (numbers computed by hand)."""
import numpy as np
import pytest

from vitaccel.sim import formats as F
from vitaccel.sim import reference as ref
from vitaccel.sim.layer import LayerSpec, run_layer_reference


def test_round_shift_ties_toward_plus_infinity():
    # section 1: 2.5 -> 3, -2.5 -> -2, -1.5 -> -1, 1.75 -> 2, shift 0 is the identity
    assert ref.round_shift([5, -5, -6, 7, -9], [1, 1, 2, 2, 0]).tolist() == [3, -2, -1, 2, -9]


def test_to_fixed_rounds_half_up_and_counts_saturation():
    v, n = ref.to_fixed(np.array([0.5, -0.5, 1.25, 1e9]), 1, 16)
    assert v.tolist() == [1, -1, 3, 32767] and n == 1
    with pytest.raises(ref.DatapathError):
        ref.to_fixed(np.array([np.nan]), 4)


def test_sym_codes_reject_most_negative():
    with pytest.raises(ref.DatapathError):
        ref.check_sym([[-8]], 4)
    assert ref.check_sym([[-7, 7]], 4).tolist() == [[-7, 7]]


def test_three_region_decode_examples():
    # section 4.4, k = 4, m0 = 2, m1 = 5
    assert ref.decode_three_region([0b0011, 0b1010, 0b0111, 0b1101], 4, 2, 5).tolist() == [12, 64, -3, -5]


def test_log2_decode_and_invalid_codes():
    # section 4.2: k = 4 -> QMAX 14, code 15 is zero; D = 2^(14 - q)
    assert ref.decode_log2([0, 14, 15], 4).tolist() == [2**14, 1, 0]
    with pytest.raises(ref.DatapathError):
        ref.decode_log2([20], 6)  # 16..62 invalid for k = 6


def test_shiftlog2_sqrt2_decode_table():
    # section 4.3: base sqrt2, k = 4: H = 7, C = (256, 181); q = 0 -> 256 << 7, q = 1 -> 181 << 7, q = 15 -> 181
    d = ref.decode_shiftlog2([0, 1, 2, 15], 4, "sqrt2").tolist()
    assert d == [256 << 7, 181 << 7, 256 << 6, 181]


def test_requantize_example_and_saturation_count():
    # section 7: acc 1000, Mr 3/2^2 -> t 750; Mc 5, Sc 4, Bq 8 -> 234.875 -> 235
    out, n = ref.requantize([[1000]], 3, 2, 5, 4, 8, 20, "ucode", 8)
    assert out.tolist() == [[255]] and n == 0
    out, n = ref.requantize([[1000]], 3, 2, 5, 4, 8, 21, "ucode", 8)
    assert out.tolist() == [[255]] and n == 1
    with pytest.raises(ref.DatapathError):  # row gain > 1 is not allowed
        ref.requantize([[1]], 5, 2, 1, 0, 0, 0, "fixed32", 32)


def test_per_patch_encoder_example():
    # section 8.1: k = 4, s = 0.5, F = 4 -> R = 1, SE = 3, z = 8, ALPHA = 32
    q, o, sat, nof = ref.encode_per_patch([[20, -13, 40]], 1, 3, 8, 4, 32)
    assert q.tolist() == [[11, 6, 8]]
    assert o.tolist() == [[0, 2, 20]] and sat == 0 and nof == 0


def test_log2_encoder_example():
    # section 8.2: 0.25 -> 2; 3/2^15 -> 13; 1/2^15 -> past QMAX -> ZERO; 0 -> ZERO
    assert ref.encode_log2([8192, 3, 1, 0], 15, 4).tolist() == [2, 13, 15, 15]


def test_round_log_thresholds_are_nearest():
    v = np.arange(1, 1 << 16)
    assert np.array_equal(ref.round_log2(v), np.floor(np.log2(v) + 0.5).astype(np.int64))
    assert np.array_equal(ref.round_log_sqrt2(v), np.floor(2 * np.log2(v) + 0.5).astype(np.int64))


def test_three_region_encoder_example():
    # section 8.3: k = 4, m0 = 2, m1 = 5: 10.6 -> R1 code 3; 40 -> R2 code 0b1001; -5 -> R0 code 0b1101
    x = [int(10.6 * 2**16), 40 * 2**16, -5 * 2**16]
    assert ref.encode_three_region(x, 1, 0, 4, 2, 5).tolist() == [0b0011, 0b1001, 0b1101]


def test_accumulator_worked_example():
    # section 10
    q = np.array([[3, 8, 15], [0, 9, 9]])
    b = np.array([[1, -7], [2, 3], [-1, 0]])
    raw, accd, acc = ref.accumulate(q, b, [8, 9], 2, [[1, 0, 37]])
    assert raw.tolist() == [[4, 3], [9, 27]]
    assert accd.tolist() == [[-12, 35], [-9, 63]]
    assert acc.tolist() == [[-48, 140], [1, -7]]


def test_acc_bits_table():
    # section 6 table: uniform A with za up to 2^k - 1, no outliers
    want = {192: (17, 21, 25), 768: (19, 23, 27), 3072: (21, 25, 29)}
    for k, row in want.items():
        got = tuple(ref.acc_bits_required(k, (1 << b) - 1, (1 << b) - 1, b) for b in F.BITS)
        assert got == row


def _layer(acc_bits, cap=None):
    return LayerSpec(
        name="ex", op="linear", a_kind="uniform", a_bits=4, b=np.array([[1, -7], [2, 3], [-1, 0]]), b_bits=4,
        za=np.array([8, 9]), mr=np.array([1]), sr=0, mc=np.array([1, 1]), sc=np.array([0, 0]),
        bq=np.array([0, 0]), out_fmt="fixed32", out_bits=32, acc_bits=acc_bits, fo=2,
        outlier_capacity=cap, tile_rows=2,
    )


def test_layer_too_narrow_accumulator_is_detected():
    with pytest.raises(ref.AccumulatorOverflowError):
        run_layer_reference(_layer(8, cap=1), [[3, 8, 15], [0, 9, 9]], [[1, 0, 37]])
    res = run_layer_reference(_layer(24, cap=1), [[3, 8, 15], [0, 9, 9]], [[1, 0, 37]])
    assert res.acc.tolist() == [[-48, 140], [1, -7]]


def test_layer_outlier_capacity_is_an_error():
    with pytest.raises(ref.OutlierCapacityError):
        run_layer_reference(_layer(32, cap=1), [[3, 8, 15], [0, 9, 9]], [[1, 0, 37], [1, 1, 2]])


# --------------------------------------------------------------------------------------------------
# Section 8.1.1: dynamic per-patch encoder
# --------------------------------------------------------------------------------------------------

# the ladder of the section 8.1.1 example: k = 4, F = 4, SE = 20, J = 16, s_top = 1, s_j = 2^(-j/8)
EX_T = [240, 220, 201, 185, 169, 155, 142, 130, 120, 110, 100, 92, 84, 77, 71, 65]
EX_R = [int(np.floor(2**20 / (2 ** (-j / 8) * 16) + 0.5)) for j in range(16)]


def test_dynamic_example_ladder_is_the_spec_formula():
    # T[j] = floor(s_j * (2^k - 1) * 2^F) = floor(240 * 2^(-j/8)); R[15] = round(2^16 * 2^(15/8)) = 240387
    assert EX_T == [int(np.floor(2 ** (-j / 8) * 15 * 16)) for j in range(16)]
    assert EX_R[0] == 1 << 16 and EX_R[15] == 240387
    ref.check_ladder(EX_R, EX_T, 20)                  # a valid ladder: no error


def test_dynamic_per_patch_encoder_example():
    # x = [20, -13, 40, 3], ALPHA = 32: inliers 20, -13, 3 -> lo = -13, hi = 20, span = 33 -> j = 15
    lo, span = ref.row_range([[20, -13, 40, 3]], 32)
    assert lo.tolist() == [-13] and span.tolist() == [33]
    # the finest covering scale: T[15] = 65 covers 33 and 65; 66 needs T[14] = 71; 241 > T[0] -> 0
    assert ref.select_ladder([33, 65, 66, 0, 241], EX_T).tolist() == [15, 15, 14, 15, 0]
    q, o, sat, nof, j, z = ref.encode_per_patch_dynamic([[20, -13, 40, 3]], EX_R, EX_T, 20, 4, 32)
    # z = round_shift(13 * 240387, 20) = round(2.98) = 3; codes 5 + 3, -3 + 3, z, 1 + 3
    assert j.tolist() == [15] and z.tolist() == [3]
    assert q.tolist() == [[8, 0, 3, 4]]
    # outlier value round_shift(40 * 240387, 18) = round(36.68) = 37
    assert o.tolist() == [[0, 2, 37]] and sat == 0 and nof == 0


def test_dynamic_row_of_only_outliers_takes_the_finest_scale():
    # every |x| > ALPHA = 32: no inliers -> lo = span = 0 -> j = J - 1 = 15, z = 0, dense codes all z
    x = [[40, -50, 33]]
    lo, span = ref.row_range(x, 32)
    assert lo.tolist() == [0] and span.tolist() == [0]
    q, o, sat, nof, j, z = ref.encode_per_patch_dynamic(x, EX_R, EX_T, 20, 4, 32)
    assert j.tolist() == [15] and z.tolist() == [0] and q.tolist() == [[0, 0, 0]]
    # values round_shift(x * 240387, 18): 36.68 -> 37, -45.85 -> -46, 30.26 -> 30
    assert o.tolist() == [[0, 0, 37], [0, 1, -46], [0, 2, 30]] and sat == 0 and nof == 0


def test_dynamic_span_above_coarsest_scale_clips_and_counts():
    # no outlier path; spans 300 and 500 exceed T[0] = 240 -> j = 0, R[0] = 2^16, so x * R / 2^20 = x / 16
    x = [[200, -100, 0, 7], [250, -250, 0, 0]]
    q, o, sat, nof, j, z = ref.encode_per_patch_dynamic(x, EX_R, EX_T, 20, 4, None)
    assert j.tolist() == [0, 0]
    # row 0: z = round(6.25) = 6; 12.5 -> 13 + 6 = 19 clips to 15; -6.25 -> -6 + 6 = 0; 0 -> 6; 0.44 -> 0 + 6
    # row 1: z = round(15.625) = 16 clamps to 15; 15.625 -> 16 + 15 clips to 15; -15.625 -> -16 + 15 clips to 0
    assert z.tolist() == [6, 15]
    assert q.tolist() == [[15, 0, 6, 6], [15, 0, 15, 15]]
    assert sat == 3 and nof == 0 and o.shape == (0, 3)


@pytest.mark.parametrize("ladder_r,ladder_t,se", [
    ([], [], 20),                                   # J = 0
    ([1 << 16] * 65, [100] * 65, 20),               # J = 65 > LADDER_MAX
    ([1 << 16] * 3, [100] * 2, 20),                 # sizes differ
    ([1 << 16, 1 << 15], [100, 50], 20),            # R decreasing
    ([1 << 16, 1 << 17], [50, 100], 20),            # T increasing
    ([0, 1 << 16], [100, 50], 20),                  # R = 0
    ([1, 1 << 24], [100, 50], 20),                  # R = 2^24
    ([1, 2], [100, -1], 20),                        # T < 0
    ([1, 2], [1 << 34, 0], 20),                     # T = 2^34
    ([1, 2], [100, 50], 57),                        # SE > 56
])
def test_dynamic_ladder_validation(ladder_r, ladder_t, se):
    with pytest.raises(ref.DatapathError):
        ref.check_ladder(ladder_r, ladder_t, se)
    with pytest.raises(ref.DatapathError):
        ref.encode_per_patch_dynamic([[1, 2]], ladder_r, ladder_t, se, 4, 32)
    ref.check_ladder([1] * F.LADDER_MAX, [0] * F.LADDER_MAX, 0)      # J = 64, flat ladder: valid


def test_dynamic_encoder_input_and_outlier_errors():
    with pytest.raises(ref.DatapathError):          # wider than int32
        ref.encode_per_patch_dynamic([[1 << 31]], EX_R, EX_T, 20, 4, None)
    with pytest.raises(ref.DatapathError):          # SE < FO
        ref.encode_per_patch_dynamic([[1, 40]], [1], [10], 1, 4, 32, 2)
    # SE = 8, FO = 2: outlier value round_shift(40 * (2^24 - 1), 6) ~ 1.05e7 > 2^15 - 1: an error in
    # strict mode, otherwise saturated to 32767 and counted
    with pytest.raises(ref.OutlierOverflowError):
        ref.encode_per_patch_dynamic([[1, 40]], [(1 << 24) - 1], [10], 8, 4, 32)
    _q, o, _sat, nof, _j, _z = ref.encode_per_patch_dynamic([[1, 40]], [(1 << 24) - 1], [10], 8, 4, 32, strict=False)
    assert nof == 1 and o.tolist() == [[0, 1, 32767]]
