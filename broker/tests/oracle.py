"""jwcrypto as an independent JOSE implementation for the broker's tests.
  eddsa-jwt CLAIMS_JSON  -> prints a PEM public key line-joined with '|', then a token
  verify-es256 JWK TOKEN -> prints the verified claims (JSON)
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
elif cmd == "verify-es256":
    key = jwk.JWK.from_json(sys.argv[2])
    token = jwt.JWT(jwt=sys.argv[3], key=key, algs=["ES256"], check_claims={"exp": None})
    print(token.claims)
else:
    sys.exit(f"unknown command {cmd}")
