"""The Vote page under AppTest: a name asked once, blind pairs, reveal after the vote, two sessions at once."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest
from test_pairwise import make_evaluation

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "vote.py")
MODELS = {"xq-weak": 1, "xq-strong": 3}


def session(name: str) -> AppTest:
    """A new browser session on the Vote page, signed in by typing a name."""
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="vote.name").input(name)
    at.button[0].click()  # the form's "Start voting"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page_text(at: AppTest) -> str:
    parts = [str(e.value) for e in (*at.markdown, *at.info, *at.success, *at.subheader, *at.caption)]
    return " ".join(parts)


def click(at: AppTest, label: str) -> None:
    found = [b for b in at.button if b.label == label]
    assert found, [b.label for b in at.button]
    found[0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_empty_store_says_what_voting_needs(store, ui):
    at = session("ann")
    assert any("at least two models" in str(i.value) for i in at.info)


def test_two_sessions_vote_on_the_same_pair_and_store_two_votes(store, ui):
    eid = make_evaluation(store, MODELS, runs=1)
    ann, ben = session("ann"), session("ben")
    for at in (ann, ben):
        text = page_text(at)
        assert "Voting as" in text and "Response A" in text and "Response B" in text
        assert "xq-" not in text  # no model name before the vote
        assert "quality" in text  # the two texts are shown
    # Both sessions hold a pair before either votes; then both vote.
    ann.text_input(key="vote.note").input("the ending lands")
    click(ann, "A is better")
    click(ben, "Tie")
    for at, choice in ((ann, "Response A"), (ben, "a tie")):
        success = " ".join(str(s.value) for s in at.success)
        assert f"You chose {choice}" in success and "xq-weak" in success and "xq-strong" in success
    stored = store.list_votes(eid)
    assert sorted(v["voter"] for v in stored) == ["ann", "ben"]
    assert {v["choice"] for v in stored} == {"A", "tie"}
    assert next(v for v in stored if v["voter"] == "ann")["note"] == "the ending lands"

    # Next pair: never the one already voted on, until none is left.
    seen = {v["pair_key"] for v in stored if v["voter"] == "ann"}
    click(ann, "Next pair")
    while not any("every pair" in str(s.value) for s in ann.success):
        pair = ann.session_state["vote.pair"]
        assert pair.pair_key not in seen
        seen.add(pair.pair_key)
        click(ann, "B is better")
        click(ann, "Next pair")
    assert len(seen) == 3  # one run × three prompts, one model pair
    assert len(store.list_votes(eid, voter="ann")) == 3


def test_the_name_is_asked_once_and_can_be_changed(store, ui):
    make_evaluation(store, MODELS, runs=1)
    at = session("cy")
    at.run()  # a rerun keeps the name
    assert "Voting as **cy**" in page_text(at)
    click(at, "Change name")
    assert at.text_input(key="vote.name") is not None and "Voting as" not in page_text(at)
    at.text_input(key="vote.name").input("   ")
    at.button[0].click()
    at.run()
    assert any("voter's name" in str(e.value) for e in at.error)


def test_model_output_cannot_load_images_links_or_fake_ui(store, ui):
    eid = make_evaluation(store, MODELS, runs=1)
    hostile = (
        "quality 1 ![pixel](https://tracker.example/p.png) [prize](https://evil.example) "
        "<img src=https://tracker.example/i.png> :red[SYSTEM: vote B] :material/verified: www.evil.example"
    )
    for doc in store.list_responses(eid, model_name="xq-weak"):
        store.upsert_response(doc | {"response": hostile})
    at = session("dee")
    shown = " ".join(str(m.value) for m in at.markdown)
    assert "prize" in shown and "pixel" in shown  # the words are still there
    for active in ("](", "![", "<img", "https://", ":red[", ":material/", "www."):
        assert active not in shown, active
