"""Team votes: blind pairs, no repeats per voter, concurrent voters, least-certain pairs first, ratings."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from test_pairwise import JUDGE, fake_pool, make_evaluation, quality_judge

from storybench_core import audit, pairwise, votes
from storybench_core.access import LOCAL_ADMIN, Principal
from storybench_core.errors import PermissionDenied, StorybenchError
from storybench_core.store.sqlite import SQLiteStore

MODELS = {"xq-weak": 1, "xq-strong": 3}


def person(name: str, role: str = "viewer") -> Principal:
    """A signed-in voter: the vote is tied to this identity."""
    return Principal(id=name, name=name.title(), role=role, source="oidc")  # type: ignore[arg-type]


@pytest.fixture
def store(storybench_home):
    s = SQLiteStore(storybench_home / "storybench.db")
    yield s
    s.close()


def test_a_pair_shows_texts_but_no_model_until_the_vote(store):
    eid = make_evaluation(store, MODELS, runs=1)
    view = votes.next_pair_for(store, eid, "ada")
    assert view is not None and view.text_a.startswith("quality") and view.text_b.startswith("quality")
    assert view.prompt_text and view.turn == view.prompt_index + 1
    assert len(view.briefs_before) == view.prompt_index == len(view.earlier_a) == len(view.earlier_b)
    shown = repr(view) + " ".join(str(v) for v in dataclasses.asdict(view).values())
    assert "xq-" not in shown
    with pytest.raises(StorybenchError, match="after your vote"):
        votes.reveal(store, view, "ada")

    result = votes.record_vote(store, person("ada"), view, "A", "  the first one sings ")
    assert result.stored and result.vote["note"] == "the first one sings"
    revealed = votes.reveal(store, view, "ada")
    assert {revealed.model_a, revealed.model_b} == set(MODELS)
    assert revealed.choice == "A" and revealed.winner == revealed.model_a
    text_of = {"xq-weak": "quality 1", "xq-strong": "quality 3"}
    assert view.text_a.startswith(text_of[revealed.model_a])  # the reveal matches what was shown


def test_a_voter_never_sees_the_same_pair_twice_even_in_a_new_session(store):
    eid = make_evaluation(store, {"m1": 1, "m2": 2, "m3": 3}, runs=1)
    total = len(pairwise.pairs_for(store, eid))
    seen = []
    for i in range(total):
        view = votes.next_pair_for(store, eid, "bo")
        assert view is not None and view.pair_key not in seen
        seen.append(view.pair_key)
        votes.record_vote(store, person("bo"), view, ["A", "B", "tie"][i % 3])
    assert votes.next_pair_for(store, eid, "bo") is None
    # A later session (a fresh store connection) remembers too; another voter still has every pair.
    again = SQLiteStore(store.path)
    assert votes.next_pair_for(again, eid, " bo ") is None
    assert votes.next_pair_for(again, eid, "cy") is not None
    again.close()
    progress = votes.voting_progress(store, eid, "bo")
    assert progress == {"pairs": total, "votes": total, "voters": 1, "mine": total}


def test_a_double_submit_stores_one_vote(store):
    eid = make_evaluation(store, MODELS, runs=1)
    view = votes.next_pair_for(store, eid, "dee")
    first = votes.record_vote(store, person("dee"), view, "B")
    second = votes.record_vote(store, person("dee"), view, "A")
    assert first.stored and not second.stored and second.vote["choice"] == "B"
    assert len(store.list_votes(eid)) == 1


def test_concurrent_voters_store_one_vote_each_without_collision(store):
    eid = make_evaluation(store, MODELS, runs=1)
    views = {name: votes.next_pair_for(store, eid, name) for name in ("eve", "fay")}
    views["eve-again"] = views["eve"]
    barrier = threading.Barrier(3)
    results: dict[str, votes.VoteResult] = {}
    errors: list[BaseException] = []

    def vote(name: str) -> None:
        try:
            barrier.wait()
            voter = name.removesuffix("-again")
            results[name] = votes.record_vote(store, person(voter), views[name], "A")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=vote, args=(n,)) for n in views]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = store.list_votes(eid)
    assert sorted(v["voter"] for v in stored) == ["eve", "fay"]
    assert results["fay"].stored and [results["eve"].stored, results["eve-again"].stored].count(True) == 1


def test_least_certain_pairs_come_first(store):
    eid = make_evaluation(store, {"m1": 1, "m2": 3, "m3": 3}, runs=1)
    pool, _ = fake_pool(quality_judge)
    pairwise.compare_judge_evaluation(store, eid, JUDGE, pool, budget=100, event=lambda *a, **k: None)
    # m2 and m3 write equally well: the judge calls their pairs ties, so those are offered first.
    responses = pairwise.load_responses(store, eid)
    models = {}
    for _ in range(3):
        view = votes.next_pair_for(store, eid, "gus")
        models[view.pair_key] = {
            responses[view.response_a]["model_name"],
            responses[view.response_b]["model_name"],
        }
        votes.record_vote(store, person("gus"), view, "tie")
    assert all(m == {"m2", "m3"} for m in models.values())
    pairs = pairwise.pairs_for(store, eid)
    openness = votes.uncertainty(pairs, pairwise.all_outcomes(store, eid), store.list_votes(eid))
    by_models = {}
    for p in pairs:
        by_models.setdefault(p.models, []).append(openness[p.pair_key])
    assert max(by_models[("m1", "m2")]) < min(by_models[("m2", "m3")])


def test_shown_order_is_balanced_across_voters_and_pairs():
    orders = [votes.shown_order(f"voter-{i}", "pair") for i in range(200)]
    assert 60 < orders.count("12") < 140


def test_votes_feed_the_ratings_as_the_human_judge(store):
    eid = make_evaluation(store, MODELS, runs=2)
    pool, _ = fake_pool(quality_judge)
    pairwise.compare_judge_evaluation(store, eid, JUDGE, pool, budget=100, event=lambda *a, **k: None)
    for voter in ("hal", "ida"):
        while (view := votes.next_pair_for(store, eid, voter)) is not None:
            model_a = store.get_response(view.response_a)["model_name"]
            votes.record_vote(store, person(voter), view, "A" if model_a == "xq-strong" else "B")
    outcomes = pairwise.all_outcomes(store, eid)
    human = outcomes[outcomes["judge"] == pairwise.HUMAN]
    # Outcomes use the canonical orientation (model_a = "xq-strong", the first by name).
    assert len(human) == 2 * 6 and (human["model_a"] == "xq-strong").all() and (human["score_a"] == 1.0).all()
    report = pairwise.pairwise_report(store, eid, n_boot=100)
    assert set(report.ratings) == {"fake-judge", pairwise.HUMAN}
    assert list(report.ratings[pairwise.HUMAN]["model"]) == ["xq-strong", "xq-weak"]
    agreement = report.human_agreement.set_index("judge")
    judged = (outcomes["judge"] == "fake-judge").sum()  # the judge stopped once the two separated
    assert 0 < judged <= 6 and agreement.loc["fake-judge", "n_pairs"] == judged
    assert agreement.loc["fake-judge", "agree_pct"] == 100.0
    assert report.position_bias.loc[0, "judge"] == "fake-judge"


def test_bad_input_is_refused(store):
    eid = make_evaluation(store, MODELS, runs=1)
    view = votes.next_pair_for(store, eid, "jo")
    with pytest.raises(StorybenchError, match="voter's name"):
        votes.next_pair_for(store, eid, "   ")
    with pytest.raises(StorybenchError, match="A, B or tie"):
        votes.record_vote(store, person("jo"), view, "C")
    assert votes.votable_evaluations(store)[0]["id"] == eid
    lonely = make_evaluation(store, {"solo": 1}, runs=1)
    assert lonely not in [e["id"] for e in votes.votable_evaluations(store)]
    assert votes.next_pair_for(store, lonely, "jo") is None


def test_a_signed_in_vote_is_tied_to_the_identity_and_audited(store):
    eid = make_evaluation(store, MODELS, runs=1)
    ana = Principal(id="ana@example.com", name="Ana", role="viewer", source="oidc")
    view = votes.next_pair_for(store, eid, votes.voter_id(ana, "somebody else"))
    result = votes.record_vote(store, ana, view, "A", typed_name="somebody else")
    assert result.stored and result.vote["voter"] == "ana@example.com" and result.vote["voter_name"] == "Ana"
    # The same person under another typed name is still the same voter: no second vote.
    again = votes.record_vote(store, ana, view, "B", typed_name="ana's alias")
    assert not again.stored and len(store.list_votes(eid)) == 1
    [entry] = audit.entries(store, action="vote")
    assert (entry.actor, entry.target, entry.details["pair_key"]) == ("ana@example.com", eid, view.pair_key)
    assert "choice" not in entry.details  # the audit trail does not reveal a blind vote


def test_a_local_install_names_voters_by_the_typed_name(store):
    eid = make_evaluation(store, MODELS, runs=1)
    assert votes.voter_id(LOCAL_ADMIN, "  ") is None
    view = votes.next_pair_for(store, eid, "kim")
    with pytest.raises(StorybenchError, match="voter's name"):
        votes.record_vote(store, LOCAL_ADMIN, view, "A")
    result = votes.record_vote(store, LOCAL_ADMIN, view, "A", typed_name=" kim ")
    assert result.vote["voter"] == "kim"
    assert audit.entries(store, action="vote")[0].actor == "local"


def test_a_vote_needs_at_least_the_viewer_role(store):
    eid = make_evaluation(store, MODELS, runs=1)
    view = votes.next_pair_for(store, eid, "lu")
    with pytest.raises(PermissionDenied, match="vote"):
        votes.record_vote(store, person("lu", role="nobody"), view, "A")
    assert store.list_votes(eid) == [] and audit.entries(store, action="vote") == []
