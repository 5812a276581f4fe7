"""Vote: pick the better of two anonymised responses to the same brief; the models are named after the vote."""

from __future__ import annotations

import streamlit as st

from storybench_core import votes
from storybench_core.store.base import Doc
from storybench_core.text_safety import safe_inline, safe_markdown
from storybench_core.views import run as run_view
from ui import auth, services, widgets

PAGE = "vote"
KEYS = {
    "voter": f"{PAGE}.voter",
    "name": f"{PAGE}.name",
    "evaluation": f"{PAGE}.evaluation",
    "pair": f"{PAGE}.pair",
    "reveal": f"{PAGE}.reveal",
    "note": f"{PAGE}.note",
}


@st.cache_data(ttl=10.0, show_spinner=False)
def votable(location: str) -> list[Doc]:
    return votes.votable_evaluations(services.store())


def set_name() -> None:
    st.session_state[KEYS["voter"]] = votes.clean_voter(st.session_state.get(KEYS["name"], ""))


def forget_name() -> None:
    for key in ("voter", "pair", "reveal"):
        st.session_state.pop(KEYS[key], None)


def cast(choice: str, voter: str) -> None:
    pair = st.session_state[KEYS["pair"]]
    note = st.session_state.get(KEYS["note"], "")
    result = votes.record_vote(store, principal, pair, choice, note, typed_name=voter)
    st.session_state[KEYS["reveal"]] = votes.reveal(store, pair, voter)
    if not result.stored:
        widgets.flash(
            PAGE, "warning", "You had already voted on this pair (another tab?); your first vote counts."
        )


def next_pair() -> None:
    for key in ("pair", "reveal", "note"):
        st.session_state.pop(KEYS[key], None)


st.title("Vote")
store = widgets.require_store()
widgets.show_flash(PAGE)
principal = auth.principal()

# --- who is voting: a signed-in person votes as themselves; a local install asks for a name ----
voter = votes.voter_id(principal, st.session_state.get(KEYS["voter"]))
if not voter:
    st.markdown(
        "Two responses to the same brief, without model names. Pick the better one; the models are shown after."
    )
    with st.form(f"{PAGE}.name_form"):
        st.text_input(
            "Your name",
            key=KEYS["name"],
            help="Stored with each of your votes, so you never see a pair twice.",
        )
        st.form_submit_button(
            "Start voting", on_click=widgets.run_action, args=(PAGE, "setting your name", set_name)
        )
    st.stop()
who, change = st.columns([4, 1])
who.caption(f"Voting as **{voter}**")
if principal.source == "local":
    change.button("Change name", key=f"{PAGE}.change", on_click=forget_name)

# --- which evaluation -------------------------------------------------------------------------
evaluations = votable(services.store_location())
if not evaluations:
    st.info(
        "Nothing to vote on yet: voting needs an evaluation where at least two models answered the same brief."
    )
    st.stop()
labels = {d["id"]: run_view.evaluation_label(d) for d in evaluations}
if KEYS["evaluation"] not in st.session_state and st.query_params.get("evaluation") in labels:
    st.session_state[KEYS["evaluation"]] = st.query_params["evaluation"]
evaluation_id = st.selectbox("Evaluation", list(labels), key=KEYS["evaluation"], format_func=labels.get)
st.query_params["evaluation"] = evaluation_id

progress = votes.voting_progress(store, evaluation_id, voter)
pairs, mine, everyone = st.columns(3)
pairs.metric("Pairs", progress["pairs"])
mine.metric("Your votes", progress["mine"])
everyone.metric("All votes", progress["votes"], help=f"from {progress['voters']} voter(s)")

# --- the pair ---------------------------------------------------------------------------------
pair = st.session_state.get(KEYS["pair"])
if pair is None or pair.scope != evaluation_id:
    st.session_state.pop(KEYS["reveal"], None)
    pair = votes.next_pair_for(store, evaluation_id, voter)
    st.session_state[KEYS["pair"]] = pair
if pair is None:
    st.success("You have voted on every pair of this evaluation. Thank you!")
    st.stop()

st.subheader(safe_inline(f"{pair.sequence} · run {pair.run} · turn {pair.turn}: {pair.prompt_name}"))
if pair.briefs_before:
    with st.expander(f"The conversation so far ({len(pair.briefs_before)} earlier brief(s))"):
        for n, brief in enumerate(pair.briefs_before, start=1):
            st.markdown(f"**Turn {n}.** {brief}")
st.markdown("**The brief**")
st.info(pair.prompt_text, icon=":material/edit_note:")

reveal = st.session_state.get(KEYS["reveal"])
names = (reveal.model_a, reveal.model_b) if reveal else ("", "")
for column, side, text, earlier, name in zip(
    st.columns(2),
    ("A", "B"),
    (pair.text_a, pair.text_b),
    (pair.earlier_a, pair.earlier_b),
    names,
    strict=True,
):
    with column:
        st.markdown(f"### Response {side}" + (f" · {safe_inline(name)}" if name else ""))
        with st.container(border=True):
            # Model output: Markdown without images, links, HTML or directives (text_safety.py).
            st.markdown(safe_markdown(text) or "_(empty response)_")
        if earlier:
            with st.expander(f"{side}'s earlier answers in this conversation"):
                for n, answer in enumerate(earlier, start=1):
                    st.markdown(f"**Turn {n}.** {safe_markdown(answer)}")

if reveal is None:
    st.text_input("Note (optional)", key=KEYS["note"], placeholder="What decided it for you?")
    a, tie, b = st.columns(3)
    for column, choice, label in ((a, "A", "A is better"), (tie, "tie", "Tie"), (b, "B", "B is better")):
        column.button(
            label,
            key=f"{PAGE}.choose.{choice}",
            width="stretch",
            on_click=widgets.run_action,
            args=(PAGE, "storing your vote", cast, choice, voter),
        )
else:
    picked = {"A": "Response A", "B": "Response B", "tie": "a tie"}[reveal.choice]
    st.success(
        f"You chose {picked}. A was **{safe_inline(reveal.model_a)}**, B was **{safe_inline(reveal.model_b)}**."
    )
    st.button(
        "Next pair", key=f"{PAGE}.next", type="primary", icon=":material/arrow_forward:", on_click=next_pair
    )
