"""Time to first chunk through the official openai SDK (veil#18), for the load benchmark.

Called by benches/load/main.rs when VEIL_PYTHON names a Python with `openai` installed
(tests/python/requirements.txt). argv[1] is JSON: {"runs": N, "targets": [{"name", "base_url",
"proxy" (an http:// proxy URL or null), "ca" (PEM file the client trusts)}]}. It makes one SDK
client per target, then streams chat completions of 50 chunks 5 ms apart (the bench upstream's
`x-mock-chunks: 50,5`) in rounds of one stream per target, the order rotating each round, so
that the i-th times of two targets were taken moments apart, with a 150 ms pause after each
stream. Two warm-up rounds are not
counted. It prints one JSON object: {name: [milliseconds from the call to the first content
chunk, in round order]}.
"""

import json
import os
import sys
import time

import openai


def make_client(target):
    # The SDK's HTTP client reads these when it is made, as an app's would.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(name, None)
    if target["proxy"]:
        os.environ["HTTPS_PROXY"] = target["proxy"]
    os.environ["SSL_CERT_FILE"] = target["ca"]
    os.environ["NO_PROXY"] = "" if target["proxy"] else "*"
    return openai.OpenAI(api_key="sk-bench", base_url=target["base_url"], max_retries=0)


def first_chunk_ms(target, client):
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Write a haiku about latency."}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-chunks": "50,5"},
    )
    first, chunks = None, 0
    for chunk in stream:
        chunks += 1
        if first is None and chunk.choices and "part0" in (chunk.choices[0].delta.content or ""):
            first = time.perf_counter() - t0
    if first is None or chunks < 50:
        raise SystemExit(f"{target['name']}: {chunks} chunks, first content seen: {first}")
    return first * 1000.0


def main():
    spec = json.loads(sys.argv[1])
    targets = spec["targets"]
    clients = [make_client(t) for t in targets]
    times = [[] for _ in targets]
    for round_ in range(spec["runs"] + 2):
        for k in range(len(targets)):
            i = (round_ + k) % len(targets)
            ms = first_chunk_ms(targets[i], clients[i])
            if round_ >= 2:
                times[i].append(ms)
            # As the Rust client does (TTFC_PAUSE): a veil's recording of this stream is over
            # before the next target's stream starts.
            time.sleep(0.15)
    for c in clients:
        c.close()
    print(json.dumps({t["name"]: ts for t, ts in zip(targets, times)}))


if __name__ == "__main__":
    main()
