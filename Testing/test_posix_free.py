"""Windows and macOS: no product module relies on POSIX-only facilities (fcntl, /proc, os.sysconf,
POSIX-only signals and process calls). A static check of every product file, and a run of every
product module's import plus the store, registry and trainer control paths (start, status, stop)
in a Python where those facilities fail for product code."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ROOT / "SlicerCrossDomainSeg"
PRODUCT_FILES = sorted(p for p in PRODUCT.rglob("*.py") if "__pycache__" not in p.parts)

POSIX_MODULES = {"fcntl", "termios", "resource", "pwd", "grp", "posix"}
POSIX_OS = {"sysconf", "nice", "fork", "forkpty", "killpg", "setsid", "setpgrp", "getpgid", "getuid",
            "geteuid", "wait3", "wait4"}
POSIX_SIGNALS = {"SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT", "SIGALRM",
                 "SIGCHLD", "SIGPIPE", "alarm", "setitimer", "pause", "pthread_kill"}


def _posix_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each POSIX-only import, os/signal attribute or /proc path in `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name.split(".")[0] in POSIX_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module.split(".")[0]
            names = {a.name for a in node.names}
            if base in POSIX_MODULES or (base == "os" and names & POSIX_OS) or (
                    base == "signal" and names & POSIX_SIGNALS):
                found.append((node.lineno, f"from {node.module} import {', '.join(sorted(names))}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id == "os" and node.attr in POSIX_OS) or (
                    node.value.id == "signal" and node.attr in POSIX_SIGNALS):
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value == "/proc" or node.value.startswith("/proc/"):
                found.append((node.lineno, repr(node.value)))
    return found


def _guarded(tree: ast.AST) -> set[int]:
    """Lines inside `if hasattr(os, ...)` / `if os.name ...` guards: POSIX-only calls there are
    taken only where the OS has them."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "hasattr(os," in test or "os.name" in test or "sys.platform" in test:
                for child in node.body:
                    lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def test_the_static_check_finds_posix_only_uses():
    code = ("import fcntl\nimport os, signal\nos.sysconf('SC_PAGE_SIZE')\nos.kill(1, signal.SIGKILL)\n"
            "open('/proc/meminfo')\nfrom os import nice\n")
    assert len(_posix_uses(ast.parse(code))) == 5


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(PRODUCT)))
def test_no_product_module_uses_posix_only_facilities(path):
    tree = ast.parse(path.read_text(), str(path))
    guarded = _guarded(tree)
    uses = [(line, text) for line, text in _posix_uses(tree) if line not in guarded]
    assert not uses, f"{path.name} uses POSIX-only facilities: {uses}"


# Installed as sitecustomize in the child Pythons (the trainer process too, through PYTHONPATH):
# for code in the product tree, `import fcntl` fails, os.sysconf and os.nice are missing, /proc
# cannot be read, and signal.SIGKILL does not exist. Libraries (psutil, filelock) keep theirs: the
# product must reach the OS through them.
SITECUSTOMIZE = r'''
import builtins, io, os, signal, sys

_PRODUCT = os.environ["CDS_POSIX_FREE_PRODUCT"]
_STDLIB = os.path.dirname(os.__file__)
_HERE = __file__


def _from_product():
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PRODUCT):
            return True
        if not (name.startswith(_STDLIB) or name.startswith("<frozen") or name == _HERE):
            return False
        frame = frame.f_back
    return False


_import = builtins.__import__


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name.split(".")[0] == "fcntl" and level == 0 and _from_product():
        raise ImportError("No module named 'fcntl' (POSIX-free check)")
    return _import(name, globals, locals, fromlist, level)


builtins.__import__ = _guarded_import


def _missing(name, real):
    def call(*args, **kwargs):
        if _from_product():
            raise AttributeError(f"module 'os' has no attribute '{name}' (POSIX-free check)")
        return real(*args, **kwargs)
    return call


os.sysconf = _missing("sysconf", os.sysconf)
os.nice = _missing("nice", os.nice)
del signal.SIGKILL


def _no_proc(real):
    def call(path, *args, **kwargs):
        text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if (text == "/proc" or text.startswith("/proc/")) and _from_product():
            raise PermissionError(f"{text}: /proc is unreadable (POSIX-free check)")
        return real(path, *args, **kwargs)
    return call


builtins.open = io.open = _no_proc(io.open)
os.open = _no_proc(os.open)
os.listdir = _no_proc(os.listdir)
os.scandir = _no_proc(os.scandir)
'''

SCENARIO = r'''
import importlib, json, os, pkgutil, sys, time
from pathlib import Path

product = Path(os.environ["CDS_POSIX_FREE_PRODUCT"])
out = {"imported": [], "not_importable": {}}

# The restrictions bite (else this test could not fail): code in the product tree is refused.
probe = str(product / "crossdomainseg" / "_posix_probe.py")
for snippet in ("import fcntl", "import os; os.sysconf('SC_PAGE_SIZE')", "open('/proc/meminfo')",
                "import signal; signal.SIGKILL"):
    try:
        exec(compile(snippet, probe, "exec"), {})
        out.setdefault("probe_passed", []).append(snippet)
    except (ImportError, AttributeError, PermissionError):
        pass

names = [m.name for m in pkgutil.walk_packages([str(product / "crossdomainseg")], prefix="crossdomainseg.")
         if not m.name.endswith("__main__")]
names += [f"CrossDomainSegLib.{p.stem}" for p in (product / "CrossDomainSegLib").glob("*.py")]
names += [f"CrossDomainSegWeb.{p.stem}" for p in (product / "CrossDomainSegWeb").glob("*.py")]
for name in ["crossdomainseg"] + sorted(names):
    name = name.replace(".__init__", "")
    try:
        importlib.import_module(name)
        out["imported"].append(name)
    except ModuleNotFoundError as error:  # an optional front-end dependency (Slicer, trame) missing
        out["not_importable"][name] = str(error)

import numpy as np
import SimpleITK as sitk
from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.curriculum import process
from crossdomainseg.registry import ModelRegistry
from crossdomainseg.store import AcceptedCaseStore

work = Path(sys.argv[1])
bundle = make_random_bundle(work / "bundle", spacing=4.0, roi=16, seed=1)
store = AcceptedCaseStore(work / "store")
for seed in range(2):
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
    array[4:12, 4:12, 4:12] += 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    label = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
    label.CopyInformation(image)
    store.accept(image, label, [], "random-0", labels=bundle.labels, draft=label)
    store.load(store.cases()[-1])
registry = ModelRegistry(work / "reg")
registry.init_from(bundle.path)
registry.publish(bundle.path)
out["rolled_back_to"] = registry.rollback()
pid = process.start(store.root, registry.root, params={"epochs": 1000, "tau_u0": 1.0, "tau_ts0": 1.0,
                    "holdout_every": 2, "n_strong": 1}, nice=1)
deadline = time.monotonic() + 300
while process.status(store.root).get("state") != "training" and time.monotonic() < deadline:
    time.sleep(0.2)
out["during"] = process.status(store.root)
out["stopped"] = process.stop(store.root, timeout=120)
out["log"] = (store.root / "trainer" / "trainer.log").read_text()[-3000:]
print(json.dumps(out, default=str))
'''


@pytest.mark.slow
def test_product_runs_without_posix_only_facilities(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PRODUCT)]),
           "CDS_POSIX_FREE_PRODUCT": str(PRODUCT)}
    run = subprocess.run([sys.executable, "-c", SCENARIO, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "probe_passed" not in out, out.get("probe_passed")
    for name, error in out["not_importable"].items():  # only front-end packages may be absent
        assert not any(word in error for word in ("fcntl", "sysconf", "SIGKILL", "/proc")), (name, error)
    assert {"crossdomainseg.store", "crossdomainseg.registry", "crossdomainseg.curriculum.process",
            "crossdomainseg.engine", "CrossDomainSegLib.trainer"} <= set(out["imported"])
    assert out["rolled_back_to"] == "v0001"
    assert out["during"]["running"] and out["during"]["state"] == "training", out["log"]
    assert out["stopped"]["state"] == "stopped" and not out["stopped"]["running"], out["log"]
    assert "POSIX-free check" not in out["log"]
