"""Time to first chunk through the official openai SDK (veil#18), for the load benchmark.

Called by benches/load/main.rs when VEIL_PYTHON names a Python with `openai` installed
(tests/python/requirements.txt). argv[1] is JSON: {"runs": N, "targets": [{"name", "base_url",
"proxy" (an http:// proxy URL or null), "ca" (PEM file the client trusts)}]}. For each target it
streams N chat completions of 50 chunks 5 ms apart (the bench upstream's `x-mock-chunks: 50,5`)
with the SDK and prints one JSON object: {name: median milliseconds from the call to the first
content chunk}. Two warm-up streams per target are not counted.
"""

import json
import os
import statistics
import sys
import time

import openai


def median_ttfc(target, runs):
    # The SDK's HTTP client reads these when it is made, as an app's would.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(name, None)
    if target["proxy"]:
        os.environ["HTTPS_PROXY"] = target["proxy"]
    os.environ["SSL_CERT_FILE"] = target["ca"]
    os.environ["NO_PROXY"] = "" if target["proxy"] else "*"
    client = openai.OpenAI(api_key="sk-bench", base_url=target["base_url"], max_retries=0)
    times = []
    for _ in range(runs + 2):
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
            if (
                first is None
                and chunk.choices
                and "part0" in (chunk.choices[0].delta.content or "")
            ):
                first = time.perf_counter() - t0
        if first is None or chunks < 50:
            raise SystemExit(f"{target['name']}: {chunks} chunks, first content seen: {first}")
        times.append(first * 1000.0)
    client.close()
    return statistics.median(times[2:])


def main():
    spec = json.loads(sys.argv[1])
    print(json.dumps({t["name"]: median_ttfc(t, spec["runs"]) for t in spec["targets"]}))


if __name__ == "__main__":
    main()
