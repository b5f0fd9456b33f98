#!/usr/bin/env python3
"""Mint and review a token with the official Kubernetes Python client
(`pip install kubernetes`), unmodified, as a platform backend written in
Python would: CoreV1Api.create_namespaced_service_account_token, then
AuthenticationV1Api.create_token_review of the token it got.

usage: kubernetes_client.py HOST TOKEN_FILE NAMESPACE NAME AUDIENCE [CA_FILE]
HOST is the cluster's issuer URL (the API is served under it). Prints
{"token", "expiration", "review"} as JSON and exits 0, or prints the API's
answer and exits 1.
"""
import json
import sys

from kubernetes import client


def main():
    host, token_file, namespace, name, audience = sys.argv[1:6]
    ca_file = sys.argv[6] if len(sys.argv) > 6 else None
    with open(token_file) as f:
        bearer = f.read().strip()
    config = client.Configuration(host=host)
    config.api_key = {"authorization": bearer}
    config.api_key_prefix = {"authorization": "Bearer"}
    if ca_file:
        config.ssl_ca_cert = ca_file
    api = client.ApiClient(config)
    try:
        minted = client.CoreV1Api(api).create_namespaced_service_account_token(
            name,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=[audience], expiration_seconds=3600
                )
            ),
        )
        token = minted.status.token
        review = client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(
                spec=client.V1TokenReviewSpec(token=token, audiences=[audience])
            )
        )
    except client.ApiException as e:
        print(f"refused: {e.status} {e.reason}: {e.body}")
        return 1
    user = review.status.user
    print(
        json.dumps(
            {
                "token": token,
                "expiration": minted.status.expiration_timestamp.isoformat(),
                "review": {
                    "authenticated": review.status.authenticated,
                    "audiences": review.status.audiences,
                    "username": user.username if user else None,
                    "uid": user.uid if user else None,
                    "groups": user.groups if user else None,
                    "error": review.status.error,
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
