"""Links to a run or experiment (?run=ID, ?experiment=ID), and the display name a browser gives its runs.

AppTest runs small scripts that call the shared helpers in dashboard/components.py, and the router itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.errors import InvalidArgument, LabError
from engine.jobs import queue as jobs
from engine.params import PERSON_NAME_MAX, person_name
from engine.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120

LINKS_APP = """
import streamlit as st
from dashboard.components import copy_link, query_selection

picked = query_selection("run", ["20240101-a", "20240102-b", 7])
st.markdown(f"picked={picked!r}")
st.markdown(f"url={copy_link('run', '20240102-b', key='link')}")
"""

NAME_APP = """
import streamlit as st
from dashboard.components import current_author, name_field

name_field()
st.markdown(f"author={current_author()!r}")
"""


def script(tmp_path: Path, text: str) -> AppTest:
    path = tmp_path / "app.py"
    path.write_text(text)
    return AppTest.from_file(str(path), default_timeout=TIMEOUT)


def shown(at: AppTest, prefix: str) -> str:
    return next(m.value for m in at.markdown if m.value.startswith(prefix)).removeprefix(prefix)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


# -- links ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "picked"),
    [({}, "None"), ({"run": "20240101-a"}, "'20240101-a'"), ({"run": "7"}, "7"), ({"run": "gone"}, "None")],
)
def test_query_selection_picks_only_an_offered_option(tmp_path, query, picked):
    at = script(tmp_path, LINKS_APP)
    for key, value in query.items():
        at.query_params[key] = value
    ok(at.run())
    assert shown(at, "picked=") == picked  # an id not among the options selects nothing


def test_copy_link_shows_the_address_that_opens_the_run(tmp_path):
    at = ok(script(tmp_path, LINKS_APP).run())
    url = shown(at, "url=")
    assert url == "/runs?run=20240102-b"  # no browser address in AppTest: root-relative
    assert [c.value for c in at.code] == [url]  # st.code: the copy icon copies exactly this


def test_copy_link_uses_the_browsers_own_address(tmp_path, monkeypatch):
    import streamlit as st

    from dashboard import components

    monkeypatch.setattr(type(st.context), "url", property(lambda self: "http://lab.school:8501/runs?x=1"))
    assert (
        components.link_url("experiment", "exp 1/2")
        == "http://lab.school:8501/experiments?experiment=exp+1%2F2"
    )
    monkeypatch.setattr(st, "get_option", lambda key: "/lab/" if key == "server.baseUrlPath" else None)
    assert components.link_url("run", "r1") == "http://lab.school:8501/lab/runs?run=r1"


@pytest.mark.parametrize(("param", "title"), [("run", "Runs"), ("experiment", "Experiments")])
def test_a_link_to_the_home_address_opens_the_items_page(param, title):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.query_params[param] = "some-id"
    ok(at.run())
    assert any(t.value.endswith(title) for t in at.title), [t.value for t in at.title]
    assert at.query_params[param] == ["some-id"] or at.query_params[param] == "some-id"  # kept for the page


def test_the_home_address_without_a_link_stays_home():
    at = ok(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
    assert [t.value for t in at.title] == [":material/neurology: Classifier Lab"]


# -- display name ----------------------------------------------------------------------------------------
def test_person_name_is_checked():
    assert person_name("  Ada L.  ") == "Ada L." and person_name("Zoë 李") == "Zoë 李"
    assert person_name("") is None and person_name("   ") is None and person_name(None) is None
    assert person_name("x" * PERSON_NAME_MAX) == "x" * PERSON_NAME_MAX
    for bad in ("x" * (PERSON_NAME_MAX + 1), "Ada\nL.", "Ada\x00", "Eve\u202eliA", "zero\u200bwidth", 42):
        with pytest.raises(InvalidArgument):
            person_name(bad)


def test_name_field_sets_the_author_and_the_browser_cookie(tmp_path):
    at = ok(script(tmp_path, NAME_APP).run())
    assert shown(at, "author=") == "None" and not at.get("html")  # nothing to remember yet
    at.text_input(key="author_name").input("Zoë Ng").run()
    ok(at)
    assert shown(at, "author=") == "'Zoë Ng'" and not at.error
    (html,) = at.get("html")
    assert "document.cookie" in html.proto.body and "classifier_lab_name=Zo%C3%AB%20Ng;" in html.proto.body


# (a longer name cannot be typed: the field stops at PERSON_NAME_MAX characters)
@pytest.mark.parametrize("bad", ["tab\there", "Eve\u202eliA", "line\u2028break"])
def test_name_field_refuses_a_bad_name_and_keeps_none(tmp_path, bad):
    at = ok(script(tmp_path, NAME_APP).run())
    at.text_input(key="author_name").input(bad).run()
    ok(at)
    assert shown(at, "author=") == "None"
    assert at.error and "display name" in at.error[0].value
    assert not at.get("html")  # the remembered name is not overwritten with a bad one


def test_name_field_starts_from_the_cookie_the_browser_sent(tmp_path, monkeypatch):
    from dashboard import components

    sent = {"classifier_lab_name": "Ada%20L."}
    monkeypatch.setattr(components, "_browser_cookie", lambda key: sent.get(key))
    at = ok(script(tmp_path, NAME_APP).run())
    assert at.text_input(key="author_name").value == "Ada L."
    assert shown(at, "author=") == "'Ada L.'" and not at.get("html")  # already remembered
    sent["classifier_lab_name"] = "Eve%E2%80%AEliA"  # a hand-edited cookie is ignored, never shown
    at = ok(script(tmp_path, NAME_APP).run())
    assert at.text_input(key="author_name").value == "" and shown(at, "author=") == "None"


def test_train_page_starts_the_run_with_the_sidebar_name(monkeypatch):
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, params, store=None: started.append(params) or "job-x")
    at = AppTest.from_file(str(ROOT / "dashboard" / "train.py"), default_timeout=TIMEOUT)
    at.session_state["author"] = "Ada L."  # what name_field leaves for the pages
    ok(at.run())
    next(b for b in at.button if b.label == "Start training").click().run()
    ok(at)
    assert len(started) == 1 and started[0]["author"] == "Ada L."


def test_a_retrain_stores_its_author_even_when_it_fails(tmp_path):
    from engine.runs import retrain

    config = retrain.RunConfig(source=str(tmp_path / "no such folder"), weights="random", author=" Ada L. ")
    assert config.author == "Ada L."
    with pytest.raises(LabError):
        retrain.retrain(config)
    (run,) = RunStore().list_runs()
    assert run.status == "failed" and run.author == "Ada L."
    with pytest.raises(InvalidArgument, match="display name"):
        retrain.RunConfig.from_dict({"source": "demo", "author": "a\nb"})  # job params are checked too
