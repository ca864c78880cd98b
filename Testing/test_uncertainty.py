import pytest
import torch

from crossdomainseg import uncertainty as unc


def _soft_dice(p, q, eps=1e-6):
    """Soft Dice of two probability maps (B, C, *spatial), mean over foreground channels."""
    dims = tuple(range(2, p.dim()))
    inter = (p[:, 1:] * q[:, 1:]).sum(dims)
    total = p[:, 1:].sum(dims) + q[:, 1:].sum(dims)
    return ((2 * inter + eps) / (total + eps)).mean(dim=1)


def _blob(shape, center, radius):
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return (dist2 <= radius**2).float()


def _threshold_predict(image):
    """A voxel-wise 'segmenter': equivariant to any geometric transform."""
    fg = torch.sigmoid((image - 0.5) * 20)
    return torch.cat([1 - fg, fg], dim=1)


def _asymmetric_image(shape):
    img = _blob(shape, [n * 0.35 for n in shape], min(shape) * 0.2)
    img[..., : shape[-2] // 2, -4:] = 1.0  # a bar on one side only: flips must move it
    return img[None, None]


@pytest.mark.parametrize("shape", [(24, 32, 40), (32, 40)])
def test_geometric_transforms_are_inverted_on_probabilities(shape):
    image = _asymmetric_image(shape)
    direct = _threshold_predict(image)
    for t in unc.all_transforms(spatial_dims=len(shape)):
        if not isinstance(t, (unc.Flip, unc.Rotate)):
            continue
        moved = _threshold_predict(t.apply(image))
        back = t.invert(moved)
        d_back = _soft_dice(back, direct).item()
        d_moved = _soft_dice(moved, direct).item()
        assert d_back > 0.93, t
        if not (isinstance(t, unc.Rotate) and abs(t.degrees) < 10):  # 5 degrees barely moves it
            assert d_moved < d_back - 0.05, t  # without inversion they would not line up


def test_rotation_is_rigid_on_non_square_grid():
    # A disc stays a disc of the same area when rotated 90 degrees on a 30x60 grid.
    disc = _blob((30, 60), (14.5, 29.5), 8)[None, None]  # grid centre
    rotated = unc.Rotate(90.0).apply(disc)
    assert rotated.sum().item() == pytest.approx(disc.sum().item(), rel=0.05)
    assert _soft_dice(torch.cat([1 - rotated, rotated], 1), torch.cat([1 - disc, disc], 1)) > 0.95


def test_blur_keeps_mean_and_reduces_spread_and_contrast_changes_spread():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 16, 16, 16)
    blurred = unc.GaussianBlur(1.0).apply(image)
    assert blurred.shape == image.shape
    assert blurred.mean().item() == pytest.approx(image.mean().item(), abs=0.01)
    assert blurred.std() < 0.6 * image.std()
    scaled = unc.IntensityScale(1.15).apply(image)
    assert scaled.std().item() == pytest.approx(1.15 * image.std().item(), rel=1e-4)


def test_default_transforms_order_and_limits():
    assert [t.name for t in unc.default_transforms(1)] == ["identity"]
    # Mirror flips come last (they hurt the measured uncertainty quality).
    assert not any(isinstance(t, unc.Flip) for t in unc.default_transforms(9))
    names3 = [t.name for t in unc.default_transforms(12, spatial_dims=3)]
    assert len(set(names3)) == 12 and "flipz" in names3
    assert "flipz" not in [t.name for t in unc.default_transforms(11, spatial_dims=2)]
    with pytest.raises(ValueError):
        unc.default_transforms(0)
    with pytest.raises(ValueError):
        unc.default_transforms(99)


def test_image_uncertainty_follows_eq1():
    a = _blob((20, 20, 20), (10, 10, 10), 6)[None, None]
    p_a = torch.cat([1 - a, a], 1)
    # Identical predictions: U = 0.
    assert unc.image_uncertainty([p_a, p_a, p_a]).item() == pytest.approx(0.0, abs=1e-5)
    # One prediction empty: p_bar = a/2; D(p_a, p_bar) = 1 - 2*(|a|/2)/(1.5|a|) = 1/3;
    # D(empty, p_bar) = 1 - 0/(|a|/2) = 1 -> U = max = 1.
    empty = torch.cat([torch.ones_like(a), torch.zeros_like(a)], 1)
    assert unc.image_uncertainty([p_a, empty]).item() == pytest.approx(1.0, abs=1e-4)
    # A slightly shifted prediction is less uncertain than a missing one, more than none.
    shifted = torch.roll(a, 2, dims=-1)
    u_shift = unc.image_uncertainty([p_a, torch.cat([1 - shifted, shifted], 1)]).item()
    assert 0.05 < u_shift < 0.5
    # Agreeing segmentations are certain however soft the maps, and a label no prediction
    # segments (a lesion absent from this image, a little probability everywhere) adds nothing.
    diffuse = [torch.cat([0.75 - 0.5 * a, 0.2 + 0.5 * a, torch.full_like(a, 0.05 + 0.01 * k)], 1)
               for k in range(3)]
    assert unc.image_uncertainty(diffuse).item() == pytest.approx(0.0, abs=1e-5)


def test_heatmap_kinds_locate_disagreement():
    a = _blob((16, 16, 16), (8, 8, 8), 5)[None, None]
    b = torch.roll(a, 2, dims=-1)
    probs = [torch.cat([1 - a, a], 1), torch.cat([1 - b, b], 1)]
    disagree = (a != b)[0, 0]
    for kind in unc.HEATMAP_KINDS:
        h = unc.heatmap(probs, kind)[0, 0]
        assert h.shape == a.shape[2:]
        assert h[disagree].min() > 0.9, kind
        assert h[~disagree].max() < 0.05, kind
    # Entropy alone reports a soft single prediction; disagreement measures do not.
    soft = [torch.full((1, 2, 4, 4, 4), 0.5)] * 3
    assert unc.heatmap(soft, "entropy").min() > 0.99
    assert unc.heatmap(soft, "variance").max() < 1e-6
    assert unc.heatmap(soft, "mutual_information").max() < 1e-6
    with pytest.raises(ValueError):
        unc.heatmap(soft, "bogus")


def test_tta_probabilities_calls_predict_per_transform():
    image = _asymmetric_image((12, 16, 16))
    calls = []
    out = unc.tta_probabilities(_threshold_predict, image, unc.default_transforms(4), step=calls.append)
    assert calls == [0, 1, 2, 3]
    assert len(out) == 4 and all(p.shape == (1, 2, 12, 16, 16) for p in out)
    assert unc.image_uncertainty(out).item() < 0.2


def test_chunked_tta_matches_one_at_a_time():
    image = _asymmetric_image((12, 16, 16))
    transforms = unc.default_transforms(5)
    batch_sizes = []

    def predict(x):
        batch_sizes.append(x.shape[0])
        return _threshold_predict(x)

    single = unc.tta_probabilities(predict, image, transforms)
    steps = []
    chunked = unc.tta_probabilities(predict, image, transforms, step=steps.append, chunk=2)
    assert batch_sizes == [1] * 5 + [2, 2, 1]
    assert steps == [1, 3, 4]
    for a, b in zip(single, chunked):
        assert torch.allclose(a, b, atol=1e-5)
