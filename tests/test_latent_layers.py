"""coding/latent/layers.py: the context and parameter networks as products at
chosen positions give what the networks give on the whole map."""

import pytest
import torch
from compressai.layers import CheckerboardMaskedConv2d, MaskedConv2d
from threadpoolctl import threadpool_info

from licbench.coding.latent import transforms_input
from licbench.coding.latent.layers import Convolutions, MaskedContext, Pointwise, prepared
from licbench.errors import CheckpointError

F64 = torch.float64


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (12, 8)])
def test_convolutions_are_the_stack_of_convolutions(size):
    torch.manual_seed(0)
    stack = torch.nn.Sequential(
        torch.nn.Conv2d(6, 10, 5, padding=2), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(10, 4, 3, padding=1),
    ).double()
    x = torch.randn(1, 6, *size, dtype=F64)
    with torch.no_grad():
        expected = stack(x)
        got = Convolutions(stack)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def hyper_syntheses():
    """CompressAI's hyper-syntheses (transposed convolutions; 'same' ones and
    pixel shuffles in nested stacks) and convolutions of every other kind."""
    from compressai.models import Cheng2020Anchor, Elic2022Official, MeanScaleHyperprior, ScaleHyperprior

    nn = torch.nn
    return {
        "elic": Elic2022Official(N=16, M=136).latent_codec["hyper"].h_s,
        "mbt2018-mean": MeanScaleHyperprior(8, 12).h_s,
        "bmshj2018-hyperprior": ScaleHyperprior(8, 12).h_s,
        "cheng2020": Cheng2020Anchor(8).h_s,
        "other kinds": nn.Sequential(
            nn.ConvTranspose2d(5, 7, 4, stride=3, padding=1, output_padding=2), nn.GELU(),
            nn.ConvTranspose2d(7, 6, (3, 2), stride=(1, 2), bias=False), nn.LeakyReLU(0.1),
            nn.Conv2d(6, 4, 3, stride=2), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
            nn.Sequential(nn.Conv2d(4, 8, 1), nn.PixelShuffle(2))),
    }


@pytest.mark.parametrize("name", sorted(hyper_syntheses()))
@pytest.mark.parametrize("size", [(1, 1), (3, 5)])
def test_convolutions_run_any_stack_as_the_stack_does(name, size):
    torch.manual_seed(3)
    stack = hyper_syntheses()[name].double()
    x = torch.randn(1, stack[0].in_channels, *size, dtype=F64)
    with torch.no_grad():
        expected = stack(x)
        got = Convolutions(stack)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    with torch.no_grad():
        batch = Convolutions(stack)(torch.cat((torch.randn_like(x), x)))
    assert torch.equal(batch[1:], got)


def test_pointwise_refuses_what_is_not_pointwise():
    with pytest.raises(CheckpointError, match="has a 3x3 convolution where a pointwise one is expected"):
        Pointwise(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1)), "entropy_parameters")


@pytest.mark.parametrize("conv", [CheckerboardMaskedConv2d(5, 8, kernel_size=5, padding=2),
                                  MaskedConv2d(5, 8, kernel_size=5, padding=2, mask_type="A")])
def test_masked_context_at_positions_is_the_masked_convolution_there(conv):
    torch.manual_seed(1)
    conv = conv.double()
    y = torch.randn(1, 5, 9, 11, dtype=F64)
    with torch.no_grad():
        full = conv(y)[0]  # masks its weight in place
        context = MaskedContext(conv, "context_prediction")
        p = context.pad
        padded = torch.zeros(9 + 2 * p, 11 + 2 * p, 5, dtype=F64)
        padded[p:p + 9, p:p + 11] = y[0].permute(1, 2, 0)
        rows, cols = torch.tensor([0, 0, 4, 8, 8]), torch.tensor([0, 10, 5, 0, 10])  # corners and the middle
        got = context(padded, rows, cols)
    assert len(context.tap_rows) == 12
    torch.testing.assert_close(got, full[:, rows, cols].T, rtol=0, atol=1e-12)


def test_masked_context_refuses_a_mask_that_differs_between_channels():
    conv = CheckerboardMaskedConv2d(2, 4, kernel_size=5, padding=2)
    conv.mask[0, 0, 0, 0] = 1
    with pytest.raises(CheckpointError, match="checkerboard context_prediction is not a masked 'same' convolution"):
        MaskedContext(conv, "checkerboard context_prediction")


@pytest.mark.parametrize("conv", [MaskedConv2d(4, 4, kernel_size=5, padding=2, groups=2),
                                  MaskedConv2d(4, 4, kernel_size=5, padding=2, padding_mode="reflect"),
                                  MaskedConv2d(4, 4, kernel_size=5, padding=1),
                                  MaskedConv2d(4, 4, kernel_size=(5, 3), padding=(2, 1))])
def test_masked_context_refuses_what_it_would_compute_wrongly(conv):
    with pytest.raises(CheckpointError, match="context_prediction is not a masked 'same' convolution"):
        MaskedContext(conv, "context_prediction")


def test_numpy_blas_takes_torch_thread_count():
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            conv = torch.nn.Conv2d(4, 2, 3, padding=1).double()
            torch.nn.init.ones_(conv.weight), torch.nn.init.zeros_(conv.bias)
            with torch.no_grad():
                out = Convolutions(torch.nn.Sequential(conv))(torch.ones(1, 4, 1, 1, dtype=F64))
            assert torch.equal(out, torch.full((1, 2, 1, 1), 4.0, dtype=F64))
            blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
            assert blas and all(lib["num_threads"] == n for lib in blas)
    finally:
        torch.set_num_threads(threads)


def test_pointwise_skips_leading_zero_columns_as_if_they_were_multiplied():
    torch.manual_seed(2)
    stack = torch.nn.Sequential(torch.nn.Conv2d(10, 7, 1), torch.nn.ReLU(), torch.nn.Conv2d(7, 3, 1)).double()
    pointwise = Pointwise(stack, "entropy_parameters")
    rest = torch.randn(6, 6, dtype=F64)
    with torch.no_grad():
        full = pointwise(torch.cat((torch.zeros(6, 4, dtype=F64), rest), dim=1))
        skipped = pointwise(rest, zeros=4)
        again = pointwise(rest, zeros=4)
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-12)
    assert torch.equal(again, skipped)


def test_prepared_layers_are_made_once_per_module_and_errors_are_not_kept():
    a, b = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1)), torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1))
    first = prepared(Pointwise, a, "entropy_parameters")
    assert prepared(Pointwise, a, "entropy_parameters") is first
    assert prepared(Pointwise, b, "entropy_parameters") is not first
    bad = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1))
    for _ in range(2):  # refused each time, not once
        with pytest.raises(CheckpointError, match="where a pointwise one is expected"):
            prepared(Pointwise, bad, "entropy_parameters")


def test_transforms_take_float32_channels_last_on_the_cpu():
    model = torch.nn.Conv2d(3, 2, 3)
    contiguous = torch.rand(1, 3, 5, 7, dtype=F64)
    x = transforms_input(contiguous, model)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, contiguous.float())
    flat = torch.rand(3, 4)
    assert transforms_input(flat, model).is_contiguous()
