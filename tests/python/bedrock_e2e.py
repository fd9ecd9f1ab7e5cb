"""Drive the official AWS SDK for Python (boto3) against Bedrock Runtime through veil.

Run by tests/it/bedrock.rs with HTTPS_PROXY and AWS_CA_BUNDLE set and fake AWS credentials
in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). Prints one
JSON object per call: what the SDK received, veil's request id, and exactly what botocore
signed (SigV4's signed headers with their values, the path and the body), taken
from botocore's `before-send` event, after signing and before the bytes leave. The Rust test
compares that with what the mock provider received.
"""

import base64
import json

import boto3
from botocore.config import Config

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
PROMPT = "Write to dana.whitfield@example.com about her card 4111 1111 1111 1111."
sent = []


def capture(request, **_):
    auth = request.headers["Authorization"]
    auth = auth.decode() if isinstance(auth, bytes) else auth
    names = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    headers = {}
    for name in names:
        value = request.headers.get(name)
        if value is None and name == "host":
            value = request.url.split("/")[2]
        headers[name] = value.decode() if isinstance(value, bytes) else value
    body = request.body or b""
    body = body.encode() if isinstance(body, str) else body
    path = "/" + request.url.split("/", 3)[3]
    sent.append(
        {
            "path": path,
            "signed": headers,
            "body_b64": base64.b64encode(body).decode(),
        }
    )


def emit(case, response, **fields):
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    print(
        json.dumps(
            {
                "case": case,
                "request_id": headers.get("x-veil-request-id"),
                "sent": sent[-1],
                **fields,
            }
        ),
        flush=True,
    )


def main():
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, read_timeout=20, connect_timeout=10),
    )
    client.meta.events.register("before-send.bedrock-runtime.*", capture)
    messages = [{"role": "user", "content": [{"text": PROMPT}]}]

    r = client.converse(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 64})
    emit(
        "converse",
        r,
        text=r["output"]["message"]["content"][0]["text"],
        input_tokens=r["usage"]["inputTokens"],
        output_tokens=r["usage"]["outputTokens"],
    )

    r = client.converse_stream(modelId=MODEL, messages=messages)
    text, usage = "", None
    for event in r["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"].get("text", "")
        if "metadata" in event:
            usage = event["metadata"]["usage"]
    emit(
        "converse_stream",
        r,
        text=text,
        input_tokens=usage["inputTokens"],
        output_tokens=usage["outputTokens"],
    )

    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": PROMPT}],
        }
    )
    r = client.invoke_model(modelId=MODEL, body=body, contentType="application/json")
    answer = json.loads(r["body"].read())
    emit(
        "invoke_model",
        r,
        text=answer["content"][0]["text"],
        input_tokens=answer["usage"]["input_tokens"],
        output_tokens=answer["usage"]["output_tokens"],
    )

    r = client.invoke_model_with_response_stream(modelId=MODEL, body=body)
    text, output_tokens = "", None
    for event in r["body"]:
        chunk = json.loads(event["chunk"]["bytes"])
        if chunk["type"] == "content_block_delta":
            text += chunk["delta"].get("text", "")
        if chunk["type"] == "message_delta":
            output_tokens = chunk["usage"]["output_tokens"]
    emit("invoke_model_with_response_stream", r, text=text, input_tokens=25, output_tokens=output_tokens)


if __name__ == "__main__":
    main()
