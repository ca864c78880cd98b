"""The include / exclude point lists the user places clicks with, and what happens to their points.

A point placed in a view is a new click; a point dragged elsewhere moves its click; a point
deleted takes its click out. The Logic hears these through three callbacks; points the Logic
itself adds or removes (undo, redo, a new case) are not reported back to it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import vtk

from . import nodes
from .display import find_or_add

INCLUDE_NODE_NAME = "CrossDomainSeg include"
EXCLUDE_NODE_NAME = "CrossDomainSeg exclude"
MOVED_MM = 1e-3  # a point farther than this from its click's position has been moved


class ClickPoints:
    """on_placed(markups_node, index, positive); on_moved(click, ras); on_removed(click), where
    `click` is what `bind` tied to the point (the session's click)."""

    def __init__(self, scene, on_placed: Callable, on_moved: Callable, on_removed: Callable):
        self.scene = scene
        self._on_placed, self._on_moved, self._on_removed = on_placed, on_moved, on_removed
        self._observed: list = []  # the markups nodes heard, include first
        self._observations: list[tuple[object, int]] = []
        self._bound: dict[tuple[str, str], object] = {}  # (node ID, control point ID) -> click
        self._quiet = False
        self._dragging = False

    def nodes(self, create: bool = True):
        """The include and exclude markups nodes (made, styled and observed on first call);
        with create False, only those observed now."""
        if not create:
            return list(self._observed)
        pair = []
        for name, color, positive in ((INCLUDE_NODE_NAME, (0.2, 0.9, 0.2), True),
                                      (EXCLUDE_NODE_NAME, (0.95, 0.2, 0.2), False)):
            node = find_or_add(self.scene, "vtkMRMLMarkupsFiducialNode", name)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            node.GetDisplayNode().SetColor(*color)
            node.SetMarkupLabelFormat("+" if positive else "-")
            if not any(observed.GetID() == node.GetID() for observed in self._observed):
                self._observe(node, positive)
            pair.append(node)
        return tuple(pair)

    def _observe(self, node, positive: bool) -> None:
        handlers = {
            node.PointPositionDefinedEvent: lambda caller, event: self._placed(caller, positive),
            node.PointStartInteractionEvent: lambda caller, event: setattr(self, "_dragging", True),
            node.PointEndInteractionEvent: self._drag_ended,
            node.PointModifiedEvent: lambda caller, event: self._check_moved(caller),
            node.PointRemovedEvent: lambda caller, event: self._check_removed(caller),
        }
        self._observed.append(node)
        for event, handler in handlers.items():
            self._observations.append((node, node.AddObserver(event, handler)))

    def bind(self, markups_node, point_id: str, click) -> None:
        self._bound[(markups_node.GetID(), point_id)] = click

    def rebind(self, old_click, new_click) -> None:
        for key, click in self._bound.items():
            if click is old_click:
                self._bound[key] = new_click

    def remove(self, click) -> None:
        """Delete the point of `click` (the click was undone)."""
        for node_id, point_id in [key for key, c in self._bound.items() if c is click]:
            del self._bound[(node_id, point_id)]
            node = self.scene.GetNodeByID(node_id)
            index = node.GetNthControlPointIndexByID(point_id) if node is not None else -1
            if index >= 0:
                with self._silent():
                    node.RemoveNthControlPoint(index)

    def restore(self, click) -> None:
        """Put back a point for `click` (LPS mm; the click was redone)."""
        node = self.nodes()[0 if click.positive else 1]
        with self._silent():
            index = node.AddControlPoint(vtk.vtkVector3d(*nodes.lps_to_ras(click.point)))
        self.bind(node, node.GetNthControlPointID(index), click)

    def clear(self) -> None:
        """No points and no clicks: a new case starts."""
        self._bound.clear()
        with self._silent():
            for node in self.nodes():
                node.RemoveAllControlPoints()

    def close(self) -> None:
        """Stop hearing the point lists (the scene is closing or the Logic goes away)."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()
        self._observed.clear()
        self._bound.clear()

    @contextmanager
    def _silent(self):
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet

    def _placed(self, node, positive: bool) -> None:
        if not self._quiet:
            self._on_placed(node, node.GetNumberOfControlPoints() - 1, positive)

    def _drag_ended(self, node, event) -> None:
        self._dragging = False
        self._check_moved(node)

    def _check_moved(self, node) -> None:
        if self._quiet or self._dragging:  # a drag reports its end; act once, there
            return
        for (node_id, point_id), click in list(self._bound.items()):
            index = node.GetNthControlPointIndexByID(point_id) if node_id == node.GetID() else -1
            if index < 0:
                continue
            ras = node.GetNthControlPointPositionWorld(index)
            if np.linalg.norm(np.subtract(nodes.ras_to_lps(ras), click.point)) > MOVED_MM:
                self._on_moved(click, tuple(ras))

    def _check_removed(self, node) -> None:
        if self._quiet:
            return
        present = {node.GetNthControlPointID(i) for i in range(node.GetNumberOfControlPoints())}
        for (node_id, point_id), click in list(self._bound.items()):
            if node_id == node.GetID() and point_id not in present:
                del self._bound[(node_id, point_id)]
                self._on_removed(click)
