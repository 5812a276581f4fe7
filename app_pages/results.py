"""Results: stored responses filtered, read in full and charted; one evaluation's scores, ratings,
side-by-side compare and exports, and "Judge now" for what is not judged yet."""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

from storybench_core import access, archive, job_kinds, jobs, ratings, results
from storybench_core.store.base import Doc
from storybench_core.text_safety import safe_inline, safe_markdown
from storybench_core.views import compare as compare_view
from storybench_core.views import reliability as reliability_view
from storybench_core.views import results as results_view
from storybench_core.views import run as run_view
from storybench_core.views import scores as scores_view
from ui import auth, services, widgets

PAGE = "results"
PICK_EVALUATION = (
    "Scores, the leaderboard and side-by-side comparison arrive with the judge, one evaluation at a time: "
    "choose an evaluation above."
)
NOT_JUDGED = (
    "Nothing judged yet in this evaluation. Scores and the leaderboard arrive with the judge: "
    "press **Judge now** above, or run `storybench judge {eid}`."
)

st.title("Results")
store = widgets.require_store()
widgets.show_flash(PAGE)
principal = auth.principal()

# Archived evaluations keep their data but leave Results (restore them on Run). The frame holds no
# texts (the store's flat projection), read again only when an evaluation gains responses or ends.
evaluations = services.evaluations()
archived = {d["id"] for d in evaluations if archive.is_archived(d)}
evaluations = archive.visible(evaluations)
frame = results_view.without_evaluations(
    services.response_stats(results_view.change_token(evaluations)), archived
)
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
url = {k: st.query_params.get_all(k) for k in st.query_params}

shown = results_view.apply_filters(frame, filters)
count, models, failed, pick_judge = st.columns(4)
count.metric("Responses", len(shown))
models.metric("Models", shown["model"].nunique())
failed.metric("Failed", int((shown["error"] != "").sum()))

# --- one evaluation's scores (the Charts, Leaderboard, Compare and Export tabs) ----------
evaluation: Doc | None = None
scored = None
judge: str | None = None
token: tuple = ()
if evaluation_id:
    evaluation = next((d for d in evaluations if d["id"] == evaluation_id), None) or store.get_evaluation(
        evaluation_id
    )
    token = results_view.change_token([evaluation] if evaluation else [])
    with widgets.guarded("reading the scores"):
        scored = scores_view.filter_scores(services.scores(evaluation_id, token), filters)
    judges = scores_view.judges_of(scored) if scored is not None else []
    if len(judges) > 1:
        key = f"{PAGE}.judge"
        if st.session_state.get(key) not in (scores_view.ALL_JUDGES, *judges):
            wanted = (url.get("judge") or [None])[-1]
            st.session_state[key] = wanted if wanted in judges else scores_view.ALL_JUDGES
        judge = scores_view.judge_filter(
            pick_judge.selectbox(
                "Judge",
                [scores_view.ALL_JUDGES, *judges],
                key=key,
                help="Scores of one judge, or the mean of all",
            )
        )
judged = scored is not None and scores_view.has_judgements(scored)

responses_tab, charts_tab, leaderboard_tab, compare_tab, export_tab = st.tabs(
    ["Responses", "Charts", "Leaderboard", "Compare", "Export"]
)

with responses_tab:
    # One page of rows at a time; only their texts are read (for the preview column).
    page_key, pick_key = f"{PAGE}.page", f"{PAGE}.response"
    pages = results_view.page_count(len(shown))
    st.session_state[page_key] = min(max(1, int(st.session_state.get(page_key) or 1)), pages)
    caption_col, page_col = st.columns([4, 1], vertical_alignment="bottom")
    page = page_col.number_input("Page", min_value=1, max_value=pages, step=1, key=page_key)
    caption_col.caption(results_view.page_caption(len(shown), page))
    rows = results_view.table_page(shown, page)
    st.dataframe(
        results_view.with_previews(rows, services.texts(tuple(rows["id"])))[results_view.TABLE_COLUMNS],
        hide_index=True,
        column_config={
            "generation_time_s": st.column_config.NumberColumn("time (s)", format="%.2f"),
            "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.1f"),
            "completion_tokens": st.column_config.NumberColumn("tokens"),
            "preview": st.column_config.TextColumn("response", width="large"),
        },
    )
    row_labels = {row["id"]: results_view.response_label(row) for row in rows.to_dict("records")}
    if st.session_state.get(pick_key) not in row_labels:
        st.session_state.pop(pick_key, None)  # a choice from another page or filter
    chosen = st.selectbox(
        "Read a response",
        list(row_labels),
        key=pick_key,
        index=None,
        format_func=row_labels.get,
        placeholder="Choose a response on this page to read it in full",
    )
    doc = None
    with widgets.guarded("reading the response"):
        doc = services.response(chosen) if chosen else None
    if doc is not None:
        detail = results_view.response_detail(doc)
        st.subheader(safe_inline(detail.title))
        prompt_col, answer_col = st.columns(2)
        with prompt_col:
            st.markdown("**Prompt**")
            with st.container(border=True):
                st.text(detail.prompt_text)
        with answer_col:
            st.markdown("**Response**")
            with st.container(border=True):
                if detail.error:
                    st.error(safe_markdown(detail.error), icon=":material/error:")
                st.text(detail.response_text or "(empty)")
        with st.expander(f"Conversation the model saw ({len(detail.conversation)} messages)"):
            for message in detail.conversation:
                with st.chat_message(message["role"] if message["role"] in ("user", "assistant") else "ai"):
                    st.caption(message["role"])
                    st.text(message["content"])
        st.caption(safe_inline(detail.facts_line))

with charts_tab:
    # Every chart is drawn from per-model aggregates: a few numbers each, however many responses.
    figures = results_view.metric_figures(shown)
    if not figures:
        st.info("No successful responses match the filters.")
    else:
        st.dataframe(results_view.model_summary(shown), hide_index=True)
        for column, figure in figures:
            st.plotly_chart(figure, key=f"{PAGE}.chart.{column}")
        st.caption(
            "Boxes: quartiles and median, whiskers to the furthest response within 1.5 × IQR, the mean dashed."
        )
    if judged:
        st.subheader("Scores")
        for name, figure in scores_view.score_figures(scored, judge).items():
            st.plotly_chart(figure, key=f"{PAGE}.chart.{name}")
    elif evaluation_id:
        st.caption("Score charts appear once the evaluation is judged (**Leaderboard** tab: Judge now).")

JUDGING = bool((state := services.judge_jobs().state(evaluation_id or "")) and state.active)


def judge_panel(evaluation: Doc) -> None:
    """The judge controls; a fragment rerun happens outside the page's error guard, so guard it here."""
    if not access.allowed(principal, "judge"):
        st.caption(f"Judging needs the operator role; you are a {principal.role}.")
        return
    with widgets.guarded("showing the judge controls"):
        judge_controls(evaluation)


def judge_controls(evaluation: Doc) -> None:
    """'Judge now': pick a judge, start a background job, watch its progress and console."""
    eid = evaluation["id"]
    state = services.judge_jobs().state(eid)
    if bool(state and state.active) != JUDGING:
        # Started or finished: redraw the whole page with fresh scores and the right polling interval.
        services.refresh_scores()
        st.rerun()
    config = jobs.evaluation_config(evaluation)
    options = scores_view.judge_options(config)
    picker, button = st.columns([4, 1], vertical_alignment="bottom")
    key = f"{PAGE}.judge_with"
    if st.session_state.get(key) not in options:
        st.session_state[key] = next(iter(options))
    label = picker.selectbox(
        "Judge with",
        list(options),
        key=key,
        help="Judges every stored response not yet judged by this judge under the current rubric.",
    )
    button.button(
        "Judge now",
        key=f"{PAGE}.judge_now",
        icon=":material/gavel:",
        type="primary",
        width="stretch",
        disabled=JUDGING,
        on_click=widgets.run_action,
        args=(PAGE, "starting the judge", services.judge_now, eid, principal, options[label], label),
    )
    if evaluation.get("status") in ("queued", "running", "stopping"):
        st.caption("This evaluation is still running: Judge now scores the responses stored so far.")
    for warning in scores_view.judge_warnings(options[label], config):
        st.warning(warning, icon=":material/warning:")
    if state is None:
        return
    if state.active:
        bar, stop = st.columns([4, 1], vertical_alignment="bottom")
        bar.progress(state.fraction, text=state.progress_label)
        stop.button(
            "Stop judging",
            key=f"{PAGE}.judge_stop",
            icon=":material/stop:",
            width="stretch",
            on_click=widgets.run_action,
            args=(PAGE, "stopping the judge", services.judge_jobs().stop, eid, principal),
        )
    elif state.status == "completed":
        st.success(f"Judging finished: {state.summary}.", icon=":material/check_circle:")
    elif state.status == "stopped":
        st.warning(f"Judging stopped: {state.summary}. Judge again to finish.", icon=":material/stop_circle:")
    else:
        st.error(f"Judging failed: {safe_markdown(state.error)}", icon=":material/error:")
    if state.lines:
        with st.expander(f"Judge console · {len(state.lines)} lines", expanded=state.active):
            st.code(
                "\n".join(state.lines),
                language=None,
                wrap_lines=True,
                height=min(320, 22 * len(state.lines) + 16),
            )


def leaderboard(evaluation_id: str, board: pd.DataFrame) -> None:
    """The ranked models with CIs and text metrics, judge agreement, attempt spread, turn trends."""
    sample = results.text_sample(scored)  # the texts read for the text metrics: a bounded sample
    metrics = services.sample_text_metrics(evaluation_id, sample.conversations, token)
    table = scores_view.leaderboard_table(board, scores_view.text_summary(metrics, scored["response_id"]))
    st.dataframe(table, hide_index=True, column_config=scores_view.leaderboard_labels(table))
    st.caption(
        "Overall: the mean of the criteria, per response averaged over its valid judgements; 95% CI: a bootstrap "
        "over responses and, within each, over its judgements (the judge's own noise). Failed judgements have no score and are only counted. Distinct-n: unique n-grams ÷ "
        "n-grams (higher = more varied); repeated 4-grams: share of 4-grams repeating an earlier one; stock "
        "phrases: over-used phrases per response."
    )
    if caption := scores_view.text_sample_caption(sample):
        st.caption(caption)
    agreement = results.judge_agreement(scored)
    if not agreement.empty:
        st.subheader("Judge agreement")
        st.dataframe(
            scores_view.rounded(agreement), hide_index=True, column_config=scores_view.table_labels(agreement)
        )
        st.caption("Spearman ρ of the judges' model means, and per-response differences of overall (a − b).")
    spread = results.attempt_spread(scores_view.for_judge(scored, judge))
    if not spread.empty:
        st.subheader("Repeated judgements")
        st.dataframe(
            scores_view.rounded(spread), hide_index=True, column_config=scores_view.table_labels(spread)
        )
        st.caption("Standard deviation of a response's scores across attempts (same judge).")
    if scores_view.has_several_turns(scored):
        trend = scores_view.trend_table(ratings.turn_trend(scores_view.for_judge(scored, judge)))
        if not trend.empty:
            low, high = scores_view.score_scale()
            st.subheader("Score per turn")
            st.dataframe(
                trend,
                hide_index=True,
                column_config={
                    "scores": st.column_config.LineChartColumn("overall per turn", y_min=low, y_max=high),
                    "slope": st.column_config.NumberColumn("slope per turn", format="%.3f"),
                },
            )
            st.caption("A negative slope: the model starts strong and fades over the turns of a sequence.")


def reliability(evaluation: Doc, shown_judges: list[str]) -> None:
    """Beside the ranking: each judge's reliability card, its warning, or that it is not calibrated."""
    eid = evaluation["id"]
    config = jobs.evaluation_config(evaluation)
    if note := reliability_view.small_judge_note(config, shown_judges):
        st.info(note, icon=":material/info:")
    for card in reliability_view.judge_cards(store, shown_judges):
        if card.flag == "failed":
            st.error(safe_markdown(card.warning or card.headline), icon=":material/report:")
        elif card.flag == "weak":
            st.warning(safe_markdown(card.warning or card.headline), icon=":material/warning:")
        elif card.flag == "trusted":
            st.success(safe_markdown(card.headline), icon=":material/verified:")
        else:
            st.info(safe_markdown(card.headline), icon=":material/help:")
        if card.rows:
            with st.expander(f"Reliability card · {safe_inline(card.judge)}"):
                st.table(pd.DataFrame(card.rows, columns=["figure", "value"]).set_index("figure"))
                st.caption("What each figure means: README, “Trusting the judge”.")
    latest = job_kinds.latest_job(store, eid, "calibrate")
    if latest is not None and latest.get("status") in ("queued", "running", "stopping"):
        progress = latest.get("progress") or {}
        done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
        st.progress(
            min(1.0, done / total) if total else 0.0,
            text=f"Calibrating {latest.get('label')}: {done} / {total}",
        )
    elif latest is not None and latest.get("status") == "failed":
        st.error(
            f"Calibration failed: {safe_markdown(latest.get('error') or 'see the console')}",
            icon=":material/error:",
        )
    if access.allowed(principal, "judge"):
        st.button(
            "Calibrate judge",
            key=f"{PAGE}.calibrate",
            icon=":material/straighten:",
            help="Score ladders of degraded versions of this evaluation's responses (known order) with the "
            "configured judge, in rubric and pairwise mode; the card appears here when the job finishes.",
            on_click=widgets.run_action,
            args=(
                PAGE,
                "queueing the calibration",
                job_kinds.enqueue_job,
                store,
                "calibrate",
                eid,
                principal,
            ),
        )


def ensemble_ranking(scored: pd.DataFrame, shown_judges: list[str]) -> None:
    """With several judges: the models ranked by each judge's means weighted by its reliability."""
    if len(shown_judges) < 2:
        return
    per_judge = [
        results.leaderboard(scored, judge=name)[["model_name", "overall"]].assign(judge_model=name)
        for name in shown_judges
    ]
    board = pd.concat(per_judge).rename(columns={"overall": "mean"})
    made = reliability_view.ensemble(board, reliability_view.judge_cards(store, shown_judges))
    if made is None:
        return
    ranked, weights = made
    st.subheader("Ensemble of judges")
    left, right = st.columns([3, 2])
    left.dataframe(scores_view.rounded(ranked), hide_index=True)
    right.dataframe(weights, hide_index=True)
    st.caption(
        "Each judge's model means weighted by its Kendall τ on the calibration ladders (0.5 while uncalibrated)."
    )


def pairwise_ratings(evaluation_id: str, board: pd.DataFrame | None) -> None:
    """Bradley–Terry ratings per judge and from the team votes, rank agreement, position bias."""
    report = services.pairwise_report(evaluation_id)
    sections = scores_view.rating_sections(report)
    st.subheader("Pairwise ratings")
    if not sections:
        st.caption(
            f"No pairwise verdicts or team votes yet: run `storybench compare-judge {evaluation_id}`, "
            "or vote on the **Vote** page."
        )
        return
    st.caption(
        "Bradley–Terry ratings (Elo-like, mean 1000) from blind A/B verdicts, each pair judged in both orders, "
        "with a 95% bootstrap CI; comparisons: outcomes involving the model."
    )
    for section in sections:
        st.markdown(f"**{section.title}**")
        st.dataframe(
            section.table,
            hide_index=True,
            column_config={
                "ci": "95% CI",
                "win_rate": st.column_config.NumberColumn("win rate", format="percent"),
            },
        )
    if board is not None and not board.empty:
        agreement = ratings.rank_agreement(scores_view.agreement_reference(report), board)
        if agreement.n_models:
            st.metric(
                "Rubric vs pairwise rank (Spearman ρ)",
                scores_view.rank_agreement_text(agreement),
                help=f"Over {agreement.n_models} models rated both ways; undefined with under two or all tied.",
            )
            st.dataframe(
                scores_view.rounded(agreement.table),
                hide_index=True,
                column_config=scores_view.table_labels(agreement.table),
            )
    if not report.human_agreement.empty:
        st.markdown("**Team votes vs judges**")
        st.dataframe(
            scores_view.rounded(report.human_agreement),
            hide_index=True,
            column_config=scores_view.table_labels(report.human_agreement),
        )
    if not report.position_bias.empty:
        st.plotly_chart(scores_view.position_bias_figure(report.position_bias), key=f"{PAGE}.position_bias")
        st.dataframe(
            scores_view.rounded(report.position_bias),
            hide_index=True,
            column_config=scores_view.table_labels(report.position_bias),
        )


def compare(evaluation_id: str) -> compare_view.CompareChoice:
    """Pick sequence, prompt, run and models; their responses side by side with scores and justifications."""
    options = results_view.filter_options(frame, evaluation_id)
    keys = {name: f"{PAGE}.compare.{name}" for name in ("sequence", "prompt", "run", "models")}
    if all(k in st.session_state for k in keys.values()):
        wanted = compare_view.CompareChoice(
            *(st.session_state[keys[n]] for n in ("sequence", "prompt", "run")),
            tuple(st.session_state[keys["models"]]),
        )
    else:
        wanted = compare_view.compare_from_query(url)
    choice = compare_view.sanitize_compare(wanted, options)
    for name in ("sequence", "prompt", "run"):
        st.session_state[keys[name]] = getattr(choice, name)
    st.session_state[keys["models"]] = list(choice.models)
    seq_col, prompt_col, run_col, model_col = st.columns([2, 1, 1, 4])
    choice = compare_view.CompareChoice(
        sequence=seq_col.selectbox("Sequence", options.sequences, key=keys["sequence"]),
        prompt=prompt_col.selectbox("Prompt", options.prompts, key=keys["prompt"]),
        run=run_col.selectbox("Run", options.runs, key=keys["run"]),
        models=tuple(model_col.multiselect("Models", options.models, key=keys["models"])),
    )
    if len(choice.models) < 2 or choice.sequence is None or choice.prompt is None or choice.run is None:
        st.info("Choose two or more models to compare their responses side by side.")
        return choice
    rows = services.compare(evaluation_id, choice.sequence, choice.prompt - 1, choice.run, choice.models)
    prompt_text, columns = compare_view.compare_columns(rows, judge)
    if not columns:
        st.info("None of these models has a response to this prompt in this run.")
        return choice
    st.markdown(f"**Prompt {choice.prompt}** · {choice.sequence} · run {choice.run}")
    with st.container(border=True):
        st.text(prompt_text)
    for place, column in zip(st.columns(len(columns)), columns, strict=True):
        with place:
            st.subheader(safe_inline(column.model))
            st.metric("Overall", f"{column.overall:.2f}" if column.overall is not None else "–")
            if column.status:
                st.caption(safe_inline(column.status))
            if column.score_line:
                st.markdown(column.score_line)
            with st.container(border=True, height=420):
                if column.error:
                    st.error(safe_markdown(column.error), icon=":material/error:")
                st.text(column.response or "(empty)")
            st.caption(f"{column.words} words")
            for card in column.judgements:
                with st.expander(safe_inline(card.title)):
                    if card.error:
                        st.warning(safe_markdown(card.error))
                    for item in card.scores:
                        score = "–" if item.score is None else f"{item.score:g}"
                        st.markdown(f"**{safe_inline(item.label)} · {score}** {safe_markdown(item.why)}")
    return choice


with leaderboard_tab:
    if evaluation is None:
        st.info(PICK_EVALUATION, icon=":material/hourglass_top:")
    else:
        with st.container(border=True):
            st.fragment(run_every=1.0 if JUDGING else None)(judge_panel)(evaluation)
        board = None
        if scored is not None and not judged and JUDGING:
            st.info(
                "Judging is under way: the leaderboard appears when it finishes.", icon=":material/gavel:"
            )
        elif scored is not None and not judged:
            st.info(NOT_JUDGED.format(eid=evaluation_id), icon=":material/hourglass_top:")
        elif scored is not None:
            shown_judges = [judge] if judge else scores_view.judges_of(scored)
            with widgets.guarded("showing the judges' reliability"):
                reliability(evaluation, shown_judges)
            with widgets.guarded("building the leaderboard"):
                board = results.leaderboard(scored, judge=judge)
                leaderboard(evaluation_id, board)
                if "judge_noise" in board and (board["judge_noise"] == "not measured").any():
                    st.caption(
                        "Judge noise not measured for some models (one judgement per response, or attempts "
                        "that agree exactly): their intervals cover response-to-response variation only."
                    )
            if judge is None:
                with widgets.guarded("building the ensemble of judges"):
                    ensemble_ranking(scored, shown_judges)
        with widgets.guarded("building the pairwise ratings"):
            pairwise_ratings(evaluation_id, board)

compare_choice = None
with compare_tab:
    if evaluation is None:
        st.info(PICK_EVALUATION, icon=":material/hourglass_top:")
    else:
        with widgets.guarded("comparing responses"):
            compare_choice = compare(evaluation_id)

with export_tab:
    # Deferred, like the files below: built from the store only when its button is clicked.
    st.download_button(
        "Download the filtered responses (CSV)",
        data=partial(results_view.filtered_csv, store, filters, tuple(sorted(archived))),
        file_name="storybench-responses.csv",
        mime="text/csv",
        icon=":material/download:",
        key=f"{PAGE}.export.csv",
        on_click="ignore",
    )
    st.caption("Full text included, across the filters above; the file is built when you click.")
    if evaluation is None:
        st.info("Choose an evaluation above to export it with its judgements and a report.")
    else:
        st.subheader("This evaluation with its judgements")
        stem = scores_view.export_stem(evaluation)
        csv_col, json_col, md_col = st.columns(3)
        # Deferred: each file is built only when its button is clicked (a large evaluation takes a while).
        csv_col.download_button(
            "Responses + judgements (CSV)",
            data=partial(scores_view.scores_csv, store, evaluation_id),
            file_name=f"{stem}.csv",
            mime="text/csv",
            icon=":material/table:",
            key=f"{PAGE}.export.scores_csv",
            on_click="ignore",
        )
        json_col.download_button(
            "Evaluation (JSON)",
            data=partial(scores_view.evaluation_json_bytes, store, evaluation_id),
            file_name=f"{stem}.json",
            mime="application/json",
            icon=":material/data_object:",
            key=f"{PAGE}.export.json",
            on_click="ignore",
        )
        md_col.download_button(
            "Report (Markdown)",
            data=partial(scores_view.markdown_report_bytes, store, evaluation_id),
            file_name=f"{stem}.md",
            mime="text/markdown",
            icon=":material/description:",
            key=f"{PAGE}.export.markdown",
            on_click="ignore",
        )
        st.caption(
            "CSV: one row per response × judgement, failed ones included, with justifications. JSON: the "
            "evaluation, its responses and their judgements. Report: leaderboard, per-criterion and per-sequence "
            "tables, best and worst responses."
        )

# Mirror the shareable selections in the URL last, once every widget has its value.
query = results_view.filters_to_query(filters) | compare_view.selections_to_query(
    judge, compare_choice if evaluation is not None else None
)
if url != query:
    st.query_params.from_dict(query)
