"""Model registry: publish, current, rollback, refusal of broken bundles, crash safety, and the
Engine following a new version without restart."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import load_bundle, make_random_bundle
from crossdomainseg.errors import BundleError, InputError
from crossdomainseg.registry import ModelRegistry

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return [make_random_bundle(root / f"b{i}", spacing=4.0, roi=16, seed=i).path for i in range(2)]


def test_publish_and_rollback(tmp_path, bundles):
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.init_from(bundles[0]) == "v0001"
    assert registry.current_version() == "v0001"
    assert registry.publish(bundles[1], {"heldout_dice": 0.8}) == "v0002"
    assert registry.publish(bundles[0]) == "v0003"
    assert registry.versions() == ["v0001", "v0002", "v0003"]
    current = load_bundle(registry.current_path())
    assert current.version == "v0003" and current.metadata["parent_version"] == "v0002"
    assert load_bundle(registry.versions_dir / "v0002").metrics["finetune"] == {"heldout_dice": 0.8}
    assert registry.rollback() == "v0002"
    assert registry.rollback() == "v0001"
    with pytest.raises(InputError, match="No earlier"):
        registry.rollback()
    assert registry.versions() == ["v0001", "v0002", "v0003"]  # earlier versions are kept
    # Rolled-back versions are skipped by the next rollback after a new publication.
    assert registry.publish(bundles[1]) == "v0004"
    assert registry.rollback() == "v0001"


def test_refuses_broken_bundles_and_double_init(tmp_path, bundles):
    registry = ModelRegistry(tmp_path / "reg")
    with pytest.raises(InputError, match="not a model registry"):
        registry.current_version()
    registry.init_from(bundles[0])
    with pytest.raises(InputError, match="already holds"):
        registry.init_from(bundles[1])
    with pytest.raises(BundleError):
        registry.publish(tmp_path)  # not a bundle
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(bundles[1], broken)
    (broken / "models" / "segmenter.pt").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="Checksum"):
        registry.publish(broken)
    assert registry.current_version() == "v0001" and registry.versions() == ["v0001"]


PUBLISHER = r"""
import sys
from crossdomainseg.registry import ModelRegistry
registry = ModelRegistry(sys.argv[1])
while True:
    print(registry.publish(sys.argv[2]), flush=True)
"""


@pytest.mark.slow
def test_sigkill_publisher_leaves_a_loadable_current_model(tmp_path, bundles):
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundles[0])
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    published = []
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(registry.root), str(bundles[1])],
                                stdout=subprocess.PIPE, text=True, env=env)
        published.append(proc.stdout.readline().strip())
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        published += proc.stdout.read().split()
        proc.wait()
        current = load_bundle(registry.current_path())  # must load, whatever was interrupted
        assert current.version == registry.current_version()
    assert set(published) <= set(registry.versions())
    for version in registry.versions():
        load_bundle(registry.versions_dir / version)
    assert registry.publish(bundles[1]) not in published  # publishing still works afterwards


def test_engine_reloads_published_version_without_restart(tmp_path, bundles):
    from crossdomainseg.engine import Engine

    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundles[0])
    engine = Engine(registry.root, device="cpu", threads=1)
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    image.SetSpacing((4.0, 4.0, 4.0))
    first = engine.segment(image, preview=False, uncertainty=False)
    assert first.model_version == "v0001"
    registry.publish(bundles[1])
    second = engine.segment(image, preview=False, uncertainty=False)
    assert second.model_version == "v0002"
    assert not np.allclose(sitk.GetArrayFromImage(first.probabilities), sitk.GetArrayFromImage(second.probabilities))
    registry.rollback()
    assert engine.segment(image, preview=False, uncertainty=False).model_version == "v0001"
