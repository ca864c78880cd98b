"""Sign bundles whose metadata.json a maintainer changed on purpose (or that a version before
`metadata_sha256` wrote): validates each bundle and its weight checksums, then records the digest.

    .venv/bin/python scripts/sign_bundles.py [BUNDLE ...]    (default: every shipped bundle)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"))

from crossdomainseg.bundle import sign_bundle  # noqa: E402
from crossdomainseg.resources import shipped_bundles  # noqa: E402


def main(paths: list[str]) -> int:
    for path in paths or [str(p) for p in shipped_bundles().values()]:
        print(f"signed {sign_bundle(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
