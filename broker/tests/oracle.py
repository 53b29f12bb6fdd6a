"""jwcrypto as an independent JOSE implementation for the broker's tests.
  eddsa-jwt CLAIMS_JSON  -> prints a PEM public key line-joined with '|', then a token
"""
import json
import sys

from jwcrypto import jwk, jwt

cmd = sys.argv[1]
if cmd == "eddsa-jwt":
    key = jwk.JWK.generate(kty="OKP", crv="Ed25519")
    token = jwt.JWT(header={"alg": "EdDSA", "typ": "JWT"}, claims=json.loads(sys.argv[2]))
    token.make_signed_token(key)
    print(key.export_to_pem().decode().strip().replace("\n", "|"))
    print(token.serialize())
else:
    sys.exit(f"unknown command {cmd}")
