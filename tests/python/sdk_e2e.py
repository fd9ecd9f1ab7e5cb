"""Drive the official OpenAI and Anthropic SDKs through veil (HTTPS_PROXY + veil's CA).

Run by tests/it/sdk.rs with HTTPS_PROXY and SSL_CERT_FILE set; prints one JSON object per
call so the Rust test can compare what the SDK saw with what veil recorded.
"""

import json
import sys

import anthropic
import openai

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to alice@example.com"},
]


def emit(case, request_id, **fields):
    print(json.dumps({"case": case, "request_id": request_id, **fields}), flush=True)


def openai_calls():
    client = openai.OpenAI(api_key="sk-proj-PYTHONSECRET0123456789")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, user="alice", temperature=0.2
    )
    done = raw.parse()
    emit(
        "openai.chat",
        raw.headers.get("x-veil-request-id"),
        model=done.model,
        text=done.choices[0].message.content,
        finish=done.choices[0].finish_reason,
        input_tokens=done.usage.prompt_tokens,
        output_tokens=done.usage.completion_tokens,
    )

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, model = "", None, None, None
    for chunk in raw.parse():
        model = chunk.model
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    emit(
        "openai.chat.stream",
        raw.headers.get("x-veil-request-id"),
        model=model,
        text=text,
        finish=finish,
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
    )


def openai_tool_call():
    client = openai.OpenAI(api_key="sk-proj-PYTHONSECRET0123456789")
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
    )
    done = raw.parse()
    calls = done.choices[0].message.tool_calls or []
    emit(
        "openai.chat.tools",
        raw.headers.get("x-veil-request-id"),
        model=done.model,
        text="",
        finish=done.choices[0].finish_reason,
        input_tokens=done.usage.prompt_tokens,
        output_tokens=done.usage.completion_tokens,
        tool_calls=[c.function.name for c in calls],
    )


def anthropic_calls():
    client = anthropic.Anthropic(api_key="sk-ant-api03-PYTHONSECRET0123456789")
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello"}],
        metadata={"user_id": "bob"},
    )
    msg = raw.parse()
    emit(
        "anthropic.messages",
        raw.headers.get("x-veil-request-id"),
        model=msg.model,
        text=msg.content[0].text,
        finish=msg.stop_reason,
        input_tokens=msg.usage.input_tokens,
        output_tokens=msg.usage.output_tokens,
    )

    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-veil-request-id")
    emit(
        "anthropic.messages.stream",
        request_id,
        model=final.model,
        text=text,
        finish=final.stop_reason,
        input_tokens=final.usage.input_tokens,
        output_tokens=final.usage.output_tokens,
    )


if __name__ == "__main__":
    openai_calls()
    anthropic_calls()
    openai_tool_call()
    sys.exit(0)
