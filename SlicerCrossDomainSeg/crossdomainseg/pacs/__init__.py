"""PACS over DICOMweb: list, pull and push series (client), a local Orthanc (orthanc), the
`crossdomainseg pacs` command (cli) and the pull-segment-push round trip (roundtrip)."""
