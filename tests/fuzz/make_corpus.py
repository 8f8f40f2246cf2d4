#!/usr/bin/env python3
"""Writes the seed corpus of the libFuzzer targets (tests/fuzz/corpus/).

Seeds are the valid and the classic hostile inputs, built with the stdlib's
hmac module so that a right answer in the corpus does not depend on
libcmp's own HMAC. Deterministic: rerunning it rewrites the same files.
The files named by a hash beside them are what `make fuzz-merge` kept.
Usage: tests/fuzz/make_corpus.py [corpus dir]
"""
import hashlib
import hmac
import os
import struct
import sys

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
KEY = b"fuzz-authkey"


def frame(payload):
    """The stdlib's framing: 4-byte big-endian length, or -1 + 8 bytes."""
    if len(payload) > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, len(payload)) + payload
    return struct.pack("!i", len(payload)) + payload


def frame8(payload):
    """The 8-byte form for a small payload (a reader must accept it)."""
    return struct.pack("!iQ", -1, len(payload)) + payload


def conn_seeds():
    body = bytes(range(256))
    return {
        "empty": b"",
        "one_hello": frame(b"hello"),
        "zero_length": frame(b""),
        "three_messages": frame(b"a") + frame(b"") + frame(body[:40]),
        "large_form_small": frame8(b"eight-byte length"),
        "large_form_empty": frame8(b""),
        "mixed_forms": frame(b"x" * 17) + frame8(body[:33]) + frame(b"y"),
        "over_maxlen": frame(body) + frame(b"after"),
        "truncated_header": frame(b"abc")[:2],
        "truncated_large_header": frame8(b"abc")[:9],
        "truncated_body": frame(b"abcdef")[:7],
        "negative_length": struct.pack("!i", -2) + frame(b"next"),
        # The hostile headers of issue 7: a claim of 2**31-1 bytes, then
        # close; and an 8-byte claim of 2**40.
        "hostile_2g_header": struct.pack("!i", 0x7FFFFFFF) + b"tiny",
        "hostile_8byte_claim": struct.pack("!iQ", -1, 1 << 40) + b"tiny",
    }


def answer(key, msg, name):
    """A right answer to challenge body msg: "{name}" + HMAC, or with
    name "md5-bare" the bare HMAC-MD5 of old clients."""
    if name == "md5-bare":
        return hmac.new(key, msg, "md5").digest()
    return b"{%s}" % name.encode() + hmac.new(key, msg, name).digest()


def auth_seeds():
    key = bytes([len(KEY)]) + KEY
    random40 = hashlib.sha256(b"seed").digest() + b"12345678"
    sha_msg = b"{sha256}" + random40
    md5_msg = b"{md5}" + random40
    legacy_msg = random40[:20]
    seeds = {}
    # mode 0, server: the client's reply (the real challenge is random, so
    # these are well-formed answers that must be refused).
    seeds["server_sha256_answer"] = b"\0" + key + frame(b"{sha256}" + bytes(32))
    seeds["server_md5_bare_answer"] = b"\0" + key + frame(bytes(16))
    seeds["server_md5_prefixed_answer"] = b"\0" + key + frame(b"{md5}" + bytes(16))
    seeds["server_eof"] = b"\0" + key
    # mode 1, client: the server's challenge then its verdict.
    for name, msg in (("sha256", sha_msg), ("md5", md5_msg), ("legacy", legacy_msg)):
        seeds["client_%s_welcome" % name] = (
            b"\1" + key + frame(CHALLENGE + msg) + frame(WELCOME))
    seeds["client_sha256_failure"] = b"\1" + key + frame(CHALLENGE + sha_msg) + frame(FAILURE)
    seeds["client_unknown_digest"] = (
        b"\1" + key + frame(CHALLENGE + b"{sha3_256}" + random40) + frame(WELCOME))
    # mode 2, verify: [challenge length][challenge][answer], right ones for
    # each form (the fuzzer mutates them into near misses).
    def verify(msg, answer):
        c = CHALLENGE + msg
        return b"\2" + key + bytes([len(c)]) + c + answer
    seeds["verify_sha256_right"] = verify(sha_msg, answer(KEY, sha_msg, "sha256"))
    seeds["verify_md5_prefixed_right"] = verify(sha_msg, answer(KEY, sha_msg, "md5"))
    seeds["verify_md5_bare_right"] = verify(sha_msg, answer(KEY, sha_msg, "md5-bare"))
    seeds["verify_legacy_right"] = verify(legacy_msg, answer(KEY, legacy_msg, "md5-bare"))
    seeds["verify_sha256_wrong"] = verify(sha_msg, b"{sha256}" + bytes(32))
    long_key = bytes(range(100))  # longer than a hash block: hashed first
    c = CHALLENGE + sha_msg
    seeds["verify_long_key"] = (b"\2" + bytes([len(long_key)]) + long_key + bytes([len(c)]) + c +
                                answer(long_key, sha_msg, "sha256"))
    return seeds


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    for target, seeds in (("fuzz_conn", conn_seeds()), ("fuzz_auth", auth_seeds())):
        d = os.path.join(root, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
