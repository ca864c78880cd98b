"""Network factories and intensity normalisation."""

import numpy as np
import pytest
import torch

from crossdomainseg.errors import BundleError, InputError
from crossdomainseg.networks import build_network
from crossdomainseg.normalize import denormalize, intensity_bounds, normalize, validate_spec


@pytest.mark.parametrize("dims", [2, 3])
def test_each_kind_builds_and_keeps_shapes(dims):
    size = (1, 1) + (16,) * dims
    x = torch.rand(size)
    seg = build_network({"kind": "segmenter", "spatial_dims": dims, "out_channels": 3,
                         "channels": [4, 8, 16], "strides": [2, 2]})
    gen = build_network({"kind": "generator", "spatial_dims": dims, "channels": 4, "n_blocks": 1})
    disc = build_network({"kind": "discriminator", "spatial_dims": dims, "channels": 4, "n_layers": 2})
    assert seg(x).shape == (1, 3) + (16,) * dims
    with torch.no_grad():
        y = gen(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert disc(x).shape == (1, 1) + (4,) * dims
    assert seg.spec["kind"] == "segmenter" and seg.spec["num_res_units"] == 1  # defaults filled


def test_spec_rebuilds_identical_architecture():
    a = build_network({"kind": "generator", "spatial_dims": 2, "channels": 4})
    b = build_network(a.spec)
    b.load_state_dict(a.state_dict())  # strict: same parameter names and shapes
    x = torch.rand(1, 1, 8, 8)
    assert torch.allclose(a.eval()(x), b.eval()(x))


def test_generator_without_norm_keeps_absolute_intensity():
    """Instance norm after the one-channel stem makes the output blind to a constant offset of
    the input (what an intensity-mapping translator must see); norm "none" is not."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8)
    for norm, blind in (("instance", True), ("none", False)):
        gen = build_network({"kind": "generator", "spatial_dims": 2, "channels": 4, "n_blocks": 1,
                             "norm": norm, "stem_kernel": 1}).eval()
        with torch.no_grad():
            same = torch.allclose(gen(x), gen(x + 0.5), atol=1e-4)
        assert same is blind, norm
    disc = build_network({"kind": "discriminator", "spatial_dims": 2, "channels": 4, "n_layers": 2, "norm": "none"})
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in disc.modules())


@pytest.mark.parametrize("spec", [
    {"kind": "generator", "norm": "batch"},
    {"kind": "transformer"},
    {"spatial_dims": 3},
    {"kind": "segmenter", "chanels": [4, 8]},
    {"kind": "segmenter", "spatial_dims": 4},
    {"kind": "segmenter", "channels": [4, 8, 16], "strides": [2]},
])
def test_bad_specs_raise_bundle_error(spec):
    with pytest.raises(BundleError):
        build_network(spec)


def test_window_maps_hu_and_inverts():
    spec = {"kind": "window", "low": -250, "high": 250}
    hu = np.array([-1000.0, -250.0, 0.0, 125.0, 250.0, 3000.0])
    out = normalize(hu, spec)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.5, 0.75, 1, 1], atol=1e-6)
    np.testing.assert_allclose(denormalize(out[1:5], spec), hu[1:5], atol=1e-3)


def test_percentile_is_robust_to_outliers_and_range_option():
    rng = np.random.default_rng(0)
    mr = rng.normal(300, 50, 10000)
    mr[:5] = 1e6  # a few hot voxels must not squash the rest
    out = normalize(mr, {"kind": "percentile", "lower": 1, "upper": 99, "range": [-1, 1]})
    assert out.min() == -1 and out.max() == 1
    assert abs(float(np.median(out))) < 0.05
    lo, hi = intensity_bounds(mr, {"kind": "percentile", "lower": 1, "upper": 99})
    assert 150 < lo < 250 and 350 < hi < 450
    np.testing.assert_allclose(
        denormalize(normalize(mr[10:20], {"kind": "minmax"}), {"kind": "minmax"},
                    bounds=intensity_bounds(mr[10:20], {"kind": "minmax"})), mr[10:20], rtol=1e-4)


def test_constant_image_does_not_divide_by_zero():
    out = normalize(np.full(10, 7.0), {"kind": "minmax"})
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_bad_normalisation_input():
    with pytest.raises(BundleError):
        validate_spec({"kind": "window", "low": 10, "high": -10})
    with pytest.raises(BundleError):
        validate_spec({"kind": "percentile", "lower": 99, "upper": 1})
    with pytest.raises(BundleError):
        validate_spec({"kind": "zscore"})
    with pytest.raises(InputError):
        normalize(np.array([1.0, np.nan]), {"kind": "percentile"})


def test_residual_generator_starts_as_identity_and_learns():
    gen = build_network({"kind": "generator", "spatial_dims": 2, "channels": 4, "n_blocks": 1,
                         "residual": True})
    x = torch.rand(1, 1, 16, 16) * 0.9 + 0.05
    with torch.no_grad():
        assert torch.allclose(gen(x), x, atol=1e-5)
    loss = (gen(x) - (1 - x)).abs().mean()  # a contrast inversion must be learnable
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    with pytest.raises(BundleError):
        build_network({"kind": "generator", "out_channels": 2, "residual": True})
