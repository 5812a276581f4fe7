"""Models: the local model cache, and downloads of GGUF files from the Hugging Face Hub.

Downloads run on a background thread owned by the server (ui.services.downloads);
this page only starts them and polls their progress.
"""

from __future__ import annotations

import streamlit as st

from storybench_core import access, bundled, hub
from storybench_core.views import models as models_view
from ui import auth, services, widgets

PAGE = "models"

st.title("Models")
widgets.show_flash(PAGE)
principal = auth.principal()

st.subheader("Cached models")
with widgets.guarded("listing the cached models"):
    cached = services.cached_models()
    if not cached:
        st.info(
            "No model files yet. The built-in models are prepared on first use; "
            "download others below or point a config at a local .gguf file."
        )
    else:
        st.dataframe(models_view.cached_models_frame(cached), hide_index=True)
        deletable = [str(m.path) for m in cached if not m.bundled]
        if deletable and access.allowed(principal, "delete_model"):
            with st.expander("Delete a downloaded model", icon=":material/delete:"):
                target = st.selectbox("Model file", deletable, key=f"{PAGE}.delete_target")
                st.button(
                    "Delete file",
                    key=f"{PAGE}.delete",
                    on_click=widgets.run_action,
                    args=(
                        PAGE,
                        "deleting the model",
                        hub.delete_cached_model,
                        target,
                        principal,
                        services.store(),
                    ),
                    kwargs={"done": f"Deleted {target}."},
                )

st.subheader("Built-in models")
st.caption("Packaged with Storybench, no download: prepared from their Python packages on first use.")
with widgets.guarded("listing the built-in models"):
    st.dataframe(models_view.builtin_models_frame(), hide_index=True)
    if bundled.unprepared_builtin_models() and access.allowed(principal, "download_model"):
        st.button(
            "Prepare built-in models",
            key=f"{PAGE}.prepare",
            icon=":material/inventory_2:",
            on_click=widgets.run_action,
            args=(
                PAGE,
                "preparing the built-in models",
                hub.prepare_builtin_models,
                services.store(),
                principal,
            ),
            kwargs={"done": "The built-in models are ready."},
        )


def start_download() -> None:
    """The Download button: validate the form and hand the file to the background tracker."""
    fields = [
        st.session_state[f"{PAGE}.{name}"] for name in ("repo_id", "filename", "subdirectory", "revision")
    ]
    widgets.run_action(
        PAGE,
        "starting the download",
        lambda: services.downloads().start(
            models_view.model_ref_from_form(*fields), principal, services.store()
        ),
    )


if access.allowed(principal, "download_model"):
    st.subheader("Download from the Hugging Face Hub")
    st.caption(
        "Give the repository and the GGUF file (optionally a subdirectory and revision). "
        "Gated repositories need HF_TOKEN in the server's environment."
    )
    repo_col, list_col = st.columns([4, 1], vertical_alignment="bottom")
    repo_id = repo_col.text_input("Repository id", key=f"{PAGE}.repo_id", placeholder="owner/name")
    if list_col.button("List GGUF files", key=f"{PAGE}.list", disabled=not repo_id.strip()):
        with widgets.guarded("listing the repository's files"), st.spinner("Asking the Hub…"):
            st.session_state[f"{PAGE}.files"] = hub.list_repo_gguf_files(repo_id.strip())
    files = st.session_state.get(f"{PAGE}.files") or []
    if files:
        st.caption("GGUF files in the repository: " + ", ".join(f"`{f}`" for f in files))

    with st.form(f"{PAGE}.download_form", border=True):
        st.text_input("File name", key=f"{PAGE}.filename", placeholder="model-Q4_K_M.gguf")
        sub_col, rev_col = st.columns(2)
        sub_col.text_input("Subdirectory (optional)", key=f"{PAGE}.subdirectory")
        rev_col.text_input("Revision (optional)", key=f"{PAGE}.revision", placeholder="main")
        st.form_submit_button("Download", icon=":material/download:", on_click=start_download)
else:
    st.caption(
        f"Downloading and deleting models need the operator and admin roles; you are a {principal.role}."
    )


@st.fragment(run_every=1.0)
def downloads() -> None:
    """Progress of this server's downloads, re-read every second."""
    states = services.downloads().snapshot()
    if not states:
        return
    st.subheader("Downloads")
    finished = {s.label for s in states if s.status == "done"}
    if finished - st.session_state.get(f"{PAGE}.finished", set()):
        # A new file is in the cache: redraw the whole page so the table above lists it.
        st.session_state[f"{PAGE}.finished"] = finished
        services.refresh_after_write()
        st.rerun()
    for state in states:
        st.progress(state.fraction, text=state.progress_label)
        if state.error:
            st.error(state.error, icon=":material/error:")
        elif state.path:
            st.caption(f"Saved to {state.path}")


downloads()
