import pytest

from nodemesh.identity import InvalidSpiffeId, SpiffeId, spiffe_id


def test_round_trip() -> None:
    uri = spiffe_id("cluster.local", "emojivoto", "web")
    assert uri == "spiffe://cluster.local/ns/emojivoto/sa/web"
    parsed = SpiffeId.parse(uri)
    assert (parsed.trust_domain, parsed.namespace, parsed.service_account) == (
        "cluster.local",
        "emojivoto",
        "web",
    )
    assert str(parsed) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "https://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://cluster.local/ns/a/sa/",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local/sa/b/ns/a",
        "spiffe://Cluster.Local/ns/a/sa/b",
        "spiffe:///ns/a/sa/b",
        "spiffe://cluster.local/ns/A/sa/b",
        "spiffe://cluster.local/ns/a/sa/b?x=1",
        "spiffe://cluster.local/ns/" + "a" * 64 + "/sa/b",
    ],
)
def test_rejects_malformed(uri: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(uri)


def test_service_account_may_be_a_dns_subdomain() -> None:
    assert SpiffeId.parse("spiffe://td/ns/a/sa/b.c-d").service_account == "b.c-d"
