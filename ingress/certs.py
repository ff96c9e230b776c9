"""TLS Secrets (kubernetes.io/tls: tls.crt, tls.key) checked before they are served (sans-io)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

TLS_TYPE = "kubernetes.io/tls"


class BadSecret(ValueError):
    """A Secret that cannot serve TLS; the message names it and what is wrong."""


@dataclass(frozen=True, slots=True)
class CertPair:
    secret: str  # namespace/name
    version: str  # resourceVersion: a changed Secret gets a new TLS context
    cert_pem: bytes
    key_pem: bytes


def from_secret(secret: dict[str, Any]) -> CertPair:
    meta = secret.get("metadata") or {}
    ref = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
    where = f"Secret {ref}"
    kind = secret.get("type", "Opaque")
    if kind != TLS_TYPE:
        raise BadSecret(f"{where} is of type {kind!r}, not {TLS_TYPE}")
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    pems: dict[str, bytes] = {}
    for key in ("tls.crt", "tls.key"):
        if key in data:
            try:
                pems[key] = base64.b64decode(str(data[key]), validate=True)
            except (binascii.Error, ValueError) as e:
                raise BadSecret(f"{where}: data[{key}] is not base64 ({e})") from None
        elif key in string_data:
            pems[key] = str(string_data[key]).encode()
        else:
            raise BadSecret(f"{where}: data[{key}] is missing")
    try:
        chain = x509.load_pem_x509_certificates(pems["tls.crt"])
    except ValueError as e:
        raise BadSecret(f"{where}: tls.crt is not a PEM certificate ({e})") from None
    try:
        private = serialization.load_pem_private_key(pems["tls.key"], password=None)
    except (ValueError, TypeError) as e:
        raise BadSecret(f"{where}: tls.key is not an unencrypted PEM private key ({e})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    mine = private.public_key().public_bytes(enc, spki)
    if chain[0].public_key().public_bytes(enc, spki) != mine:
        raise BadSecret(f"{where}: tls.key does not belong to the first certificate of tls.crt")
    return CertPair(ref, str(meta.get("resourceVersion") or ""), pems["tls.crt"], pems["tls.key"])
