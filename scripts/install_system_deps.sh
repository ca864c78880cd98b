#!/usr/bin/env bash
# Debian packages the DICOM and PACS features and their tests use: dicom3tools (dciodvfy, the
# standard's IOD checker), orthanc with its DICOMweb plugin (the PACS of the tests and the demo).
# Needs root or passwordless sudo; apt-get update runs only when something is missing.
set -euo pipefail
missing=()
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v Orthanc >/dev/null || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
# policy-rc.d may refuse to start the packaged Orthanc service; the tests start their own.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
