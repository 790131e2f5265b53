"""The numpy reference reproduces every worked example of docs/datapath.md (numbers computed by hand)."""
import numpy as np
import pytest

from sim import formats as F
from sim import reference as ref
from sim.layer import LayerSpec, run_layer_reference


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
