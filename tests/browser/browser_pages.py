"""What the browser tests read off a page: waits on the page's own DOM, table cells, load time."""

from __future__ import annotations

import time
from typing import Any

WAIT = 30.0


def wait_js(driver: Any, script: str, *, timeout: float = WAIT, what: str = "") -> Any:
    """Poll `script` (a JS expression) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or script} ({value!r})")


def table(driver: Any, table_id: str) -> list[dict[str, str]]:
    """Rows of a data table as {header: cell text} (placeholder rows left out)."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """
        const t = document.getElementById(arguments[0]);
        const heads = [...t.tHead.rows[0].cells].map((c) => c.textContent.trim());
        return [...t.tBodies[0].rows].filter((r) => !r.classList.contains("empty")).map((r) =>
          Object.fromEntries([...r.cells].map((c, i) => [heads[i], c.textContent.trim()])));
        """,
        table_id,
    )


def load_ms(driver: Any) -> float:
    """Navigation start to the end of the load event, from the browser's performance timing."""
    return float(
        wait_js(
            driver,
            "performance.getEntriesByType('navigation')[0]?.loadEventEnd",
            what="the load event",
        )
    )


def external_requests(driver: Any, origin: str) -> list[str]:
    """Every resource the page fetched that did not come from the dashboard itself."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name);"
    )
    return [n for n in names if not n.startswith(origin)]


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
