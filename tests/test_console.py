"""The web console in a real headless Chromium against a real `sluice serve` on the demo models.

One gateway and one browser for the module; a traffic thread keeps mlp and churn busy all along, so
the pages have live figures and every rollout window has data. Rollouts use intervals of a couple of
seconds. Every wait is on a condition with a deadline. Screenshots of the models page and of a model
page mid-rollout go to $SLUICE_CONSOLE_SCREENSHOTS_DIR (`make console-screenshots` points it at docs/),
else to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.cli.demo import build_demo_repository
from tests.browser import chromium, require_browser, wait_for
from tests.helpers import GatewayProcess, Paced, gateway_process, wait_until

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x id=pwned onerror=alert(1)>"
"""A model folder whose name is HTML: the console must show it as text."""
DEMO_VERSIONS = {
    "mlp": ["1", "2"],
    "classifier": ["1", "2"],
    "multi_io": ["1"],
    "dtypes": ["1"],
    "fixed": ["1"],
    "churn": ["1", "2", "3"],
}


class Traffic:
    """mlp and churn requests, about 60 a second in all, until stopped (or ten minutes at most)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(5)
        deadline = time.monotonic() + 600
        mlp = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                row = rng.standard_normal(8).astype(np.float32).tolist()
                churn = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": row}]}
                try:
                    http.post("/v2/models/mlp/infer", json=mlp)
                    http.post("/v2/models/churn/infer", json=churn)
                except httpx.HTTPError:
                    pass
                self.stop.wait(0.03)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    require_browser()
    tmp = tmp_path_factory.mktemp("console")
    repo = build_demo_repository(tmp / "models")
    (repo / HOSTILE).mkdir()
    with gateway_process(repo, "--grpc-port", "-1", tmp=tmp) as gw, Traffic(gw.http_url):
        yield gw


@pytest.fixture(scope="module")
def browser(gw: GatewayProcess) -> Iterator[Any]:
    """A Chromium logged in with the gateway's admin token (named "ci")."""
    with chromium() as driver:
        log_in(driver, gw, gw.admin_token)
        wait_for(driver, lambda d: by_css(d, "#actor").text == "ci", 15, "the models page after logging in")
        yield driver


@pytest.fixture(scope="module")
def admin(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.http_url, headers=gw.admin_headers, timeout=60) as client:
        yield client


def shots_dir(tmp_path: Path) -> Path:
    where = os.environ.get("SLUICE_CONSOLE_SCREENSHOTS_DIR")
    path = Path(where) if where else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def log_in(driver: Any, gw: GatewayProcess, token: str) -> None:
    driver.get(f"{gw.http_url}/console/login")
    field = by_css(driver, "#token")
    field.clear()
    field.send_keys(token)
    by_css(driver, "#login").click()


def confirm(driver: Any) -> None:
    """Accept the confirmation every action asks for."""
    from selenium.webdriver.support import expected_conditions

    alert = wait_for(driver, expected_conditions.alert_is_present(), 10, "the confirmation dialog")
    alert.accept()


def press(driver: Any, selector: str) -> None:
    """Click a button of a panel that htmx may redraw meanwhile (then the new one is clicked)."""
    wait_for(driver, lambda d: by_css(d, selector).click() is None, 15, f"a click on {selector}")


def flash(driver: Any, previous: str = "") -> str:
    """The action's answer in the page (a new one, different from `previous`)."""
    return str(wait_for(driver, lambda d: (t := by_css(d, "#flash").text) and t != previous and t, 60, "an answer"))


def screenshot(driver: Any, path: Path, height: int = 1900) -> None:
    """A tall screenshot (the charts sit below the fold), then the usual window again."""
    driver.set_window_size(1440, height)
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(1440, 1000)


def csp_violations(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


@contextmanager
def console_client(gw: GatewayProcess, token: str | None = None, url: str | None = None) -> Iterator[httpx.Client]:
    """An HTTP client logged in to the console as a browser is: the login form's nonce, then the token
    (at `url`: the gateway's, or one worker's own listener)."""
    with httpx.Client(base_url=url or gw.http_url, timeout=30) as http:
        form = http.get("/console/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
        assert nonce, (form.status_code, form.headers, form.text)
        answer = http.post("/console/login", data={"nonce": nonce.group(1), "token": token or gw.admin_token})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/", answer.text
        assert http.cookies.get("sluice_console")
        yield http


def row_cells(html: str, version: str) -> list[str]:
    """The text of each cell of a version's row in a versions table (the first such table in `html`)."""
    row = html.split(f'<tr class="version" data-version="{version}">', 1)[1].split("</tr>", 1)[0]
    return [re.sub(r"<[^>]+>", "", unescape(cell)).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


# -- login and what is shown without a session ----------------------------------------------------------


def test_without_a_session_only_the_login_page_is_shown(gw: GatewayProcess) -> None:
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        for path in ("/console/", "/console/models/churn", "/console/models/churn/runs/1"):
            answer = http.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/console/login", path
        panel = http.get("/console/models/churn/panels/status", headers={"HX-Request": "true"})
        assert panel.status_code == 401 and panel.headers["hx-redirect"] == "/console/login"
        assert http.get("/console/fragments/models").status_code == 303
        assert http.post("/console/models/churn/actions/rollback").status_code == 401
        login = http.get("/console/login")
        assert login.status_code == 200 and "churn" not in login.text and "mlp" not in login.text
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in login.text and " style=" not in login.text


def test_every_page_has_a_favicon_and_the_token_field_says_what_it_holds(gw: GatewayProcess) -> None:
    """/favicon.ico answered 404 on every page; a password manager could not tell the token field's purpose."""
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        icon = http.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.content.lstrip().startswith(b"<svg")
        login = http.get("/console/login").text
        link = re.search(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)">', login)
        assert link and http.get(unescape(link.group(1))).content == icon.content
        field = re.search(r"<input [^>]*id=\"token\"[^>]*>", login)
        assert field and 'autocomplete="current-password"' in field.group(0) and 'type="password"' in field.group(0)
    with console_client(gw) as http:
        for page in ("/console/", "/console/models/mlp"):
            assert link.group(0) in http.get(page).text, page


def test_a_wrong_token_is_refused_and_the_right_one_gives_a_strict_httponly_session(gw: GatewayProcess) -> None:
    with chromium() as browser:
        check_login(gw, browser)


def check_login(gw: GatewayProcess, browser: Any) -> None:
    log_in(browser, gw, "not-the-token-" + "x" * 20)
    error = wait_for(browser, lambda d: by_css(d, "#login-error").text, 15, "the login error")
    assert "invalid admin token" in error
    assert browser.get_cookie("sluice_console") is None
    assert browser.current_url.endswith("/console/login")

    log_in(browser, gw, gw.admin_token)
    wait_for(browser, lambda d: by_css(d, "#actor").text == "ci", 15, "the models page")
    assert gw.admin_token not in browser.current_url
    cookie = browser.get_cookie("sluice_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert gw.admin_token not in cookie["value"]
    assert not csp_violations(browser)


def test_logging_out_ends_the_session_on_the_server(gw: GatewayProcess) -> None:
    """A copy of the cookie taken before the logout is refused after it (it worked until its expiry)."""
    with chromium() as driver, console_client(gw) as other:
        log_in(driver, gw, gw.admin_token)
        wait_for(driver, lambda d: by_css(d, "#actor").text == "ci", 15, "the models page")
        copied = {"sluice_console": driver.get_cookie("sluice_console")["value"]}
        with httpx.Client(base_url=gw.http_url, cookies=copied, timeout=30) as http:
            assert http.get("/console/").status_code == 200
            by_css(driver, ".logout button").click()
            wait_for(driver, lambda d: d.current_url.endswith("/console/login"), 15, "the login page")
            assert driver.get_cookie("sluice_console") is None
            answer = http.get("/console/")
            assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
            panel = http.get("/console/models/mlp/panels/status", headers={"HX-Request": "true"})
            assert panel.status_code == 401
            assert http.post("/console/logout").status_code == 303  # logging out again changes nothing
        # The same token's other sessions go on.
        assert other.get("/console/").status_code == 200


def test_an_action_needs_the_sessions_csrf_token(gw: GatewayProcess, browser: Any, admin: httpx.Client) -> None:
    session = {"sluice_console": browser.get_cookie("sluice_console")["value"]}
    before = admin.get("/admin/audit", params={"model": "mlp"}).json()["events"]
    with httpx.Client(base_url=gw.http_url, cookies=session, timeout=30) as http:
        refused = http.post("/console/models/mlp/actions/shadow", data={"shadows": "2"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        forged = http.post("/console/models/mlp/actions/shadow", data={"shadows": "2"}, headers={"X-CSRF-Token": "x"})
        assert forged.status_code == 403
        cross = http.post(
            "/console/models/mlp/actions/shadow", data={"shadows": "2"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert cross.status_code == 403
    assert admin.get("/admin/audit", params={"model": "mlp"}).json()["events"] == before
    assert admin.get("/admin/models/mlp/traffic").json()["shadows"] == []


# -- the models page -----------------------------------------------------------------------------------


def test_the_models_page_lists_every_demo_model_and_version_with_its_state(gw: GatewayProcess, browser: Any) -> None:
    browser.get(f"{gw.http_url}/console/")

    def states(d: Any) -> dict[str, dict[str, str]]:
        """Each model's versions and their states, read in one go (the page redraws its cards every 3 s)."""
        cards = all_css(d, "section.model-card[data-model]")
        return {
            card.get_attribute("data-model"): {
                row.get_attribute("data-version"): row.find_element("css selector", ".state").text
                for row in card.find_elements("css selector", "tr.version")
            }
            for card in cards
        }

    shown = wait_for(browser, states, 15, "the models page's cards")
    for model, versions in DEMO_VERSIONS.items():
        assert sorted(shown[model]) == versions, model
        for version, state in shown[model].items():
            assert state.startswith("READY"), (model, version)
    # Live figures arrive without a reload: the traffic thread's mlp requests show as req/s.
    wait_for(
        browser,
        lambda d: float(by_css(d, 'section[data-model="mlp"] tr.version[data-version="2"] td:nth-child(5)').text) > 0,
        30,
        "mlp's live req/s",
    )
    wait_for(browser, lambda d: all_css(d, 'section[data-model="mlp"] .chart.spark .uplot'), 30, "the small charts")
    assert not csp_violations(browser)


def test_a_model_name_with_html_in_it_is_shown_as_text(gw: GatewayProcess, browser: Any) -> None:
    browser.get(f"{gw.http_url}/console/")
    card = by_css(browser, "section.model-card .model-link")
    names = [e.text for e in all_css(browser, "section.model-card .model-link")]
    assert HOSTILE in names, names
    assert card is not None
    assert not all_css(browser, "#pwned") and not all_css(browser, "img")
    error = [e.text for e in all_css(browser, ".model-error") if HOSTILE in e.text]
    assert error and "not a valid model name" in error[0]
    # Its own page, reached through the escaped link, shows the name as text too.
    link = next(e for e in all_css(browser, "section.model-card .model-link") if e.text == HOSTILE)
    link.click()
    wait_for(browser, lambda d: by_css(d, "h1").text == HOSTILE, 15, "the model page")
    assert not all_css(browser, "#pwned")
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = browser.switch_to.alert.text


# -- rollouts --------------------------------------------------------------------------------------------


def fill(driver: Any, selector: str, value: str) -> None:
    field = by_css(driver, selector)
    field.clear()
    field.send_keys(value)


def set_checks(driver: Any, wanted: dict[str, tuple[str, str]]) -> None:
    """Tick exactly these checks, with (threshold, min_requests)."""
    for box in all_css(driver, "#start-canary input[type=checkbox]"):
        name = box.get_attribute("name").removeprefix("check_")
        if box.is_selected() != (name in wanted):
            box.click()
        if name in wanted:
            fill(driver, f"#threshold-{name}", wanted[name][0])
            fill(driver, f"#min-requests-{name}", wanted[name][1])


def models_page_screenshot(gw: GatewayProcess, driver: Any, path: Path) -> None:
    """The models page mid-rollout, in a second tab (the first one stays as it is, unreloaded)."""
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    try:
        driver.get(f"{gw.http_url}/console/")
        wait_for(driver, lambda d: all_css(d, 'section[data-model="mlp"] .rollout-note'), 15, "the rollout's note")
        screenshot(driver, path, 1300)
    finally:
        driver.close()
        driver.switch_to.window(first)


def step_of(driver: Any) -> tuple[str, int]:
    rollout = by_css(driver, "#rollout")
    return rollout.get_attribute("data-phase"), int(rollout.get_attribute("data-step"))


def test_a_canary_started_from_the_form_advances_live_and_rolls_back_with_the_button(
    gw: GatewayProcess, browser: Any, admin: httpx.Client, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    assert admin.put("/admin/models/mlp/traffic", json={"stable": "1"}).status_code == 200
    browser.get(f"{gw.http_url}/console/models/mlp")
    browser.execute_script("window.sluiceNoReload = 'still here';")

    # The form validates as the API does: the same body is refused with the same message.
    Select(by_css(browser, "#canary-version")).select_by_value("2")
    fill(browser, "#steps", "50, 10")
    by_css(browser, "#start-rollout").click()
    confirm(browser)
    refused = flash(browser)
    api = admin.post("/admin/models/mlp/rollout", json={"canary": "2", "steps": ["50", "10"], "checks": []})
    assert refused == f"422: {api.json()['error']}"

    fill(browser, "#steps", "10, 20, 30, 40, 50, 60, 70, 80, 90")  # 18 s at least: time to press Roll back
    fill(browser, "#interval", "2")
    fill(browser, "#failure-threshold", "3")
    set_checks(browser, {"error_ratio": ("1.5", "3")})
    by_css(browser, "#start-rollout").click()
    confirm(browser)
    started = flash(browser, refused)
    assert started.startswith("rollout of version 2 started: 10%, 20%"), started

    # The page follows the controller through its steps by itself.
    wait_for(browser, lambda d: step_of(d)[0] == "progressing", 20, "the rollout in the page")
    wait_for(browser, lambda d: step_of(d)[1] >= 3, 60, "the rollout to reach its third step")
    assert step_of(browser)[0] == "progressing"
    assert len(all_css(browser, "#timeline .step.done")) >= 2
    assert all_css(browser, "#windows .verdict.pass")
    screenshot(browser, shots_dir(tmp_path) / "console-model-rollout.png")
    models_page_screenshot(gw, browser, shots_dir(tmp_path) / "console-models.png")

    press(browser, "#do-rollback")
    confirm(browser)
    assert flash(browser, started) == "rolled back: all traffic on the stable version"
    wait_for(browser, lambda d: step_of(d)[0] == "rolled_back", 15, "the rolled-back rollout")
    wait_for(
        browser,
        lambda d: (
            by_css(d, '#versions tr[data-version="1"] .weight').text == "100%"
            and by_css(d, '#versions tr[data-version="2"] .weight').text == "0%"
        ),
        15,
        "all traffic on the stable in the page",
    )
    wait_for(browser, lambda d: "rolled back by ci" in by_css(d, "#rollout-reason").text, 15, "the rollback's reason")
    wait_for(browser, lambda d: any(e.text == "ci" for e in all_css(d, "#audit-log .actor")), 15, "the audit log")
    assert browser.execute_script("return window.sluiceNoReload;") == "still here"

    model = admin.get("/admin/models/mlp").json()
    weights = {v["version"]: v["weight"] for v in model["versions"]}
    assert weights == {"1": 100.0, "2": 0.0} and model["policy"]["canary"] is None
    rollout = admin.get("/admin/models/mlp/rollout").json()
    assert rollout["phase"] == "rolled_back" and rollout["reason"] == "rolled back by ci"
    events = admin.get("/admin/audit", params={"model": "mlp"}).json()["events"]
    assert [e["actor"] for e in events if e["action"] in ("rollout.start", "rollout.rollback")] == ["ci", "ci"]


def test_a_failing_canary_rolled_back_by_the_controller_shows_the_failing_check_and_its_figures(
    gw: GatewayProcess, browser: Any, admin: httpx.Client
) -> None:
    assert admin.put("/admin/models/churn/traffic", json={"stable": "1"}).status_code == 200
    spec = {
        "canary": "3",
        "steps": [25, 50],
        "interval_s": 2,
        "failure_threshold": 2,
        "checks": [{"name": "error_ratio", "threshold": 1.5, "min_requests": 5}],
    }
    assert admin.post("/admin/models/churn/rollout", json=spec).status_code == 201
    browser.get(f"{gw.http_url}/console/models/churn")
    wait_for(browser, lambda d: step_of(d)[0] == "rolled_back", 60, "the controller's rollback")
    rollout = admin.get("/admin/models/churn/rollout").json()
    assert rollout["phase"] == "rolled_back"
    failed = [r for r in rollout["last_results"] if r["verdict"] == "fail"]
    assert failed and failed[0]["check"] == "error_ratio"
    reason = by_css(browser, "#rollout-reason").text
    assert reason == f"Reason: {rollout['reason']}" and "error_ratio" in reason
    shown = [e.text for e in all_css(browser, "#windows .verdict.fail")]
    assert any(f"error_ratio fail {failed[0]['detail']}" == text for text in shown), (shown, failed)
    assert re.search(r"canary error rate \d+\.\d\d% \(\d+/\d+\) > limit", failed[0]["detail"])
    # The step it failed on: mostly the first, but a window of a few canary requests can miss the fifth of them
    # that fail, and then the next step's window fails instead.
    failed_at = f"{rollout['spec']['steps'][rollout['step']]:g}%"
    assert failed_at in ("25%", "50%"), rollout
    assert by_css(browser, "#timeline .step.failed").text == failed_at
    assert all_css(browser, "#windows .transition.rollback")


# -- monitors --------------------------------------------------------------------------------------------


def test_a_drift_run_started_from_the_page_shows_its_figures_and_opens_its_report(
    gw: GatewayProcess, browser: Any, admin: httpx.Client
) -> None:
    from selenium.webdriver.support.ui import Select

    # The stable's first 400 logged rows are the reference; a window needs at least 100 more.
    wait_until(
        lambda: (
            admin.post("/admin/models/churn/monitor/drift", json={"version": "1"}).json()["runs"][0]["status"] == "ok"
        ),
        timeout=90,
        interval=2,
        what="enough churn traffic for a drift window",
    )
    browser.get(f"{gw.http_url}/console/models/churn")
    Select(by_css(browser, "#monitor-version")).select_by_value("1")
    by_css(browser, "#run-drift").click()
    confirm(browser)
    answer = flash(browser)
    match = re.fullmatch(r"drift run finished: v1: ok \(run (\d+)\)", answer)
    assert match, answer
    run_id = int(match.group(1))
    stored = admin.get(f"/admin/models/churn/monitor/runs/{run_id}").json()
    assert stored["actor"] == "ci" and stored["status"] == "ok"
    figures = stored["figures"]
    expected = (
        f"drift share {figures['drift_share'] * 100:.1f}%, {figures['drifted_features']} of {figures['features']} "
        "features drifted"
    )
    row = wait_for(browser, lambda d: by_css(d, f'#runs tr[data-run="{run_id}"]'), 20, "the run in the runs table")
    assert expected in row.text
    wait_for(browser, lambda d: all_css(d, "#monitor .chart .uplot"), 20, "the drift charts")

    row.find_element("css selector", "a").click()
    wait_for(browser, lambda d: by_css(d, "#run-status").text == "ok", 15, "the run's page")
    assert f"{figures['drift_share'] * 100:.1f}%" in by_css(browser, "#run-figures").text
    columns = {r.find_elements("css selector", "td")[0].text for r in all_css(browser, "#columns tbody tr")}
    assert {"tenure", "monthly_charges", "usage"} <= columns
    frame = by_css(browser, "#report")
    assert frame.get_attribute("sandbox") == "allow-scripts"
    browser.switch_to.frame(frame)
    try:
        wait_for(browser, lambda d: "tenure" in by_css(d, "body").text, 30, "Evidently's report to render")
    finally:
        browser.switch_to.default_content()
    report = httpx.get(
        f"{gw.http_url}/console/models/churn/runs/{run_id}/report",
        cookies={"sluice_console": browser.get_cookie("sluice_console")["value"]},
        timeout=30,
    )
    assert report.status_code == 200 and report.headers["content-security-policy"].startswith("sandbox allow-scripts")
    assert unescape(report.text).count("tenure") > 0


# -- live figures ------------------------------------------------------------------------------------------


def test_live_req_s_reads_the_rate_a_client_sends(gw: GatewayProcess) -> None:
    """A client sending exactly 10 req/s to `fixed` (nobody else does) reads 10 on both pages, on average
    over many readings (it read about 11: the partial newest bucket was counted)."""
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [1.0] * 12}]}
    readings: dict[str, list[float]] = {"models": [], "model": []}
    with console_client(gw) as http, Paced(gw.http_url, "fixed", body, 10.0) as paced:
        # Both pages' live figures cover the ten seconds that end a second ago ([now - 11, now - 1]): after 15 s of
        # paced traffic they hold nothing else.
        wait_until(lambda: paced.sent >= 150, timeout=120, interval=0.5, what="15 s of paced requests")
        for _ in range(12):  # six seconds: six windows, each reading twice
            models = http.get("/console/fragments/models")
            card = models.text.split('data-model="fixed"', 1)[1]
            readings["models"].append(float(row_cells(card, "1")[4]))
            status = http.get("/console/models/fixed/panels/status")
            readings["model"].append(float(row_cells(status.text, "1")[4]))
            time.sleep(0.5)
        assert paced.failed == 0
    for page, values in readings.items():
        mean = sum(values) / len(values)
        assert 9.6 <= mean <= 10.4, (page, values)


# -- the audit log ------------------------------------------------------------------------------------------


def test_the_audit_log_says_what_each_event_holds_in_plain_text(
    gw: GatewayProcess, browser: Any, admin: httpx.Client
) -> None:
    sticky = "<b>user</b>&id"
    assert admin.patch("/admin/models/classifier/traffic", json={"sticky_parameter": sticky}).status_code == 200
    try:
        browser.get(f"{gw.http_url}/console/models/classifier")
        rows = wait_for(browser, lambda d: all_css(d, '#audit-log tr[data-action="policy.set"]'), 15, "the audit log")
        # Only the sticky parameter changed, and the line says so; the values read as the text they are.
        line = rows[0].find_elements("css selector", "td")[3].text.splitlines()[0]
        assert line == f"sticky parameter none → {sticky}"
        after = rows[0].find_elements("css selector", "pre")[1].get_attribute("textContent")
        assert f'"sticky_parameter": "{sticky}"' in after and "\\u003c" not in after
        assert not all_css(browser, "#audit-log b")
        # The start-up event lists each version's artifact digest (it read "version None: None").
        digests = admin.get("/admin/models/classifier").json()["versions"]
        artifacts = by_css(browser, '#audit-log tr[data-action="version.artifacts"] td:nth-child(4)').text
        first = artifacts.splitlines()[0]
        expected = ", ".join(f"v{v['version']} sha256 {v['sha256'][:12]}…" for v in digests)
        assert first == f"artifacts at start: {expected}", first
        assert all("None" not in e.text.splitlines()[0] for e in all_css(browser, "#audit-log td:nth-child(4)"))
    finally:
        admin.patch("/admin/models/classifier/traffic", json={"sticky_parameter": None})


# -- the action buttons and the policy forms follow the model's state ---------------------------------------

BUTTONS = ("pause", "resume", "promote", "abort", "rollback")


def enabled_buttons(driver: Any) -> set[str]:
    return {name for name in BUTTONS if by_css(driver, f"#do-{name}").is_enabled()}


def test_the_buttons_and_the_policy_forms_follow_the_rollout_without_a_reload(
    gw: GatewayProcess, browser: Any, admin: httpx.Client
) -> None:
    from selenium.webdriver.support.ui import Select

    assert admin.put("/admin/models/classifier/traffic", json={"stable": "1"}).status_code == 200
    browser.get(f"{gw.http_url}/console/models/classifier")
    browser.execute_script("window.sluiceNoReload = 'still here';")
    for summary in all_css(browser, "#actions details:not([open]) > summary"):
        summary.click()
    # No rollout and no canary: nothing to pause, resume, promote, abort or roll back.
    wait_for(browser, lambda d: enabled_buttons(d) == set(), 15, "every rollout button disabled")

    spec = {"canary": "2", "steps": [10, 50], "interval_s": 600}
    assert admin.post("/admin/models/classifier/rollout", json=spec).status_code == 201
    try:
        wait_for(browser, lambda d: enabled_buttons(d) == {"pause", "promote", "abort", "rollback"}, 15, "progressing")
        # The traffic form shows what the rollout set, as the policy line does.
        wait_for(
            browser,
            lambda d: (
                Select(by_css(d, "#traffic-form select[name=canary]")).first_selected_option.get_attribute("value")
                == "2"
                and by_css(d, "#traffic-form input[name=canary_weight]").get_attribute("value") == "10.0"
            ),
            15,
            "the traffic form at the rollout's first step",
        )
        assert admin.post("/admin/models/classifier/rollout/pause").status_code == 200
        wait_for(browser, lambda d: enabled_buttons(d) == {"resume", "promote", "abort", "rollback"}, 15, "paused")

        # A form being edited is left alone; the other one follows the policy.
        weight = by_css(browser, "#traffic-form input[name=canary_weight]")
        weight.clear()
        weight.send_keys("33")
        assert admin.patch("/admin/models/classifier/traffic", json={"shadow_sample_rate": 0.5}).status_code == 200
        wait_for(
            browser,
            lambda d: by_css(d, "#shadow-form input[name=sample_rate]").get_attribute("value") == "0.5",
            15,
            "the shadows form's new sample rate",
        )
        assert by_css(browser, "#traffic-form input[name=canary_weight]").get_attribute("value") == "33"

        press(browser, "#do-abort")
        confirm(browser)
        assert flash(browser) == "rollout aborted: all traffic on the stable version"
        # After the abort there is no canary: promote and roll back no longer apply either.
        wait_for(browser, lambda d: enabled_buttons(d) == set(), 15, "every rollout button disabled again")
        assert admin.post("/admin/models/classifier/promote").status_code == 409
        assert admin.post("/admin/models/classifier/rollback").status_code == 409
        assert browser.execute_script("return window.sluiceNoReload;") == "still here"
    finally:
        admin.post("/admin/models/classifier/rollout/abort")
        admin.put("/admin/models/classifier/traffic", json={"stable": "1"})
