#!/usr/bin/env python3
"""Writes the protobuf seeds of corpus/token_request_protobuf/.

Kubernetes protobuf by hand (no protobuf package needed): the "k8s\\0" prefix,
then a runtime.Unknown (typeMeta=1 {apiVersion=1, kind=2}, raw=2,
contentEncoding=3, contentType=4) whose raw is an authentication/v1
TokenRequest (metadata=1 {name=1, namespace=3}, spec=2 {audiences=1,
boundObjectRef=3 {kind=1, apiVersion=2, name=3, uid=4}, expirationSeconds=4},
status=3). Field numbers as in the k8s-pb crate. Run from tests/fuzz/.
"""
import os


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def string(tag, v):
    v = v.encode() if isinstance(v, str) else v
    return varint(tag << 3 | 2) + varint(len(v)) + v


def int64(tag, v):
    return varint(tag << 3) + varint(v & (1 << 64) - 1)


def envelope(raw, kind="TokenRequest", content_fields=True):
    type_meta = string(1, "authentication.k8s.io/v1") + string(2, kind)
    body = string(1, type_meta) + string(2, raw)
    if content_fields:
        body += string(3, "") + string(4, "")
    return b"k8s\0" + body


seeds = {
    # kubectl 1.32: create token sa --audience sts.amazonaws.com --duration 1h
    "kubectl": envelope(
        string(1, b"")
        + string(2, string(1, "sts.amazonaws.com") + int64(4, 3600))
        + string(3, b"")
    ),
    # Bound to a pod, two audiences, names in the metadata.
    "bound-pod": envelope(
        string(1, string(1, "sa") + string(3, "ns"))
        + string(
            2,
            string(1, "a")
            + string(1, "b")
            + int64(4, 600)
            + string(
                3,
                string(1, "Pod")
                + string(2, "v1")
                + string(3, "web-0")
                + string(4, "8d3c6f3e-0000-4000-8000-000000000001"),
            ),
        )
    ),
    # No spec, no content fields.
    "empty": envelope(b"", content_fields=False),
    # A negative lifetime, refused at minting.
    "negative-lifetime": envelope(string(2, int64(4, -5))),
}
os.makedirs("corpus/token_request_protobuf", exist_ok=True)
for name, body in seeds.items():
    with open(os.path.join("corpus/token_request_protobuf", name), "wb") as f:
        f.write(body)
