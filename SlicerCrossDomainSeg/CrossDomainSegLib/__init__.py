"""The Slicer module's Qt-free side: the workflow Logic on an MRML scene (logic.py), MRML <->
SimpleITK conversion (nodes.py) and the trainer panel's control of the background trainer
(trainer.py). The Slicer module (CrossDomainSeg.py) and the web app both drive `logic`."""
