"""The app beyond loopback asks for a password unless told not to."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest

from shortcut_detect.app import AUTH_ENV, free_port, resolve_auth, start_app
from shortcut_detect.app.inputs import ExplorerInputError


@pytest.fixture(autouse=True)
def _no_auth_in_environment(monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)


def test_loopback_needs_no_password_and_an_exposed_host_does(monkeypatch):
    assert resolve_auth("127.0.0.1") is None
    assert resolve_auth("localhost") is None
    with pytest.raises(ExplorerInputError, match=r"Serving on 0\.0\.0\.0 .*needs a password"):
        resolve_auth("0.0.0.0")
    assert resolve_auth("0.0.0.0", no_auth=True) is None
    assert resolve_auth("0.0.0.0", "ann:se:cret") == ("ann", "se:cret")
    assert resolve_auth("127.0.0.1", ("bob", "pw")) == ("bob", "pw")
    monkeypatch.setenv(AUTH_ENV, "env-user:env-pass")
    assert resolve_auth("0.0.0.0") == ("env-user", "env-pass")
    assert resolve_auth("0.0.0.0", "ann:pw") == ("ann", "pw")  # the argument wins


@pytest.mark.parametrize(
    ("text", "problem"), [("", "an empty value"), ("user", "no colon"), (":pw", "an empty part")]
)
def test_a_malformed_login_is_refused(text, problem, monkeypatch):
    with pytest.raises(ExplorerInputError, match=f"auth= must be USER:PASS .*got {problem}"):
        resolve_auth("0.0.0.0", text)
    monkeypatch.setenv(AUTH_ENV, text)
    with pytest.raises(ExplorerInputError, match=f"{AUTH_ENV} must be USER:PASS"):
        resolve_auth("0.0.0.0")


def test_the_command_refuses_an_exposed_host_without_a_password(monkeypatch, capsys):
    import shortcut_detect.app as app_module
    from shortcut_detect.cli import EXIT_ERROR, main

    def no_serving(*args, **kwargs):
        raise AssertionError("started serving")

    monkeypatch.setattr(app_module, "start_app", no_serving)
    assert main(["app", "--host", "0.0.0.0"]) == EXIT_ERROR
    error = capsys.readouterr().err
    assert "give --auth USER:PASS (or set SHORTCUT_DETECT_AUTH=USER:PASS)" in error
    assert "or --no-auth to serve without one" in error
    calls = {}
    monkeypatch.setattr(app_module, "start_app", lambda *a, **k: calls.update(k) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        app_module.run_app(host="0.0.0.0", no_auth=True)
    assert calls["auth"] is None
    assert "without a password" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        app_module.run_app(host="0.0.0.0", auth="ann:pw")
    assert calls["auth"] == ("ann", "pw")
    assert "Login required: user 'ann'" in capsys.readouterr().err


def test_a_served_page_with_a_password_refuses_anonymous_requests(explorer):
    running = start_app(explorer=explorer, port=free_port(), auth=("ann", "secret"))
    try:
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(running.url + "config", timeout=30)
        login = urllib.parse.urlencode({"username": "ann", "password": "wrong"}).encode()
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(running.url + "login", data=login, timeout=30)
        login = urllib.parse.urlencode({"username": "ann", "password": "secret"}).encode()
        with urllib.request.urlopen(running.url + "login", data=login, timeout=30) as response:
            assert response.status == 200
    finally:
        running.close()
