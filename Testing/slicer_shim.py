"""Slicer without its application, for tests: the slicer-core wheel's real MRML scene and module
logics, plus stand-ins for the few Qt-bound pieces the wheel lacks (slicer.app's scene and module
registry, ScriptedLoadableModule base classes, parameterNodeWrapper) so the module file imports.

Nothing here imitates MRML: scene, nodes, storage and module logics are Slicer's own.
"""

import sys
import types
import unittest
from dataclasses import dataclass

import slicer


@dataclass
class HeadlessSlicer:
    scene: object
    app_logic: object
    colors: object
    volumes: object
    segmentations: object
    markups: object


def headless_slicer(views=("Red", "Yellow", "Green")) -> HeadlessSlicer:
    """A scene with the Colors, Volumes, Segmentations and Markups logics registered, and the
    slice view nodes (slice + composite node per view) that Slicer's layout would create."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    made = {}
    for name, cls in (("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)  # before the scene: Colors needs it to load tables
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        made[name.lower()] = logic
    for view in views:
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode", view)
        slice_node.SetLayoutName(view)
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", f"SliceComposite{view}")
        composite.SetLayoutName(view)
    return HeadlessSlicer(scene, app_logic, made["colors"], made["volumes"], made["segmentations"],
                          made["markups"])


def install_module_stand_ins(app: HeadlessSlicer, monkeypatch) -> None:
    """Make `import CrossDomainSeg` work without Qt: `slicer.mrmlScene`, `slicer.modules`, and
    minimal `qt`, `ctk`, `slicer.ScriptedLoadableModule` and `slicer.parameterNodeWrapper`.
    Everything is undone by pytest's `monkeypatch` when the test ends."""
    monkeypatch.setattr(slicer, "mrmlScene", app.scene, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: app.segmentations),
        volumes=types.SimpleNamespace(logic=lambda: app.volumes),
        markups=types.SimpleNamespace(logic=lambda: app.markups),
        colors=types.SimpleNamespace(logic=lambda: app.colors),
    ), raising=False)
    for name in ("qt", "ctk"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(type(self).__name__, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
                node.SetSingletonTag(type(self).__name__)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)

    pnw = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        """Typed attributes stored as strings / node references on the wrapped node."""
        fields = dict(getattr(cls, "__annotations__", {}))
        defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)

        def __getattr__(self, name):
            if name not in fields:
                raise AttributeError(name)
            node = self.parameterNode
            kind = fields[name]
            if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if not text:
                return defaults.get(name)
            return (text == "True") if kind is bool else kind(text)

        def __setattr__(self, name, value):
            if name not in fields:
                raise AttributeError(name)
            kind = fields[name]
            if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value else None)
            else:
                self.parameterNode.SetParameter(name, str(value))

        return type(cls.__name__, (), {"__init__": __init__, "__getattr__": __getattr__,
                                       "__setattr__": __setattr__, "__doc__": cls.__doc__,
                                       "fields": fields})

    pnw.parameterNodeWrapper = parameterNodeWrapper
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", pnw, raising=False)
