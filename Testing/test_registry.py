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
    # every reported version is there, or was pruned by the retention rule (recorded as such)
    pruned = {v for e in registry.history()["events"] if e["event"] == "prune" for v in e["versions"]}
    assert set(published) <= set(registry.versions()) | pruned
    assert published[-1] in registry.versions()
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


def test_pruning_keeps_what_the_retention_rule_names(tmp_path, bundles):
    """publish_every=1 over many publications: the registry keeps the shipped version, current,
    best, the rollback target and the last 3, nothing else; every kept version loads."""
    registry = ModelRegistry(tmp_path / "reg", keep_last=3)
    registry.init_from(bundles[0])
    for i in range(12):
        version = registry.publish(bundles[i % 2], {"i": i}, best=(i == 4))
    assert version == "v0013" and registry.best_version() == "v0006"
    assert registry.versions() == ["v0001", "v0006", "v0011", "v0012", "v0013"]
    assert not [p for p in registry.versions_dir.iterdir() if p.name.startswith(".")]
    assert registry.rollback() == "v0012" and registry.rollback() == "v0011"
    # Rolled back to v0011: the next publication keeps its rollback target v0011 too.
    registry.publish(bundles[0], protect=("v0012",))
    kept = registry.versions()
    assert kept == ["v0001", "v0006", "v0011", "v0012", "v0013", "v0014"]
    registry.publish(bundles[1])
    assert registry.versions() == ["v0001", "v0006", "v0013", "v0014", "v0015"]
    assert registry.rollback() == "v0014"
    for version in registry.versions():
        assert load_bundle(registry.versions_dir / version).version == version
    pruned = [v for e in registry.history()["events"] if e["event"] == "prune" for v in e["versions"]]
    assert "v0001" not in pruned and len(pruned) == 15 - 5


def test_hand_edited_bundle_is_not_published(tmp_path, bundles):
    import json
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(bundles[1], edited)
    meta_file = edited / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["labels"] = {"background": 0, "liver": 1}
    meta_file.write_text(json.dumps(meta))
    registry = ModelRegistry(tmp_path / "reg")
    with pytest.raises(BundleError, match="changed after the bundle was written"):
        registry.init_from(edited)
    registry.init_from(bundles[0])
    with pytest.raises(BundleError, match="changed after the bundle was written"):
        registry.publish(edited)
    assert registry.versions() == ["v0001"]
