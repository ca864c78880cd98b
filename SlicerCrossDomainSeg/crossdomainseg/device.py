"""Where networks run: CUDA when present, else CPU with a bounded number of threads."""

import os

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads (env CROSSDOMAINSEG_THREADS, else all cores) and SimpleITK's
    (its resampling otherwise takes every core, e.g. from a background trainer); returns it."""
    import SimpleITK as sitk

    if threads is None:
        threads = int(os.environ.get("CROSSDOMAINSEG_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(threads)))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(torch.get_num_threads())
    return torch.get_num_threads()
