"""Terminology: standard codes and distinct colours for every shipped label, overrides, fallback."""

import itertools
import json

import pytest

from crossdomainseg import terminology
from crossdomainseg.bundle import load_bundle, make_random_bundle, read_metadata, update_bundle, validate_metadata
from crossdomainseg.errors import BundleError, InputError
from crossdomainseg.resources import shipped_bundle

TASK_LABELS = {
    "phantom-ct-mr": ["liver", "kidneys", "spleen", "lesion"],
    "xray-drr": ["lungs", "heart"],
    "brain-t1-t2": ["white_matter", "cortical_grey_matter", "lateral_ventricles", "csf", "thalamus",
                    "caudate", "putamen", "pallidum", "brainstem", "cerebellum"],
}


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_every_task_label_has_a_standard_snomed_code_and_distinct_colour(task):
    terms = terminology.terms_for(TASK_LABELS[task])
    for name, term in terms.items():
        assert term.standard, name
        assert term.category.scheme == term.type.scheme == "SCT", name
        assert term.type.meaning != "Tissue" and term.category.meaning != "Tissue", name
        assert term.type.value.isdigit() and len(term.type.value) <= 16
    for a, b in itertools.combinations(terms, 2):
        distance = terminology.color_distance(terms[a].color, terms[b].color)
        assert distance >= terminology.MIN_COLOR_DISTANCE, (a, b, distance)


def test_known_codes_match_slicer_terminology():
    liver = terminology.term_for("liver")
    assert (liver.category.value, liver.type.value, liver.type.meaning) == ("123037004", "10200004", "Liver")
    kidneys = terminology.term_for("kidneys")
    assert kidneys.type.value == "64033007" and kidneys.modifier.value == "51440002"
    assert terminology.term_for("lesion").category.value == "49755003"
    assert terminology.term_for("brainstem").type.meaning == "Brain stem"


def test_shipped_bundles_colours_come_from_terminology_and_differ():
    bundle = load_bundle(shipped_bundle("phantom-ct-mr"))
    colors = bundle.colors
    assert set(colors) == {"liver", "kidneys", "spleen", "lesion"}
    assert terminology.color_distance(colors["liver"], colors["kidneys"]) >= terminology.MIN_COLOR_DISTANCE
    assert bundle.terminology["kidneys"].type.meaning == "Kidney"


def test_unknown_name_gets_an_honest_local_code_and_an_unused_colour():
    terms = terminology.terms_for({"background": 0, "liver": 1, "my tumour (left)": 2, "x": 3})
    local = terms["my tumour (left)"]
    assert not local.standard
    assert local.type.scheme == terminology.LOCAL_SCHEME and local.type.scheme.startswith("99")
    assert local.type.meaning == "my tumour (left)"
    assert len(local.type.value) <= 16 and local.type.value != terms["x"].type.value
    assert local.category == terminology.ANATOMICAL_STRUCTURE
    assert "background" not in terms
    colours = [t.color for t in terms.values()]
    assert len(set(colours)) == 3
    assert all(terminology.color_distance(a, b) >= terminology.MIN_COLOR_DISTANCE
               for a, b in itertools.combinations(colours, 2))


def test_bundle_colors_key_colours_only_names_the_table_does_not_know():
    colors = terminology.colors_for(["liver", "mine"], colors={"liver": [1, 2, 3], "mine": [9, 8, 7]})
    assert colors == {"liver": list(terminology.TABLE["liver"].color), "mine": [9, 8, 7]}


def test_bundle_terminology_overrides_table_and_survives_json(tmp_path):
    override = {"organ": {"category": ["123037004", "SCT", "Anatomical Structure"],
                          "type": ["71854001", "SCT", "Colon"], "color": [10, 20, 30]}}
    path = make_random_bundle(tmp_path / "b", labels={"background": 0, "organ": 1}).path
    update_bundle(path, metadata={"terminology": override})  # the project's own writer signs it
    bundle = load_bundle(path)
    term = bundle.terminology["organ"]
    assert term.type == terminology.Code("71854001", "SCT", "Colon") and term.color == (10, 20, 30)
    assert bundle.colors == {"organ": [10, 20, 30]}
    assert json.loads(json.dumps(term.to_json())) == {**override["organ"]}


@pytest.mark.parametrize("bad, message", [
    ({"organ": {"type": ["1", "SCT", "x"]}}, "category"),
    ({"organ": {"category": ["1", "SCT"], "type": ["1", "SCT", "x"]}}, "three"),
    ({"organ": {"category": ["1", "SCT", "a"], "type": ["1" * 17, "SCT", "x"]}}, "16"),
    ({"organ": {"category": ["1", "SCT", "a"], "type": ["1", "SCT", "x"], "color": [0, 0, 300]}}, "0-255"),
    ({"organ": {"category": ["1", "SCT", "a"], "type": ["1", "SCT", "x"], "colour": [0, 0, 3]}}, "unknown"),
    ({"spleen": {"category": ["1", "SCT", "a"], "type": ["1", "SCT", "x"]}}, "not foreground"),
])
def test_bad_bundle_terminology_is_refused_with_the_reason(tmp_path, bad, message):
    metadata = read_metadata(make_random_bundle(tmp_path / "b", labels={"background": 0, "organ": 1}).path)
    metadata["terminology"] = bad
    with pytest.raises(BundleError, match=message):
        validate_metadata(metadata)


def test_override_validation_is_an_input_error():
    with pytest.raises(InputError):
        terminology.validate_overrides(["not", "a", "dict"])
