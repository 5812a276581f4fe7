"""The Activity page (the audit trail, the access list) and the Run page's admin clean-up controls."""

from __future__ import annotations

from storybench_core import audit, jobs, paths
from storybench_core.access import LOCAL_ADMIN

ACTIVITY, RUN, RESULTS = "app_pages/activity.py", "app_pages/run.py", "app_pages/results.py"


def test_activity_lists_what_happened_and_filters_it(ui, store):
    eid = jobs.enqueue(store, ui.fake_config("watched"), LOCAL_ADMIN)
    jobs.request_stop(store, eid, LOCAL_ADMIN)
    at = ui.open_app(ACTIVITY)
    table = at.dataframe[0].value
    assert list(table["action"]) == ["stop", "queue"] and set(table["target"]) == {eid}
    assert set(table["who"]) == {"local"}
    assert {b.label for b in at.get("download_button")} >= {"Download CSV", "Download JSON"}
    at.selectbox(key="activity.action").select("queue")
    at.run()
    assert list(at.dataframe[0].value["action"]) == ["queue"]
    at.selectbox(key="activity.action").select("delete")
    at.run()
    assert any("No activity matches" in t for t in ui.texts(at.info))


def test_an_admin_sees_the_access_list(ui, store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        '[storybench.access]\nadmins = ["ana@example.com"]\noperators = ["@example.com"]\n', encoding="utf-8"
    )
    at = ui.open_app(ACTIVITY)
    assert "Access" in ui.texts(at.subheader)
    access = at.dataframe[-1].value
    assert list(access["entry"]) == ["ana@example.com", "@example.com", "everyone else signed in"]
    assert list(access["role"]) == ["admin", "operator", "viewer"]


def test_run_page_archives_restores_and_deletes_for_an_admin(ui, store):
    eid = ui.run_evaluation(store, ui.fake_config("old run"))
    at = ui.open_app(RUN)
    ui.button(at, "Archive").click()
    ui.rerun(at)
    assert store.get_evaluation(eid)["archived_at"] is not None
    assert list(at.dataframe[0].value["status"]) == ["completed (archived)"]
    results = ui.open_app(RESULTS)
    assert any("No responses stored yet" in t for t in ui.texts(results.info))  # hidden from Results
    ui.button(at, "Restore from the archive").click()
    ui.rerun(at)
    assert store.get_evaluation(eid)["archived_at"] is None
    assert ui.button(at, "Export and delete").disabled  # needs the confirmation first
    at.checkbox(key=f"run.delete_confirm.{eid}").check()
    at.run()
    ui.button(at, "Export and delete").click()
    ui.rerun(at)
    assert store.get_evaluation(eid) is None
    [export] = (paths.storybench_home() / "exports").glob(f"{eid}-*.json")
    assert any(str(export) in t for t in ui.texts(at.success))
    assert [e.action for e in audit.entries(store, target=eid)][:3] == ["delete", "archive", "archive"]
