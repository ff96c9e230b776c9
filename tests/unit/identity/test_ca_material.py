import datetime
import json
import stat

from cryptography import x509

from controlplane.identity import load_ca_from_directory
from nodemesh.identity import create_issuer_files


def _constraints(cert: x509.Certificate) -> x509.BasicConstraints:
    ext = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ext.critical
    return ext.value


def test_issuer_files(tmp_path) -> None:
    target = tmp_path / "identity"
    made = create_issuer_files(target, trust_domain="cluster.local", nodes=["node2", "node1"])

    names = sorted(p.name for p in target.iterdir())
    assert names == ["ca.crt", "issuer.crt", "issuer.key", "tokens.json"]  # no temp files left
    for secret in ("issuer.key", "tokens.json"):
        assert stat.S_IMODE((target / secret).stat().st_mode) == 0o600

    tokens = json.loads((target / "tokens.json").read_text())
    assert sorted(tokens) == ["node1", "node2"]
    assert len(set(tokens.values())) == 2 and all(len(t) >= 32 for t in tokens.values())
    assert tokens == made.tokens

    bundle = load_ca_from_directory(target)
    anchor, issuer = bundle.anchors[0], bundle.issuer.certificate
    assert anchor == made.anchor.certificate
    issuer.verify_directly_issued_by(anchor)
    assert _constraints(anchor).ca and _constraints(anchor).path_length == 1
    assert _constraints(issuer).ca and _constraints(issuer).path_length == 0
    for cert in (anchor, issuer):
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(days=365) <= life <= datetime.timedelta(days=366)
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_rewriting_replaces_the_material(tmp_path) -> None:
    first = create_issuer_files(tmp_path, nodes=["node1"])
    second = create_issuer_files(tmp_path, nodes=["node1"])
    assert first.tokens != second.tokens
    assert load_ca_from_directory(tmp_path).anchors == [second.anchor.certificate]


def test_loading_refuses_an_issuer_from_another_anchor(tmp_path, foreign_anchor) -> None:
    import pytest

    from controlplane.identity import InvalidCaMaterial

    create_issuer_files(tmp_path, nodes=["node1"])
    (tmp_path / "ca.crt").write_bytes(foreign_anchor.certificate_pem())
    with pytest.raises(InvalidCaMaterial, match="not signed by any certificate in ca.crt"):
        load_ca_from_directory(tmp_path)


def test_loading_refuses_a_key_that_is_not_the_issuers(tmp_path, foreign_issuer) -> None:
    import pytest

    from controlplane.identity import InvalidCaMaterial

    create_issuer_files(tmp_path, nodes=["node1"])
    (tmp_path / "issuer.key").write_bytes(foreign_issuer.key_pem())
    with pytest.raises(InvalidCaMaterial, match="does not belong"):
        load_ca_from_directory(tmp_path)
