"""Results: every stored response across evaluations, filtered, read in full, and charted per model."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from storybench_core.views import results as results_view
from storybench_core.views import run as run_view
from ui import services, widgets

PAGE = "results"
JUDGE_PENDING = (
    "Scores, the leaderboard and side-by-side comparison arrive with the judge. "
    "The responses, charts and export below already cover local and API models together."
)

st.title("Results")
widgets.require_store()

evaluations = services.evaluations()
frame = results_view.responses_frame(services.responses())
if frame.empty:
    st.info("No responses stored yet. Queue a run on **Configure** and watch it on **Run**.")
    st.page_link("app_pages/configure.py", label="Open Configure", icon=":material/tune:")
    st.stop()

# --- filters, mirrored in the URL so a view can be shared -------------------------------
KEYS = {
    "evaluation": f"{PAGE}.evaluation",
    "models": f"{PAGE}.models",
    "sequences": f"{PAGE}.sequences",
    "prompts": f"{PAGE}.prompts",
    "runs": f"{PAGE}.runs",
}
if KEYS["evaluation"] not in st.session_state:
    shared = results_view.filters_from_query({k: st.query_params.get_all(k) for k in st.query_params})
    shared = results_view.sanitize_filters(shared, results_view.filter_options(frame, shared.evaluation_id))
    st.session_state[KEYS["evaluation"]] = shared.evaluation_id
    for name in ("models", "sequences", "prompts", "runs"):
        st.session_state[KEYS[name]] = list(getattr(shared, name))

labels = {d["id"]: run_view.evaluation_label(d) for d in evaluations}
all_options = results_view.filter_options(frame)
if st.session_state.get(KEYS["evaluation"]) not in all_options.evaluations:
    st.session_state[KEYS["evaluation"]] = None
pick_eval, pick_model, pick_seq, pick_prompt, pick_run = st.columns([3, 3, 2, 1, 1])
evaluation_id = pick_eval.selectbox(
    "Evaluation",
    all_options.evaluations,
    key=KEYS["evaluation"],
    index=None,
    placeholder="All evaluations",
    format_func=lambda eid: labels.get(eid, eid),
)
options = results_view.filter_options(frame, evaluation_id)
for name, values in (
    ("models", options.models),
    ("sequences", options.sequences),
    ("prompts", options.prompts),
    ("runs", options.runs),
):
    # A choice made under another evaluation may not exist here; drop it before drawing the widget.
    st.session_state[KEYS[name]] = [v for v in st.session_state.get(KEYS[name], []) if v in values]
filters = results_view.ResponseFilters(
    evaluation_id=evaluation_id,
    models=tuple(
        pick_model.multiselect("Model", options.models, key=KEYS["models"], placeholder="All models")
    ),
    sequences=tuple(
        pick_seq.multiselect("Sequence", options.sequences, key=KEYS["sequences"], placeholder="All")
    ),
    prompts=tuple(pick_prompt.multiselect("Prompt", options.prompts, key=KEYS["prompts"], placeholder="All")),
    runs=tuple(pick_run.multiselect("Run", options.runs, key=KEYS["runs"], placeholder="All")),
)
query = results_view.filters_to_query(filters)
if {k: st.query_params.get_all(k) for k in st.query_params} != query:
    st.query_params.from_dict(query)

shown = results_view.apply_filters(frame, filters)
count, models, failed = st.columns(3)
count.metric("Responses", len(shown))
models.metric("Models", shown["model"].nunique())
failed.metric("Failed", int((shown["error"] != "").sum()))

responses_tab, charts_tab, leaderboard_tab, compare_tab, export_tab = st.tabs(
    ["Responses", "Charts", "Leaderboard", "Compare", "Export"]
)

with responses_tab:
    st.dataframe(
        shown[results_view.TABLE_COLUMNS],
        hide_index=True,
        column_config={
            "generation_time_s": st.column_config.NumberColumn("time (s)", format="%.2f"),
            "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.1f"),
            "completion_tokens": st.column_config.NumberColumn("tokens"),
            "preview": st.column_config.TextColumn("response", width="large"),
        },
    )
    rows = {row["id"]: results_view.response_label(row) for row in shown.to_dict("records")}
    chosen = st.selectbox(
        "Read a response",
        list(rows),
        key=f"{PAGE}.response",
        index=None,
        format_func=rows.get,
        placeholder="Choose a response to read it in full",
    )
    doc = services.response(chosen) if chosen else None
    if doc is not None:
        detail = results_view.response_detail(doc)
        st.subheader(detail.title)
        prompt_col, answer_col = st.columns(2)
        with prompt_col:
            st.markdown("**Prompt**")
            with st.container(border=True):
                st.text(detail.prompt_text)
        with answer_col:
            st.markdown("**Response**")
            with st.container(border=True):
                if detail.error:
                    st.error(detail.error, icon=":material/error:")
                st.text(detail.response_text or "(empty)")
        with st.expander(f"Conversation the model saw ({len(detail.conversation)} messages)"):
            for message in detail.conversation:
                with st.chat_message(message["role"] if message["role"] in ("user", "assistant") else "ai"):
                    st.caption(message["role"])
                    st.text(message["content"])
        st.caption(detail.facts_line)

with charts_tab:
    points = results_view.chart_frame(shown)
    if points.empty:
        st.info("No successful responses match the filters.")
    else:
        st.dataframe(results_view.model_summary(shown), hide_index=True)
        for column, title in results_view.CHART_METRICS:
            figure = px.box(points, x="model", y=column, color="source", points="all", title=title)
            figure.update_layout(xaxis_title=None, yaxis_title=title, legend_title_text="source")
            st.plotly_chart(figure, key=f"{PAGE}.chart.{column}")

with leaderboard_tab:
    # Slot for results.py (judge issue): leaderboard per model and per criterion.
    st.info(JUDGE_PENDING, icon=":material/hourglass_top:")

with compare_tab:
    # Slot for results.py (judge issue): side-by-side compare of two models' responses.
    st.info(JUDGE_PENDING, icon=":material/hourglass_top:")

with export_tab:
    st.download_button(
        "Download the filtered responses (CSV)",
        data=results_view.csv_bytes(shown),
        file_name="storybench-responses.csv",
        mime="text/csv",
        icon=":material/download:",
        key=f"{PAGE}.export.csv",
        on_click="ignore",
    )
    st.caption("Full text included. Scores and leaderboard exports arrive with the judge.")
