#!/usr/bin/env python3
"""Hot-plug disks into a running test guest through QEMU's QMP monitor.

Usage: tests/vm/qmp-hotplug.py QMP_SOCKET RESULTS_FILE DISK_DIR LOG

The guest asks for a hot-plug by writing a line to its results port (ttyS1,
RESULTS_FILE on the host):
  HOTPLUG add ID FILE SERIAL   blockdev-add DISK_DIR/FILE as node ID, then
                               device_add a virtio-blk-pci disk ID with SERIAL
  HOTPLUG del ID               device_del ID; once QEMU reports the guest
                               released it (DEVICE_DELETED), blockdev-del ID
and waits for the device to appear or go. What this driver did, and QEMU's
answers, go to LOG. It ends when QEMU closes the monitor.
"""
import json
import os
import re
import select
import socket
import sys
import time

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    qmp_path, results, disk_dir, log_path = sys.argv[1:]
    log = open(log_path, "a", buffering=1)

    def note(text):
        log.write("%.1f %s\n" % (time.monotonic(), text))

    # QEMU creates the socket when it starts.
    sock = None
    for _ in range(600):
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(qmp_path)
            break
        except OSError:
            sock.close()
            sock = None
            time.sleep(0.1)
    if sock is None:
        note("no QMP socket at %s" % qmp_path)
        return 1
    buf = b""
    events = []

    def read_message(timeout=None):
        """The next QMP message; None if none came within timeout seconds."""
        nonlocal buf
        while b"\n" not in buf:
            ready, _, _ = select.select([sock], [], [], timeout)
            if not ready:
                return None
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        return json.loads(line)

    def command(name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        sock.sendall((json.dumps(msg) + "\n").encode())
        while True:
            reply = read_message()
            if "event" in reply:
                events.append(reply)
                continue
            note("%s %s -> %s" % (name, json.dumps(args), json.dumps(reply)))
            return reply

    def wait_event(kind, device, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for e in list(events):
                if e.get("event") == kind and e.get("data", {}).get("device") == device:
                    events.remove(e)
                    return True
            msg = read_message(0.5)
            if msg is not None:
                events.append(msg)
        return False

    read_message()  # the greeting
    command("qmp_capabilities")

    offset = 0
    try:
        while True:
            try:
                with open(results, "rb") as f:
                    if os.fstat(f.fileno()).st_size < offset:
                        offset = 0  # a new file
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            end = data.rfind(b"\n")
            if end < 0:
                # Nothing new: keep QEMU's events, and notice when it ends.
                msg = read_message(0.2)
                if msg is not None:
                    events.append(msg)
                continue
            offset += end + 1
            for raw in data[: end + 1].splitlines():
                words = raw.decode("ascii", "replace").strip().split()
                if len(words) < 2 or words[0] != "HOTPLUG":
                    continue
                if words[1] == "add" and len(words) == 5 and all(NAME.match(w) for w in words[2:]):
                    node, image, serial = words[2:]
                    command("blockdev-add", driver="raw", **{"node-name": node},
                            file={"driver": "file", "filename": os.path.join(disk_dir, image)})
                    command("device_add", driver="virtio-blk-pci", drive=node, id=node, serial=serial)
                elif words[1] == "del" and len(words) == 3 and NAME.match(words[2]):
                    node = words[2]
                    command("device_del", id=node)
                    if wait_event("DEVICE_DELETED", node, 60):
                        command("blockdev-del", **{"node-name": node})
                    else:
                        note("no DEVICE_DELETED for %s within 60 s" % node)
                else:
                    note("ignored request: %r" % raw)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        note("QEMU closed the monitor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
