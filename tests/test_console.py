"""The web console in a real browser: Debian's headless Chromium driven by Selenium against
the session's real cluster (Ray Serve, Redis, the stub model over HTTP).

Without Chromium these tests fail (CI must run them); ``AGENT_CLUSTER_SKIP_BROWSER=1`` skips
them on a box without it. Screenshots go to a temporary folder, or to the folder named by
``AGENT_CLUSTER_SCREENSHOTS``: ``make screenshots`` refreshes docs/screenshots/, which
docs/console.md shows, that way."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from serve_app.__main__ import HOW_TO_TALK
from serve_app.api.console import STATIC

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

RESEARCH_AND_CODE = (
    "Research how Redis persistence works and write a Python function that parses a "
    "redis.conf line"
)
REFUND = "Refund $500 to order 42"
BOTH_LANES_FILLING = """
    const filled = (role) => {
      const lane = document.querySelector(`.run:last-child .lane[data-role="${role}"]`);
      return lane && lane.dataset.state === "working" &&
        (lane.querySelector(".tokens").textContent || lane.querySelector(".progress li"));
    };
    return Boolean(filled("researcher") && filled("coder"));"""
SKIP = "AGENT_CLUSTER_SKIP_BROWSER"
SHOTS = "AGENT_CLUSTER_SCREENSHOTS"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get(SKIP) == "1":
        pytest.skip(f"{SKIP}=1")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("no chromium/chromedriver on PATH: `make browser` installs Debian's "
                    f"chromium and chromium-driver ({SKIP}=1 skips these tests)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    # The driver is given: Selenium Manager (which would download one) is never asked.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, cluster_url):
    """The browser on one tab, back at a laptop's window size, signed in as nobody."""
    for handle in browser.window_handles[1:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])
    browser.set_window_size(1280, 900)
    browser.get(f"{cluster_url}/ui/")
    browser.execute_script("localStorage.clear()")
    return browser


def wait_for(driver, check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda _: check(), message=what or getattr(check, "__name__", ""))


@pytest.fixture(scope="module")
def shot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], None]:
    """``shot(driver, name)``: the page as a PNG, in ``$AGENT_CLUSTER_SCREENSHOTS`` if set
    (never docs/ on an ordinary run: the tracked images would change at each one)."""
    folder = Path(os.environ.get(SHOTS) or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)

    def save(driver, name: str) -> None:
        assert driver.save_screenshot(str(folder / name)), name

    return save


def text_of(driver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def lane(driver, role: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'.run:last-child .lane[data-role="{role}"]')
    return found[0] if found else None


def lane_tokens(driver, role: str) -> str:
    """A lane's text as streamed (textContent: not trimmed or reflowed by layout)."""
    node = lane(driver, role)
    return node.find_element(By.CLASS_NAME, "tokens").get_attribute("textContent") if node else ""


def send_message(driver, text: str) -> str:
    """Type into the chat's box and press Enter (the keyboard path); returns the thread id."""
    box = driver.find_element(By.ID, "message")
    box.send_keys(text, Keys.ENTER)
    wait_for(driver, lambda: "Thread " in text_of(driver, "#thread-label"), what="a thread")
    wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, ".run"), what="a run")
    return driver.execute_script(
        "return new URLSearchParams(location.search).get('thread')")


def new_chat(driver, cluster_url: str) -> None:
    driver.get(f"{cluster_url}/ui/chat")
    driver.find_element(By.ID, "new-thread").click()
    wait_for(driver, lambda: "Thread " in text_of(driver, "#thread-label"), what="new thread")


def paused_refund(cluster_url: str) -> str:
    """A thread whose refund waits for approval, made over HTTP (not through the page)."""
    tid = f"console-{uuid.uuid4().hex[:8]}"
    paused = httpx.post(f"{cluster_url}/api/chat", timeout=60,
                        json={"thread_id": tid, "message": REFUND, "stream": False})
    assert paused.status_code == 202, paused.text
    return tid


def inbox_item(driver, tid: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'#pending li[data-thread="{tid}"]')
    return found[0] if found else None


def decided_text(driver, tid: str) -> str:
    return text_of(driver, f'#decided li:has(a[href$="thread={tid}"]) .outcome')


def sse_replay(cluster_url: str, tid: str, run_id: str) -> list[tuple[str, str, Any]]:
    """(id, event, data) of a run's whole stream, joined from its first event."""
    body = httpx.get(f"{cluster_url}/threads/{tid}/runs/{run_id}/stream", timeout=60).text
    frames = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(":"))
        if "data" in fields:
            frames.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return frames


def test_the_ingress_serves_the_console_with_nothing_from_outside(cluster_url):
    with httpx.Client(base_url=cluster_url, timeout=10) as http:
        assert http.get("/ui").headers["location"] == "/ui/"
        for path in ("/ui/", "/ui/chat", "/ui/inbox"):
            page = http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith(
                "text/html"), path
        script = http.get("/ui/static/chat.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        schema = http.get("/ui/api/tools").json()["issue_refund"]["schema"]
    assert schema["required"] == ["amount", "order_id", "reason"]
    assert schema["properties"]["amount"]["type"] == "number"
    for asset in STATIC.iterdir():
        assert "://" not in asset.read_text(), f"{asset.name} refers to another origin"


def test_parallel_specialists_stream_in_their_lanes_then_the_answer(page, cluster_url,
                                                                   stub_admin, shot):
    # Each model call takes over a second, so the two specialists' work overlaps for seconds
    # even on a busy machine; tokens still stream.
    stub_admin.post("/config", json={"ttft_ms": 1200, "tokens_per_s": 80})
    links = {a.get_attribute("href").removeprefix(cluster_url)
             for a in page.find_elements(By.CSS_SELECTOR, "main a")}
    assert links == {"/ui/chat", "/ui/inbox"}
    wait_for(page, lambda: "The cluster is up" in text_of(page, "#health"), what="health")

    new_chat(page, cluster_url)
    tid = send_message(page, RESEARCH_AND_CODE)
    wait_for(page, lambda: page.execute_script(BOTH_LANES_FILLING), timeout=60,
             what="researcher's and coder's lanes filling at once")
    shot(page, "chat-parallel-lanes.png")
    wait_for(page, lambda: "Source: redis-persistence" in text_of(page, ".run .answer"),
             timeout=90, what="the answer")
    wait_for(page, lambda: "tokens" in text_of(page, ".run .facts"), what="the run's facts")

    states = {role: lane(page, role).get_attribute("data-state")
              for role in ("researcher", "coder", "reviewer")}
    assert states == dict.fromkeys(states, "done")
    assert "redis persistence" in lane_tokens(page, "researcher").lower()
    routing = text_of(page, ".run .routing")
    assert "Step 1: supervisor → researcher, coder" in routing
    assert "supervisor → reviewer" in routing and "supervisor → finish" in routing
    assert "Searching corpus for 'redis persistence'..." in text_of(page, ".lane")
    assert "Running Python..." in lane(page, "coder").text
    assert "parse_redis_conf_line" in lane_tokens(page, "coder")
    facts = text_of(page, ".run .facts")
    assert "success" in facts and "tokens (in " in facts, facts
    page.set_window_size(1280, 1300)
    page.execute_script("window.scrollTo(0, 0)")
    shot(page, "chat-answer.png")

    # the turn is in the thread's history: a fresh page shows it
    page.get(f"{cluster_url}/ui/chat?thread={tid}")
    wait_for(page, lambda: page.find_elements(By.CSS_SELECTOR, "#transcript .msg.answer"),
             what="history")
    assert text_of(page, "#transcript .msg.user") == f"You\n{RESEARCH_AND_CODE}"
    assert "Source: redis-persistence" in text_of(page, "#transcript .msg.answer")
    reports = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#transcript .report")]
    assert {"researcher's report", "coder's report"} <= set(reports)
    current = wait_for(page, lambda: page.find_elements(
        By.CSS_SELECTOR, '#thread-list [aria-current="true"]'), what="the thread, listed")[0]
    assert RESEARCH_AND_CODE[:20] in current.text and "idle" in current.text

    # a phone-sized window: everything still fits its width
    page.set_window_size(390, 844)
    assert page.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    page.execute_script("document.querySelector('#transcript .msg.user').scrollIntoView()")
    shot(page, "chat-phone.png")


def test_refund_approved_in_the_inbox_answers_in_the_chat(page, cluster_url, shot):
    new_chat(page, cluster_url)
    tid = send_message(page, REFUND)
    card = wait_for(page, lambda: page.find_elements(By.CSS_SELECTOR, ".run .approval"),
                    what="the approval inline")[0]
    assert "issue_refund requested by coder" in card.text
    assert "amount\n500" in card.text and "order_id\n42" in card.text
    assert "waiting for approval" in lane(page, "coder").text
    shot(page, "chat-approval.png")
    chat_tab = page.current_window_handle

    page.switch_to.new_window("tab")
    page.get(f"{cluster_url}/ui/inbox")
    item = wait_for(page, lambda: inbox_item(page, tid), what="the approval in the inbox")
    assert item.find_element(By.TAG_NAME, "h3").text == "issue_refund requested by coder"
    assert "amount\n500" in item.text and "reason\ncustomer request" in item.text
    assert f"Asked: {REFUND}" in item.text and "waiting " in item.text
    page.execute_script("arguments[0].scrollIntoView()", item)
    shot(page, "inbox.png")
    approve = item.find_element(By.CSS_SELECTOR, 'button[data-action="approve"]')
    approve.send_keys(Keys.ENTER)  # keyboard-operable
    wait_for(page, lambda: "Refund issued: $500 to order 42" in decided_text(page, tid),
             timeout=60, what="the refund's outcome")
    assert inbox_item(page, tid) is None
    heading = text_of(page, "#decided li h3")
    assert heading == "issue_refund: approved by console", heading

    # the chat sees the decision made elsewhere and streams the run it started
    page.switch_to.window(chat_tab)
    wait_for(page, lambda: "Refund issued: $500 to order 42" in text_of(page, ".run:last-child"),
             timeout=30, what="the refund answer in the chat")
    assert "Decided elsewhere" in text_of(page, ".approval.decided")


def test_reject_and_edit_from_the_inbox(page, cluster_url, shot):
    rejected, edited = paused_refund(cluster_url), paused_refund(cluster_url)
    page.get(f"{cluster_url}/ui/inbox")
    page.find_element(By.ID, "signin-summary").click()  # decisions are made as this name
    page.find_element(By.ID, "signin-name").send_keys("alice", Keys.ENTER)
    assert page.find_element(By.ID, "signin-summary").text == "Sign in (deciding as alice)"

    item = wait_for(page, lambda: inbox_item(page, rejected), what="first refund")
    item.find_element(By.CSS_SELECTOR, 'button[data-action="reject"]').click()
    assert "Give a reason to reject" in item.find_element(By.CLASS_NAME, "form-errors").text
    item.find_element(By.NAME, "decision-reason").send_keys("duplicate request")
    item.find_element(By.CSS_SELECTOR, 'button[data-action="reject"]').click()
    wait_for(page, lambda: "Rejected by alice: duplicate request" in
             decided_text(page, rejected), timeout=60, what="the rejection's outcome")

    item = wait_for(page, lambda: inbox_item(page, edited), what="second refund")
    item.find_element(By.CSS_SELECTOR, 'button[data-action="edit"]').click()
    amount = wait_for(page, lambda: item.find_elements(By.NAME, "amount"))[0]
    assert page.switch_to.active_element == amount  # focus moves into the editor
    amount.clear()
    amount.send_keys("lots")
    item.find_element(By.NAME, "reason").clear()  # the tool's own reason field, required
    send = item.find_element(By.CSS_SELECTOR, 'button[data-action="send-edit"]')
    send.click()
    errors = item.find_element(By.CLASS_NAME, "form-errors").text
    assert "Not sent" in errors and "amount must be a number." in errors, errors
    assert "reason must not be empty." in errors, errors
    page.execute_script("arguments[0].scrollIntoView()", item)
    shot(page, "inbox-edit-refused.png")
    thread = httpx.get(f"{cluster_url}/threads/{edited}", timeout=10).json()
    assert thread["status"] == "interrupted"  # nothing was sent

    amount.clear()
    amount.send_keys("20")
    item.find_element(By.NAME, "reason").send_keys("partial refund")
    send.click()
    wait_for(page, lambda: "Refund issued: $20 to order 42" in decided_text(page, edited),
             timeout=60, what="the edited refund's outcome")
    state = httpx.get(f"{cluster_url}/threads/{edited}/state", timeout=10).json()
    assert "Refund issued: $20 to order 42" in state["values"]["messages"][-1]["content"]


def test_inbox_is_live_and_errors_are_clear(page, cluster_url):
    page.get(f"{cluster_url}/ui/inbox")
    wait_for(page, lambda: "waiting" in text_of(page, "#inbox-status"), what="first poll")

    # an approval that arrives, and one decided elsewhere, show up without a reload
    elsewhere = paused_refund(cluster_url)
    wait_for(page, lambda: inbox_item(page, elsewhere), what="a new approval, live")
    done = httpx.post(f"{cluster_url}/api/approve", timeout=60,
                      json={"thread_id": elsewhere, "action": "approve", "by": "bob"})
    assert done.status_code == 200, done.text
    wait_for(page, lambda: "Refund issued: $500 to order 42" in decided_text(page, elsewhere),
             what="decided elsewhere, with its outcome")
    assert inbox_item(page, elsewhere) is None

    # deciding what was decided meanwhile: 409, said plainly, and the outcome shown
    raced = paused_refund(cluster_url)
    item = wait_for(page, lambda: inbox_item(page, raced), what="the raced approval")
    page.execute_script("window.consoleDebug.pausePolling = true")
    done = httpx.post(f"{cluster_url}/api/approve", timeout=60,
                      json={"thread_id": raced, "action": "approve", "by": "bob"})
    assert done.status_code == 200, done.text
    item.find_element(By.CSS_SELECTOR, 'button[data-action="approve"]').click()
    wait_for(page, lambda: "Refund issued" in decided_text(page, raced), what="409 outcome")
    heading = text_of(page, f'#decided li:has(a[href$="thread={raced}"]) h3')
    assert "already decided elsewhere (your decision was not applied)" in heading
    page.execute_script("window.consoleDebug.pausePolling = false")

    # the cluster unreachable, then back
    network = {"latency": 0, "download_throughput": -1, "upload_throughput": -1}
    page.set_network_conditions(offline=True, **network)
    try:
        wait_for(page, lambda: "Cannot reach the cluster" in text_of(page, "#alerts"),
                 what="cluster down")
        assert "Not up to date" in text_of(page, "#inbox-status")
    finally:
        page.set_network_conditions(offline=False, **network)
    wait_for(page, lambda: not text_of(page, "#alerts"), what="alert cleared")

    # an unknown thread: 404, said plainly
    page.get(f"{cluster_url}/ui/chat?thread=no-such-thread")
    wait_for(page, lambda: "Not found: thread 'no-such-thread' not found" in
             text_of(page, "#alerts"), what="404")


def test_a_dropped_stream_resumes_without_gaps_or_repeats(page, cluster_url, stub_admin):
    stub_admin.post("/config", json={"ttft_ms": 200, "tokens_per_s": 12})
    new_chat(page, cluster_url)
    tid = send_message(page, "Tell me about redis streams")
    wait_for(page, lambda: lane_tokens(page, "researcher"), what="the first tokens")
    events = "return window.consoleDebug.eventIds.length"
    for drop in range(2):
        seen = page.execute_script(events)
        wait_for(page, lambda seen=seen: page.execute_script(events) > seen + 1,
                 what="more events")
        page.execute_script("window.consoleDebug.dropStreams()")
        wait_for(page, lambda drop=drop: page.execute_script(
            "return window.consoleDebug.reconnects") > drop, what="a reconnect")
    wait_for(page, lambda: text_of(page, ".run .answer"), timeout=60, what="the answer")
    wait_for(page, lambda: "success" in text_of(page, ".run .facts"), what="the end")

    seen_ids = page.execute_script("return window.consoleDebug.eventIds")
    run_id = httpx.get(f"{cluster_url}/threads/{tid}/runs", timeout=10).json()[0]["run_id"]
    replay = sse_replay(cluster_url, tid, run_id)
    assert seen_ids == [i for i, _, _ in replay if i]  # every event once, in order
    researcher = "".join(d["text"] for _, e, d in replay
                         if e == "custom" and d["type"] == "token" and d["role"] == "researcher")
    assert lane_tokens(page, "researcher") == researcher
    answer = page.find_element(By.CSS_SELECTOR, ".run .answer .text").get_attribute(
        "textContent")
    state = httpx.get(f"{cluster_url}/threads/{tid}/state", timeout=10).json()
    assert answer == state["values"]["messages"][-1]["content"]


def test_every_control_has_a_name(page, cluster_url):
    unnamed = """
        return [...document.querySelectorAll('input, textarea, button, select, a[href]')]
          .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') ||
                            el.getAttribute('aria-labelledby') || el.textContent.trim()))
          .map((el) => el.outerHTML);"""
    for path in ("/ui/", "/ui/chat", "/ui/inbox"):
        page.get(f"{cluster_url}{path}")
        time.sleep(0.5)
        assert page.execute_script(unnamed) == [], path
    # the skip link comes first, for keyboard users
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert page.switch_to.active_element.text == "Skip to content"


def test_the_run_command_prints_the_console_url():
    told = HOW_TO_TALK.format(url="http://127.0.0.1:8000", redis="r", model="m",
                              metrics_port=8085)
    assert "Web console: http://127.0.0.1:8000/ui/" in told
