"""Real SDK traffic for the ledger's acceptance test (tests/it/sdk.rs).

Run with HTTPS_PROXY and SSL_CERT_FILE pointing at veil. Drives the official OpenAI and
Anthropic SDKs, streaming and not, over several features, users and models; one call fails
upstream (the mock answers `x-mock-status`) and one stream is closed by the client half-way.
Prints one JSON object per call: what the client saw (request id, model, tokens; `null`
tokens when the client saw none), so the Rust test can compare veil's report with it.
"""

import json
import sys

import anthropic
import openai

OPENAI_KEY = "sk-proj-LEDGERSECRET0123456789"
ANTHROPIC_KEY = "sk-ant-api03-LEDGERSECRET0123456789"


def emit(case, provider, request_id, feature, user, **fields):
    print(
        json.dumps(
            {
                "case": case,
                "provider": provider,
                "request_id": request_id,
                "feature": feature,
                "user": user,
                **fields,
            }
        ),
        flush=True,
    )


def tags(feature, user, **extra):
    """veil's attribution headers (stripped by veil before the request goes upstream)."""
    return {"x-veil-feature": feature, "x-veil-user": user, **extra}


def messages(text):
    return [{"role": "user", "content": text}]


def openai_chat(client, model, feature, user):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages("Summarize the invoice"), extra_headers=tags(feature, user)
    )
    done = raw.parse()
    emit(
        "openai.chat",
        "openai",
        raw.headers.get("x-veil-request-id"),
        feature,
        user,
        request_model=model,
        model=done.model,
        stream=False,
        status=raw.status_code,
        outcome="complete",
        input_tokens=done.usage.prompt_tokens,
        output_tokens=done.usage.completion_tokens,
    )


def openai_stream(client, model, feature, user):
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages("Find the contract"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=tags(feature, user),
    )
    usage, seen_model, chunks = None, None, 0
    for chunk in raw.parse():
        chunks += 1
        seen_model = chunk.model
        usage = chunk.usage or usage
    emit(
        "openai.chat.stream",
        "openai",
        raw.headers.get("x-veil-request-id"),
        feature,
        user,
        request_model=model,
        model=seen_model,
        stream=True,
        status=raw.status_code,
        outcome="complete",
        chunks=chunks,
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
    )


def openai_stream_aborted(client, model, feature, user):
    """Reads three chunks of a slow stream (the mock sends 50, 100 ms apart), then leaves."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages("Write a long report"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=tags(feature, user, **{"x-mock-chunks": "50,100"}),
    )
    stream = raw.parse()
    chunks, usage, seen_model = 0, None, None
    for chunk in stream:
        chunks += 1
        seen_model = chunk.model
        usage = chunk.usage or usage
        if chunks == 3:
            break
    # Closing an unfinished response closes the connection: veil sees the app go away.
    stream.close()
    emit(
        "openai.chat.stream.aborted",
        "openai",
        raw.headers.get("x-veil-request-id"),
        feature,
        user,
        request_model=model,
        model=seen_model,
        stream=True,
        status=raw.status_code,
        outcome="aborted",
        chunks=chunks,
        input_tokens=usage.prompt_tokens if usage else None,
        output_tokens=usage.completion_tokens if usage else None,
    )


def anthropic_message(client, model, feature, user):
    raw = client.messages.with_raw_response.create(
        model=model,
        max_tokens=64,
        messages=messages("Answer the ticket"),
        extra_headers=tags(feature, user),
    )
    msg = raw.parse()
    emit(
        "anthropic.messages",
        "anthropic",
        raw.headers.get("x-veil-request-id"),
        feature,
        user,
        request_model=model,
        model=msg.model,
        stream=False,
        status=raw.status_code,
        outcome="complete",
        input_tokens=msg.usage.input_tokens,
        output_tokens=msg.usage.output_tokens,
    )


def anthropic_stream(client, model, feature, user):
    with client.messages.stream(
        model=model,
        max_tokens=64,
        messages=messages("Answer the ticket"),
        extra_headers=tags(feature, user),
    ) as stream:
        "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-veil-request-id")
        status = stream.response.status_code
    emit(
        "anthropic.messages.stream",
        "anthropic",
        request_id,
        feature,
        user,
        request_model=model,
        model=final.model,
        stream=True,
        status=status,
        outcome="complete",
        input_tokens=final.usage.input_tokens,
        output_tokens=final.usage.output_tokens,
    )


def anthropic_failed(client, model, feature, user):
    """The provider answers 429; no retry, so exactly one exchange."""
    try:
        client.with_options(max_retries=0).messages.create(
            model=model,
            max_tokens=64,
            messages=messages("Answer the ticket"),
            extra_headers=tags(feature, user, **{"x-mock-status": "429"}),
        )
    except anthropic.APIStatusError as e:
        emit(
            "anthropic.messages.failed",
            "anthropic",
            e.response.headers.get("x-veil-request-id"),
            feature,
            user,
            request_model=model,
            model=None,
            stream=False,
            status=e.status_code,
            outcome="error",
            input_tokens=None,
            output_tokens=None,
        )
        return
    sys.exit("the call with x-mock-status: 429 succeeded")


if __name__ == "__main__":
    oa = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0, timeout=20.0)
    an = anthropic.Anthropic(api_key=ANTHROPIC_KEY, max_retries=0, timeout=20.0)
    openai_chat(oa, "gpt-4o-mini", "billing", "alice")
    openai_chat(oa, "gpt-4o", "billing", "bob")
    openai_stream(oa, "gpt-4o-mini", "search", "alice")
    openai_stream_aborted(oa, "gpt-4o-mini", "search", "carol")
    openai_stream(oa, "gpt-4o", "search", "dave")
    anthropic_message(an, "claude-sonnet-4-5", "support", "bob")
    anthropic_stream(an, "claude-haiku-4-5", "support", "carol")
    anthropic_failed(an, "claude-sonnet-4-5", "support", "alice")
    sys.exit(0)
