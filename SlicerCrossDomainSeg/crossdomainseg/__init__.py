"""Cross-domain segmentation engine: pure Python, no Slicer and no Qt imports."""

__version__ = "0.1.0"
