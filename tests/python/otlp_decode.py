#!/usr/bin/env python3
"""Decode a protobuf ExportTraceServiceRequest file with the official opentelemetry-proto
package and print its resource and spans (with attributes) as JSON.

Usage: python3 tests/python/otlp_decode.py FILE

An independent decoder for veil's exporter output: `cargo test --lib export::` runs it when
the package is importable (`pip install opentelemetry-proto`).
"""
import json
import sys

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        req = ExportTraceServiceRequest()
        req.ParseFromString(f.read())
    out = {"resource": {}, "scopes": [], "spans": []}
    for rs in req.resource_spans:
        out["resource"].update(attributes(rs.resource.attributes))
        for ss in rs.scope_spans:
            out["scopes"].append(
                {"name": ss.scope.name, "version": ss.scope.version, "schema_url": ss.schema_url}
            )
            for span in ss.spans:
                out["spans"].append(
                    {
                        "name": span.name,
                        "kind": Span.SpanKind.Name(span.kind),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "trace_state": span.trace_state,
                        "flags": span.flags,
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                        "status": {
                            "code": Status.StatusCode.Name(span.status.code),
                            "message": span.status.message,
                        },
                        "attributes": attributes(span.attributes),
                    }
                )
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
