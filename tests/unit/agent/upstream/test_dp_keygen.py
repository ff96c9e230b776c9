"""Keys and CSRs from the key maker child process; the agent process itself never loads
`cryptography` (issue 17: ~10 MB resident in every agent)."""

from __future__ import annotations

import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dp_identities import API, WEB

from nodeagent.upstream import keygen
from nodemesh import keymaker


async def test_one_child_makes_a_key_and_a_csr_for_each_identity() -> None:
    made = await keygen.make_keys([WEB, API, "spiffe://not/an/id"])
    assert made["spiffe://not/an/id"] == "expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>, " + (
        "got 'spiffe://not/an/id'"
    )
    keys = set()
    for identity in (WEB, API):
        entry = made[identity]
        assert isinstance(entry, keygen.KeyAndCsr)
        csr = x509.load_pem_x509_csr(entry.csr_pem)
        key = serialization.load_pem_private_key(entry.key_pem, password=None)
        assert csr.is_signature_valid and csr.public_key() == key.public_key()
        assert keymaker.uri_sans(csr) == [identity]  # type: ignore[arg-type]
        keys.add(entry.key_pem)
    assert len(keys) == 2


async def test_a_key_maker_that_hangs_is_killed() -> None:
    hang = (sys.executable, "-c", "import time; time.sleep(60)")
    try:
        await keygen.make_keys([WEB], command=hang, timeout=0.5)
    except keygen.KeygenError as exc:
        assert "took more than" in str(exc)
    else:
        raise AssertionError("no error")


def test_the_agent_process_loads_no_cryptography() -> None:
    # Everything the agent's main module pulls in, plus reading a serving-state file and
    # installing a certificate (the paths that used cryptography before).
    code = (
        "import sys, nodeagent.main, nodeagent.handover.servingstate, "
        "nodeagent.upstream.identity, nodemesh.certs\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
