"""TC3 signer against the public test vector of Tencent's signing documentation."""

from faceid_batch.call.signing import sha256_hex, sign

# Byte-exact body of the documented example, with literal backslash-u escapes.
BODY = (
    b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], '
    b'"Name": "instance-name"}]}'
)
KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"


def _signed(**kw):
    args = dict(
        secret_id=SECRET_ID, secret_key=KEY, service="cvm", host="cvm.tencentcloudapi.com",
        action="DescribeInstances", version="2017-03-12", region="ap-guangzhou",
        body=BODY, timestamp=1551113065,
    )
    args.update(kw)
    return sign(**args)


def test_body_hash_matches_vector():
    assert sha256_hex(BODY) == "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"


def test_canonical_request_hash_matches_vector():
    signed = _signed()
    assert sha256_hex(signed.canonical_request.encode()) == (
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    )
    assert signed.string_to_sign.split("\n")[2] == "2019-02-25/cvm/tc3_request"


def test_signature_matches_vector():
    signed = _signed()
    assert signed.signature == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    assert signed.authorization == (
        f"TC3-HMAC-SHA256 Credential={SECRET_ID}/2019-02-25/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )


def test_any_change_changes_the_signature():
    base = _signed().signature
    assert _signed(body=BODY.replace(b"1", b"2")).signature != base
    assert _signed(timestamp=1551113066).signature != base
    assert _signed(secret_key=KEY[:-1] + "X").signature != base
    assert _signed(host="cvm2.tencentcloudapi.com").signature != base


def test_token_and_region_headers():
    signed = _signed(token="tmp-token")
    assert signed.headers["X-TC-Token"] == "tmp-token"
    assert signed.headers["X-TC-Region"] == "ap-guangzhou"
    assert "X-TC-Token" not in _signed().headers
