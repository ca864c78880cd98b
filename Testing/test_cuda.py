"""The CUDA path: the same bundle on the GPU gives the CPU's answer, a click runs there, and a
training step runs there. Skipped where torch sees no CUDA device (CI has none; benchmarks/gpu_check.sh
runs these on a GPU machine)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.data import generate_case
from crossdomainseg.engine import Engine
from crossdomainseg.interactive import InteractiveSession
from crossdomainseg.metrics import dice
from crossdomainseg.networks import build_network
from crossdomainseg.resources import shipped_bundle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def case():
    return generate_case("phantom-ct-mr", 424242, "target", size=(96, 96, 96))


def test_cuda_segmentation_matches_cpu(case):
    bundle = shipped_bundle("phantom-ct-mr")
    cpu = Engine(bundle, device="cpu", threads=2).segment(case.image, preview=True, uncertainty=True)
    gpu = Engine(bundle, device="cuda").segment(case.image, preview=True, uncertainty=True)
    a, b = (sitk.GetArrayFromImage(r.label) for r in (cpu, gpu))
    assert a.shape == b.shape
    assert (a == b).mean() > 0.999
    assert abs(cpu.U - gpu.U) < 0.02
    assert gpu.model_version == cpu.model_version


def test_cuda_click_changes_only_near_the_click(case):
    engine = Engine(shipped_bundle("phantom-ct-mr"), device="cuda")
    result = engine.segment(case.image, preview=True, uncertainty=False)
    session = InteractiveSession.from_result(case.image, result, engine.bundle)
    truth = sitk.GetArrayFromImage(case.label)
    value = session.label_values[0]
    before = sitk.GetArrayFromImage(session.label_image()) == value
    missed = np.argwhere((truth == value) & ~before)
    if len(missed) == 0:
        pytest.skip("the draft already covers this label")
    z, y, x = missed[len(missed) // 2]
    point = case.image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
    out = session.add_click(point, True, value)
    after = sitk.GetArrayFromImage(session.label_image()) == value
    assert out.changed > 0
    assert dice(after, truth == value) >= dice(before, truth == value) - 0.01


def test_cuda_training_step():
    spec = {"kind": "segmenter", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
    net = build_network(spec).cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 64, 64, 64, device="cuda")
    y = torch.randint(0, 3, (2, 64, 64, 64), device="cuda")
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
