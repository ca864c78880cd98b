"""Notices when someone other than the Logic changes a segmentation (Segment Editor strokes, any
effect, a script).

Segment Editor effects change a segment's binary labelmap and fire the segmentation's
SourceRepresentationModified event (vtkSegmentation.h: SegmentModified is not fired when a
representation's content changes); segments added, removed or renamed fire SegmentAdded,
SegmentRemoved, SegmentModified. The watch hears all four, except while the Logic itself writes
(`writing()`), and also compares a fingerprint of the segments' labelmaps (object and
modification time), so an edit made with the events switched off is noticed too.
"""

from __future__ import annotations

from contextlib import contextmanager

from . import nodes


class EditWatch:
    def __init__(self, segmentation_node):
        self.segmentation_node = segmentation_node
        self._writing = False
        self._heard = False
        segmentation = segmentation_node.GetSegmentation()
        self._segmentation = segmentation
        self._tags = [segmentation.AddObserver(event, self._on_event)
                      for event in (segmentation.SourceRepresentationModified,
                                    segmentation.SegmentModified, segmentation.SegmentAdded,
                                    segmentation.SegmentRemoved)]
        self._fingerprint = nodes.segment_fingerprint(segmentation_node)

    @property
    def edited(self) -> bool:
        """Whether the segmentation changed since the Logic last wrote it (`mark_clean`)."""
        return self._heard or nodes.segment_fingerprint(self.segmentation_node) != self._fingerprint

    def mark_clean(self) -> None:
        """The segmentation now holds what the Logic knows of."""
        self._heard = False
        self._fingerprint = nodes.segment_fingerprint(self.segmentation_node)

    @contextmanager
    def writing(self):
        """The Logic's own writes inside this block are not hand edits."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            self.mark_clean()

    def close(self) -> None:
        for tag in self._tags:
            self._segmentation.RemoveObserver(tag)
        self._tags = []

    def _on_event(self, caller, event) -> None:
        if not self._writing:
            self._heard = True
