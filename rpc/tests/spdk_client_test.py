#!/usr/bin/env python3
"""Drive an mdraid RPC socket with SPDK's own Python client, unchanged.

Needs SPDK's client from PyPI:  pip install spdk==26.5   (no dependencies)
Run:  python3 rpc/tests/spdk_client_test.py /var/tmp/mdraid.sock

The server must start empty and serve bdev_malloc_create/delete,
bdev_get_bdevs and the bdev_mdraid_* methods (the real daemon, or the fake
one in rpc/tests/python_client.rs, which runs this script under cargo test).
Exits non-zero on the first failed check.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

from spdk.rpc.client import JSONRPCClient, JSONRPCException

SOCK = sys.argv[1]


def rpc_py(*args, stdin=None):
    """SPDK's rpc.py (the `spdk-rpc` console script of the package)."""
    cmd = [sys.executable, "-m", "spdk.spdk_rpc", "-s", SOCK, *args]
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def expect_error(client, method, params, code, *needles):
    try:
        client.call(method, params)
    except JSONRPCException as e:
        assert f'"code": {code}' in e.message, e.message
        for n in needles:
            assert n in e.message, (n, e.message)
        return
    raise AssertionError(f"{method} {params} should have failed")


def main():
    c = JSONRPCClient(SOCK, timeout=10)

    methods = c.call("rpc_get_methods")
    for m in ("bdev_mdraid_create", "bdev_mdraid_get_bdevs", "bdev_malloc_create", "save_config"):
        assert m in methods, m
    assert c.call("rpc_get_methods", {"current": True, "include_aliases": False}) == methods

    # Create members and an array, the way rpc.py's helpers call them.
    assert c.call("bdev_malloc_create", {"name": "m0", "num_blocks": 2048, "block_size": 512}) == "m0"
    assert c.bdev_malloc_create(name="m1", num_blocks=2048, block_size=512, uuid=None) == "m1"
    assert c.bdev_mdraid_create(name="r0", raid_level="raid1", base_bdevs=["m0", "m1"], strip_size_kb=None) is True
    arrays = c.call("bdev_mdraid_get_bdevs", {"category": "all"})
    assert [a["name"] for a in arrays] == ["r0"], arrays
    assert arrays[0]["raid_level"] == "raid1" and arrays[0]["num_base_bdevs"] == 2, arrays
    names = [b["name"] for b in c.call("bdev_get_bdevs")]
    assert names == ["m0", "m1", "r0"], names
    one = c.call("bdev_get_bdevs", {"name": "m0"})
    assert one[0]["block_size"] == 512 and one[0]["supported_io_types"]["read"] is True, one

    # Errors as SPDK reports them, naming the field.
    expect_error(c, "bdev_mdraid_create",
                 {"name": "r1", "raid_level": "raid1", "base_bdevs": ["m0", "m1"], "strip_size_kb": "x"},
                 -32602, "field `strip_size_kb`", "expected u32")
    expect_error(c, "bdev_mdraid_create", {"name": "r1", "raid_level": "raid7", "base_bdevs": ["m0"]},
                 -32602, "field `raid_level`")
    expect_error(c, "bdev_mdraid_create", {"name": "r1", "raid_level": "raid1", "base_bdevs": ["m0", "m0"]},
                 -32602, "field `base_bdevs[1]`")
    expect_error(c, "bdev_mdraid_create", {"raid_level": "raid1", "base_bdevs": ["m0"]},
                 -32602, "field `name`", "missing")
    expect_error(c, "bdev_malloc_create", {"num_blocks": 2**64 - 1, "block_size": 4096},
                 -32602, "field `num_blocks`")
    expect_error(c, "bdev_mdraid_delete", {"name": "nope"}, -19, "not found")
    expect_error(c, "bdev_get_bdevs", {"name": "nope"}, -19)
    expect_error(c, "bdev_raid_create", {"name": "x"}, -32601, "Method not found")

    # rpc.py itself: argument parsing, output, batch mode.
    rc, out, err = rpc_py("bdev_malloc_create", "-b", "m2", "1", "512")
    assert rc == 0 and out.strip() == "m2", (rc, out, err)
    rc, out, err = rpc_py("bdev_get_bdevs", "-b", "m2")
    assert rc == 0 and json.loads(out)[0]["num_blocks"] == 2048, (rc, out, err)
    rc, out, err = rpc_py("bdev_malloc_delete", "m2")
    assert rc == 0, (rc, out, err)
    rc, out, err = rpc_py("bdev_get_bdevs", "-b", "nope")
    assert rc != 0 and '"code": -19' in out, (rc, out, err)
    rc, out, err = rpc_py("--batch-mode", stdin="bdev_get_bdevs -b m0\nbdev_get_bdevs -b m1\n")
    assert rc == 0 and out.count('"name": "m') == 2, (rc, out, err)

    # save_config (rpc.py: framework_get_subsystems + framework_get_config),
    # then tear down and load_config back.
    rc, saved, err = rpc_py("save_config")
    assert rc == 0, (rc, saved, err)
    doc = json.loads(saved)
    bdev = next(s for s in doc["subsystems"] if s["subsystem"] == "bdev")
    assert [e["method"] for e in bdev["config"]][:3] == ["bdev_malloc_create"] * 2 + ["bdev_mdraid_create"], bdev
    assert c.call("bdev_mdraid_delete", {"name": "r0"}) is True
    assert c.call("bdev_malloc_delete", {"name": "m0"}) is True
    assert c.call("bdev_malloc_delete", {"name": "m1"}) is True
    assert c.call("bdev_get_bdevs") == []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(saved)
    try:
        rc, out, err = rpc_py("load_config", "-j", f.name)
        assert rc == 0, (rc, out, err)
    finally:
        os.unlink(f.name)
    assert [a["name"] for a in c.call("bdev_mdraid_get_bdevs", {"category": "online"})] == ["r0"]

    # Two pretty-printed requests in one write (what the client's flush
    # does with several queued requests), answered in order.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCK)
    reqs = [{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": i, "params": {"name": n}}
            for i, n in ((1, "m0"), (2, "m1"))]
    s.sendall("".join(json.dumps(r, indent=2) for r in reqs).encode())
    buf, got = "", []
    dec = json.JSONDecoder()
    while len(got) < 2:
        buf += s.recv(65536).decode()
        while True:
            buf = buf.lstrip()
            try:
                obj, i = dec.raw_decode(buf)
            except ValueError:
                break
            got.append(obj)
            buf = buf[i:]
    assert [g["id"] for g in got] == [1, 2], got
    # Garbage: one parse error, then the server closes.
    s.sendall(b"{oops}")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert json.loads(data)["error"]["code"] == -32700, data
    c.close()
    print("spdk_client_test: all checks passed")


if __name__ == "__main__":
    main()
