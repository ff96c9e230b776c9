"""What `nodemesh check` reports: grouped results with a mark, a detail and a hint per failure."""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from cryptography import x509

OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Result:
    group: str
    name: str
    status: str  # ok, FAIL, skip
    detail: str = ""
    hint: str = ""


def ok(group: str, name: str, detail: str = "") -> Result:
    return Result(group, name, OK, detail)


def fail(group: str, name: str, detail: str, hint: str) -> Result:
    return Result(group, name, FAIL, detail, hint)


def skip(group: str, name: str, detail: str) -> Result:
    return Result(group, name, SKIP, detail)


def report(results: list[Result], *, output: str) -> bool:
    """Print the results; True when nothing failed."""
    failed = [r for r in results if r.status == FAIL]
    if output == "json":
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(r) for r in results]}, indent=2))
        return not failed
    group = None
    for r in results:
        if r.group != group:
            if group is not None:
                click.echo("")
            group = r.group
            click.echo(group)
            click.echo("-" * len(group))
        mark = {OK: "[ok]  ", FAIL: "[FAIL]", SKIP: "[skip]"}[r.status]
        click.echo(f"{mark} {r.name}" + (f": {r.detail}" if r.detail else ""))
        if r.hint:
            click.echo(f"       hint: {r.hint}")
    click.echo("")
    if failed:
        click.echo(f"Status check results are FAIL: {len(failed)} of {len(results)} checks failed")
    else:
        click.echo(f"Status check results are ok ({len(results)} checks)")
    return not failed


def certificate_checks(
    group: str, *, anchors_pem: bytes, issuer_pem: bytes | None, source: str
) -> list[Result]:
    """Trust anchor valid > 60 days, issuer valid > 1 day and signed by an anchor."""
    now = datetime.datetime.now(datetime.UTC)
    out: list[Result] = []
    try:
        anchors = x509.load_pem_x509_certificates(anchors_pem)
    except ValueError:
        return [
            fail(
                group,
                "trust anchor",
                f"no certificate in {source}",
                "re-install with a valid trust anchor (nodemesh install)",
            )
        ]
    for a in anchors:
        left = a.not_valid_after_utc - now
        name = f"trust anchor {a.subject.rfc4514_string()}"
        if left < datetime.timedelta(days=60):
            out.append(
                fail(
                    group,
                    name,
                    f"expires {a.not_valid_after_utc:%Y-%m-%d} ({left.days} days left)",
                    "rotate the trust anchor: add a new one next to it, then re-issue",
                )
            )
        else:
            out.append(ok(group, name, f"valid for {left.days} more days"))
    if issuer_pem is None:
        out.append(skip(group, "issuer certificate", f"not readable from {source}"))
        return out
    try:
        issuer = x509.load_pem_x509_certificate(issuer_pem)
    except ValueError:
        return out + [
            fail(
                group,
                "issuer certificate",
                f"not a PEM certificate in {source}",
                "re-install with a valid issuer",
            )
        ]
    left = issuer.not_valid_after_utc - now
    if left < datetime.timedelta(days=1):
        out.append(
            fail(
                group,
                "issuer certificate",
                f"expires {issuer.not_valid_after_utc:%Y-%m-%d %H:%M}",
                "issue a new issuer certificate from the trust anchor",
            )
        )
    else:
        out.append(ok(group, "issuer certificate", f"valid for {left.days} more days"))
    if not any(_signed(issuer, a) for a in anchors):
        out.append(
            fail(
                group,
                "issuer chains to the trust anchor",
                "it does not",
                "the issuer must be signed by one of the trust anchors",
            )
        )
    else:
        out.append(ok(group, "issuer chains to the trust anchor"))
    return out


def _signed(cert: x509.Certificate, anchor: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(anchor)
    except Exception:  # signature, algorithm and name mismatches all mean "not signed by"
        return False
    return True


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
