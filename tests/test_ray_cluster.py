"""One evaluation over a real two-node Ray cluster on loopback, and the Ray executor's plain parts.

Ray's head probes a cloud metadata address whenever it starts, so the cluster tests run only inside
a loopback-only network namespace: `test_ray_cluster_*` start this file again there
(`unshare -n`, lo up, RAY_USAGE_STATS_ENABLED=0) with `-o python_functions=netns_*`, which collects
the `netns_*` functions below; a normal run never collects them. Each starts its own cluster
(ray.cluster_utils.Cluster: a head and one more node of one CPU slot each) after the autouse fixture
set STORYBENCH_HOME, so both nodes see the test's SQLite store and model files.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from storybench_core import jobs, paths
from storybench_core.access import LOCAL_ADMIN
from storybench_core.config import parse_config
from storybench_core.errors import ConfigError, JobError
from storybench_core.executors import (
    RAY_ADDRESS_ENV,
    DispatchPlan,
    RayExecutor,
    StoreLocation,
    cluster_executor,
    connect,
    import_ray,
    ray_address,
)
from storybench_core.store.base import Lease
from storybench_core.store.sqlite import SQLiteStore
from storybench_core.tasks import plan_tasks

ROOT = Path(__file__).resolve().parent.parent
IN_NETNS_ENV = "STORYBENCH_TEST_NETNS"
IN_NETNS = os.environ.get(IN_NETNS_ENV) == "1"
HAVE_RAY = importlib.util.find_spec("ray") is not None


# --- the plain parts: no Ray, no cluster ------------------------------------------------------


def test_a_free_slot_keeps_its_model_and_shares_shrink():
    convs = [(0, s, r) for s in ("film", "thriller") for r in (1, 2, 3)] + [(1, "film", r) for r in (1, 2)]
    plan = DispatchPlan(convs, n_slots=2)
    first = plan.take(None, Counter())
    # Model 0 has 6 of the 8 pending conversations: worth both slots, so a share of ceil(6 / 2).
    assert first is not None and first.model_index == 0 and len(first.conversations) == 3
    second = plan.take(None, Counter({0: 1}))  # the model nobody holds yet
    assert second is not None and second.model_index == 1 and len(second.conversations) == 2
    again = plan.take(0, Counter({0: 1, 1: 1}))  # its own model while that has work
    assert again is not None and again.model_index == 0 and len(again.conversations) == 3
    assert plan.remaining == 0


def test_few_conversations_are_split_evenly_many_in_shrinking_shares():
    few = DispatchPlan([(0, "film", r) for r in range(1, 5)], n_slots=2)
    assert [len(few.take(0, Counter()).conversations) for _ in range(2)] == [2, 2]  # not 2 + 1 + 1
    many = DispatchPlan([(0, "film", r) for r in range(1, 101)], n_slots=4)
    sizes = []
    while many.remaining:
        sizes.append(len(many.take(0, Counter({0: 4})).conversations))
    assert sizes[:4] == [25, 19, 14, 11] and sizes[-1] <= 8 and sum(sizes) == 100


def test_a_dead_slots_conversations_go_first_and_max_share_caps():
    plan = DispatchPlan([(0, "film", r) for r in range(1, 7)], n_slots=1, max_share=2)
    share = plan.take(None, Counter())
    assert share is not None and share.conversations == ((0, "film", 1), (0, "film", 2))
    plan.give_back([(0, "film", 2)])
    nxt = plan.take(0, Counter({0: 1}))
    assert nxt is not None and nxt.conversations == ((0, "film", 2), (0, "film", 3))
    assert plan.take(5, Counter()) is not None  # a slot holding a finished model switches


def test_the_ray_address_comes_from_the_environment_or_the_secrets_file(tmp_path, monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert ray_address() is None and cluster_executor() is None
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('[storybench]\nray_address = "10.0.0.5:6379"\n')
    assert ray_address() == "10.0.0.5:6379"
    monkeypatch.setenv(RAY_ADDRESS_ENV, " auto ")
    executor = cluster_executor()
    assert isinstance(executor, RayExecutor) and executor.address == "auto"


def test_a_slot_opens_the_drivers_sqlite_store(tmp_path):
    store = SQLiteStore(tmp_path / "x.db")
    location = StoreLocation.of(jobs.LeasedWrites(store, Lease("w", 1)))
    assert location == StoreLocation("sqlite", str((tmp_path / "x.db").resolve()))
    assert location.open().describe() == store.describe()


def test_without_ray_installed_the_core_imports_and_a_ray_run_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    with pytest.raises(ConfigError, match=r"requirements-ray\.txt"):
        import_ray()
    with pytest.raises(ConfigError, match="does not start a Ray cluster"):
        connect("local")
    store = SQLiteStore(paths.sqlite_path())
    monkeypatch.setenv(RAY_ADDRESS_ENV, "127.0.0.1:6379")
    eid = jobs.enqueue(store, _config(runs=1, sequences=("film",)), LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    doc = store.get_evaluation(eid)
    assert doc["status"] == "failed" and "requirements-ray.txt" in doc["error"]


@pytest.mark.skipif(not HAVE_RAY, reason="Ray is an optional extra (requirements-ray.txt)")
def test_an_address_where_nothing_listens_fails_at_once():
    started = time.monotonic()
    with pytest.raises(JobError, match="nothing answers at the Ray address 127.0.0.1:1"):
        connect("127.0.0.1:1")
    assert time.monotonic() - started < 5


# --- the cluster: this file again, inside a loopback-only network namespace ------------------------


def _namespace_problem() -> str | None:
    if not HAVE_RAY:
        return "Ray is an optional extra (requirements-ray.txt; `make setup-dev` installs it)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2) for a loopback-only network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode:
        return f"cannot make a network namespace here (`unshare -n`: {probe.stderr.strip()}); run as root"
    return None


def _in_namespace(marks: str, timeout_s: int) -> None:
    if IN_NETNS:
        pytest.skip("already inside the namespace")
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    env = {**os.environ, IN_NETNS_ENV: "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))]
    args += ["-o", "python_functions=netns_*", "-m", marks]
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    out = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"the cluster tests failed inside the namespace:\n{out}"
    assert " passed" in out, out


def test_ray_cluster_fake_backend():
    """The netns_* tests on the scripted fake backend (a clean run, a killed node, a Stop)."""
    _in_namespace("not slow", timeout_s=600)


@pytest.mark.slow
def test_ray_cluster_bundled_model():
    """The netns_* test on the real bundled Gemma: two nodes, one killed mid-run."""
    _in_namespace("slow", timeout_s=900)


# --- what runs inside the namespace ----------------------------------------------------------------


def _config(runs=2, sequences=("film", "thriller", "literary"), delay_s=0.0, model=None, max_tokens=64):
    spec = model or {"kind": "fake", "options": {"delay_s": delay_s, "words": 12}}
    return parse_config(
        {
            "models": [spec],
            "sequences": list(sequences),
            "generation": {"runs": runs, "max_tokens": max_tokens},
        }
    )


@pytest.fixture
def cluster(storybench_home, monkeypatch):
    """A head and one more node, one CPU slot each, on loopback; the worker is told its address."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    monkeypatch.setenv(RAY_ADDRESS_ENV, c.address)
    monkeypatch.setenv("STORYBENCH_WIDTH_PROBE", "0")
    try:
        yield c, node
    finally:
        ray.shutdown()
        c.shutdown()


def _expected_keys(eid, config):
    return {t.key(eid) for t in plan_tasks(config)}


def _stored_by_node(store, eid):
    """Responses stored per node id, from the driver's console lines."""
    per_node: Counter[str] = Counter()
    for e in store.list_events(eid):
        if e.get("ray_node") and e.get("stored") is not None:
            per_node[e["ray_node"]] += int(e["stored"])
    return per_node


def _check_complete(store, eid, config):
    doc = store.get_evaluation(eid)
    assert doc["status"] == "completed", (
        doc.get("error"),
        [e["message"] for e in store.list_events(eid)][-15:],
    )
    responses = store.list_responses(eid)
    keys = [r["task_key"] for r in responses]
    assert len(keys) == len(set(keys))  # no task stored twice
    assert set(keys) == _expected_keys(eid, config)  # exactly the planned set
    assert not [r for r in responses if r.get("error")]
    assert doc["completed_tasks"] == len(keys)
    return responses


def netns_an_evaluation_runs_over_both_nodes(cluster):
    c, node = cluster
    store = SQLiteStore(paths.sqlite_path())
    config = _config()
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    assert jobs.Worker(store).run_once()
    _check_complete(store, eid, config)
    per_node = _stored_by_node(store, eid)
    assert set(per_node) == {c.head_node.node_id, node.node_id} and all(per_node.values())
    assert sum(per_node.values()) == len(_expected_keys(eid, config))
    messages = [e["message"] for e in store.list_events(eid)]
    assert any("2 CPU slot(s) on 2 node(s)" in m for m in messages)
    assert any(m.startswith("[slot ") and "stored " in m for m in messages)  # the slots' own console lines
    assert store.get_evaluation(eid)["progress"]["tasks_total"] == len(_expected_keys(eid, config))


def _run_in_thread(store):
    worker = jobs.Worker(store)
    thread = threading.Thread(target=worker.run_once, daemon=True)
    thread.start()
    return thread


def _wait(predicate, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _kill_mid_run(cluster, store, config, stored_first_s):
    """Run the evaluation, kill the second node once its slot stored a response, wait for the end."""
    c, node = cluster
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    thread = _run_in_thread(store)

    def node_stored_one() -> bool:
        return any(
            e["message"].startswith("[slot ")
            and f"node {node.node_id[:8]}" in e["message"]
            and "] stored " in e["message"]
            for e in store.list_events(eid)
        )

    assert _wait(node_stored_one, stored_first_s), [e["message"] for e in store.list_events(eid)][-10:]
    before = {r["task_key"]: r["created_at"] for r in store.list_responses(eid)}
    c.remove_node(node)
    thread.join(600)
    assert not thread.is_alive()
    responses = _check_complete(store, eid, config)
    after = {r["task_key"]: r["created_at"] for r in responses}
    assert all(after[k] == t for k, t in before.items())  # stored turns were not generated again
    messages = [e["message"] for e in store.list_events(eid)]
    assert any("died" in m and "stored response(s) are kept" in m for m in messages), messages[-20:]
    assert len(before) < len(after)
    return eid


def netns_a_killed_node_costs_only_its_conversations_in_flight(cluster):
    store = SQLiteStore(paths.sqlite_path())
    # 8 conversations of 3 turns, ~0.6 s a turn: shares in flight on both nodes when one dies.
    config = _config(runs=4, sequences=("film", "thriller"), delay_s=0.05)
    _kill_mid_run(cluster, store, config, stored_first_s=60)


def netns_stop_reaches_every_slot_within_seconds(cluster):
    store = SQLiteStore(paths.sqlite_path())
    config = _config(runs=3, delay_s=0.2)  # 9 conversations, ~2.4 s a turn
    eid = jobs.enqueue(store, config, LOCAL_ADMIN)
    thread = _run_in_thread(store)
    two_busy = lambda: sum("conversation(s):" in e["message"] for e in store.list_events(eid)) >= 2  # noqa: E731
    assert _wait(two_busy, 60)
    time.sleep(1.0)
    asked = time.monotonic()
    assert jobs.request_stop(store, eid, LOCAL_ADMIN) == "stopping"
    thread.join(30)
    took = time.monotonic() - asked
    assert not thread.is_alive() and took < 8
    assert store.get_evaluation(eid)["status"] == "stopped"
    count = store.count_responses(eid)
    time.sleep(2.0)
    assert (
        store.count_responses(eid) == count < len(_expected_keys(eid, config))
    )  # every slot stopped writing


@pytest.mark.slow
def netns_the_bundled_model_runs_over_two_nodes_and_survives_a_killed_node(cluster, bundled_model):
    store = SQLiteStore(paths.sqlite_path())
    gemma = {"kind": "bundled", "options": {"n_threads": 1}}
    config = _config(runs=2, sequences=("film", "thriller"), model=gemma, max_tokens=24)
    eid = _kill_mid_run(cluster, store, config, stored_first_s=300)
    c, node = cluster
    assert set(_stored_by_node(store, eid)) == {c.head_node.node_id, node.node_id}
    assert all(r["response"].strip() for r in store.list_responses(eid))
