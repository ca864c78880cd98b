"""Notices when someone other than the Logic changes a segmentation (Segment Editor strokes, any
effect, a script).

Segment Editor effects change a segment's binary labelmap and fire the segmentation's
SourceRepresentationModified event (vtkSegmentation.h: SegmentModified is not fired when a
representation's content changes); segments added, removed or renamed fire SegmentAdded,
SegmentRemoved, SegmentModified. The watch hears all four, except while the Logic itself writes
(`writing()`), and also compares a fingerprint of the segments' labelmaps (object and
modification time), so an edit made with the events switched off is noticed too. It also tells
a restore by the Segment Editor's Undo/Redo (every segment's labelmap replaced) from a stroke.
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
        self.mark_clean()

    @property
    def edited(self) -> bool:
        """Whether the segmentation changed since the Logic last wrote it (`mark_clean`)."""
        return self._heard or nodes.segment_fingerprint(self.segmentation_node) != self._fingerprint

    @property
    def restored(self) -> bool:
        """Whether every segment's labelmap is another object than at the Logic's last write, as
        after the Segment Editor's Undo or Redo (vtkSegmentationHistory restores deep copies of
        every segment); strokes and scripts change labelmaps in place."""
        now = _labelmaps(self._segmentation)
        kept = [name for name in self._labelmaps if name in now]
        return bool(kept) and all(now[name] is not self._labelmaps[name] for name in kept)

    def mark_clean(self) -> None:
        """The segmentation now holds what the Logic knows of."""
        self._heard = False
        self._fingerprint = nodes.segment_fingerprint(self.segmentation_node)
        # held, so that no new labelmap can take a freed one's address and pass for it
        self._labelmaps = _labelmaps(self._segmentation)

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
        self._tags, self._labelmaps = [], {}

    def _on_event(self, caller, event) -> None:
        if not self._writing:
            self._heard = True


def _labelmaps(segmentation) -> dict:
    """{segment ID: its source representation object} (segments without one left out)."""
    name = segmentation.GetSourceRepresentationName()
    found = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        representation = segmentation.GetSegment(segment_id).GetRepresentation(name)
        if representation is not None:
            found[segment_id] = representation
    return found
