#!/usr/bin/env python3
"""Writes the committed seed corpus of every fuzz target into fuzz/seeds/<target>/.

Deterministic (same files every run), small (a few dozen inputs per target, each under a
few KiB): the fuzzer starts from inputs that reach deep into each surface instead of
rediscovering a DNS header or a TOML table by chance. Run it after changing a format:

    python3 fuzz/make_seeds.py
"""

import hashlib
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SEEDS = os.path.join(HERE, "seeds")


def write(target, items):
    folder = os.path.join(SEEDS, target)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for label, data in items:
        if isinstance(data, str):
            data = data.encode()
        digest = hashlib.sha1(data).hexdigest()[:12]
        with open(os.path.join(folder, f"{label}-{digest}"), "wb") as f:
            f.write(data)


# --- DNS ------------------------------------------------------------------------------------

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
         "SRV": 33, "OPT": 41, "SVCB": 64, "HTTPS": 65, "IXFR": 251, "AXFR": 252, "ANY": 255,
         "CAA": 257}


def qname(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def ecs(family, source, address, scope=0):
    return struct.pack(">HBB", family, source, scope) + address


def opt(payload=1232, version=0, do=False, options=b""):
    flags = 0x8000 if do else 0
    return b"\x00" + struct.pack(">HHBBHH", 41, payload, 0, version, flags, len(options)) + options


def option(code, data):
    return struct.pack(">HH", code, len(data)) + data


def query(name, qtype="A", qclass=1, ident=0x1234, flags=0x0100, edns=None, counts=None):
    qd, an, ns, ar = counts or (1, 0, 0, 1 if edns is not None else 0)
    packet = struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)
    packet += qname(name) + struct.pack(">HH", TYPES.get(qtype, qtype) if isinstance(qtype, str) else qtype, qclass)
    if edns is not None:
        packet += edns
    return packet


def dns_seeds():
    v4 = option(8, ecs(1, 24, bytes([81, 2, 69])))
    v6 = option(8, ecs(2, 56, bytes.fromhex("2001067c1220ab")))
    items = []
    for name in ["api.example.test", "nearest.example.test", "weighted.example.test",
                 "failover.example.test"]:
        for qtype in ["A", "AAAA"]:
            items.append((f"gslb-{name.split('.')[0]}-{qtype}", query(name, qtype)))
        items.append((f"gslb-{name.split('.')[0]}-ecs4", query(name, "A", edns=opt(options=v4))))
        items.append((f"gslb-{name.split('.')[0]}-ecs6", query(name, "AAAA", edns=opt(options=v6))))
    items += [
        ("why-txt", query("_why.api.example.test", "TXT", edns=opt(options=v4))),
        ("why-a", query("_why.api.example.test", "A")),
        ("apex-soa", query("example.test", "SOA")),
        ("apex-ns", query("example.test", "NS", edns=opt())),
        ("apex-any", query("example.test", "ANY")),
        ("apex-caa", query("example.test", "CAA")),
        ("www-https", query("www.example.test", "HTTPS", edns=opt(do=True))),
        ("cname-chain", query("chat.example.test", "A")),
        ("cname-docs", query("DOCS.Example.TEST", "AAAA")),
        ("wildcard", query("x.apps.example.test", "A")),
        ("empty-non-terminal", query("b.example.test", "A")),
        ("referral", query("host.lab.example.test", "A")),
        ("nxdomain", query("nope.example.test", "A", edns=opt())),
        ("nodata", query("www.example.test", "MX")),
        ("big-udp-512", query("big.example.test", "TXT")),
        ("big-edns", query("big.example.test", "ANY", edns=opt(payload=4096))),
        ("srv", query("_https._tcp.example.test", "SRV")),
        ("refused", query("example.com", "A")),
        ("class-ch", query("version.bind", "TXT", qclass=3)),
        ("class-any", query("www.example.test", "A", qclass=255)),
        ("axfr", query("example.test", "AXFR")),
        ("ixfr", query("example.test", "IXFR")),
        ("qtype-opt", query("example.test", "OPT")),
        ("edns-v1", query("api.example.test", "A", edns=opt(version=1))),
        ("edns-small", query("api.example.test", "A", edns=opt(payload=100))),
        ("ecs-scope-set", query("api.example.test", "A", edns=opt(options=option(8, ecs(1, 24, bytes([81, 2, 69]), 24))))),
        ("ecs-host-bits", query("api.example.test", "A", edns=opt(options=option(8, ecs(1, 20, bytes([81, 2, 69])))))),
        ("edns-cookie", query("api.example.test", "A", edns=opt(options=option(10, b"\x01" * 8)))),
        ("opcode-notify", query("example.test", "SOA", flags=0x2000)),
        ("opcode-update", query("example.test", "SOA", flags=0x2800)),
        ("qr-set", query("api.example.test", "A", flags=0x8100)),
        ("qdcount-0", struct.pack(">HHHHHH", 7, 0x0100, 0, 0, 0, 0)),
        ("qdcount-2", query("api.example.test", counts=(2, 0, 0, 0))),
        ("arcount-lies", query("api.example.test", counts=(1, 0, 0, 3))),
        ("short", b"\x12\x34\x01\x00\x00\x01"),
        ("cut-name", query("api.example.test")[:20]),
        ("pointer-loop", struct.pack(">HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"),
        ("two-opt", query("api.example.test", edns=opt() + opt(), counts=(1, 0, 0, 2))),
    ]
    return items


def ecs_seeds():
    return [
        ("v4-24", ecs(1, 24, bytes([81, 2, 69]))),
        ("v4-32", ecs(1, 32, bytes([198, 51, 100, 7]))),
        ("v4-20", ecs(1, 20, bytes([81, 2, 64]))),
        ("v4-0", ecs(1, 0, b"")),
        ("v4-override", ecs(1, 24, bytes([198, 51, 100]))),
        ("v6-56", ecs(2, 56, bytes.fromhex("2001067c1220ab"))),
        ("v6-48", ecs(2, 48, bytes.fromhex("20010db80001"))),
        ("v6-128", ecs(2, 128, bytes.fromhex("20010db8000000000000000000000001"))),
        ("v6-0", ecs(2, 0, b"")),
        ("v6-mapped", ecs(2, 128, bytes.fromhex("00000000000000000000ffff51024501"))),
        ("bad-family", ecs(3, 8, b"\x0a")),
        ("bad-scope", ecs(1, 24, bytes([81, 2, 69]), 16)),
        ("bad-long-address", ecs(1, 8, bytes([10, 0]))),
        ("bad-host-bits", ecs(1, 23, bytes([81, 2, 69]))),
        ("bad-prefix", ecs(1, 33, bytes([1, 2, 3, 4, 5]))),
        ("short", b"\x00\x01\x18"),
    ]


# --- health frames --------------------------------------------------------------------------

def frame(payload, magic=b"MRDN", version=1, kind=1, length=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    return magic + bytes([version, kind]) + struct.pack(">I", len(body) if length is None else length) + body


def report(**overrides):
    r = {
        "version": 1, "region": "eu-west", "sequence": 42, "state": "ok", "accept_new": True,
        "saturation": 0.25, "capacity_units": 16, "headroom_units": 12.0, "headroom_fraction": 0.75,
        "models": {"llama-3.1-8b": {"healthy_backends": 2, "total_backends": 2, "capacity_units": 16,
                                    "headroom_units": 12.0, "headroom_fraction": 0.75, "saturation": 0.25,
                                    "ttft_p95_ms": 180.5, "inter_token_p95_ms": 22.0}},
        "rates": {"requests_per_s": 12.5, "errors_per_s": 0.0, "timeouts_per_s": 0.0, "sheds_per_s": 0.5},
        "client_rtt": [{"prefix": "203.0.113.0/24", "rtt_ms": 35.2, "samples": 9}],
    }
    r.update(overrides)
    return {"validity_ms": 3000, "report": r}


def frame_seeds():
    good = frame(report())
    minimal = {"validity_ms": 1000, "report": {k: v for k, v in report()["report"].items()
                                               if k not in ("models", "rates", "client_rtt")}}
    return [
        ("report", good),
        ("report-minimal", frame(minimal)),
        ("report-degraded", frame(report(state="degraded", accept_new=False, saturation=0.97))),
        ("report-draining", frame(report(state="draining", models={}))),
        ("report-down", frame(report(state="down", client_rtt=[]))),
        ("report-unknown-field", frame(report(extra={"x": [1, 2]}))),
        ("report-unknown-state", frame(report(state="melting"))),
        ("report-version-2", frame(report(version=2))),
        ("report-huge-numbers", frame(report(sequence=18446744073709551615, saturation=1e308))),
        ("two-frames", good + frame(report(sequence=43))),
        ("header-only", good[:10]),
        ("cut-payload", good[:40]),
        ("bad-magic", frame(report(), magic=b"MRDX")),
        ("bad-version", frame(report(), version=2)),
        ("bad-kind", frame(report(), kind=9)),
        ("too-large", frame(b"{}", length=70000)),
        ("not-json", frame(b"\xff\xfe{not json")),
        ("empty-object", frame(b"{}")),
    ]


# --- configs --------------------------------------------------------------------------------

def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


MINIMAL_DNS = """
[server]
listen = ["127.0.0.1:5353"]

[[zone]]
origin = "example.test."
file = "example.test.zone"

[[region]]
id = "r1"
latitude = 1.0
longitude = 2.0
ipv4 = ["192.0.2.1"]

[[gslb]]
name = "api.example.test."
mode = "failover"
regions = ["r1"]
"""

HEALTH_DNS = MINIMAL_DNS + """
[health]
listen = "127.0.0.1:8853"
ca = "certs/ca.pem"
cert = "certs/node.pem"
key = "certs/node-key.pem"
down_after = 2
up_after = 3
[health.spill]
trip = 0.05
recover = 0.2
hold_reports = 3

[admin]
token_file = "admin.token"

[rrl]
responses_per_second = 20
burst = 20
slip = 2
ipv4_prefix = 24
ipv6_prefix = 56
max_buckets = 100000
"""


def dns_config_seeds():
    items = [("bundled", read("zones/meridian.toml")), ("minimal", MINIMAL_DNS),
             ("health-admin-rrl", HEALTH_DNS)]
    for name in sorted(os.listdir(os.path.join(REPO, "deploy/example"))):
        if name.startswith("dns-") and name.endswith(".toml"):
            items.append((name[:-5], read(f"deploy/example/{name}")))
    items += [
        ("bad-syntax", "[server\nlisten = "),
        ("bad-unknown-key", MINIMAL_DNS + "\nbogus = 1\n"),
        ("bad-region-ref", MINIMAL_DNS.replace('regions = ["r1"]', 'regions = ["r9"]')),
        ("bad-latitude", MINIMAL_DNS.replace("latitude = 1.0", "latitude = 123.0")),
        ("bad-listen", MINIMAL_DNS.replace("127.0.0.1:5353", "localhost")),
        ("multibyte", "# é ü 日本\n[server]\nlisten = [\"ä\"]\n"),
        ("empty", ""),
    ]
    return items


MINIMAL_RELAY = """
[relay]
region = "eu-west"
listen = "127.0.0.1:8443"
[relay.tls]
cert = "cert.pem"
key = "key.pem"

[[backend]]
id = "b1"
url = "http://127.0.0.1:8000"
kind = "vllm"
models = ["m"]
slots = 8
"""


def relay_config_seeds():
    items = [("minimal", MINIMAL_RELAY)]
    for name in sorted(os.listdir(os.path.join(REPO, "deploy/example"))):
        if name.startswith("relay-") and name.endswith(".toml"):
            items.append((name[:-5], read(f"deploy/example/{name}")))
    if os.path.exists(os.path.join(REPO, "deploy/relay/relay.toml")):
        items.append(("deploy-relay", read("deploy/relay/relay.toml")))
    items += [
        ("limits-timeouts", MINIMAL_RELAY + "\n[limits]\nmax_request_body_bytes = 1024\n"
         "\n[timeouts]\nconnect_ms = 100\nfirst_byte_ms = 1000\nidle_ms = 1000\ntotal_ms = 5000\n"),
        ("bad-url", MINIMAL_RELAY.replace("http://127.0.0.1:8000", "ftp://[::1")),
        ("bad-kind", MINIMAL_RELAY.replace('"vllm"', '"teapot"')),
        ("bad-slots", MINIMAL_RELAY.replace("slots = 8", "slots = -1")),
        ("duplicate-backend", MINIMAL_RELAY + MINIMAL_RELAY[MINIMAL_RELAY.index("[[backend]]"):]),
        ("bad-syntax", "[relay]\nregion = \"x\"\n[[backend]\n"),
    ]
    return items


# --- relay requests -------------------------------------------------------------------------

def http(head, body=b""):
    return head.encode() + b"\n\n" + (body.encode() if isinstance(body, str) else body)


def relay_request_seeds():
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    json_ct = "content-type: application/json"
    return [
        ("chat", http(f"POST /v1/chat/completions\n{json_ct}", chat)),
        ("chat-charset", http("POST /v1/chat/completions\ncontent-type: Application/JSON; charset=utf-8", chat)),
        ("completions", http(f"POST /v1/completions\n{json_ct}", '{"model":"llama-3.1-8b-instruct","prompt":"x"}')),
        ("embeddings", http(f"POST /v1/embeddings?x=1\n{json_ct}\nx-request-id: 7", '{"model":"m","input":"x"}')),
        ("unknown-model", http(f"POST /v1/chat/completions\n{json_ct}", '{"model":"gpt-9"}')),
        ("model-number", http(f"POST /v1/chat/completions\n{json_ct}", '{"model":7}')),
        ("model-missing", http(f"POST /v1/chat/completions\n{json_ct}", '{"messages":[]}')),
        ("model-empty", http(f"POST /v1/chat/completions\n{json_ct}", '{"model":""}')),
        ("bad-json", http(f"POST /v1/chat/completions\n{json_ct}", '{"model":"m",')),
        ("bad-utf8", http(f"POST /v1/chat/completions\n{json_ct}", b'{"model":"\xff"}')),
        ("no-content-type", http("POST /v1/chat/completions", chat)),
        ("text-plain", http("POST /v1/chat/completions\ncontent-type: text/plain", chat)),
        ("hop-by-hop", http(f"POST /v1/chat/completions\n{json_ct}\nconnection: keep-alive, x-secret\nx-secret: 1\n"
                            "te: trailers\nauthorization: Bearer k", chat)),
        ("models", http("GET /v1/models")),
        ("models-post", http("POST /v1/models")),
        ("models-delete", http("DELETE /v1/models")),
        ("health", http("GET /health")),
        ("healthz", http("GET /healthz\nhost: relay.example")),
        ("not-found", http("GET /v2/nothing")),
        ("absolute-uri", http(f"POST http://evil.example/v1/chat/completions\n{json_ct}", chat)),
        ("put", http(f"PUT /v1/chat/completions\n{json_ct}", chat)),
        ("deep-json", http(f"POST /v1/chat/completions\n{json_ct}", "[" * 200 + "]" * 200)),
    ]


def main():
    write("dns_respond", dns_seeds())
    write("dns_ecs", ecs_seeds())
    write("health_frame", frame_seeds())
    write("dns_config", dns_config_seeds())
    write("relay_config", relay_config_seeds())
    write("relay_request", relay_request_seeds())
    for target in sorted(os.listdir(SEEDS)):
        files = os.listdir(os.path.join(SEEDS, target))
        size = sum(os.path.getsize(os.path.join(SEEDS, target, f)) for f in files)
        print(f"{target}: {len(files)} seeds, {size} bytes")


if __name__ == "__main__":
    main()
