"""Standard codes and display colours for the labels of the project's bundles.

Each label name maps to a DICOM segmentation terminology entry: a category and a type code (SNOMED
CT, "SCT"), an optional type modifier (laterality: a label that holds both sides, such as
"kidneys", is coded "Right and left"), and a display colour. Codes are those of 3D Slicer's
terminology files (Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-
DICOM-Master.json and -SlicerGeneralAnatomy.json), so Slicer, DICOM SEG viewers and PACS show the
segments as the structures they are.

Colours are Slicer's recommended ones where they are distinct within a task; where two labels of
one task would look alike (Slicer's kidney and liver colours are 12.5 CIE76 units apart, its
caudate and pallidum 16) or Slicer gives none (brain stem, cerebellum, lesion), the table's own
colour is chosen so that every pair within a task is at least MIN_COLOR_DISTANCE apart.

A bundle may carry `terminology` in its metadata: {label name: entry}, an entry being
{"category": [value, scheme, meaning], "type": [value, scheme, meaning], "modifier": [...]
(optional), "color": [r, g, b] (optional)}; it overrides the table, so a user's own labels are
coded too (see `validate_overrides`).

A name neither in the table nor in the bundle is not given a code that claims to know what it is:
its category is SCT "Anatomical Structure" (bundles segment anatomy) and its type a local code of
the private coding scheme LOCAL_SCHEME (DICOM PS3.3 8.2: designators starting with "99" are
private), whose meaning is the label's own name. That is valid DICOM and honest: a reader sees
the name, and that the code is not a standard one (`Term.standard` is False).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from .errors import InputError

LOCAL_SCHEME = "99CDS"
MIN_COLOR_DISTANCE = 25.0  # CIE76 units between any two labels of one task


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator, code meaning."""

    value: str
    scheme: str
    meaning: str

    def to_json(self) -> list[str]:
        return [self.value, self.scheme, self.meaning]


@dataclass(frozen=True)
class Term:
    """The terminology of one label: category, type, optional type modifier, colour (0-255 RGB)."""

    category: Code
    type: Code
    modifier: Code | None
    color: tuple[int, int, int]
    standard: bool = True  # False for the local fallback code of an unknown name

    def to_json(self) -> dict:
        entry = {"category": self.category.to_json(), "type": self.type.to_json(),
                 "color": list(self.color)}
        if self.modifier is not None:
            entry["modifier"] = self.modifier.to_json()
        return entry


ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
BOTH_SIDES = Code("51440002", "SCT", "Right and left")


def _anatomy(value: str, meaning: str, color, bilateral: bool = False) -> Term:
    return Term(ANATOMICAL_STRUCTURE, Code(value, "SCT", meaning), BOTH_SIDES if bilateral else None,
                tuple(color))


TABLE: dict[str, Term] = {
    # phantom-ct-mr
    "liver": _anatomy("10200004", "Liver", (221, 130, 101)),
    "kidneys": _anatomy("64033007", "Kidney", (78, 160, 215), bilateral=True),
    "spleen": _anatomy("78961009", "Spleen", (157, 108, 162)),
    "lesion": Term(MORPHOLOGICALLY_ALTERED, Code("52988006", "SCT", "Lesion"), None, (241, 214, 145)),
    # xray-drr
    "lungs": _anatomy("39607008", "Lung", (197, 165, 145), bilateral=True),
    "heart": _anatomy("80891009", "Heart", (206, 110, 84)),
    # brain-t1-t2 (left and right structures are one label each)
    "white_matter": _anatomy("68523003", "Cerebral white matter", (250, 250, 225)),
    "cortical_grey_matter": _anatomy("40146001", "Cerebral cortex", (128, 174, 128)),
    "lateral_ventricles": _anatomy("66720007", "Lateral ventricle", (88, 106, 215), bilateral=True),
    "csf": _anatomy("65216001", "Cerebrospinal fluid", (85, 188, 255)),
    "thalamus": _anatomy("42695009", "Thalamus", (122, 101, 38), bilateral=True),
    "caudate": _anatomy("11000004", "Caudate nucleus", (30, 111, 85), bilateral=True),
    "putamen": _anatomy("89278009", "Putamen", (210, 157, 166), bilateral=True),
    "pallidum": _anatomy("14738005", "Globus pallidus", (220, 90, 210), bilateral=True),
    "brainstem": _anatomy("119238007", "Brain stem", (119, 159, 176)),
    "cerebellum": _anatomy("113305005", "Cerebellum", (220, 216, 20)),
}

# Colours for labels with none of their own, far from the table's and from each other.
_FALLBACK_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                     (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
                     (128, 0, 0), (0, 0, 128), (255, 225, 25), (128, 128, 0)]

_CODE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]{1,16}$")  # DICOM SH, kept to plain characters


def term_for(name: str, overrides: dict | None = None) -> Term:
    """The terminology of label `name`: the bundle's own entry, else the table, else local code."""
    if overrides and name in overrides:
        return _term_from_json(name, overrides[name])
    if name in TABLE:
        return TABLE[name]
    return Term(ANATOMICAL_STRUCTURE, Code(_local_code_value(name), LOCAL_SCHEME, name[:64]), None,
                _FALLBACK_PALETTE[0], standard=False)


def terms_for(labels, overrides: dict | None = None, colors: dict | None = None) -> dict[str, Term]:
    """{name: Term} for every label except background (value 0), in label-value order.

    labels: {name: value} or a list of names. colors: the bundle's plain {name: [r, g, b]}, used
    only for names the table and the overrides do not colour. Labels left without a colour get
    the fallback palette's colour farthest from those already taken.
    """
    names = _names(labels)
    terms = {name: term_for(name, overrides) for name in names}
    given = {name for name in names
             if name in TABLE or (overrides and name in overrides and "color" in overrides[name])}
    for name in names:
        if name not in given and colors and name in colors:
            terms[name] = _with_color(terms[name], colors[name])
            given.add(name)
    taken = [terms[name].color for name in names if name in given]
    for name in names:
        if name not in given:
            color = max(_FALLBACK_PALETTE, key=lambda c: min((color_distance(c, t) for t in taken),
                                                             default=np.inf))
            terms[name] = _with_color(terms[name], color)
            taken.append(color)
    return terms


def colors_for(labels, overrides: dict | None = None, colors: dict | None = None) -> dict:
    """{name: [r, g, b]} (0-255) for the labels, as `terms_for` colours them."""
    return {name: list(term.color) for name, term in terms_for(labels, overrides, colors).items()}


def validate_overrides(overrides, where: str = "terminology") -> dict:
    """Check a bundle's `terminology` object; returns it, or raises InputError saying what is wrong."""
    if not isinstance(overrides, dict):
        raise InputError(f"{where}: must be an object {{label name: entry}}.")
    for name, entry in overrides.items():
        _term_from_json(name, entry, where)
    return overrides


def color_distance(a, b) -> float:
    """CIE76 distance between two sRGB colours (0-255)."""
    return float(np.linalg.norm(np.asarray(rgb_to_lab(a)) - np.asarray(rgb_to_lab(b))))


def rgb_to_lab(rgb) -> tuple[float, float, float]:
    """sRGB (0-255) -> CIELab (D65 white)."""
    rgb = np.asarray(rgb, dtype=float) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return (float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2])))


def _names(labels) -> list[str]:
    if isinstance(labels, dict):
        return [name for name, value in sorted(labels.items(), key=lambda kv: int(kv[1]))
                if int(value) != 0]
    return list(labels)


def _with_color(term: Term, color) -> Term:
    return Term(term.category, term.type, term.modifier, _rgb255(color, term.type.meaning),
                term.standard)


def _local_code_value(name: str) -> str:
    if _CODE_VALUE.match(name):
        return name
    return "L" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:15]


def _term_from_json(name: str, entry, where: str = "terminology") -> Term:
    place = f"{where}[{name!r}]"
    if not isinstance(entry, dict) or "category" not in entry or "type" not in entry:
        raise InputError(f"{place}: needs \"category\" and \"type\", each [code value, coding "
                         "scheme, code meaning].")
    unknown = set(entry) - {"category", "type", "modifier", "color"}
    if unknown:
        raise InputError(f"{place}: unknown key(s) {sorted(unknown)}.")
    codes = {key: _code_from_json(entry[key], f"{place}.{key}")
             for key in ("category", "type", "modifier") if key in entry}
    if "color" in entry:
        color = _rgb255(entry["color"], place)
    else:  # the table's colour, or one that terms_for replaces from the fallback palette
        color = TABLE[name].color if name in TABLE else _FALLBACK_PALETTE[0]
    return Term(codes["category"], codes["type"], codes.get("modifier"), color)


def _code_from_json(item, place: str) -> Code:
    if (not isinstance(item, (list, tuple)) or len(item) != 3
            or not all(isinstance(part, str) and part.strip() for part in item)):
        raise InputError(f"{place}: must be [code value, coding scheme, code meaning] (three "
                         "non-empty strings), e.g. [\"10200004\", \"SCT\", \"Liver\"].")
    value, scheme, meaning = item
    if len(value) > 16 or len(scheme) > 16 or len(meaning) > 64 or "\\" in "".join(item):
        raise InputError(f"{place}: DICOM allows a code value and scheme of at most 16 characters "
                         "and a meaning of at most 64, without backslashes.")
    return Code(value, scheme, meaning)


def _rgb255(color, place: str) -> tuple[int, int, int]:
    rgb = np.asarray(color, dtype=float)
    if rgb.shape != (3,) or not np.all(np.isfinite(rgb)) or rgb.min() < 0 or rgb.max() > 255:
        raise InputError(f"{place}: a colour is [r, g, b] with values 0-255.")
    return tuple(int(round(c)) for c in rgb)
