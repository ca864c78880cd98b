"""Browser front end of SlicerCrossDomainSeg on Slicer's MRML core (trame-slicer).

Shares the Slicer module's Logic (CrossDomainSegLib.logic); run with `crossdomainseg web` or
`python -m CrossDomainSegWeb`.
"""
