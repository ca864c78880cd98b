"""Model bundles: a folder with `configs/metadata.json` and `models/<name>.pt` (state dicts).

`load_bundle` validates everything up front (format version, required keys, network specs,
normalisation specs, that the metadata matches its own digest and each weight file its sha256) and
raises BundleError with the reason; a weight file that does not fit its spec fails in
`Bundle.network`. A bundle is never silently half-used.

`metadata_sha256` is the sha256 of the metadata's content (every other key, as canonical JSON), so
a metadata.json edited by hand (labels renamed or renumbered, another normalisation) is refused
like a changed weight file. The project's own writers (`save_bundle`, `update_bundle`, the model
registry) sign what they write; `sign_bundle` signs a bundle whose metadata a maintainer changed
on purpose.

metadata.json keys (see docs/ARCHITECTURE.md): `bundle_format` ("1"), `version`, `task`,
`spatial_dims`, `input_modality`, `output_modality`, `labels` {name: int, background 0}, `colors`
{name: [r, g, b]}, `spacing` (working grid mm, SimpleITK order x, y[, z]), `roi_size` (network
patch in array order z, y, x / y, x), `normalization` {"source": spec, "target": spec}
(normalize.py), `networks` {name: spec} (networks.py), `training`, `weights` {"models/x.pt":
sha256}, `metrics`, `metadata_sha256`; optional: `click_refiner` (interactive.refiner),
`curriculum_params` (curriculum.params.CurriculumParams.for_bundle), `postprocess` (the named
post-processing steps of postprocess.py, in order) and `uncertainty_hints` (U bands of the Logic's
hint), both chosen on the source validation split (source_validation.py), `terminology` {label
name: codes and colour} (terminology.py; it overrides the built-in table; `colors` is used only
for labels neither colours).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .errors import BundleError, InputError
from .networks import build_network, full_spec
from .normalize import normalize as _normalize
from .normalize import validate_spec
from .terminology import terms_for, validate_overrides
from .postprocess import check_steps

BUNDLE_FORMAT = "1"
METADATA_FILE = "configs/metadata.json"
METADATA_DIGEST = "metadata_sha256"
REQUIRED_KEYS = (
    "bundle_format", "version", "task", "spatial_dims", "input_modality", "output_modality",
    "labels", "spacing", "roi_size", "normalization", "networks", "weights",
)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_file(name: str) -> str:
    return f"models/{name}.pt"


class Bundle:
    """A validated bundle. Use `load_bundle(path)` rather than the constructor."""

    def __init__(self, path: Path, metadata: dict):
        self.path = Path(path)
        self.metadata = metadata
        self._cache: dict[tuple[str, str], torch.nn.Module] = {}

    def __repr__(self):
        return f"Bundle({str(self.path)!r}, task={self.task!r}, version={self.version!r})"

    version = property(lambda self: self.metadata["version"])
    task = property(lambda self: self.metadata["task"])
    spatial_dims = property(lambda self: int(self.metadata["spatial_dims"]))
    labels = property(lambda self: dict(self.metadata["labels"]))
    @property
    def terminology(self) -> dict:
        """{label name: terminology.Term} for the foreground labels (codes and display colour)."""
        return terms_for(self.labels, self.metadata.get("terminology"), self.metadata.get("colors"))

    @property
    def colors(self) -> dict:
        """{label name: [r, g, b]} display colours, from the terminology (distinct within a task)."""
        return {name: list(term.color) for name, term in self.terminology.items()}

    spacing = property(lambda self: [float(s) for s in self.metadata["spacing"]])
    roi_size = property(lambda self: [int(s) for s in self.metadata["roi_size"]])
    metrics = property(lambda self: dict(self.metadata.get("metrics", {})))
    network_names = property(lambda self: sorted(self.metadata["networks"]))

    @property
    def num_classes(self) -> int:
        """Output channels of the segmenter: background plus one per label value."""
        return max(self.metadata["labels"].values()) + 1

    def has_network(self, name: str) -> bool:
        return name in self.metadata["networks"]

    def network_spec(self, name: str) -> dict:
        if not self.has_network(name):
            raise BundleError(
                f"Bundle {self.path} has no network {name!r} (it has {self.network_names}); "
                "train it or use a bundle that includes it."
            )
        return copy.deepcopy(self.metadata["networks"][name])

    def network(self, name: str, device: str | torch.device | None = None) -> torch.nn.Module:
        """The named network with its weights, in eval mode, on `device` (default: CPU); cached."""
        device = torch.device(device or "cpu")
        key = (name, str(device))
        if key not in self._cache:
            module = build_network(self.network_spec(name))
            path = self.path / weight_file(name)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                module.load_state_dict(state, strict=True)
            except Exception as error:  # a corrupt or mismatched file: say which and why
                raise BundleError(
                    f"Cannot load weights {path} for network {name!r}: {error}. The bundle is "
                    "corrupt or was written for another network spec; reinstall or retrain it."
                ) from error
            self._cache[key] = module.to(device).eval()
        return self._cache[key]

    def normalize(self, array: np.ndarray, domain: str) -> np.ndarray:
        """Normalise intensities of an image of `domain` ("source" or "target") as in training."""
        specs = self.metadata["normalization"]
        if domain not in specs:
            raise BundleError(f"Bundle has no normalisation for domain {domain!r}; has {sorted(specs)}.")
        return _normalize(array, specs[domain])


def check_dimension(bundle: Bundle, size, name: str) -> None:
    """An image of `size` (SimpleITK order; from a file's header too, before anything is read)
    must be of the kind `bundle` segments: one slice for a 2D model, a volume for a 3D one."""
    single_slice = len(size) < 3 or size[2] == 1
    if bundle.spatial_dims == 2 and not single_slice:
        raise InputError(
            f"{name}: this model ({bundle.task}) segments 2D images, but a 3D volume of "
            f"{size[2]} slices was given; give one 2D image (e.g. one X-ray)."
        )
    if bundle.spatial_dims == 3 and single_slice:
        raise InputError(
            f"{name}: this model ({bundle.task}) segments 3D volumes, but a single 2D "
            "slice was given; give the whole volume."
        )


def read_metadata(path: Path) -> dict:
    file = path / METADATA_FILE
    if not path.is_dir():
        raise BundleError(f"Model bundle folder {path} does not exist.")
    if not file.is_file():
        raise BundleError(f"{path} is not a model bundle: {METADATA_FILE} is missing.")
    try:
        metadata = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{file} is not valid JSON ({error}); the bundle is corrupt.") from error
    if not isinstance(metadata, dict):
        raise BundleError(f"{file} must hold a JSON object.")
    return metadata


def metadata_digest(metadata: dict) -> str:
    """sha256 of the metadata's content: every key but the digest itself, as canonical JSON."""
    content = {key: value for key, value in metadata.items() if key != METADATA_DIGEST}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def signed(metadata: dict) -> dict:
    """A copy of `metadata` with its digest."""
    out = {key: value for key, value in copy.deepcopy(metadata).items() if key != METADATA_DIGEST}
    out[METADATA_DIGEST] = metadata_digest(out)
    return out


def check_metadata_digest(metadata: dict, path: Path) -> None:
    recorded = metadata.get(METADATA_DIGEST)
    if recorded is None:
        raise BundleError(
            f"{path / METADATA_FILE} has no {METADATA_DIGEST}, so changes to it cannot be detected; "
            "reinstall the bundle, or re-save it with this version of crossdomainseg."
        )
    if recorded != metadata_digest(metadata):
        raise BundleError(
            f"{path / METADATA_FILE} was changed after the bundle was written (its content no longer "
            "matches its checksum): labels, normalisation or settings may not be what the networks "
            "were trained with. Reinstall the bundle; change settings with `crossdomainseg train "
            "settings`, not by editing the file."
        )


# Keys of the task-specific post-processing rules that were removed: a bundle naming them would
# be delivered without them, so it is refused with what to do.
RETIRED_KEYS = ("boundary_fit", "inside", "inside_contrast")


def _check_hints(hints) -> bool:
    """uncertainty_hints: confident_up_to <= unsure_above, both >= 0."""
    if not isinstance(hints, dict):
        return False
    low, high = hints.get("confident_up_to"), hints.get("unsure_above")
    return all(isinstance(v, (int, float)) and v >= 0 for v in (low, high)) and low <= high


def validate_metadata(metadata: dict) -> None:
    fmt = metadata.get("bundle_format")
    if str(fmt) != BUNDLE_FORMAT:
        raise BundleError(
            f"Unsupported bundle_format {fmt!r}: this version of crossdomainseg reads format "
            f"{BUNDLE_FORMAT!r}. Use a bundle made for this version or update the software."
        )
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise BundleError(f"Bundle metadata lacks required keys {missing}.")
    dims = metadata["spatial_dims"]
    if dims not in (2, 3) or len(metadata["spacing"]) != dims or len(metadata["roi_size"]) != dims:
        raise BundleError("Bundle spatial_dims must be 2 or 3, with that many spacing and roi_size values.")
    labels = metadata["labels"]
    if not labels or labels.get("background", 0) != 0 or any(
        not isinstance(v, int) or v < 0 for v in labels.values()
    ):
        raise BundleError(f"Bundle labels must map names to ints >= 0 with background 0; got {labels!r}.")
    for domain, spec in metadata["normalization"].items():
        validate_spec(spec)
    if "segmenter" not in metadata["networks"]:
        raise BundleError("A bundle must include a 'segmenter' network.")
    for name, spec in metadata["networks"].items():
        full_spec(spec)
        if weight_file(name) not in metadata["weights"]:
            raise BundleError(f"Bundle metadata has no checksum for {weight_file(name)}.")
    retired = [key for key in RETIRED_KEYS if key in metadata]
    if retired:
        raise BundleError(f"Bundle metadata names {retired}, task-specific post-processing this version no "
                          "longer applies; remove those keys from configs/metadata.json and list its steps "
                          "in `postprocess` (crossdomainseg train settings --choose-postprocess).")
    check_steps(metadata.get("postprocess", []), BundleError)
    if "uncertainty_hints" in metadata and not _check_hints(metadata["uncertainty_hints"]):
        raise BundleError("Bundle uncertainty_hints must give confident_up_to <= unsure_above (U values >= 0); "
                          f"got {metadata['uncertainty_hints']!r}.")
    terminology = metadata.get("terminology")
    if terminology is not None:
        try:
            validate_overrides(terminology, "Bundle terminology")
        except InputError as error:
            raise BundleError(str(error)) from None
        foreground = set(labels) - {"background"}
        strangers = sorted(set(terminology) - foreground)
        if strangers:
            raise BundleError(f"Bundle terminology codes {strangers}, which are not foreground labels of "
                              "the bundle.")


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate the bundle at `path`; raises BundleError with the reason otherwise."""
    path = Path(path)
    metadata = read_metadata(path)
    validate_metadata(metadata)
    check_metadata_digest(metadata, path)
    _check_weights(path, metadata)
    return Bundle(path, metadata)


# Weight files whose checksum this process has verified, by file identity (device, inode, size,
# modification time) and expected digest: a bundle read again (the front end, the registry's copy
# renamed into place, the engine) is hashed once, and a file rewritten since is hashed again. A
# file modified in the last seconds is not remembered: a rewrite within the file system's clock
# tick would keep its modification time (git's "racily clean" index entries).
_verified: set[tuple] = set()
_SETTLED_S = 2.0


def _check_weights(path: Path, metadata: dict) -> None:
    for relative, expected in metadata["weights"].items():
        file = path / relative
        if not file.is_file():
            raise BundleError(f"Bundle {path} is missing weight file {relative}; reinstall the bundle.")
        info = file.stat()
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, expected)
        if identity in _verified:
            continue
        if sha256_file(file) != expected:
            raise BundleError(
                f"Checksum mismatch for {file}: the file was modified or is corrupt; reinstall the bundle."
            )
        if time.time() - info.st_mtime > _SETTLED_S:
            if len(_verified) > 1024:
                _verified.clear()
            _verified.add(identity)


def write_metadata(path: str | Path, metadata: dict) -> None:
    """Validate, sign and atomically write the metadata of the bundle at `path`."""
    validate_metadata(metadata)
    _write_json_atomic(Path(path) / METADATA_FILE, signed(metadata))


def sign_bundle(path: str | Path) -> Bundle:
    """Sign a bundle whose metadata.json a maintainer edited on purpose (or that an older version
    wrote without a digest): validates it and its weight checksums, then records the digest."""
    path = Path(path)
    metadata = read_metadata(path)
    validate_metadata(metadata)
    _check_weights(path, metadata)
    write_metadata(path, metadata)
    return load_bundle(path)


def _state_and_spec(name: str, network, metadata: dict):
    if isinstance(network, torch.nn.Module):
        spec = getattr(network, "spec", None) or metadata.get("networks", {}).get(name)
        state = network.state_dict()
    else:
        spec, state = metadata.get("networks", {}).get(name), network
    if spec is None:
        raise BundleError(f"No spec for network {name!r}: build it with networks.build_network.")
    return full_spec(spec), {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _write_json_atomic(file: Path, data: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, file)


def _write_weights(bundle_dir: Path, name: str, state: dict) -> str:
    file = bundle_dir / weight_file(name)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, file)
    return digest


def check_bundle_destination(path: Path, keep_bundle: str | None = None) -> None:
    """A bundle replaces only a bundle or an empty folder: any other folder holds the user's files
    (a bundle written there would delete them). With `keep_bundle` (what to do instead, e.g.
    train all's "pass --resume ..."), a bundle there is refused too."""
    holds_bundle = (path / "configs" / "metadata.json").is_file()
    if holds_bundle and keep_bundle is not None:
        raise BundleError(f"{path} already holds a bundle; {keep_bundle} (nothing was overwritten).")
    if path.exists() and not holds_bundle and (not path.is_dir() or any(path.iterdir())):
        raise BundleError(f"{path} exists and is not a model bundle; a bundle written there would replace "
                          "what it holds. Choose a new folder (nothing was written).")


def save_bundle(path: str | Path, metadata: dict, networks: dict) -> Bundle:
    """Write a complete bundle at `path` (replacing one there) and return it loaded.

    `networks` maps name -> module from `build_network` (its `spec` is recorded) or a state dict
    whose spec is in `metadata["networks"][name]`. `bundle_format`, `networks` and `weights` are
    filled in. The folder is built beside `path` and renamed into place, so readers never see a
    half-written bundle.
    """
    path = Path(path)
    check_bundle_destination(path)
    metadata = copy.deepcopy(metadata)
    metadata["bundle_format"] = BUNDLE_FORMAT
    metadata.setdefault("networks", {})
    metadata["weights"] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.staging-"))
    try:
        for name, network in networks.items():
            spec, state = _state_and_spec(name, network, metadata)
            metadata["networks"][name] = spec
            metadata["weights"][weight_file(name)] = _write_weights(staging, name, state)
        write_metadata(staging, metadata)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / "bundle")
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(path)


def update_bundle(path: str | Path, networks: dict | None = None, metadata: dict | None = None) -> Bundle:
    """Add or replace networks (same forms as `save_bundle`) and top-level metadata keys in place.

    Weight files are written to temporary names and renamed; metadata.json (with the new specs and
    checksums) is renamed into place last. A reader racing the update can only get a checksum
    error, never a model with the wrong weights.
    """
    path = Path(path)
    current = read_metadata(path)
    check_metadata_digest(current, path)  # a hand-edited bundle is not re-signed behind the user's back
    new = copy.deepcopy(current)
    for key, value in (metadata or {}).items():
        if key in ("bundle_format", "weights", METADATA_DIGEST):
            continue  # owned by this module
        new[key] = copy.deepcopy(value)
    new["networks"] = {**current["networks"], **(metadata or {}).get("networks", {})}
    # the metadata as it will be, checked before anything is written: a new setting can repair a
    # bundle that the current version refuses (e.g. one listing a retired post-processing step)
    validate_metadata(new)
    for name, network in (networks or {}).items():
        spec, state = _state_and_spec(name, network, new)
        new["networks"][name] = spec
        new["weights"][weight_file(name)] = _write_weights(path, name, state)
    write_metadata(path, new)
    return load_bundle(path)


def make_random_bundle(
    path: str | Path,
    task: str = "test-task",
    spatial_dims: int = 3,
    labels: dict | None = None,
    spacing: float = 3.0,
    roi: int = 32,
    seed: int = 0,
    with_generator: bool = True,
) -> Bundle:
    """A tiny untrained bundle (random weights, seeded) for tests of code that consumes bundles.

    Source normalisation is a CT window, target a percentile spec; roi `roi` per axis; input sizes
    for the networks must be divisible by 8 (the UNet's and generator's total stride).
    """
    labels = labels or {"background": 0, "organ": 1}
    torch.manual_seed(seed)
    out_channels = max(labels.values()) + 1
    networks = {
        "segmenter": build_network({
            "kind": "segmenter", "spatial_dims": spatial_dims, "out_channels": out_channels,
            "channels": [4, 8, 16, 32], "strides": [2, 2, 2], "num_res_units": 0,
        })
    }
    if with_generator:
        networks["generator"] = build_network(
            {"kind": "generator", "spatial_dims": spatial_dims, "channels": 4, "n_down": 2, "n_blocks": 1}
        )
    palette = [[0, 0, 0], [230, 80, 60], [80, 180, 90], [70, 110, 220], [230, 200, 60], [180, 90, 200]]
    metadata = {
        "version": "random-0",
        "task": task,
        "spatial_dims": spatial_dims,
        "input_modality": "MR",
        "output_modality": "CT",
        "labels": labels,
        "colors": {name: palette[value % len(palette)] for name, value in labels.items()},
        "spacing": [spacing] * spatial_dims,
        "roi_size": [roi] * spatial_dims,
        "normalization": {
            "source": {"kind": "window", "low": -250, "high": 250},
            "target": {"kind": "percentile", "lower": 1, "upper": 99},
        },
        "training": {"data": "none (random weights, for tests)", "seed": seed, "command": None},
        "metrics": {},
    }
    return save_bundle(path, metadata, networks)
