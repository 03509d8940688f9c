#!/usr/bin/env python3
r"""Drives Shoal's web console in a real headless Chromium (Selenium), as an operator would.

Run by crates/cli/tests/console.rs against a live cluster; also by hand:

    python console_test.py --url http://127.0.0.1:7480/ --nodes 3 --table cpu \
        --sql "SELECT ts, usage FROM cpu ORDER BY ts" --expect-row '["2024-03-01T00:00:00Z", "10.5"]' \
        --chart --screenshot /tmp/console.png

Checks, each with a deadline (explicit waits, never a fixed sleep):
  - with --login user:password, the login form appears, a wrong password is refused with
    the node's 401 message, and the right one opens the console;
  - the Cluster page lists --nodes nodes, every one ALIVE, and shows ingest and query rates
    (two reads of /metrics);
  - the Vshards page lists vshards;
  - with --table, the Tables page lists it and shows its columns;
  - the SQL page runs --sql (Ctrl+Enter), #results-grid holds every --expect-row (cells
    as the grid shows them), and with --chart an SVG line chart is drawn above it;
  - the browser's console logged nothing SEVERE (with --login, the 401s of the login itself
    are expected and allowed).

Saves a screenshot to --screenshot (also when a check fails) and prints its path. Exits 0 when
every check passed, 1 otherwise (the reason on stderr).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait


class CheckFailed(Exception):
    pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the console, e.g. http://127.0.0.1:7480/")
    p.add_argument("--nodes", type=int, required=True, help="nodes the Cluster page must list, all ALIVE")
    p.add_argument("--table", help="a table the Tables page must list")
    p.add_argument("--sql", required=True, help="the query to run on the SQL page")
    p.add_argument("--expect-row", action="append", default=[], help="JSON array of a row's cell texts (repeatable)")
    p.add_argument("--chart", action="store_true", help="the result must be drawn as a chart")
    p.add_argument("--login", help="user:password to log in with (the cluster has users)")
    p.add_argument("--screenshot", required=True, help="where to save the PNG")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--chromedriver", default=shutil.which("chromedriver") or "chromedriver")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each wait may take")
    return p.parse_args()


def browser(args, profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000", "--no-first-run", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=opts)


class Console:
    def __init__(self, driver, timeout):
        self.d = driver
        self.timeout = timeout
        self.logs = []

    def wait(self, what, cond):
        """Polls cond(driver) until it returns something truthy, or fails naming `what`."""
        try:
            # Live pages re-render every few seconds: an element read mid-way is read again.
            return WebDriverWait(self.d, self.timeout, poll_frequency=0.2,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(cond)
        except TimeoutException:
            raise CheckFailed(f"timed out after {self.timeout:.0f} s waiting for {what}") from None

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def rows(self, table, attr=None):
        """A table's body rows at one instant (a live page may re-render it any time): for
        each row (with `attr`, each row that has it), that attribute and its cells' text."""
        return self.d.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((tr) =>"
            " [arguments[1] ? tr.getAttribute(arguments[1]) : null,"
            "  [...tr.cells].map((td) => td.innerText)]);",
            f"{table} tbody tr" + (f"[{attr}]" if attr else ""), attr)

    def visible(self, css):
        found = self.all(css)
        return found[0] if found and found[0].is_displayed() else None

    def drain_logs(self):
        self.logs.extend(self.d.get_log("browser"))

    def tab(self, page):
        self.find(f'#tabs a[data-page="{page}"]').click()
        self.wait(f"the {page} page", lambda d: self.visible(f"#page-{page}"))

    def banner(self):
        b = self.visible("#banner")
        return f" (banner: {b.text})" if b else ""


def login(c, user, password):
    c.wait("the login form", lambda d: c.visible("#login"))
    # A wrong password first: refused, with the node's message.
    c.find("#login-user").send_keys(user)
    c.find("#login-password").send_keys(password + "-wrong")
    c.find("#login-submit").click()
    err = c.wait("the 401 of a wrong password", lambda d: c.visible("#login-error"))
    if "401" not in err.text:
        raise CheckFailed(f"a wrong password should say 401, the form says {err.text!r}")
    print(f"login refused as expected: {err.text}")
    pw = c.find("#login-password")
    pw.clear()
    pw.send_keys(password)
    c.find("#login-submit").click()
    c.wait("the console after logging in", lambda d: not c.visible("#login") and c.visible("#pages"))
    who = c.find("#whoami").text
    if user not in who:
        raise CheckFailed(f"#whoami says {who!r}, not the user {user!r}")
    # The 401s so far were the point of the check.
    c.drain_logs()
    c.logs = [e for e in c.logs if "status of 401" not in e.get("message", "")]


def check_cluster(c, nodes):
    c.tab("cluster")

    def listed(d):
        swim = d.execute_script(
            "return [...document.querySelectorAll('#nodes-table tbody tr[data-node-id]')]"
            ".map((tr) => [tr.dataset.nodeId, tr.querySelector('td[data-swim]').dataset.swim]);")
        return len(swim) == nodes and all(s == "ALIVE" for _, s in swim) and swim

    try:
        listed_nodes = c.wait(f"{nodes} ALIVE nodes on the Cluster page", listed)
    except CheckFailed as e:
        rows = [cells for _, cells in c.rows("#nodes-table", "data-node-id")]
        raise CheckFailed(f"{e}; the table shows {rows}{c.banner()}") from None
    print(f"cluster page: nodes {[i for i, _ in listed_nodes]} ALIVE")
    rate = c.wait("ingest and query rates from /metrics",
                  lambda d: all(c.find(s).text not in ("", "–") for s in ("#ingest-rate", "#query-rate"))
                  and (c.find("#ingest-rate").text, c.find("#query-rate").text))
    print(f"rates: ingest {rate[0]} rows/s, queries {rate[1]}/s")


def check_vshards(c):
    c.tab("vshards")
    n = c.wait("vshards listed", lambda d: len(c.rows("#vshards-table", "data-vshard")))
    print(f"vshards page: {n} vshards")


def check_tables(c, table):
    c.tab("tables")
    row = c.wait(f"table {table} on the Tables page",
                 lambda d: next((r for r in c.all("#tables-table tbody tr[data-table]")
                                 if r.get_attribute("data-table") == table), None))
    row.click()
    cols = c.wait(f"the columns of {table}",
                  lambda d: [name for name, _ in c.rows("#columns-table", "data-column")])
    print(f"tables page: {table} has columns {cols}")


def check_sql(c, sql, expect_rows, chart):
    c.tab("sql")
    box = c.find("#sql-input")
    box.clear()
    box.send_keys(sql)
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    state = c.wait("the query to finish",
                   lambda d: c.find("#page-sql").get_attribute("data-state") in ("done", "error")
                   and c.find("#page-sql").get_attribute("data-state"))
    if state == "error":
        raise CheckFailed(f"the query failed: {c.find('#sql-error').text}")
    status = c.find("#sql-status").text
    rows = [cells for _, cells in c.rows("#results-grid")]
    print(f"sql page: {status}")
    for want in expect_rows:
        if want not in rows:
            raise CheckFailed(f"row {want} not in #results-grid; it holds {rows[:20]}")
    print(f"sql page: found the {len(expect_rows)} expected rows")
    if chart:
        lines = c.wait("the chart's lines", lambda d: c.visible("#chart")
                       and c.all("#chart svg polyline.series"))
        names = [l.get_attribute("data-series") for l in lines]
        print(f"chart: {len(lines)} lines {names}")


def main():
    args = parse_args()
    expect = [json.loads(r) for r in args.expect_row]
    profile = tempfile.mkdtemp(prefix="shoal-console-chromium-")
    try:
        driver = browser(args, profile)
    except WebDriverException as e:
        print(f"cannot start {args.chromium} with {args.chromedriver}: {e.msg}", file=sys.stderr)
        return 2
    c = Console(driver, args.timeout)
    failure = None
    started = time.monotonic()
    try:
        driver.get(args.url)
        if args.login:
            user, _, password = args.login.partition(":")
            login(c, user, password)
        check_cluster(c, args.nodes)
        check_vshards(c)
        if args.table:
            check_tables(c, args.table)
        check_sql(c, args.sql, expect, args.chart)
        c.drain_logs()
        severe = [e for e in c.logs if e.get("level") == "SEVERE"]
        if severe:
            raise CheckFailed("the browser logged SEVERE entries: " + json.dumps(severe, indent=1))
    except (CheckFailed, WebDriverException) as e:
        failure = e
    finally:
        try:
            driver.save_screenshot(args.screenshot)
            print(f"screenshot: {args.screenshot}")
        except WebDriverException as e:
            print(f"no screenshot: {e.msg}", file=sys.stderr)
        if failure:
            try:
                c.drain_logs()
            except WebDriverException:
                pass
            for e in c.logs:
                print(f"browser log: {e.get('level')} {e.get('message')}", file=sys.stderr)
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"console checks passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
