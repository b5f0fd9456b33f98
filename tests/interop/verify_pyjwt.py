#!/usr/bin/env python3
"""Verify a token the way a Python relying party does: PyJWT's PyJWKClient
fetches the JWKS over HTTP, picks the key by kid, and jwt.decode checks the
signature, algorithm, issuer, audience and times.

usage: verify_pyjwt.py JWKS_URL ISSUER AUDIENCE TOKEN
Prints the verified claims as JSON and exits 0, or prints why and exits 1.
"""
import json
import sys

import jwt


def main():
    jwks_url, issuer, audience, token = sys.argv[1:5]
    client = jwt.PyJWKClient(jwks_url, cache_keys=False)
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["RS256", "ES256"],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as e:
        print(f"rejected: {type(e).__name__}: {e}")
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
