"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread: on small tensors intra-op thread sync dominates on 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_golden(tmp_path_factory):
    """The embedded ``vitaccel-digits`` model through the real front end (once per session): ADFQ-ViT
    W4A4 (POQ outliers, Shift-Log2 post-GELU codes, AMO off to stay fast) calibrated with
    ``vitaccel calibrate``, golden vectors of one image from ``vitaccel export-golden``.
    Returns ``(program_dir, golden_dir)`` as strings."""
    from vitaccel.cli import main as vitaccel

    tmp = tmp_path_factory.mktemp("digits")
    prog, vec = tmp / "prog", tmp / "vec"
    rc = vitaccel(["calibrate", "--model", "vitaccel-digits", "--data", "embedded:digits", "--method", "adfq",
                   "--no-amo", "--bits", "w4a4", "--calib-size", "4", "--batch-size", "4", "--workers", "0",
                   "--alpha-qkv", "3", "--alpha-fc1", "3", "--outlier-capacity", "16", "-o", str(prog)])
    assert rc == 0
    rc = vitaccel(["export-golden", "--program", str(prog), "--data", "embedded:digits", "--images", "1",
                   "--workers", "0", "-o", str(vec)])
    assert rc == 0
    return str(prog), str(vec)
