"""Reliability benchmark (issue 38): every probe of an attacker and of a careless user, plus the
SIGKILL loops of the store, the registry and the trainer; writes reliability.json.

Each probe answers one of:
    clear_error  the bad input was refused with a message (InputError / BundleError, or a CLI's
                 one-line error), before anything was lost or written outside its folder
    correct      the input was handled and the result is right (checked against a reference)
    wrong        it went through with a wrong result, ran planted code, lost an input, or left
                 more than one trainer running
    crash        an unexpected exception (a traceback instead of a message)
`silent_wrong` counts the `wrong` probes other than code execution, `code_execution` the code
execution probes whose code ran or whose file landed outside its folder.

    python benchmarks/reliability.py [--out FILE] [--kills N]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402  (common also puts the package on sys.path)

import SimpleITK as sitk  # noqa: E402

import crossdomainseg  # noqa: E402
from crossdomainseg.errors import InputError  # noqa: E402

PACKAGE_ROOT = Path(crossdomainseg.__file__).resolve().parents[1]  # child processes run the same code
ENV = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT), "CROSSDOMAINSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
LABELS = {"background": 0, "liver": 1, "spleen": 2}
FAST = {"tau_u0": 1.0, "tau_ts0": 1.0, "holdout_every": 2, "publish_every": 1, "n_strong": 1, "epochs": 1000}

PROBES: list[tuple[str, str, object]] = []  # (name, class, function)


def probe(name: str, kind: str):
    def register(function):
        PROBES.append((name, kind, function))
        return function
    return register


def refused(action) -> tuple[bool, object]:
    """(True, message) when `action()` refuses with InputError (BundleError included), else
    (False, its result)."""
    try:
        return False, action()
    except InputError as error:
        return True, str(error)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


class Context:
    """What several probes share: a work folder, the demo case, the shipped bundle's engine and
    its label of the demo case (the reference the silent-wrong probes compare with)."""

    def __init__(self, work: Path, kills: int):
        from crossdomainseg.resources import demo_case, shipped_bundle

        self.work, self.kills = work, kills
        self.demo_path = demo_case()
        self.demo = sitk.ReadImage(str(self.demo_path))
        self.bundle_path = shipped_bundle("phantom-ct-mr")
        self._engine = None
        self._reference = None

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def engine(self):
        if self._engine is None:
            from crossdomainseg.engine import Engine

            self._engine = Engine(self.bundle_path, device="cpu", threads=1)
        return self._engine

    def segment(self, image) -> np.ndarray:
        result = self.engine.segment(image, preview=False, uncertainty=False)
        return sitk.GetArrayFromImage(result.label)

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self.segment(self.demo)
        return self._reference

    def random_bundle(self, name: str, seed: int = 1):
        from crossdomainseg.bundle import make_random_bundle

        return make_random_bundle(self.work / name, spacing=4.0, roi=16, seed=seed, labels=dict(LABELS))


class Evil:
    """A pickle whose loading creates a folder: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


# -- code execution ---------------------------------------------------------------------------
@probe("hostile_pickle_checkpoint", "code_execution")
def hostile_pickle_checkpoint(ctx: Context) -> str:
    import torch

    from crossdomainseg.curriculum import process

    workdir = process.trainer_dir(ctx.folder("pickle_store"))
    workdir.mkdir(parents=True, exist_ok=True)
    marker = ctx.work / "pickle_checkpoint_ran"
    torch.save({"student": Evil(marker)}, workdir / "checkpoint.pt")
    try:
        process._Run.load_checkpoint(types.SimpleNamespace(workdir=workdir))
        loaded = True
    except Exception:  # refused: the trainer records it as failed and runs nothing
        loaded = False
    return "wrong" if marker.exists() or loaded else "clear_error"


@probe("hostile_pickle_bundle", "code_execution")
def hostile_pickle_bundle(ctx: Context) -> str:
    import torch

    from crossdomainseg.bundle import load_bundle, sha256_file, signed

    bundle = ctx.random_bundle("pickle_bundle")
    marker = ctx.work / "pickle_bundle_ran"
    weights = bundle.path / "models" / "generator.pt"
    torch.save({"weight": Evil(marker)}, weights)
    meta_file = bundle.path / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["weights"]["models/generator.pt"] = sha256_file(weights)  # the attacker re-signs it all
    meta_file.write_text(json.dumps(signed(meta)))
    was_refused, _ = refused(lambda: load_bundle(bundle.path).network("generator"))
    return "wrong" if marker.exists() or not was_refused else "clear_error"


def _outside_written(sandbox: Path, before: set) -> bool:
    return bool(set(sandbox.rglob("*")) - before)


@probe("upload_path_traversal", "code_execution")
def upload_path_traversal(ctx: Context) -> str:
    """The web app's upload writer, as its workflow module binds it, given hostile names."""
    from CrossDomainSegWeb import workflow

    writer = getattr(workflow, "write_uploads", None) or getattr(workflow, "write_client_files_to_dir")
    sandbox = ctx.folder("upload_sandbox")
    before = set(sandbox.rglob("*"))
    outcomes = []
    for name in (str(sandbox / "planted.pt"), "../" * 12 + str(sandbox / "up.pt").lstrip("/")):
        with tempfile.TemporaryDirectory() as folder:
            was_refused, _ = refused(lambda: writer([{"name": name, "content": b"payload"}], Path(folder)))
            outcomes.append(was_refused)
    if _outside_written(sandbox, before):
        return "wrong"
    return "clear_error" if all(outcomes) else "correct"


@probe("export_path_traversal", "code_execution")
def export_path_traversal(ctx: Context) -> str:
    """The web app's export with a client-set export name pointing outside its folder."""
    from CrossDomainSegWeb import workflow

    sandbox = ctx.folder("export_sandbox")
    before = set(sandbox.rglob("*"))
    written = []

    def export(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"label")
        written.append(path)
        return path

    app = workflow.WorkflowLogic.__new__(workflow.WorkflowLogic)
    errors = []
    app.__dict__.update(
        state=types.SimpleNamespace(cds_export_name=str(sandbox / "made" / "evil.nii.gz"),
                                    cds_export_format=".nii.gz", cds_progress=1.0),
        logic=types.SimpleNamespace(export=export), volume_node=None,
        server=types.SimpleNamespace(protocol=types.SimpleNamespace(addAttachment=lambda data: "ok")),
        _show_error=errors.append, _set_progress=lambda *a, **k: None)
    workflow.WorkflowLogic.export(app)
    if _outside_written(sandbox, before):
        return "wrong"
    return "correct" if written or errors else "clear_error"


# -- silent wrong results ---------------------------------------------------------------------
@probe("padded_int16", "silent_wrong")
def padded_int16(ctx: Context) -> str:
    """The demo case padded with -32768 outside its field of view: its foreground Dice against
    the case's ground truth must stay within 0.05 of the unpadded case's (or be refused)."""
    array = sitk.GetArrayFromImage(ctx.demo)
    pad = 16
    padded = np.full((array.shape[0], array.shape[1] + 2 * pad, array.shape[2] + 2 * pad), -32768, np.int16)
    padded[:, pad:-pad, pad:-pad] = array
    image = sitk.GetImageFromArray(padded)
    image.SetSpacing(ctx.demo.GetSpacing())
    image.SetDirection(ctx.demo.GetDirection())
    image.SetOrigin(ctx.demo.TransformIndexToPhysicalPoint((-pad, -pad, 0)))
    path = ctx.folder("padded") / "padded.nii.gz"
    sitk.WriteImage(image, str(path))
    was_refused, label = refused(lambda: ctx.segment(path))
    if was_refused:
        return "clear_error", label
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ctx.demo_path).replace(".nii.gz", "_label.nii.gz")))
    padded_dice, plain_dice = dice(label[:, pad:-pad, pad:-pad], truth), dice(ctx.reference, truth)
    detail = f"foreground Dice {padded_dice:.3f} padded, {plain_dice:.3f} unpadded"
    return ("correct" if padded_dice >= plain_dice - 0.05 else "wrong"), detail


def _truncated(ctx: Context, suffix: str) -> str:
    from crossdomainseg.imageio import read_image

    path = ctx.folder("truncated") / f"case{suffix}"
    sitk.WriteImage(sitk.Cast(ctx.demo, sitk.sitkFloat32), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    was_refused, _ = refused(lambda: read_image(path))
    return "clear_error" if was_refused else "wrong"


@probe("truncated_nii", "silent_wrong")
def truncated_nii(ctx: Context) -> str:
    return _truncated(ctx, ".nii")


@probe("truncated_nii_gz", "silent_wrong")
def truncated_nii_gz(ctx: Context) -> str:
    return _truncated(ctx, ".nii.gz")


@probe("nan_inf_nifti", "silent_wrong")
def nan_inf_nifti(ctx: Context) -> str:
    array = sitk.GetArrayFromImage(ctx.demo).astype(np.float32)
    array[20:24, 40:44, 50:54] = np.nan
    array[30, 45, 60] = np.inf
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ctx.demo)
    path = ctx.folder("nan") / "nan.nii.gz"
    sitk.WriteImage(image, str(path))
    was_refused, _ = refused(lambda: ctx.segment(path))
    return "clear_error" if was_refused else "wrong"


@probe("dicom_missing_slice", "silent_wrong")
def dicom_missing_slice(ctx: Context) -> str:
    from crossdomainseg.imageio import read_image

    folder = ctx.folder("dicom_series")
    image = ctx.demo
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series, study = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        tags = {
            "0008|0060": "MR", "0020|000d": study, "0020|000e": series, "0020|0013": str(k + 1),
            "0008|0018": f"{series}.{k + 1}", "0018|0050": str(image.GetSpacing()[2]),
            "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in direction[0:7:3] + direction[1:8:3]),
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)
    (folder / f"slice{image.GetDepth() // 2:03d}.dcm").unlink()
    was_refused, _ = refused(lambda: read_image(folder))
    return "clear_error" if was_refused else "wrong"


@probe("tiny_volume", "silent_wrong")
def tiny_volume(ctx: Context) -> str:
    z, y, x = (int(v) for v in np.argwhere(ctx.reference > 0).mean(0))
    tiny = ctx.demo[x - 5:x + 5, y - 5:y + 5, z - 3:z + 3]
    was_refused, label = refused(lambda: ctx.segment(tiny))
    if was_refused:
        return "clear_error"
    expected = ctx.reference[z - 3:z + 3, y - 5:y + 5, x - 5:x + 5]
    return "correct" if dice(label, expected) >= 0.8 else "wrong"


@probe("hand_edited_metadata", "silent_wrong")
def hand_edited_metadata(ctx: Context) -> str:
    from crossdomainseg.bundle import load_bundle

    bundle = ctx.random_bundle("edited_bundle")
    meta_file = bundle.path / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["labels"] = {"background": 0, "spleen": 1, "liver": 2}  # renamed: each organ gets the other's name
    meta_file.write_text(json.dumps(meta, indent=2))
    was_refused, _ = refused(lambda: load_bundle(bundle.path))
    return "clear_error" if was_refused else "wrong"


def _accept_label_value(ctx: Context, value: int, name: str) -> str:
    from crossdomainseg.store import AcceptedCaseStore

    store = AcceptedCaseStore(ctx.folder(name))
    image = ctx.demo[30:62, 30:62, 20:36]
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.int32)
    array[4:12, 8:24, 8:24] = 1
    array[4:12, 8:16, 8:16] = value
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    was_refused, case_id = refused(lambda: store.accept(image, label, [], "v0001", labels=dict(LABELS)))
    if was_refused:
        return "clear_error" if not store.cases() else "wrong"
    stored = sitk.GetArrayFromImage(store.load(case_id).label)
    return "correct" if np.array_equal(stored, array) and value in LABELS.values() else "wrong"


@probe("label_256_on_accept", "silent_wrong")
def label_256_on_accept(ctx: Context) -> str:
    return _accept_label_value(ctx, 256, "store_256")


@probe("undefined_label_on_accept", "silent_wrong")
def undefined_label_on_accept(ctx: Context) -> str:
    return _accept_label_value(ctx, 7, "store_undefined")


# -- lost input -------------------------------------------------------------------------------
def _segment_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossdomainseg.cli", "segment", *args, "--threads", "1"],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def _input_kept(ctx: Context, which: str) -> str:
    folder = ctx.folder(f"lost_{which}")
    case = folder / "input.nii.gz"
    shutil.copy(ctx.demo_path, case)
    before = case.read_bytes()
    outputs = {"out": ["--out", str(case)], "preview": ["--out", str(folder / "label.nii.gz"), "--preview", str(case)]}
    run = _segment_cli(str(case), "--bundle", str(ctx.bundle_path), "--no-uncertainty", *outputs[which])
    if case.read_bytes() != before:
        return "wrong"
    if "Traceback" in run.stderr:
        return "crash"
    return "clear_error" if run.returncode != 0 else "correct"


@probe("out_is_input", "lost_input")
def out_is_input(ctx: Context) -> str:
    return _input_kept(ctx, "out")


@probe("preview_is_input", "lost_input")
def preview_is_input(ctx: Context) -> str:
    return _input_kept(ctx, "preview")


# -- memory and unwritable outputs ------------------------------------------------------------
def _sparse_nifti(path: Path, size: int) -> None:
    """A valid NIfTI of size^3 int16 zeros that takes no disk space (a sparse file)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((size, size, size))
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0\0\0\0")
        handle.truncate(352 + 2 * size ** 3)


MEMORY_LIMIT = 8 << 30  # the probe's process may not take the shared machine down


def _limit_memory():  # runs in the child before exec (Linux CI; the benchmark is not product code)
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@probe("memory_600_cubed", "memory")
def memory_600_cubed(ctx: Context) -> str:
    folder = ctx.folder("memory")
    _sparse_nifti(folder / "big.nii", 600)
    try:
        run = subprocess.run([sys.executable, "-m", "crossdomainseg.cli", "segment", str(folder / "big.nii"),
                              "--bundle", str(ctx.bundle_path), "--out", str(folder / "label.nii.gz"),
                              "--threads", "1"], capture_output=True, text=True, env=ENV, timeout=120,
                             preexec_fn=_limit_memory if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        return "wrong"  # it started the work instead of refusing
    message = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    if run.returncode == 2 and "Traceback" not in run.stderr and any(
            word in message.lower() for word in ("memory", "gib", " gb")):
        return "clear_error", message
    return ("crash" if "Traceback" in run.stderr or run.returncode else "wrong"), message


@probe("unwritable_output", "unwritable")
def unwritable_output(ctx: Context) -> str:
    folder = ctx.folder("unwritable")
    blocker = folder / "a_file"
    blocker.write_text("not a folder")
    run = _segment_cli(str(ctx.demo_path), "--bundle", str(ctx.bundle_path), "--no-uncertainty",
                       "--out", str(blocker / "label.nii.gz"))
    if "Traceback" in run.stderr:
        return "crash"
    return "clear_error" if run.returncode == 2 and run.stderr.strip() else "wrong"


# -- trainer ----------------------------------------------------------------------------------
def _trainers(workdir: Path) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "crossdomainseg.curriculum.process" in cmdline and str(workdir) in cmdline:
            found.append(proc)
    return found


def _wait(predicate, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _trainer_store(ctx: Context, name: str):
    from crossdomainseg.registry import ModelRegistry
    from crossdomainseg.store import AcceptedCaseStore

    bundle = ctx.random_bundle(f"{name}_bundle")
    store = AcceptedCaseStore(ctx.folder(name) / "store")
    rng = np.random.default_rng(0)
    for _ in range(2):
        array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
        array[4:12, 4:12, 4:12] += 3
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((4.0, 4.0, 4.0))
        label = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
        label.CopyInformation(image)
        store.accept(image, label, [], "v0001", labels=dict(LABELS))
    registry = ModelRegistry(ctx.folder(name) / "reg")
    registry.init_from(bundle.path)
    return store, registry


@probe("trainer_concurrent_starts", "trainer")
def trainer_concurrent_starts(ctx: Context) -> str:
    from crossdomainseg.curriculum import process

    store, registry = _trainer_store(ctx, "concurrent")
    params = [f"--param={k}={v}" for k, v in FAST.items()]
    command = [sys.executable, "-m", "crossdomainseg.cli", "trainer", "start", "--store", str(store.root),
               "--registry", str(registry.root), "--nice", "1", *params]
    starts = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
              for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in starts)
    workdir = process.trainer_dir(store.root).resolve()
    time.sleep(2.0)
    running = len(_trainers(workdir))
    process.stop(store.root, timeout=60)
    leftover = _trainers(workdir)
    for proc in leftover:
        proc.kill()
    return "correct" if codes == [0, 2] and running == 1 and not leftover else "wrong"


@probe("trainer_crash_of_holder", "trainer")
def trainer_crash_of_holder(ctx: Context) -> str:
    import psutil

    from crossdomainseg.curriculum import process

    store, registry = _trainer_store(ctx, "crash")
    pid = process.start(store.root, registry.root, params=FAST, nice=1)
    workdir = process.trainer_dir(store.root).resolve()
    _wait(lambda: process.status(store.root).get("state") == "training")
    psutil.Process(pid).kill()  # returns before the kernel has ended it and dropped its lock
    _wait(lambda: not _trainers(workdir) and not process.is_running(store.root), timeout=30)
    state = process.status(store.root)
    crashed = state["state"] == "crashed" and not state["running"] and not _trainers(workdir)
    second = process.start(store.root, registry.root, params=FAST, nice=1)
    restarted = process.status(store.root)["running"] and len(_trainers(workdir)) == 1
    stopped = process.stop(store.root, timeout=60)["state"] == "stopped" and not _trainers(workdir)
    detail = f"crashed read: {crashed}, restarted: {restarted}, stopped: {stopped}"
    return ("correct" if crashed and restarted and stopped and second != pid else "wrong"), detail


def _gate_setup(ctx: Context, name: str):
    import torch

    from crossdomainseg.bundle import load_bundle
    from crossdomainseg.curriculum.params import CurriculumParams
    from crossdomainseg.curriculum.trainer import CurriculumTrainer, Volume
    from crossdomainseg.registry import ModelRegistry

    bundle = load_bundle(ctx.random_bundle(f"{name}_bundle").path)
    registry = ModelRegistry(ctx.folder(name) / "reg")
    registry.init_from(bundle.path)
    truth = np.zeros((16, 16, 16), np.int64)
    truth[4:12, 4:12, 4:12] = 1
    truth[6:10, 6:10, 6:10] = 2
    x = torch.from_numpy(truth.astype(np.float32))[None]
    cases = [Volume(f"a{i}", x, torch.from_numpy(truth)) for i in range(4)]
    params = CurriculumParams(holdout_every=2, curriculum=False, student_input="image")
    return bundle, registry, truth, cases, params, CurriculumTrainer, Volume


@probe("gate_regressions", "trainer")
def gate_regressions(ctx: Context) -> str:
    """A worse model became current; a student as bad as it but worse than the first version must
    not be published (the old gate compared with the current version only)."""
    from crossdomainseg.curriculum import promotion

    bundle, registry, truth, cases, params, CurriculumTrainer, _ = _gate_setup(ctx, "gate")
    worse = np.where(truth == 2, 1, truth)  # the lesion lost in the liver
    trainer = CurriculumTrainer(bundle, params, [], cases)
    trainer.export(ctx.work / "gate_worse")
    registry.publish(ctx.work / "gate_worse")  # v0002: its networks predict `worse` below
    predictions = {"v0001": truth, "v0002": worse}
    load = promotion.load_bundle

    def tagged(path):  # each version's segmenter answers with that version's prediction
        loaded = load(path)
        loaded.network = lambda name, device=None, version=loaded.version: types.SimpleNamespace(version=version)
        return loaded

    trainer.predict = lambda network, volume, reads=None: (
        worse if network is trainer.student else predictions[network.version])
    promotion.load_bundle = tagged
    try:
        gate = promotion.promote_if_best(trainer, registry, ctx.work / "gate_candidate")
    finally:
        promotion.load_bundle = load
    return "correct" if gate["published"] is None and "v0001" in gate.get("reason", "") else "wrong"


@probe("gate_unchanged_drafts", "trainer")
def gate_unchanged_drafts(ctx: Context) -> str:
    """A held-out case that is the current model's draft accepted unchanged gives it no credit."""
    from crossdomainseg.curriculum.promotion import promote_if_best

    bundle, registry, truth, cases, params, CurriculumTrainer, Volume = _gate_setup(ctx, "drafts")
    draft = np.where(truth == 2, 1, truth)
    cases[1] = Volume("a1", cases[1].x, __import__("torch").from_numpy(draft),
                      unchanged_draft_of=registry.current_version())
    trainer = CurriculumTrainer(bundle, params, [], cases)
    trainer.predict = lambda network, volume, reads=None: truth if network is trainer.student else draft
    gate = promote_if_best(trainer, registry, ctx.work / "drafts_candidate")
    scored = gate.get("versions", {}).get("v0001", {})
    return "correct" if gate["published"] and scored.get("cases") == 1 else "wrong"


@probe("pruning", "trainer")
def pruning(ctx: Context) -> str:
    from crossdomainseg.bundle import load_bundle
    from crossdomainseg.registry import ModelRegistry

    bundle = ctx.random_bundle("prune_bundle")
    registry = ModelRegistry(ctx.folder("prune") / "reg", keep_last=3)
    registry.init_from(bundle.path)
    for _ in range(30):  # publish_every=1: a publication per epoch
        registry.publish(bundle.path)
    versions = registry.versions()
    loadable = all(load_bundle(registry.versions_dir / v).version == v for v in versions)
    bounded = len(versions) <= 3 + 3 and "v0001" in versions and versions[-1] == "v0031"
    return "correct" if bounded and loadable else "wrong"


# -- SIGKILL loops ----------------------------------------------------------------------------
STORE_WRITER = r"""
import sys
import numpy as np, SimpleITK as sitk
from crossdomainseg.store import AcceptedCaseStore
store = AcceptedCaseStore(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    array = rng.normal(size=(32, 32, 32)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    label = sitk.GetImageFromArray((array > 0.5).astype(np.uint8))
    case_id = store.accept(image, label, [], "v0001", labels={"background": 0, "liver": 1, "spleen": 2})
    print(case_id, float(array.sum()), flush=True)
"""


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)


@probe("sigkill_store", "sigkill")
def sigkill_store(ctx: Context) -> str:
    from crossdomainseg.store import AcceptedCaseStore

    root = ctx.folder("sigkill_store")
    rng = random.Random(1)
    reported = {}
    for round_ in range(ctx.kills):
        proc = subprocess.Popen([sys.executable, "-c", STORE_WRITER, str(root), str(round_)],
                                stdout=subprocess.PIPE, text=True, env=ENV)
        case_id, total = proc.stdout.readline().split()
        reported[case_id] = float(total)
        time.sleep(rng.uniform(0.0, 0.5))
        _kill(proc)
        for line in proc.stdout.read().splitlines():
            case_id, total = line.split()
            reported[case_id] = float(total)
        proc.wait()
    store = AcceptedCaseStore(root)
    if not set(reported) <= set(store.cases()):
        return "wrong"
    for case_id in store.cases():
        refused_, case = refused(lambda: store.load(case_id))
        if refused_:
            return "wrong"
        if case_id in reported and abs(float(sitk.GetArrayFromImage(case.image).sum()) - reported[case_id]) > 1e-2:
            return "wrong"
    return "correct"


PUBLISHER = r"""
import sys
from crossdomainseg.registry import ModelRegistry
registry = ModelRegistry(sys.argv[1])
while True:
    print(registry.publish(sys.argv[2]), flush=True)
"""


@probe("sigkill_registry", "sigkill")
def sigkill_registry(ctx: Context) -> str:
    from crossdomainseg.bundle import load_bundle
    from crossdomainseg.registry import ModelRegistry

    bundle = ctx.random_bundle("sigkill_registry_bundle")
    registry = ModelRegistry(ctx.folder("sigkill_registry") / "reg")
    registry.init_from(bundle.path)
    rng = random.Random(2)
    published = []
    for _ in range(ctx.kills):
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(registry.root), str(bundle.path)],
                                stdout=subprocess.PIPE, text=True, env=ENV)
        published.append(proc.stdout.readline().strip())
        time.sleep(rng.uniform(0.0, 0.5))
        _kill(proc)
        published += proc.stdout.read().split()
        proc.wait()
        if load_bundle(registry.current_path()).version != registry.current_version():
            return "wrong"
    pruned = {v for e in registry.history()["events"] if e["event"] == "prune" for v in e["versions"]}
    if not set(published) <= set(registry.versions()) | pruned:
        return "wrong"
    for version in registry.versions():
        load_bundle(registry.versions_dir / version)
    return "correct"


@probe("sigkill_trainer", "sigkill")
def sigkill_trainer(ctx: Context) -> str:
    import psutil

    from crossdomainseg.bundle import load_bundle
    from crossdomainseg.curriculum import process

    store, registry = _trainer_store(ctx, "sigkill_trainer")
    rng = random.Random(3)
    accepted = set(store.cases())
    for round_ in range(2):
        pid = process.start(store.root, registry.root, params=FAST, nice=1)
        writer = subprocess.Popen([sys.executable, "-c", STORE_WRITER, str(store.root), str(100 + round_)],
                                  stdout=subprocess.PIPE, text=True, env=ENV)
        accepted.add(writer.stdout.readline().split()[0])
        _wait(lambda: process.status(store.root).get("step", 0) > 0)
        time.sleep(rng.uniform(0.0, 2.0))
        psutil.Process(pid).kill()
        _kill(writer)
        accepted.update(line.split()[0] for line in writer.stdout.read().splitlines())
        writer.wait()
        if not _wait(lambda: not process.is_running(store.root), timeout=30):
            return "wrong"
        if process.status(store.root)["state"] != "crashed" or not accepted <= set(store.cases()):
            return "wrong"
        for case_id in store.cases():
            store.load(case_id)
        load_bundle(registry.current_path()).network("segmenter")
    return "correct"


# -- running ----------------------------------------------------------------------------------
def run(out: Path, kills: int, only: list[str] | None = None) -> dict:
    probes, details = {}, {}
    with tempfile.TemporaryDirectory(prefix="reliability-") as folder:
        ctx = Context(Path(folder), kills)
        for name, kind, function in PROBES:
            if only and name not in only:
                continue
            start = time.perf_counter()
            try:
                outcome = function(ctx)
                probes[name], detail = outcome if isinstance(outcome, tuple) else (outcome, None)
                if detail:
                    details[name] = str(detail)[-500:]
            except Exception as error:
                probes[name] = "crash"
                details[name] = "".join(traceback.format_exception_only(type(error), error)).strip()[-500:]
            print(f"{name:28s} {probes[name]:12s} {time.perf_counter() - start:6.1f} s", flush=True)
    kinds = {name: kind for name, kind, _ in PROBES}
    record = {
        "machine": machine_info(1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "probes": probes,
        "probe_classes": {name: kinds[name] for name in probes},
        "silent_wrong": sum(1 for n, o in probes.items() if o == "wrong" and kinds[n] != "code_execution"),
        "code_execution": sum(1 for n, o in probes.items() if o == "wrong" and kinds[n] == "code_execution"),
        "crashes": sum(1 for o in probes.values() if o == "crash"),
        "sigkills_per_loop": kills,
        "details": details,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability.json")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per store / registry loop")
    parser.add_argument("--only", nargs="*", help="run only these probes")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    record = run(args.out, args.kills, args.only)
    print(json.dumps({k: record[k] for k in ("silent_wrong", "code_execution", "crashes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
