"""hmar_kernels.tolerance: the rule the tests (check_close) and the benchmark sweep share."""
import torch

from hmar_kernels.tolerance import TEST_FLOOR_ULPS, error_bound


def test_bound_is_twice_the_baseline_error_and_rounding_plus_the_floor():
    golden = torch.tensor([1.0, -3.0], dtype=torch.float64)
    baseline = torch.tensor([1.0, -3.002], dtype=torch.float16)
    out = torch.tensor([1.0, -3.0], dtype=torch.float16)
    check = error_bound(out, golden, baseline)
    rounding = 0.0  # 1 and 3 are exact in fp16
    floor = TEST_FLOOR_ULPS * torch.finfo(torch.float32).eps * 3.0
    assert check.baseline_error == abs(float(torch.tensor(-3.002, dtype=torch.float16)) + 3.0)
    assert check.rounding == rounding
    assert check.bound == 2 * check.baseline_error + floor
    assert check.ok and check.error == 0.0


def test_floor_admits_fp32_accumulation_noise_and_nothing_more():
    golden = torch.ones(4, dtype=torch.float64)
    exact = golden.float()
    eps = torch.finfo(torch.float32).eps
    assert error_bound(exact + 8 * eps, golden, exact).ok
    assert not error_bound(exact + 8 * eps, golden, exact, floor_ulps=0).ok
    assert not error_bound(exact + 2 * TEST_FLOOR_ULPS * eps, golden, exact).ok


def test_non_finite_output_fails():
    golden = torch.zeros(3, dtype=torch.float64)
    out = torch.tensor([0.0, float("nan"), 0.0])
    check = error_bound(out, golden, golden.float())
    assert check.error == float("inf") and not check.ok
