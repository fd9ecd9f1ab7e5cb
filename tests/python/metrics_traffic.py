"""Traffic for the dashboard's acceptance test: the official SDKs through veil, tagged.

Run by tests/it/prometheus.rs with HTTPS_PROXY and SSL_CERT_FILE set. Two providers and two
models, two features (x-veil-feature), plain and streamed answers, a prompt-cache hit, and a
rate-limited call the SDK retries once (both attempts answered 429 by the mock). Prints one
JSON object per call so the Rust test knows the request ids and how many requests went out.
"""

import json

import anthropic
import openai

MESSAGES = [{"role": "user", "content": "Summarize the refund policy."}]


def emit(case, request_id, **fields):
    print(json.dumps({"case": case, "request_id": request_id, **fields}), flush=True)


def main():
    oa = openai.OpenAI(api_key="sk-proj-METRICS0123456789", max_retries=0, timeout=20)
    raw = oa.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={"x-veil-feature": "support", "x-mock-cached": "32"},
    )
    raw.parse()
    emit("openai.chat", raw.headers.get("x-veil-request-id"), requests=1)

    raw = oa.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-veil-feature": "search", "x-mock-chunks": "4,20"},
    )
    for _ in raw.parse():
        pass
    emit("openai.chat.stream", raw.headers.get("x-veil-request-id"), requests=1)

    ant = anthropic.Anthropic(api_key="sk-ant-api03-METRICS0123456789", max_retries=0, timeout=20)
    raw = ant.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-veil-feature": "search"},
    )
    raw.parse()
    emit("anthropic.messages", raw.headers.get("x-veil-request-id"), requests=1)

    with ant.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-veil-feature": "support"},
    ) as stream:
        for _ in stream.text_stream:
            pass
        request_id = stream.response.headers.get("x-veil-request-id")
    emit("anthropic.messages.stream", request_id, requests=1)

    # One retry by the SDK itself (x-stainless-retry-count: 1, the same body again).
    retrying = openai.OpenAI(api_key="sk-proj-METRICS0123456789", max_retries=1, timeout=20)
    try:
        retrying.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers={"x-veil-feature": "support", "x-mock-status": "429"},
        )
        raise SystemExit("the mock's 429 did not reach the SDK")
    except openai.RateLimitError as e:
        emit("openai.chat.429", e.response.headers.get("x-veil-request-id"), requests=2)


main()
