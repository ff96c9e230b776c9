"""The identities and pod placement the identity tests share."""

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/emojivoto/sa/web"
EMOJI = f"spiffe://{TD}/ns/emojivoto/sa/emoji"

# node -> the (namespace, service account) pairs of the pods scheduled there.
PODS = {
    "node1": [("emojivoto", "web"), ("emojivoto", "web"), ("kube-system", "coredns")],
    "node2": [("emojivoto", "emoji")],
}
