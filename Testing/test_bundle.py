"""Bundle save/load/update and the loader's failure modes."""

import json

import numpy as np
import pytest
import torch

from crossdomainseg.bundle import (
    METADATA_FILE, load_bundle, make_random_bundle, save_bundle, sign_bundle, signed, update_bundle,
)
from crossdomainseg.errors import BundleError
from crossdomainseg.networks import build_network


@pytest.fixture
def bundle(tmp_path):
    return make_random_bundle(tmp_path / "b", task="t", spatial_dims=2,
                              labels={"background": 0, "heart": 1, "lung": 2})


def test_roundtrip_gives_same_outputs(bundle, tmp_path):
    loaded = load_bundle(bundle.path)
    assert loaded.task == "t" and loaded.spatial_dims == 2 and loaded.num_classes == 3
    x = torch.rand(1, 1, 32, 32)
    seg = loaded.network("segmenter")
    assert not seg.training
    assert seg is loaded.network("segmenter")  # cached
    with torch.no_grad():
        assert seg(x).shape == (1, 3, 32, 32)
        assert torch.allclose(seg(x), bundle.network("segmenter")(x))
    norm = loaded.normalize(np.array([-250.0, 250.0]), "source")
    np.testing.assert_allclose(norm, [0, 1])
    with pytest.raises(BundleError):
        loaded.normalize(np.zeros(3), "ultrasound")
    with pytest.raises(BundleError, match="no network 'refiner'"):
        loaded.network("refiner")


def test_missing_metadata_or_folder(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="metadata.json is missing"):
        load_bundle(tmp_path / "empty")


def test_missing_weight_file(bundle):
    (bundle.path / "models" / "generator.pt").unlink()
    with pytest.raises(BundleError, match="missing weight file models/generator.pt"):
        load_bundle(bundle.path)


def test_checksum_mismatch(bundle):
    file = bundle.path / "models" / "segmenter.pt"
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="Checksum mismatch"):
        load_bundle(bundle.path)


def _edit_metadata(bundle, **changes):
    """Change metadata as a maintainer would (signed), to test what validation makes of it."""
    file = bundle.path / METADATA_FILE
    meta = json.loads(file.read_text())
    meta.update(changes)
    file.write_text(json.dumps(signed(meta)))
    return meta


@pytest.mark.parametrize("fmt", ["2", None, "0.9"])
def test_unsupported_bundle_format(bundle, fmt):
    _edit_metadata(bundle, bundle_format=fmt)
    with pytest.raises(BundleError, match="Unsupported bundle_format"):
        load_bundle(bundle.path)


def test_corrupt_json_and_missing_keys(bundle):
    meta = _edit_metadata(bundle)
    del meta["labels"]
    (bundle.path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="lacks required keys"):
        load_bundle(bundle.path)
    (bundle.path / METADATA_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle.path)


def test_corrupt_pt_with_matching_checksum_fails_on_network(bundle):
    """A file that is not a state dict (checksum recorded for it) fails clearly when built."""
    file = bundle.path / "models" / "generator.pt"
    file.write_bytes(b"garbage, not a torch file")
    update = _edit_metadata(bundle)
    import hashlib
    update["weights"]["models/generator.pt"] = hashlib.sha256(file.read_bytes()).hexdigest()
    (bundle.path / METADATA_FILE).write_text(json.dumps(signed(update)))
    loaded = load_bundle(bundle.path)
    with pytest.raises(BundleError, match="Cannot load weights"):
        loaded.network("generator")


def test_weights_of_another_spec_fail_on_network(bundle):
    meta = _edit_metadata(bundle)
    meta["networks"]["segmenter"]["channels"] = [8, 16, 32, 64]
    (bundle.path / METADATA_FILE).write_text(json.dumps(signed(meta)))
    with pytest.raises(BundleError, match="Cannot load weights"):
        load_bundle(bundle.path).network("segmenter")


def test_update_bundle_adds_network_and_keeps_others(bundle):
    before = bundle.path.joinpath("models/segmenter.pt").read_bytes()
    refiner = build_network({"kind": "refiner", "spatial_dims": 2, "in_channels": 5,
                             "out_channels": 2, "channels": [4, 8], "strides": [2]})
    updated = update_bundle(bundle.path, networks={"refiner": refiner},
                            metadata={"version": "v2", "metrics": {"click_dice": 0.9}})
    assert updated.version == "v2" and updated.metrics == {"click_dice": 0.9}
    assert set(updated.network_names) == {"segmenter", "generator", "refiner"}
    assert "models/refiner.pt" in updated.metadata["weights"]
    assert bundle.path.joinpath("models/segmenter.pt").read_bytes() == before
    out = load_bundle(bundle.path).network("refiner")(torch.rand(1, 5, 16, 16))
    assert out.shape == (1, 2, 16, 16)
    assert not list(bundle.path.rglob("*.tmp"))


def test_save_bundle_replaces_existing_and_validates(tmp_path, bundle):
    seg = build_network({"kind": "segmenter", "spatial_dims": 2, "out_channels": 3,
                         "channels": [4, 8], "strides": [2]})
    meta = dict(bundle.metadata, version="new")
    meta.pop("weights")
    meta["networks"] = {}
    saved = save_bundle(bundle.path, meta, {"segmenter": seg})
    assert saved.version == "new" and saved.network_names == ["segmenter"]
    assert not (bundle.path / "models" / "generator.pt").exists()
    bad = dict(meta, labels={"background": 1})
    with pytest.raises(BundleError):
        save_bundle(tmp_path / "bad", bad, {"segmenter": seg})
    assert not (tmp_path / "bad").exists()
    (tmp_path / "empty").mkdir()  # an empty folder takes a bundle
    assert save_bundle(tmp_path / "empty", meta, {"segmenter": seg}).version == "new"
    mine = tmp_path / "my scans"  # a folder of the user's files is never replaced
    mine.mkdir()
    (mine / "case1.nii.gz").write_bytes(b"scan")
    with pytest.raises(BundleError, match="is not a model bundle"):
        save_bundle(mine, meta, {"segmenter": seg})
    assert [p.name for p in mine.iterdir()] == ["case1.nii.gz"]


@pytest.mark.parametrize("edit", ["rename", "renumber", "normalization", "drop_digest"])
def test_hand_edited_metadata_is_refused(bundle, edit):
    """Labels renamed or renumbered by hand would colour and name every result wrongly."""
    meta = json.loads((bundle.path / METADATA_FILE).read_text())
    if edit == "rename":
        meta["labels"] = {"background": 0, "liver": 1}
    elif edit == "renumber":
        meta["labels"]["organ"] = 2
    elif edit == "normalization":
        meta["normalization"]["target"] = {"kind": "window", "low": 0, "high": 100}
    else:
        del meta["metadata_sha256"]
    (bundle.path / METADATA_FILE).write_text(json.dumps(meta, indent=4))
    with pytest.raises(BundleError, match="changed after the bundle was written|no metadata_sha256"):
        load_bundle(bundle.path)
    with pytest.raises(BundleError):  # nor re-signed behind the user's back by an update
        update_bundle(bundle.path, metadata={"metrics": {}})
    if edit == "rename":  # a maintainer's deliberate edit is signed explicitly
        assert sign_bundle(bundle.path).labels == {"background": 0, "liver": 1}


def test_own_writers_sign_metadata(bundle, tmp_path):
    """update_bundle and the registry change metadata legitimately and re-sign it; reformatting
    the file (same content) is not an edit."""
    from crossdomainseg.registry import ModelRegistry

    update_bundle(bundle.path, metadata={"metrics": {"note": "edited by update_bundle"}})
    assert load_bundle(bundle.path).metrics["note"] == "edited by update_bundle"
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle.path)
    assert load_bundle(registry.current_path()).version == "v0001"
    file = bundle.path / METADATA_FILE
    file.write_text(json.dumps(json.loads(file.read_text()), indent=1, sort_keys=True))
    assert load_bundle(bundle.path).metrics["note"] == "edited by update_bundle"


def test_a_bundle_is_hashed_once_per_load_and_again_when_changed(bundle, tmp_path, monkeypatch):
    """The front end, the registry's copy and the engine all load the same files: their weights
    are hashed once; a file rewritten afterwards is hashed (and refused) again."""
    import os
    import shutil
    import time
    from pathlib import Path

    from crossdomainseg import bundle as bundle_module
    from crossdomainseg.registry import ModelRegistry

    old = time.time() - 60
    for file in bundle.path.rglob("*.pt"):
        os.utime(file, (old, old))  # settled files, as an installed bundle's are
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    load_bundle(bundle.path)
    load_bundle(bundle.path)
    assert sorted(hashed) == ["generator.pt", "segmenter.pt"]
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle.path)  # a copy: its files are new, hashed once
    load_bundle(registry.current_path())
    assert len(hashed) == 4
    moved = tmp_path / "moved"
    shutil.move(str(registry.current_path()), moved)  # renamed, same files
    load_bundle(moved)
    assert len(hashed) == 4
    file = moved / "models" / "segmenter.pt"
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="Checksum mismatch"):
        load_bundle(moved)
