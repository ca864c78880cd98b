"""The Python packages the engine needs inside Slicer, and installing them without freezing the GUI.

Installs run as child processes of Slicer's own Python (PythonSlicer) on a worker thread
(`jobs.Job`): the GUI polls the job, shows its progress and can cancel it. torch comes through
light-the-torch, as Slicer's PyTorch extension does, so the build matches the machine's GPU; the
other packages are installed with pip constrained to every version already installed, so nothing
Slicer ships is replaced.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .jobs import Job

MIN_TORCH = (2, 0)  # torch.load(weights_only=True) as the engine loads weights; MONAI 1.3 and up
# import name -> pip requirement
REQUIREMENTS = {"torch": f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}", "monai": "monai>=1.3",
                "SimpleITK": "SimpleITK", "scipy": "scipy", "pydicom": "pydicom", "tqdm": "tqdm"}


def torch_version() -> tuple[int, int] | None:
    """The installed torch's (major, minor), read from its metadata (importing torch takes
    seconds and cannot be undone); None when torch is not installed."""
    try:
        text = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers = re.findall(r"\d+", text)
    return (int(numbers[0]), int(numbers[1] if len(numbers) > 1 else 0)) if numbers else None


def missing() -> list[str]:
    """Import names of the requirements not installed, torch also when older than MIN_TORCH."""
    names = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    version = torch_version()
    if "torch" not in names and version is not None and version < MIN_TORCH:
        names.insert(0, "torch")
    return names


def check_installed(installed: list[str]) -> None:
    """After installing `installed` (import names) into this running Python: InputError saying
    what to do when something is still missing, or when torch was replaced under a torch that is
    already imported here (another module loaded it; the old one stays in use until a restart)."""
    from crossdomainseg.errors import InputError

    importlib.invalidate_caches()  # the finders' cached folder listings predate the install
    still = missing()
    if still:
        raise InputError(f"Still missing after installing: {describe(still)}. Restart Slicer and "
                         "try again.")
    if "torch" in installed and "torch" in sys.modules:
        version = torch_version()
        raise InputError(f"torch {version[0]}.{version[1]} is installed, but Slicer still runs the "
                         "older torch it had loaded: restart Slicer to use it.")


def describe(names: list[str]) -> str:
    """The missing packages in a sentence for the user."""
    parts = []
    for name in names:
        version = torch_version() if name == "torch" else None
        parts.append(f"torch (installed {version[0]}.{version[1]}, needs {REQUIREMENTS['torch'][5:]})"
                     if version else name)
    return ", ".join(parts)


def python_executable() -> str:
    """Slicer's Python launcher (PythonSlicer, with the environment Slicer's packages need);
    outside Slicer, this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def install_commands(names: list[str], python: str, constraints: Path) -> list[list[str]]:
    """The commands that install `names` (import names), in order."""
    commands = []
    if "torch" in names:
        commands.append([python, "-m", "pip", "install", "light-the-torch>=0.5"])
        commands.append([python, "-m", "light_the_torch", "install", REQUIREMENTS["torch"]])
    others = [REQUIREMENTS[name] for name in names if name != "torch"]
    if others:
        commands.append([python, "-m", "pip", "install", *others, "-c", str(constraints)])
    return commands


def constraints_file(keep_free=("torch",)) -> Path:
    """A pip constraints file pinning every distribution installed now, except `keep_free` (so
    torch may be upgraded when it is too old)."""
    free = {name.lower() for name in keep_free}
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"].lower() not in free})
    handle, path = tempfile.mkstemp(prefix="CrossDomainSeg-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as stream:
        stream.write("\n".join(pins) + "\n")
    return Path(path)


def start_install(names: list[str], progress=None) -> Job:
    """Install `names` on a worker thread; the job's message is the installer's last output line,
    its fraction the share of commands done. Cancelling stops the running installer."""
    commands = install_commands(names, python_executable(), constraints_file())
    return Job(lambda report, cancelled: run_commands(commands, report, cancelled), progress,
               "CrossDomainSeg install")


def run_commands(commands: list[list[str]], report, cancelled) -> None:
    """Run `commands` one after the other, reporting each output line; RuntimeError with the
    output's tail when one fails, InterruptedError when cancelled."""
    for number, command in enumerate(commands):
        tail: list[str] = []
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
        for line in process.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            report(number / len(commands), line.strip()[:200])
            if cancelled():
                process.terminate()
                process.wait()
                raise InterruptedError("Installation cancelled.")
        if process.wait() != 0:
            raise RuntimeError(f"Installing failed ({' '.join(command[1:4])} ...):\n" + "\n".join(tail))
    report(1.0, "installed")
