"""Helpers of the browser end-to-end suite: start the web server, drive Debian's chromium, read
the page, and map slice-view pixels to patient coordinates through the page's cursor probe."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
PROBE = re.compile(r"R (-?[\d.]+) A (-?[\d.]+) S (-?[\d.]+)")
PAGE_URL = re.compile(r"running at: (http://\S+\?secret=[\w-]+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def web_server(args: list[str], log_path: Path, timeout: float = 240.0):
    """`crossdomainseg web ARGS` on a free localhost port; yields the URL it prints (with its
    session token) once the server answers."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SlicerCrossDomainSeg"), CROSSDOMAINSEG_THREADS="1")
    command = [sys.executable, "-m", "crossdomainseg.cli", "web", "--host", "127.0.0.1", "--port", str(port),
               *args]
    with open(log_path, "w") as log:
        # own process group: the server and anything it starts stop together with the test
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
    url = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"web server exited ({process.returncode}):\n"
                                   f"{log_path.read_text()[-3000:]}")
            try:
                url = url or PAGE_URL.search(log_path.read_text(errors="replace")).group(1)
                with urllib.request.urlopen(url, timeout=2):
                    break
            except (OSError, AttributeError):  # not listening yet, or the URL not printed yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"web server not up in {timeout} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def selector(name: str) -> str:
    return f'[data-testid="{name}"]'


def text(page, name: str) -> str:
    return page.inner_text(selector(name))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns a truthy value; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def segment_voxels(page) -> dict[str, int]:
    """Voxel count per segment, as the page shows it."""
    rows = page.query_selector_all(f'{selector("voxel-counts")} [data-voxels]')
    return {row.get_attribute("data-testid").removeprefix("voxels-"): int(row.get_attribute("data-voxels"))
            for row in rows}


def largest_view_box(page) -> dict:
    """Screen box of the largest slice view (the axial view of the app's layout)."""
    def boxes():
        return [b for img in page.query_selector_all("img.image-display-area") if (b := img.bounding_box())]

    return max(wait_for(boxes, 30, "the slice views"), key=lambda b: b["width"] * b["height"])


def save_screenshot(page, path: Path) -> None:
    """The page at 2/3 size in 128 colours: readable, and small enough to keep in the repository."""
    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
    image.quantize(128).save(path, optimize=True)


def view_pixels(page, box: dict) -> bytes:
    return page.screenshot(clip=box)


def wait_view_change(page, box: dict, before: bytes, what: str, timeout: float = 30.0) -> bytes:
    """Wait until the view in `box` shows something other than `before` and has settled."""
    def settled():
        first = view_pixels(page, box)
        time.sleep(0.5)
        return first != before and first == view_pixels(page, box) and first

    return wait_for(settled, timeout, what)


def probe_at(page, x: float, y: float, timeout: float = 15.0) -> np.ndarray:
    """Hover (x, y) and return the RAS point the page's cursor probe reports there."""
    before = text(page, "probe")
    page.mouse.move(x, y)  # one move event: no intermediate positions to read by mistake

    def settled():
        first = text(page, "probe")
        time.sleep(0.3)
        return first != before and first == text(page, "probe") and PROBE.search(first) and first

    shown = wait_for(settled, timeout, f"the cursor probe to update at ({x:.0f}, {y:.0f})")
    return np.array([float(v) for v in PROBE.search(shown).groups()])


def fit_view_plane(page, box: dict) -> np.ndarray:
    """Affine map (3 x 3) from screen (x, y, 1) to RAS in the view in `box`, from the probe.

    The view's plane may be oblique (it follows the volume's axes), so all of R, A, S are fitted."""
    fractions = [(0.35, 0.35), (0.65, 0.4), (0.45, 0.65), (0.6, 0.6)]
    screen, ras = [], []
    for fx, fy in fractions:
        x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        screen.append([x, y, 1.0])
        ras.append(probe_at(page, x, y))
    matrix, residuals, *_ = np.linalg.lstsq(np.array(screen), np.array(ras), rcond=None)
    error = np.abs(np.array(screen) @ matrix - np.array(ras)).max()
    assert error < 1.0, f"the probe does not map linearly to screen points (off by {error:.2f} mm)"
    return matrix


def ras_to_screen(matrix: np.ndarray, ras) -> tuple[float, float]:
    """Screen point of a RAS point on the view plane of `fit_view_plane`'s matrix."""
    (x, y), *_ = np.linalg.lstsq(matrix[:2].T, np.asarray(ras, dtype=float) - matrix[2], rcond=None)
    return float(x), float(y)


def missed_voxel_ras(reference: sitk.Image, draft: sitk.Image, value: int, matrix: np.ndarray) -> np.ndarray:
    """RAS of the voxel on the view plane deepest inside what segment `value` misses (reference
    says `value`, the draft says background): where a simulated user puts an include click.
    Voxels of another segment are left out: an include click only claims background."""
    missed = (sitk.GetArrayFromImage(reference) == value) & (sitk.GetArrayFromImage(draft) == 0)
    spacing = np.array(draft.GetSpacing())
    depth = ndimage.distance_transform_edt(missed, sampling=spacing[::-1])
    ijk = np.indices(missed.shape).reshape(3, -1)[::-1].T  # (i, j, k) per voxel, in array order
    direction = np.array(draft.GetDirection()).reshape(3, 3)
    ras = (np.array(draft.GetOrigin()) + (ijk * spacing) @ direction.T) * [-1.0, -1.0, 1.0]
    normal = np.cross(matrix[0], matrix[1])
    normal /= np.linalg.norm(normal)
    on_plane = np.abs((ras - matrix[2]) @ normal) <= 0.5 * spacing.min()
    depth = np.where(on_plane, depth.ravel(), 0.0)
    if depth.max() == 0:
        raise AssertionError(f"segment {value} misses no voxel on the view plane")
    return ras[np.argmax(depth)]
