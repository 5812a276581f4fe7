"""Configure: models, generation settings, sequences and judge → a validated config → queue it.

State (prefixed "configure."): `models` (the model list), `values` (the form's
last submitted values, kept apart from widget keys because Streamlit forgets
those when the user visits another page), `base` (the last loaded config, so
fields the form does not show survive).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from storybench_core import access, jobs
from storybench_core.backends.presets import list_presets
from storybench_core.config import config_to_dict
from storybench_core.views import configure as view
from ui import auth, services, widgets

PAGE = "configure"
VALUES, MODELS, BASE, QUEUED = f"{PAGE}.values", f"{PAGE}.models", f"{PAGE}.base", f"{PAGE}.queued"
principal = auth.principal()


def key(name: str) -> str:
    return f"{PAGE}.{name}"


def load(config: dict[str, Any]) -> None:
    """Put a config into the form (called from callbacks, before the widgets are drawn)."""
    values, models, base = view.form_values(config)
    st.session_state[VALUES], st.session_state[MODELS], st.session_state[BASE] = values, models, base
    for name, value in values.items():
        st.session_state[key(name)] = value


def current_values() -> dict[str, Any]:
    """The submitted form values; widget keys are (re)seeded from the kept copy."""
    if VALUES not in st.session_state:
        load(view.default_config_dict())
    kept = st.session_state[VALUES]
    for name, value in kept.items():
        st.session_state.setdefault(key(name), value)
    values = {name: st.session_state[key(name)] for name in kept}
    st.session_state[VALUES] = values
    return values


# --- callbacks ------------------------------------------------------------------------


def load_saved() -> None:
    name = st.session_state[key("saved")]
    widgets.run_action(
        PAGE,
        "loading the configuration",
        lambda: load(config_to_dict(view.load_named_config(name))),
        done=f"Loaded '{name}'.",
    )


def load_upload() -> None:
    upload = st.session_state.get(key("upload"))
    if upload is None:
        return
    widgets.run_action(
        PAGE,
        "reading the uploaded file",
        lambda: load(config_to_dict(view.parse_uploaded_config(upload.getvalue(), upload.name))),
        done=f"Loaded {upload.name}.",
    )


def add_model(kind: str, fields: tuple[str, ...]) -> None:
    """An 'Add model' form: append the model, or keep the error to show under that form."""
    data = {f: st.session_state.get(key(f"add.{kind}.{f}")) for f in fields}
    try:
        model = view.model_from_form(kind, data)
        st.session_state[MODELS] = view.add_model(st.session_state[MODELS], model)
    except Exception as exc:
        st.session_state[key(f"add.{kind}.error")] = widgets.error_message(exc, "adding the model")
    else:
        st.session_state.pop(key(f"add.{kind}.error"), None)


def remove_model(index: int) -> None:
    models = list(st.session_state[MODELS])
    del models[index]
    st.session_state[MODELS] = models


# --- page -------------------------------------------------------------------------------

st.title("Configure")
st.caption("Choose models, settings and prompt sequences; check the configuration, then queue it as a run.")
widgets.show_flash(PAGE)
values = current_values()
models: list[dict[str, Any]] = st.session_state[MODELS]
check = view.check_form(values, models, st.session_state[BASE])
slug = view.safe_slug(values["name"]) if check.ok else None

with st.expander("Load, save, upload or download a configuration", icon=":material/folder_open:"):
    saved_col, file_col = st.columns(2)
    with saved_col:
        saved = services.saved_configs()
        if saved:
            st.selectbox("Saved configurations", saved, key=key("saved"))
            st.button("Load", key=key("load"), on_click=load_saved, icon=":material/upload_file:")
        else:
            st.caption("No saved configurations yet.")
        if access.allowed(principal, "save_config"):
            st.button(
                f"Save as '{slug or '…'}'",
                key=key("save"),
                disabled=slug is None,
                icon=":material/save:",
                help="Saves the checked configuration under its name (Run can queue saved ones).",
                on_click=widgets.run_action,
                args=(
                    PAGE,
                    "saving the configuration",
                    view.save_named_config,
                    check.config,
                    principal,
                    widgets.require_store(),
                ),
                kwargs={"done": f"Saved as '{values['name']}'."},
            )
    with file_col:
        st.file_uploader(
            "Upload a JSON config", type=["json", "yaml", "yml"], key=key("upload"), on_change=load_upload
        )
        st.download_button(
            "Download as JSON",
            data=view.config_json(check.config) if check.config else "",
            file_name=f"{slug or 'config'}.json",
            mime="application/json",
            disabled=not check.ok,
            icon=":material/download:",
            key=key("download"),
            on_click="ignore",
        )

# --- models ----------------------------------------------------------------------------
st.subheader("Models")
widgets.field_errors(check.for_field("models"))
if not models:
    st.warning("Add at least one model below.")
for index, row in enumerate(view.models_frame(models).to_dict("records")):
    with st.container(border=True):
        name_col, source_col, key_col, remove_col = st.columns([3, 4, 3, 1], vertical_alignment="center")
        name_col.markdown(f"**{row['name']}**  \n:gray[{row['kind']}]")
        source_col.caption(row["source"])
        key_col.caption(row["api key"])
        remove_col.button(
            "",
            key=key(f"remove.{index}"),
            icon=":material/delete:",
            help=f"Remove {row['name']}",
            on_click=remove_model,
            args=(index,),
        )

ADD_FORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bundled": ("Bundled", ("builtin", "name")),
    "hf": ("Hugging Face", ("repo_id", "filename", "subdirectory", "revision", "name")),
    "path": ("Local file", ("path", "name")),
    "api": ("API", ("preset", "api_model", "api_key_env", "name")),
}
presets = {p.id: p for p in list_presets()}
with st.expander("Add a model", icon=":material/add:", expanded=not models):
    for tab, (kind, (label, fields)) in zip(
        st.tabs([v[0] for v in ADD_FORMS.values()]), ADD_FORMS.items(), strict=True
    ):
        with tab, st.form(key(f"add.{kind}"), clear_on_submit=False, border=False):
            if kind == "bundled":
                builtins = view.builtin_choices()
                st.selectbox(
                    "Built-in model",
                    list(builtins),
                    key=key("add.bundled.builtin"),
                    format_func=builtins.get,
                    help="Packaged with Storybench: no download.",
                )
            elif kind == "hf":
                repo_col, file_col = st.columns(2)
                repo_col.text_input("Repository id", key=key("add.hf.repo_id"), placeholder="owner/name")
                file_col.text_input(
                    "GGUF file name", key=key("add.hf.filename"), placeholder="model-Q4_K_M.gguf"
                )
                sub_col, rev_col = st.columns(2)
                sub_col.text_input("Subdirectory (optional)", key=key("add.hf.subdirectory"))
                rev_col.text_input("Revision (optional)", key=key("add.hf.revision"), placeholder="main")
            elif kind == "path":
                st.text_input("Path to a .gguf file on this server", key=key("add.path.path"))
            else:
                preset_col, model_col = st.columns(2)
                preset_col.selectbox(
                    "Provider preset",
                    list(presets),
                    key=key("add.api.preset"),
                    format_func=lambda p: presets[p].label,
                )
                model_col.text_input(
                    "Model name", key=key("add.api.api_model"), placeholder="e.g. gpt-4o-mini"
                )
                st.text_input(
                    "API key environment variable (optional)",
                    key=key("add.api.api_key_env"),
                    help="The NAME of the variable holding the key, e.g. OPENAI_API_KEY; the preset's is used "
                    "when empty. The key itself is never stored.",
                )
                st.caption(
                    "Keys of the presets: "
                    + ", ".join(view.api_key_status(p.api_key_env) for p in presets.values() if p.api_key_env)
                )
            st.text_input("Display name (optional)", key=key(f"add.{kind}.name"))
            st.form_submit_button(
                f"Add {label} model", icon=":material/add:", on_click=add_model, args=(kind, fields)
            )
            if key(f"add.{kind}.error") in st.session_state:
                st.error(st.session_state[key(f"add.{kind}.error")], icon=":material/error:")

# --- settings form ----------------------------------------------------------------------
with st.form(key("form")):
    st.subheader("Run settings")
    st.text_input("Name", key=key("name"), help="Names the evaluation and the saved file.")
    widgets.field_errors(check.for_field("name"))

    st.markdown("**Generation**")
    widgets.field_errors(check.for_field("generation"))
    number_fields = [
        ("temperature", "Temperature", 0.05, "%.2f"),
        ("top_p", "Top p", 0.05, "%.2f"),
        ("max_tokens", "Max tokens", 32, None),
        ("runs", "Runs per sequence", 1, None),
        ("seed", "Seed", 1, None),
        ("n_ctx", "Context size (tokens)", 256, None),
        ("vram_limit_percent", "VRAM limit (%)", 5, None),
    ]
    for row in (number_fields[:4], number_fields[4:]):
        for column, (name, label, step, fmt) in zip(st.columns(4), row, strict=False):
            with column:
                st.number_input(label, key=key(name), step=step, format=fmt)
                widgets.field_errors(check.for_field(f"generation.{name}"))
    with st.expander("System prompt"):
        st.text_area("System prompt", key=key("system_prompt"), label_visibility="collapsed")
        widgets.field_errors(check.for_field("generation.system_prompt"))

    st.markdown("**Sequences**")
    sequence_titles = {s.id: f"{s.title} ({len(s.prompts)} prompts)" for s in services.sequences()}
    st.multiselect(
        "Prompt sequences", list(sequence_titles), key=key("sequences"), format_func=sequence_titles.get
    )
    widgets.field_errors(check.for_field("sequences"))

    st.markdown("**Judge**")
    widgets.field_errors(check.for_field("judge"))
    judge_choices = view.judge_choices(models, st.session_state[BASE])
    if st.session_state.get(key("judge_model")) not in judge_choices:
        st.session_state[key("judge_model")] = view.JUDGE_NONE
    enabled_col, model_col = st.columns([1, 3])
    enabled_col.checkbox("Judge responses", key=key("judge_enabled"))
    model_col.selectbox("Judge model", judge_choices, key=key("judge_model"))
    widgets.field_errors(check.for_field("judge.model"))
    preset_col, api_model_col = st.columns(2)
    preset_col.selectbox(
        "Judge API preset", list(presets), key=key("judge_preset"), format_func=lambda p: presets[p].label
    )
    api_model_col.text_input("Judge API model name", key=key("judge_api_model"), help="Used for 'API model'.")
    judge_columns = st.columns(4)
    judge_fields = [
        ("attempts", "Attempts per response", 1),
        ("max_retries", "Retries of invalid answers", 1),
        ("temperature", "Judge temperature", 0.1),
        ("max_tokens", "Judge max tokens", 64),
    ]
    for column, (name, label, step) in zip(judge_columns, judge_fields, strict=True):
        with column:
            st.number_input(label, key=key(f"judge_{name}"), step=step)
            widgets.field_errors(check.for_field(f"judge.{name}"))
    st.checkbox("Judge each response as soon as it is written (auto-evaluate)", key=key("auto_evaluate"))
    widgets.field_errors(check.for_field("auto_evaluate"))
    widgets.field_errors(check.for_field(view.GENERAL))

    check_col, queue_col = st.columns(2)
    check_col.form_submit_button("Check", icon=":material/check:", width="stretch")
    queue_clicked = access.allowed(principal, "queue") and queue_col.form_submit_button(
        "Queue run", type="primary", icon=":material/play_arrow:", width="stretch"
    )
    if not access.allowed(principal, "queue"):
        queue_col.caption(f"Queueing and saving need the operator role; you are a {principal.role}.")

if check.ok:
    st.success(
        f"Configuration is valid · config hash `{check.config_hash}` · {check.config.name}",
        icon=":material/check:",
    )
else:
    st.error(
        "The configuration has problems; they are shown next to the fields above.", icon=":material/error:"
    )

if queue_clicked and check.config is not None:
    with widgets.guarded("queueing the run"):
        st.session_state[QUEUED] = jobs.enqueue(widgets.require_store(), check.config, principal)
        services.refresh_after_write()
if st.session_state.get(QUEUED):
    queued = st.session_state[QUEUED]
    st.success(
        f"Queued evaluation `{queued}`. The worker starts it within seconds.", icon=":material/schedule:"
    )
    st.page_link(
        "app_pages/run.py",
        label="Watch it on Run",
        icon=":material/play_circle:",
        query_params={"evaluation": queued},
    )

st.subheader("Sequence preview")
for sequence in services.sequences():
    chosen = sequence.id in values["sequences"]
    label = f"{sequence.title} · `{sequence.id}` · {len(sequence.prompts)} prompts" + (
        " · selected" if chosen else ""
    )
    with st.expander(
        label, icon=":material/check_circle:" if chosen else ":material/radio_button_unchecked:"
    ):
        st.markdown(view.sequence_preview_markdown(sequence))
