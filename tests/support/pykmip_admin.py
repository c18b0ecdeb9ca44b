#!/usr/bin/python3
"""Administers keys on a PyKMIP test server with PyKMIP's own client (KMIP 1.4).

Usage: pykmip_admin.py --host H --port P --cert C --key K --ca CA COMMAND ...

Commands:
  create NAME [--activate] [--count N] [--same-second]
                                    N (default 1) AES-256 keys, usage Encrypt|Decrypt,
                                    Name NAME; prints their UIDs, one a line. Pre-Active,
                                    or Active with --activate. --same-second: all get
                                    the same Initial Date (made at the start of a second,
                                    and made again if the second turned meanwhile)
  activate UID
  revoke UID compromised|deactivated  reason KEY_COMPROMISE or CESSATION_OF_OPERATION
  destroy UID
  state UID                         prints PRE_ACTIVE, ACTIVE, DEACTIVATED, COMPROMISED,
                                    ... or NOT_FOUND (destroyed or never existed)

Exit status: 0 on success, 1 when the server refuses or cannot be reached
(message on stderr: the operation, the Result Reason and the Result Message),
2 on bad arguments. Run it with Debian's /usr/bin/python3 (python3-pykmip).
"""

import argparse
import logging
import sys
import time

from kmip.core import enums
from kmip.pie import client as pie_client
from kmip.pie import exceptions as pie_exceptions

REVOCATION = {
    "compromised": enums.RevocationReasonCode.KEY_COMPROMISE,
    "deactivated": enums.RevocationReasonCode.CESSATION_OF_OPERATION,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="pykmip_admin.py", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--activate", action="store_true")
    create.add_argument("--count", type=int, default=1, choices=range(1, 11), metavar="N")
    create.add_argument("--same-second", action="store_true")
    sub.add_parser("activate").add_argument("uid")
    revoke = sub.add_parser("revoke")
    revoke.add_argument("uid")
    revoke.add_argument("reason", choices=sorted(REVOCATION))
    sub.add_parser("destroy").add_argument("uid")
    sub.add_parser("state").add_argument("uid")
    return parser.parse_args(argv)


def create_keys(kmip, name, count):
    return [
        kmip.create(
            enums.CryptographicAlgorithm.AES,
            256,
            name=name,
            cryptographic_usage_mask=[
                enums.CryptographicUsageMask.ENCRYPT,
                enums.CryptographicUsageMask.DECRYPT,
            ],
        )
        for _ in range(count)
    ]


def initial_date(kmip, uid):
    _, attributes = kmip.get_attributes(uid, ["Initial Date"])
    return [a.attribute_value.value for a in attributes if a.attribute_name.value == "Initial Date"]


def create_same_second(kmip, name, count):
    """Keys made within one second of the server's clock (the same host's)."""
    for _ in range(5):
        # The start of a second leaves the rest of it for the requests.
        time.sleep(1.0 - (time.time() % 1.0))
        uids = create_keys(kmip, name, count)
        if len({tuple(initial_date(kmip, uid)) for uid in uids}) == 1:
            return uids
        for uid in uids:
            kmip.destroy(uid)
    raise RuntimeError("could not make {} keys within one second".format(count))


def run(args, kmip):
    if args.command == "create":
        if args.same_second:
            uids = create_same_second(kmip, args.name, args.count)
        else:
            uids = create_keys(kmip, args.name, args.count)
        for uid in uids:
            if args.activate:
                kmip.activate(uid)
            print(uid)
    elif args.command == "activate":
        kmip.activate(args.uid)
    elif args.command == "revoke":
        kmip.revoke(REVOCATION[args.reason], args.uid)
    elif args.command == "destroy":
        kmip.destroy(args.uid)
    elif args.command == "state":
        try:
            _, attributes = kmip.get_attributes(args.uid, ["State"])
        except pie_exceptions.KmipOperationFailure as e:
            if e.reason == enums.ResultReason.ITEM_NOT_FOUND:
                print("NOT_FOUND")
                return
            raise
        states = [a.attribute_value.value for a in attributes if a.attribute_name.value == "State"]
        if len(states) != 1:
            raise RuntimeError("the server returned {} State attributes".format(len(states)))
        print(states[0].name)


def main(argv):
    args = parse_args(argv)
    # PyKMIP logs a missing client configuration file and connection errors
    # on stderr; this script prints one line of its own instead.
    logging.disable(logging.CRITICAL)
    what = "{} {}".format(args.command, getattr(args, "uid", getattr(args, "name", "")))
    kmip = pie_client.ProxyKmipClient(
        hostname=args.host,
        port=args.port,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        ssl_version="PROTOCOL_TLSv1_2",
        kmip_version=enums.KMIPVersion.KMIP_1_4,
    )
    try:
        kmip.open()
        try:
            run(args, kmip)
        finally:
            kmip.close()
    except pie_exceptions.KmipOperationFailure as e:
        print("pykmip_admin: {}: {}: {}".format(what, e.reason.name, e.message), file=sys.stderr)
        return 1
    except Exception as e:  # connection, TLS and protocol errors
        print("pykmip_admin: {}: {}: {}".format(what, type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
