#!/usr/bin/env python3
"""A fake CRIU for fault injection (test-only; never used to make a feature pass).

Invoked as `fake_criu.py swrk FD` like CRIU. It answers VERSION and
FEATURE_CHECK like a healthy CRIU 4.2.1 and misbehaves on the first
DUMP/PRE_DUMP/RESTORE as CNTRLIVE_FAKE_CRIU_MODE says:

  hang-before-reply   never answer
  hang-after-predump  answer PRE_DUMP, then ignore the socket closing and sleep
  die                 exit(1) without answering
  crash               die by SIGSEGV without answering
  close-early         close the socket, keep running
  garbage             answer with bytes that are no protobuf message
  oversized           answer with a 200 KiB message
  fail                answer success=false with an errno (a plain CRIU error)

CNTRLIVE_FAKE_CRIU_VERSION ("4.1" or "4.1.0") changes the version it
reports (a misconfigured second CRIU, for `check`).

Every request it sees is appended to $CNTRLIVE_FAKE_CRIU_LOG (if set), so a
test can prove the runtime under test really talked to it.
"""
import os
import signal
import socket
import sys
import time

DUMP, RESTORE, PRE_DUMP, NOTIFY, FEATURE_CHECK, VERSION = 1, 2, 4, 6, 9, 10


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    return varint((num << 3) | 2) + varint(len(b)) + b


def read_varint(msg, i):
    """(value, next index) of the varint at msg[i]."""
    v = shift = 0
    while True:
        b = msg[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def parse_type(msg):
    """The `type` field (1, varint) of a criu_req."""
    i = 0
    while i < len(msg):
        key, i = read_varint(msg, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(msg, i)
            if num == 1:
                return v
        elif wt == 2:
            ln, i = read_varint(msg, i)
            i += ln
        else:
            return None
    return None


def resp(typ, success=True, extra=b""):
    return field_varint(1, typ) + field_varint(2, 1 if success else 0) + extra


def sleep_forever():
    while True:
        time.sleep(3600)


def main():
    mode = os.environ.get("CNTRLIVE_FAKE_CRIU_MODE", "hang-before-reply")
    log = os.environ.get("CNTRLIVE_FAKE_CRIU_LOG")
    if sys.argv[1:] == ["--version"]:
        print("Version: 4.2.1")
        return
    # `swrk FD`: runc passes whatever fd its socket landed on (e.g. 8).
    fd = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "swrk" else 3
    sk = socket.socket(fileno=fd)
    while True:
        try:
            msg = sk.recv(65536)
        except OSError:
            return
        if not msg:
            if mode == "hang-after-predump":
                sleep_forever()
            return
        typ = parse_type(msg)
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {mode} type={typ}\n")
        if typ == VERSION:
            major, minor, sub = (list(map(int, os.environ.get("CNTRLIVE_FAKE_CRIU_VERSION", "4.2.1").split("."))) + [0])[:3]
            version = field_varint(1, major) + field_varint(2, minor) + field_varint(4, sub)
            sk.send(resp(VERSION, extra=field_bytes(10, version)))
            continue
        if typ == FEATURE_CHECK:
            feats = field_varint(1, 1) + field_varint(2, 1) + field_varint(3, 1)
            sk.send(resp(FEATURE_CHECK, extra=field_bytes(8, feats)))
            continue
        # DUMP, PRE_DUMP, RESTORE: misbehave.
        if mode == "hang-before-reply":
            sleep_forever()
        elif mode == "hang-after-predump":
            sk.send(resp(typ))
            continue  # then waits for the next request, and ignores EOF
        elif mode == "die":
            os._exit(1)
        elif mode == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
            sleep_forever()
        elif mode == "close-early":
            sk.close()
            sleep_forever()
        elif mode == "garbage":
            sk.send(b"\xff\xff\xff\xff garbage, not protobuf \x00\x01")
            sleep_forever()
        elif mode == "oversized":
            sk.send(resp(typ, extra=field_bytes(9, b"x" * 200 * 1024)))
            sleep_forever()
        elif mode == "fail":
            sk.send(resp(typ, success=False, extra=field_varint(7, 5) + field_bytes(9, b"injected failure")))
            continue
        else:
            sys.exit(f"fake_criu: unknown mode {mode}")


if __name__ == "__main__":
    main()
