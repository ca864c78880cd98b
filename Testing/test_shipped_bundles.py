"""The shipped default bundles: they load (checksums, format), and on freshly generated subjects
(seeds never used for training) the segmenter reaches the Dice recorded in the bundle (source, and
target for a bundle that segments the raw target image), and translating target images first
(TD-GAN) beats segmenting them directly (vanilla) on xray-drr."""

import numpy as np
import pytest

from crossdomainseg import metrics
from crossdomainseg.bundle import load_bundle
from crossdomainseg.data import generate_case
from crossdomainseg.resources import shipped_bundles
from crossdomainseg.training.evaluate import CaseRunner

TASKS = ["brain-t1-t2", "phantom-ct-mr", "xray-drr"]
# Outside the training task's subject seeds. Eight 3D subjects, because one subject's mean Dice
# swings by 0.15 with whether its small lesion is found (phantom-ct-mr 1.2 misses it in 2 of these
# 8); 32 radiographs (a second each), because xray-drr's translator gains ~0.01 on average but
# +-0.03 per subject.
FRESH_SEEDS = {"phantom-ct-mr": list(range(900001, 900009)), "xray-drr": list(range(900001, 900033)),
               "brain-t1-t2": list(range(900001, 900005))}
TOLERANCE = 0.06  # fresh subjects vary around the 6-case validation mean
# TD-GAN's lead over vanilla that fresh subjects must show, on the raw networks (the translator's
# own effect, whatever post-processing the bundle lists). Test split (method.json, raw): xray-drr
# 0.858 / 0.851. brain-t1-t2 and phantom-ct-mr ship domain-randomised references that segment the
# raw target image (metadata segmenter_input "image"); their translator makes the preview only, so
# there is no lead to hold; their source Dice is still checked.
TDGAN_LEAD = {"phantom-ct-mr": None, "xray-drr": 0.0, "brain-t1-t2": None}


def _bundle(task):
    bundles = shipped_bundles()
    if task not in bundles:
        pytest.fail(f"no shipped bundle for {task} in Resources/bundles")
    return load_bundle(bundles[task])


@pytest.mark.parametrize("task", TASKS)
def test_shipped_bundle_is_complete_and_small(task):
    bundle = _bundle(task)
    assert bundle.task == task
    assert {"segmenter", "generator"} <= set(bundle.network_names)
    assert bundle.metrics["source_val_dice"] > 0.5
    total = sum((bundle.path / rel).stat().st_size for rel in bundle.metadata["weights"])
    assert total < 20e6  # all shipped bundles together must stay under 40 MB
    for key in ("data", "seed", "command", "source", "translator"):
        assert key in bundle.metadata["training"]


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_shipped_bundle_reaches_recorded_dice_on_fresh_subjects(task, request):
    if task == "brain-t1-t2":
        request.getfixturevalue("icbm152_templates")  # generate_case reads the cached templates
    bundle = _bundle(task)
    runner = CaseRunner(bundle, raw=True)
    labels = [v for v in bundle.labels.values() if v]
    source, vanilla, tdgan = [], [], []
    for seed in FRESH_SEEDS[task]:
        case = generate_case(task, seed, "source")
        pred, _ = runner.segment(case.image, "source")
        source.append(metrics.dice(pred, case.label, labels))
        case = generate_case(task, seed, "target")
        pred, _ = runner.segment(case.image, "target")
        vanilla.append(metrics.dice(pred, case.label, labels))
        pred, _ = runner.segment(case.image, "target", via_generator=True)
        tdgan.append(metrics.dice(pred, case.label, labels))
    assert np.mean(source) >= bundle.metrics["source_val_dice"] - TOLERANCE
    if bundle.metadata.get("segmenter_input") == "image" and "target_val_vanilla_dice" in bundle.metrics:
        # the raw target path the bundle ships reaches its recorded target validation Dice
        assert np.mean(vanilla) >= bundle.metrics["target_val_vanilla_dice"] - TOLERANCE
    if TDGAN_LEAD[task] is not None:
        assert np.mean(tdgan) - np.mean(vanilla) > TDGAN_LEAD[task]


@pytest.mark.slow
def test_shipped_click_refiner_network_beats_a_sphere_on_fresh_mr():
    """The phantom bundle's refiner network alone (no classical fallback) corrects fresh MR
    subjects with fewer clicks' worth of Dice than a plain fixed 5 mm ball: on the test split its
    Dice after 5 clicks is about 0.67 against 0.60."""
    import SimpleITK as sitk

    from crossdomainseg.engine import Engine
    from crossdomainseg.interactive import InteractiveSession
    from crossdomainseg.evaluation.baselines import FixedBallRefiner
    from crossdomainseg.interactive.refiner import LearnedRefiner
    from crossdomainseg.evaluation.robot import robot_on_label

    engine = Engine(_bundle("phantom-ct-mr").path, device="cpu", threads=2)
    network = LearnedRefiner.from_bundle(engine.bundle, "cpu", fallback=None)
    scores = {"network": [], "sphere": []}
    for seed in FRESH_SEEDS["phantom-ct-mr"][:3]:
        case = generate_case("phantom-ct-mr", seed, "target")
        truth = sitk.GetArrayFromImage(case.label).astype(np.int16)
        result = engine.segment(case.image, preview=True, uncertainty=False)
        for name, refiner in (("network", network), ("sphere", FixedBallRefiner(radius_mm=5.0))):
            session = InteractiveSession.from_result(case.image, result, engine.bundle, refiner)
            for value in (v for v in session.label_values if (truth == v).any()):
                scores[name].append(robot_on_label(session, truth, value, 5)[0][-1])
    assert np.mean(scores["network"]) > np.mean(scores["sphere"]) + 0.02
