"""What the size of one TLS read does to the heap: nodeagent.proxy.tlslayer reads decrypted
data with `SSLObject.read(READ_CHUNK)`; OpenSSL returns one record (<= 16 KiB) per read, but
Python allocates the asked-for size first and shrinks it after.

    .venv/bin/python bench/tls_read_chunk.py [--rounds 300] [--pairs 64]

Each size runs in its own fresh process, in turns (A B A B): 64 TLS 1.3 client/server pairs
over memory BIOs, messages of 200 B / 2 KB / 20 KB, 5% of the reads kept alive a while (as
queued writes are), a pair replaced now and then. Prints RSS before and after, and CPU time.
"""

from __future__ import annotations

import argparse
import datetime
import random
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cert(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    )
    return folder / "c.pem", folder / "k.pem"


def one(chunk: int, rounds: int, pairs: int, cert: Path, key: Path) -> str:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE

    def pair() -> tuple[ssl.SSLObject, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
        ci, co, si, so = (ssl.MemoryBIO() for _ in range(4))
        cl, sv = client.wrap_bio(ci, co), server.wrap_bio(si, so, server_side=True)
        for _ in range(6):
            for end in (cl, sv):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            si.write(co.read())
            ci.write(so.read())
        return cl, sv, si, co

    rng = random.Random(7)
    start = _rss_mb()
    conns = [pair() for _ in range(pairs)]
    with_pairs = _rss_mb()
    kept: list[bytes] = []
    cpu = time.process_time()
    for n in range(rounds):
        for cl, sv, si, co in conns:
            cl.write(b"x" * rng.choice((200, 2000, 20000)))
            si.write(co.read())
            while True:
                try:
                    data = sv.read(chunk)
                except ssl.SSLWantReadError:
                    break
                if rng.random() < 0.05:
                    kept.append(data)
            if len(kept) > 200:
                kept = kept[100:]
        if n % 100 == 50:
            conns[n % pairs] = pair()
    return (
        f"read({chunk // 1024} KiB): RSS {start:.0f} MB at start, {with_pairs:.0f} with {pairs}"
        f" pairs, {_rss_mb():.0f} after traffic; CPU {time.process_time() - cpu:.2f} s"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--turns", type=int, default=2)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cert", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(one(args.one, args.rounds, args.pairs, args.cert, args.cert.with_name("k.pem")))
        return 0
    print("load average:", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    with tempfile.TemporaryDirectory() as tmp:
        cert, _ = _cert(Path(tmp))
        for _ in range(args.turns):
            for chunk in (256 * 1024, 16 * 1024):
                subprocess.run(
                    [sys.executable, __file__, "--one", str(chunk), "--rounds", str(args.rounds),
                     "--pairs", str(args.pairs), "--cert", str(cert)], check=True,
                )  # fmt: skip
    print("load average:", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
