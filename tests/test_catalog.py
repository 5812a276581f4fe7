"""The catalog: packaged sequences, rubric and stock phrases, and user overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from storybench_core import catalog
from storybench_core.errors import CatalogError

SEQUENCE_IDS = ["commercial", "cross_genre", "film", "literary", "thriller"]
CRITERION_IDS = (
    "creativity",
    "coherence",
    "character_depth",
    "dialogue_quality",
    "visual_imagination",
    "conceptual_depth",
    "adaptability",
)
# Wording a later prompt uses to point the model back at its own earlier answers.
BUILDS_ON_EARLIER = re.compile(r"\b(you just|above|you created|you pitched|you outlined|you set up)\b")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STORYBENCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def overrides(home: Path) -> Path:
    folder = home / "catalog"
    (folder / "sequences").mkdir(parents=True)
    return folder


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def sequence_doc(sequence_id: str, **changes: object) -> dict:
    doc = {
        "id": sequence_id,
        "title": "Test sequence",
        "genre": "Test",
        "description": "Two short prompts.",
        "prompts": [
            {"name": "concept", "text": "Pitch a story."},
            {"name": "scene", "text": "Write a scene from the story you just pitched."},
        ],
    }
    doc.update(changes)
    return doc


# --- packaged defaults ----------------------------------------------------------


def test_all_five_sequences_load_sorted_with_three_prompts(home: Path) -> None:
    sequences = catalog.list_sequences()
    assert [s.id for s in sequences] == SEQUENCE_IDS
    for sequence in sequences:
        assert [len(p.text.split()) > 40 for p in sequence.prompts] == [True, True, True], sequence.id
        assert sequence.title and sequence.genre and sequence.description
        assert sequence.prompts[0].name == "concept"


def test_later_prompts_build_on_earlier_answers(home: Path) -> None:
    for sequence in catalog.list_sequences():
        assert not BUILDS_ON_EARLIER.search(sequence.prompts[0].text), sequence.id
        for prompt in sequence.prompts[1:]:
            assert BUILDS_ON_EARLIER.search(prompt.text), f"{sequence.id}/{prompt.name}"


def test_get_sequence_returns_the_packaged_default(home: Path) -> None:
    film = catalog.get_sequence("film")
    assert [p.name for p in film.prompts] == ["concept", "scene", "frame"]
    assert "storyboard panel" in film.prompts[2].text


def test_unknown_sequence_lists_the_available_ids_and_the_override_folder(home: Path) -> None:
    with pytest.raises(CatalogError) as info:
        catalog.get_sequence("western")
    message = str(info.value)
    assert "'western'" in message
    assert ", ".join(SEQUENCE_IDS) in message
    assert str(home / "catalog" / "sequences" / "western.json") in message


def test_rubric_has_the_seven_criteria_with_anchors_for_every_level(home: Path) -> None:
    rubric = catalog.load_rubric()
    assert rubric.id == "storybench-default"
    assert (rubric.version, rubric.scale_min, rubric.scale_max) == (1, 1, 5)
    assert rubric.criterion_ids == CRITERION_IDS
    for criterion in rubric.criteria:
        assert sorted(criterion.anchors) == [1, 2, 3, 4, 5]
        assert len(set(criterion.anchors.values())) == 5, criterion.id
        assert all(len(anchor.split()) >= 8 for anchor in criterion.anchors.values()), criterion.id


def test_rubric_text_names_every_criterion_and_anchor(home: Path) -> None:
    rubric = catalog.load_rubric()
    text = rubric.text()
    assert "from 1 (lowest) to 5 (highest)" in text
    for criterion in rubric.criteria:
        assert f"{criterion.id}: {criterion.name}" in text
        assert f"  5 = {criterion.anchors[5]}" in text
    assert text == catalog.load_rubric().text()


def test_rubric_hash_is_stable_and_follows_the_wording(home: Path) -> None:
    rubric = catalog.load_rubric()
    assert re.fullmatch(r"[0-9a-f]{16}", rubric.rubric_hash)
    assert rubric.rubric_hash == catalog.load_rubric().rubric_hash
    # Round trip through the file layout keeps the hash.
    assert catalog.Rubric.from_file_dict(rubric.to_file_dict()).rubric_hash == rubric.rubric_hash

    first = rubric.criteria[0]
    reworded = first.model_copy(update={"anchors": {**first.anchors, 3: first.anchors[3] + " Mostly."}})
    changed = rubric.model_copy(update={"criteria": (reworded, *rubric.criteria[1:])})
    assert changed.rubric_hash != rubric.rubric_hash
    assert changed.text() != rubric.text()


def test_sequence_hash_follows_prompt_text(home: Path) -> None:
    film = catalog.get_sequence("film")
    assert film.sequence_hash == catalog.get_sequence("film").sequence_hash
    edited = film.model_copy(update={"prompts": (film.prompts[0].model_copy(update={"text": "Other."}),)})
    assert edited.sequence_hash != film.sequence_hash


def test_stock_phrases_skip_comments_and_blanks(home: Path) -> None:
    phrases = catalog.load_stock_phrases()
    assert 30 <= len(phrases) <= 60
    assert "a testament to" in phrases
    assert "in the heart of" in phrases
    assert not any(p.startswith("#") or not p.strip() for p in phrases)
    assert len({p.casefold() for p in phrases}) == len(phrases)


# --- overrides --------------------------------------------------------------------


def test_override_replaces_a_sequence_and_adds_a_new_one(overrides: Path) -> None:
    write_json(overrides / "sequences" / "film.json", sequence_doc("film", title="My film"))
    write_json(overrides / "sequences" / "western.json", sequence_doc("western"))

    ids = [s.id for s in catalog.list_sequences()]
    assert ids == sorted([*SEQUENCE_IDS, "western"])
    assert catalog.get_sequence("film").title == "My film"
    assert len(catalog.get_sequence("western").prompts) == 2

    # Read fresh: removing the override brings the default back.
    (overrides / "sequences" / "film.json").unlink()
    assert catalog.get_sequence("film").title == "Near-future film"


def test_override_replaces_rubric_and_stock_phrases(overrides: Path) -> None:
    default_hash = catalog.load_rubric().rubric_hash
    rubric = {
        "id": "mine",
        "version": 2,
        "scale": {"min": 0, "max": 2},
        "criteria": [
            {
                "id": "pace",
                "name": "Pace",
                "description": "How well the story moves.",
                "anchors": {"0": "Stalls.", "1": "Uneven.", "2": "Flows."},
            }
        ],
    }
    write_json(overrides / "rubric.json", rubric)
    loaded = catalog.load_rubric()
    assert (loaded.id, loaded.scale_min, loaded.scale_max, loaded.criterion_ids) == ("mine", 0, 2, ("pace",))
    assert loaded.rubric_hash != default_hash

    (overrides / "stock_phrases.txt").write_text("# mine\nat the end of the day\n\nAt the end of the day\n")
    assert catalog.load_stock_phrases() == ["at the end of the day"]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (sequence_doc("film", prompts=[]), "prompts: needs at least one prompt"),
        (
            sequence_doc("film", prompts=[{"name": "a", "text": "One."}, {"name": "b", "text": "  "}]),
            "prompts[1].text is empty",
        ),
        (
            sequence_doc("film", prompts=[{"name": "a", "text": "One."}, {"name": "a", "text": "Two."}]),
            "prompts: prompt name 'a' is used more than once",
        ),
        (sequence_doc("film", prompts=[{"name": "a"}]), "prompts[0].text is missing"),
        (sequence_doc("film", promts=[]), "promts is not a known field"),
        (sequence_doc("other"), "id 'other' does not match the file name"),
    ],
)
def test_malformed_sequence_override_names_file_and_field(overrides: Path, doc: dict, expected: str) -> None:
    path = overrides / "sequences" / "film.json"
    write_json(path, doc)
    for load in (catalog.list_sequences, lambda: catalog.get_sequence("film")):
        with pytest.raises(CatalogError) as info:
            load()
        message = str(info.value)
        assert message.startswith("sequences/film.json: ")
        assert expected in message
        assert str(path) in message


def test_broken_override_does_not_block_get_sequence_of_another(overrides: Path) -> None:
    (overrides / "sequences" / "film.json").write_text("{not json")
    assert catalog.get_sequence("literary").id == "literary"
    with pytest.raises(CatalogError, match=r"sequences/film\.json: not valid JSON at line 1, column 2"):
        catalog.list_sequences()


def good_rubric() -> dict:
    return json.loads(json.dumps(catalog.load_rubric().to_file_dict()))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["criteria"][2]["anchors"].pop("5"), "criteria[2].anchors: has levels [1, 2, 3, 4]"),
        (lambda r: r["criteria"][0]["anchors"].update({"6": "Too high."}), "criteria[0].anchors: has levels"),
        (lambda r: r["criteria"][1].update(id="creativity"), "criteria[1].id: 'creativity' is used more"),
        (lambda r: r["criteria"][3]["anchors"].update({"2": ""}), "criteria[3].anchors.2 is empty"),
        (lambda r: r["criteria"][0]["anchors"].update({"x": "?"}), "criteria[0].anchors.x (key)"),
        (lambda r: r["scale"].update(min=5), "scale: min (5) must be smaller than max (5)"),
        (lambda r: r.pop("scale"), "scale is missing"),
        (lambda r: r.update(criteria=[]), "criteria: needs at least one criterion"),
    ],
)
def test_malformed_rubric_override_names_file_and_field(overrides: Path, change, expected: str) -> None:
    rubric = good_rubric()
    change(rubric)
    write_json(overrides / "rubric.json", rubric)
    with pytest.raises(CatalogError) as info:
        catalog.load_rubric()
    message = str(info.value)
    assert message.startswith("rubric.json: ")
    assert expected in message
    assert "Traceback" not in message and "pydantic" not in message


def test_export_catalog_writes_the_defaults_that_then_load_as_overrides(home: Path, tmp_path: Path) -> None:
    written = catalog.export_catalog(home / "catalog")
    names = sorted(p.relative_to(home / "catalog").as_posix() for p in written)
    assert names == sorted(
        [f"sequences/{i}.json" for i in SEQUENCE_IDS] + ["rubric.json", "stock_phrases.txt"]
    )
    default_hash = catalog.Rubric.from_file_dict(good_rubric()).rubric_hash
    assert catalog.load_rubric().rubric_hash == default_hash
    assert [s.id for s in catalog.list_sequences()] == SEQUENCE_IDS

    with pytest.raises(CatalogError, match="already exist"):
        catalog.export_catalog(home / "catalog")
    assert catalog.export_catalog(home / "catalog", overwrite=True) == written
