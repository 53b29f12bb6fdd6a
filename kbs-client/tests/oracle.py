"""Independent implementations for kbs-client's tests: RFC 8785 canonical JSON
(the rfc8785 package) and JOSE (jwcrypto). Commands:
  jcs-sha384 JSON                 -> hex SHA-384 of the canonical form
  decrypt PRIVATE_JWK JWE         -> hex of the plaintext
  encrypt PUBLIC_JWK ALG HEX      -> flattened JWE (JSON)
"""
import hashlib
import json
import sys

import rfc8785
from jwcrypto import jwe, jwk


def main():
    cmd = sys.argv[1]
    if cmd == "jcs-sha384":
        print(hashlib.sha384(rfc8785.dumps(json.loads(sys.argv[2]))).hexdigest())
    elif cmd == "decrypt":
        key = jwk.JWK.from_json(sys.argv[2])
        token = jwe.JWE()
        token.deserialize(sys.argv[3], key=key)
        print(token.payload.hex())
    elif cmd == "encrypt":
        key = jwk.JWK.from_json(sys.argv[2])
        token = jwe.JWE(bytes.fromhex(sys.argv[4]), protected=json.dumps({"alg": sys.argv[3], "enc": "A256GCM"}))
        token.add_recipient(key)
        print(token.serialize(compact=False))
    else:
        sys.exit(f"unknown command {cmd}")


main()
