"""`nodemesh install`: every object validates against the schemas of the oldest Kubernetes
nodemesh supports (`check --pre`'s minimum), 1.26 and the newest, the output is pinned by golden
files, the agent is least-privileged, and bring-your-own identity is checked."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cli_server import assert_golden
from click.testing import CliRunner
from cryptography import x509

from nodemesh.cli.check_cluster import MIN_MINOR
from nodemesh.cli.main import cli
from nodemesh.identity import CaMaterial, create_issuer, create_trust_anchor

K8S_VERSIONS = [f"1.{MIN_MINOR}.0", "1.26.0", kubernetes_validate.latest_version()]
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n(?:.*\n)*?\s*-----END CERTIFICATE-----")
_B64 = re.compile(r"^(  (?:ca\.crt|issuer\.crt|issuer\.key): )\S+$", re.M)


@pytest.fixture(scope="module")
def identity_files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("identity")
    anchor = create_trust_anchor()
    issuer = create_issuer(anchor)
    files = {"anchor": d / "ca.crt", "cert": d / "issuer.crt", "key": d / "issuer.key"}
    files["anchor"].write_bytes(anchor.certificate_pem())
    files["cert"].write_bytes(issuer.certificate_pem())
    files["key"].write_bytes(issuer.key_pem())
    return files


def byo(files: dict[str, Path]) -> list[str]:
    return ["--identity-trust-anchors-file", str(files["anchor"]),
            "--identity-issuer-certificate-file", str(files["cert"]),
            "--identity-issuer-key-file", str(files["key"])]  # fmt: skip


def render(*args: str) -> tuple[str, list[dict]]:
    res = CliRunner().invoke(cli, ["install", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout, [d for d in yaml.safe_load_all(res.stdout) if d]


def masked(text: str) -> str:
    """The certificates change on every run; everything around them is pinned."""
    return _B64.sub(r"\1<base64>", _PEM.sub("<certificate>", text))


VARIANTS = {
    "default": [],
    "ha-prometheus": ["--ha", "--prometheus", "--registry", "registry.example:5000/mesh",
                      "--version", "1.2.3", "--image-pull-policy", "Always"],
    "custom": ["-n", "mesh-system", "--cni-conf-dir", "/etc/cni/multus/net.d", "--cni-bin-dir",
               "/var/lib/cni/bin", "--cluster-domain", "corp.example", "--trust-domain",
               "mesh.corp.example", "--controller-replicas", "2", "--web-replicas", "3"],
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden_and_valid_for_kubernetes_1_29_and_newer(identity_files, variant: str) -> None:
    text, docs = render(*VARIANTS[variant], *byo(identity_files))
    assert_golden(f"install-{variant}.yaml", masked(text))
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_every_listed_object_is_rendered() -> None:
    _, docs = render("--prometheus")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for wanted in [
        ("Namespace", "nodemesh"), ("ConfigMap", "nodemesh-config"),
        ("ServiceAccount", "nodemesh-controlplane"), ("ServiceAccount", "nodemesh-agent"),
        ("ServiceAccount", "nodemesh-dashboard"), ("ClusterRole", "nodemesh-controlplane"),
        ("ClusterRoleBinding", "nodemesh-controlplane"), ("Role", "nodemesh-controlplane-identity"),
        ("Secret", "nodemesh-identity"), ("Deployment", "nodemesh-controlplane"),
        ("Service", "nodemesh-controlplane"), ("Deployment", "nodemesh-dashboard"),
        ("Service", "nodemesh-dashboard"), ("DaemonSet", "nodemesh-agent"),
        ("PodDisruptionBudget", "nodemesh-controlplane"),
        ("PodDisruptionBudget", "nodemesh-dashboard"), ("Deployment", "nodemesh-prometheus"),
    ]:  # fmt: skip
        assert wanted in kinds, wanted
    svc = next(
        d for d in docs if d["kind"] == "Service" and "controlplane" in d["metadata"]["name"]
    )
    assert {p["port"] for p in svc["spec"]["ports"]} == {8085, 8086, 9996}


def _daemonset(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "DaemonSet")


def test_daemonset_is_not_privileged_and_has_exactly_three_capabilities() -> None:
    _, docs = render()
    pod = _daemonset(docs)["spec"]["template"]["spec"]
    containers = pod["containers"] + pod.get("initContainers", [])
    added = set()
    for c in containers:
        sc = c["securityContext"]
        assert sc.get("privileged") is False, c["name"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        added |= set(sc["capabilities"].get("add", []))
    assert added == {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    agent = pod["containers"][0]
    assert agent["readinessProbe"]["exec"]["command"][-1] == "--port=4191"
    assert agent["livenessProbe"]["httpGet"]["port"] == 4191
    mounts = {m["mountPath"] for c in containers for m in c["volumeMounts"]}
    assert {"/var/run/nodemesh", "/run/netns", "/host/etc/cni/net.d", "/host/opt/cni/bin"} <= mounts


def test_agent_runs_the_real_binaries_with_their_flags() -> None:
    from controlplane.main import parse_args as controlplane_args
    from nodeagent.config import parse_args as agent_args

    _, docs = render("-n", "mesh", "--cluster-domain", "k8s.local")
    pod = _daemonset(docs)["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    agent, install_cni = by_name["agent"], by_name["install-cni"]
    cfg = agent_args([a.replace("$(NODE_NAME)", "n1") for a in agent["args"]])
    assert cfg.controlplane == "nodemesh-controlplane.mesh.svc.k8s.local:8086"
    volumes = {v["name"]: v for v in pod["volumes"]}
    token = volumes["token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "nodemesh"
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "token")
    assert str(cfg.token_file) == f"{mount['mountPath']}/{token['path']}"
    anchors = next(m for m in agent["volumeMounts"] if m["name"] == "trust-anchors")
    assert str(cfg.controlplane_ca) == f"{anchors['mountPath']}/ca.crt"
    assert volumes["trust-anchors"]["configMap"]["name"] == "nodemesh-config"
    assert install_cni["command"][-1] == "watch"
    cp = next(
        d for d in docs if d["kind"] == "Deployment" and "controlplane" in d["metadata"]["name"]
    )
    args = controlplane_args(cp["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (args.source, args.ca_secret) == ("kubernetes", "mesh/nodemesh-identity")
    from dashboard.main import parse_args as dashboard_args

    web = next(
        d for d in docs if d["kind"] == "Deployment" and "dashboard" in d["metadata"]["name"]
    )
    dash = dashboard_args(web["spec"]["template"]["spec"]["containers"][0]["args"])
    assert dash.public_api == "nodemesh-controlplane.mesh.svc.k8s.local:8085"


def test_router_port_is_the_nodes_and_no_router_turns_it_off() -> None:
    """Router mode (docs/adoption.md): the agent serves the explicit proxy on the node's 4144,
    declared as the container's (host) port; `--no-router` leaves both the flag and the port out."""
    from nodeagent.config import parse_args as agent_args

    for extra, expected in (((), 4144), (("--no-router",), 0)):
        _, docs = render(*extra)
        pod = _daemonset(docs)["spec"]["template"]["spec"]
        agent = next(c for c in pod["containers"] if c["name"] == "agent")
        cfg = agent_args([a.replace("$(NODE_NAME)", "n1") for a in agent["args"]])
        assert (cfg.router_host, cfg.router_port) == ("0.0.0.0", expected)
        declared = {p["name"]: p for p in agent["ports"]}
        if expected:
            assert pod["hostNetwork"] is True
            assert declared["router"] == {
                "name": "router",
                "containerPort": 4144,
                "hostPort": 4144,
                "protocol": "TCP",
            }
        else:
            assert "router" not in declared


def test_agent_rollout_overlaps_old_and_new_agents_on_each_node() -> None:
    """A rolling update starts the new agent beside the old one (which hands its sockets over
    through the host's run directory), and leaves the old one time to wait and drain."""
    from nodeagent.config import parse_args as agent_args

    _, docs = render()
    ds = _daemonset(docs)
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = ds["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    cfg = agent_args([a.replace("$(NODE_NAME)", "n1") for a in agent["args"]])
    run = next(m for m in agent["volumeMounts"] if m["mountPath"] == str(cfg.handover_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == run["name"])
    assert volume["hostPath"]["path"] == run["mountPath"]
    assert cfg.state_file.parent == cfg.cni_socket.parent == cfg.handover_path.parent
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > cfg.handover_wait_seconds + cfg.drain_seconds
    assert cfg.keep_sockets  # a crashed agent's sockets outlive it (nodeagent.handover.keeper)
    # The new pod is ready only once its own agent holds the admin port (hostNetwork: before
    # the hand-over the port is the old agent's), not after a delay a slow start outlasts.
    assert agent["readinessProbe"]["exec"]["command"][:3] == ["python3", "-m",
                                                              "nodeagent.readycheck"]  # fmt: skip


def test_the_socket_park_shares_a_pod_volume_with_the_agent_and_runs_as_its_user() -> None:
    """The agent's container parks its listening sockets in the socket-park container of the
    same pod (nodeagent.handover.park): same socket path on one emptyDir, same user (each end
    checks the other's), and a flag the agent accepts."""
    from nodeagent.config import parse_args as agent_args

    _, docs = render()
    pod = _daemonset(docs)["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    agent, park = by_name["agent"], by_name["socket-park"]
    cfg = agent_args([a.replace("$(NODE_NAME)", "n1") for a in agent["args"]])
    assert cfg.keep_sockets and cfg.socket_park is not None
    assert park["command"][-1] == "nodeagent.handover.park"
    assert park["args"] == [f"--socket={cfg.socket_park}"]

    def volume_of(container: dict) -> dict:
        mount = next(
            m for m in container["volumeMounts"] if m["mountPath"] == str(cfg.socket_park.parent)
        )
        return next(v for v in pod["volumes"] if v["name"] == mount["name"])

    assert volume_of(agent) == volume_of(park)
    assert "emptyDir" in volume_of(park)  # the pod's own: a rollout's new pod starts empty
    uid = agent["securityContext"]["runAsUser"]
    assert park["securityContext"]["runAsUser"] == uid
    assert park["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_least_privilege_rbac() -> None:
    _, docs = render("--prometheus")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    for name, role in roles.items():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], name
            if "secrets" in rule["resources"]:
                assert name == "nodemesh-controlplane-identity"
                assert rule["resourceNames"] == ["nodemesh-identity"] and rule["verbs"] == ["get"]
    # The dashboard may only tap and read stats (groups served by the public API, not the
    # Kubernetes API), with its own ServiceAccount: nothing else.
    dashboard = {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"].endswith("Binding")
        and any(s["name"] == "nodemesh-dashboard" for s in d["subjects"])
    }
    assert dashboard == {"nodemesh-tap", "nodemesh-stats"}
    for name in dashboard:
        assert {g for rule in roles[name]["rules"] for g in rule["apiGroups"]} <= {
            "tap.nodemesh.io", "stats.nodemesh.io"}  # fmt: skip
    cp = roles["nodemesh-controlplane"]["rules"]
    assert {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
            "verbs": ["create"]} in cp  # fmt: skip
    # The agent's ServiceAccount may read exactly its own DaemonSet and namespace, nothing more.
    [agent_binding] = [
        d for d in docs
        if d["kind"].endswith("Binding") and d["subjects"][0]["name"] == "nodemesh-agent"
    ]  # fmt: skip
    rules = roles[agent_binding["roleRef"]["name"]]["rules"]
    assert sorted((r["resources"][0], r["resourceNames"][0], r["verbs"][0]) for r in rules) == [
        ("daemonsets", "nodemesh-agent", "get"), ("namespaces", "nodemesh", "get")]  # fmt: skip


def test_bring_your_own_identity_lands_in_the_secret(identity_files) -> None:
    _, docs = render(*byo(identity_files))
    secret = next(d for d in docs if d["kind"] == "Secret")
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data["ca.crt"] == identity_files["anchor"].read_bytes()
    assert data["issuer.crt"] == identity_files["cert"].read_bytes()
    assert data["issuer.key"] == identity_files["key"].read_bytes()
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "nodemesh-config"
    )
    assert cm["data"]["ca.crt"].encode() == identity_files["anchor"].read_bytes()
    assert "issuer.key" not in cm["data"]


def test_generated_identity_chains_and_differs_per_run() -> None:
    secrets = []
    for _ in range(2):
        _, docs = render()
        secret = next(d for d in docs if d["kind"] == "Secret")
        anchor = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
        issuer = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["issuer.crt"]))
        issuer.verify_directly_issued_by(anchor)
        secrets.append(secret["data"]["issuer.key"])
    assert secrets[0] != secrets[1]


def test_bad_identity_files_are_refused(identity_files, tmp_path) -> None:
    other: CaMaterial = create_issuer(create_trust_anchor())
    (tmp_path / "other.key").write_bytes(other.key_pem())
    (tmp_path / "other.crt").write_bytes(other.certificate_pem())
    (tmp_path / "junk").write_text("not pem")
    cases = [
        (byo(identity_files)[:2], "all three"),
        ([*byo(identity_files)[:4], "--identity-issuer-key-file", str(tmp_path / "other.key")],
         "is not the key of"),
        ([*byo(identity_files)[:2], "--identity-issuer-certificate-file",
          str(tmp_path / "other.crt"), "--identity-issuer-key-file", str(tmp_path / "other.key")],
         "not signed by any trust anchor"),
        (["--identity-trust-anchors-file", str(tmp_path / "junk"), *byo(identity_files)[2:]],
         "no PEM certificate"),
        (["--identity-trust-anchors-file", str(tmp_path / "missing"), *byo(identity_files)[2:]],
         "cannot read"),
    ]  # fmt: skip
    for args, needle in cases:
        res = CliRunner().invoke(cli, ["install", *args], catch_exceptions=False)
        assert res.exit_code != 0 and needle in res.output, (args, res.output)
        assert "Traceback" not in res.output and "apiVersion" not in res.output


def test_uninstall_lists_what_to_delete() -> None:
    res = CliRunner().invoke(cli, ["uninstall", "-n", "mesh"], catch_exceptions=False)
    assert res.exit_code == 0
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert docs[-1] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh"}}
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"} == {
        "mesh-controlplane", "mesh-agent", "mesh-prometheus", "mesh-tap", "mesh-stats",
        "mesh-ingress"}  # fmt: skip
    # Prometheus is listed though a default install never made it: without --ignore-not-found
    # the documented pipe exits 1 on a cluster installed without --prometheus.
    _, installed = render("-n", "mesh")
    made = {(d["kind"], d["metadata"]["name"]) for d in installed}
    assert any((d["kind"], d["metadata"]["name"]) not in made for d in docs)
    assert "kubectl delete --ignore-not-found -f -" in res.stdout
    helped = CliRunner().invoke(cli, ["uninstall", "--help"]).output
    assert "kubectl delete" in helped and "--ignore-not-found" in helped
    assert_golden("uninstall.yaml", res.stdout)


def test_uninstall_header_fixup_cleans_a_node_with_only_python3(tmp_path: Path) -> None:
    """The command the uninstall output gives for a node its agent pod missed, run as given on
    a node (the system python3, nothing of nodemesh installed but what install-cni left). It
    used to be `python3 -m nodemesh_cni.install ...`: No module named nodemesh_cni."""
    import subprocess
    import sys

    conf, bin_ = tmp_path / "etc" / "cni" / "net.d", tmp_path / "opt" / "cni" / "bin"
    conf.mkdir(parents=True)
    bin_.mkdir(parents=True)
    primary = conf / "10-flannel.conflist"
    primary.write_bytes(
        (Path(__file__).parents[1] / "cni/fixtures/10-flannel.conflist").read_bytes()
    )
    before = primary.read_bytes()
    installed = subprocess.run(
        [sys.executable, "-m", "nodemesh_cni.install", "install", "--conf-dir", str(conf),
         "--bin-dir", str(bin_)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    res = CliRunner().invoke(
        cli, ["uninstall", "--cni-conf-dir", str(conf), "--cni-bin-dir", str(bin_)]
    )
    [line] = [ln for ln in res.stdout.splitlines() if "uninstall --conf-dir" in ln]
    command = line.lstrip("# ").split()
    node_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=node_env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in conf.iterdir()) == ["10-flannel.conflist"]
    assert primary.read_bytes() == before
    assert list(bin_.iterdir()) == []


def test_install_cni_and_agent_agree_on_the_uninstall_path() -> None:
    """The rendered install-cni can ask about its own DaemonSet, reach the agent's run dir, and
    both sides' waits fit in the pod's grace period."""
    from nodemesh_cni.install import _arguments
    from nodemesh_cni.owner import SA_DIR

    from nodeagent.config import parse_args as agent_args

    _, docs = render("-n", "mesh")
    ds = _daemonset(docs)
    pod = ds["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    agent, install_cni = by_name["agent"], by_name["install-cni"]
    args = _arguments([install_cni["command"][-1], *install_cni["args"]])
    assert args.daemonset == f"mesh/{ds['metadata']['name']}"
    mounts = {m["mountPath"]: m["name"] for m in install_cni["volumeMounts"]}
    assert mounts[str(Path(args.agent_socket).parent)] == "run"
    assert mounts[str(SA_DIR)] == "api-access"
    sources = next(v for v in pod["volumes"] if v["name"] == "api-access")["projected"]["sources"]
    assert "audience" not in sources[0]["serviceAccountToken"]  # the API server's own
    cfg = agent_args([a.replace("$(NODE_NAME)", "n1") for a in agent["args"]])
    assert cfg.cni_socket == Path(args.agent_socket)
    assert 0 < cfg.uninstall_wait_seconds
    # install-cni: two API reads (3 s each at worst), then the agent's un-meshing.
    assert 2 * 3 + args.agent_wait < pod["terminationGracePeriodSeconds"]
    assert cfg.uninstall_wait_seconds + cfg.drain_seconds < pod["terminationGracePeriodSeconds"]


def test_install_says_how_to_get_the_gateway_api_crds_and_renders_none() -> None:
    res = CliRunner().invoke(cli, ["install"], catch_exceptions=False)
    # Said in a comment at the top of what is piped to kubectl (a comment applies nothing).
    head = res.stdout.split("\n---\n", 1)[0]
    assert "gateway-api/releases/download/" in head and "experimental-install.yaml" in head
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    crds = [d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert not [n for n in crds if n.endswith(".gateway.networking.k8s.io")]  # not ours
    # The control plane may watch the routes it is told about, and nothing more of that group.
    [cp] = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] ==
            "nodemesh-controlplane"]  # fmt: skip
    assert {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes", "grpcroutes"],
            "verbs": ["get", "list", "watch"]} in cp["rules"]  # fmt: skip
