"""An app that rates an answer: the official OpenAI SDK through veil, then feedback to veil.

Run by tests/it/feedback.rs with HTTPS_PROXY (veil's listener) and SSL_CERT_FILE (veil's CA
bundle) set. It reads x-veil-request-id from the SDK's raw response, then POSTs feedback to
veil's own API on the listener (`$HTTPS_PROXY/veil/v1/feedback`, plain HTTP, no proxy) with a
comment that carries the email and card number given as arguments. Prints one JSON object per
step so the Rust test can check what veil stored.
"""

import json
import os
import sys
import urllib.error
import urllib.request

import openai

EMAIL, CARD = sys.argv[1], sys.argv[2]


def emit(case, **fields):
    print(json.dumps({"case": case, **fields}), flush=True)


def main():
    client = openai.OpenAI(api_key="sk-proj-PYTHONSECRET0123456789", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is the refund policy?"}],
    )
    answer = raw.parse()
    request_id = raw.headers.get("x-veil-request-id")
    emit("openai.chat", request_id=request_id, text=answer.choices[0].message.content)

    body = json.dumps(
        {
            "request_id": request_id,
            "name": "user_rating",
            "score": -1,
            "label": "thumbs_down",
            "comment": f"wrong, mail me at {EMAIL}, I paid with {CARD}",
        }
    ).encode()
    url = os.environ["HTTPS_PROXY"].rstrip("/") + "/veil/v1/feedback"
    # veil's own API on its listener: not through the proxy (an empty ProxyHandler).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with opener.open(req, timeout=20) as resp:
            status, answer = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        status, answer = e.code, json.loads(e.read() or b"null")
    emit("feedback", request_id=request_id, status=status, answer=answer)


main()
