#!/usr/bin/env python3
"""PyVISA with the PyVISA-py backend as an independent client of labgate's VXI-11 and HiSLIP
simulators (tests/link_vxi11_peers.rs, tests/link_hislip_peers.rs).

usage: pyvisa_client.py RESOURCE [--portmap-port N]
       pyvisa_client.py --idn-only RESOURCE... [--portmap-port N]

PyVISA-py asks the portmapper on port 111, a module constant; --portmap-port rebinds that
constant before the resource opens, so the lookup goes to the simulator's ephemeral portmapper
while every byte on the wire is still produced and parsed by PyVISA-py's own RPC and VXI-11 code.

Prints one JSON object: the identity, a setting written and read back, the identity again after
a device clear, and a reply read in pieces smaller than itself. With --idn-only (any SCPI
instrument, several resources, tests/cli_sim_lxi.rs): each resource's *IDN? reply by resource.
"""
import argparse
import json
import sys

import pyvisa


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("resource", nargs="+")
    ap.add_argument("--idn-only", action="store_true")
    ap.add_argument("--portmap-port", type=int)
    # PyVISA-py's HiSLIP device clear expects DeviceClearAcknowledge as the next message on the
    # synchronous channel and fails on a reply already sent there, which a server cannot
    # recall; so over HiSLIP the clear is tested without a reply pending.
    ap.add_argument("--no-pending-clear", action="store_true")
    a = ap.parse_args()
    if a.portmap_port:
        from pyvisa_py.protocols import rpc

        rpc.PMAP_PORT = a.portmap_port
    rm = pyvisa.ResourceManager("@py")
    if a.idn_only:
        out = {}
        for resource in a.resource:
            inst = rm.open_resource(resource, open_timeout=5000)
            inst.timeout = 5000
            inst.write_termination = "\n"
            inst.read_termination = "\n"
            out[resource] = inst.query("*IDN?")
            inst.close()
        rm.close()
        print(json.dumps(out))
        return 0
    if len(a.resource) != 1:
        ap.error("one resource, or --idn-only")
    inst = rm.open_resource(a.resource[0], open_timeout=5000)
    inst.timeout = 5000
    inst.write_termination = "\n"
    inst.read_termination = "\n"
    out = {}
    out["idn"] = inst.query("*IDN?")
    inst.write(":NUMERIC:NORMAL:NUMBER 5")
    out["number"] = inst.query(":NUMERIC:NORMAL:NUMBER?")
    # A query left unread, then a device clear: the stale reply must not come back.
    if not a.no_pending_clear:
        inst.write("*IDN?")
    inst.clear()
    out["after_clear"] = inst.query(":NUMERIC:NORMAL:NUMBER?")
    # A reply longer than one read chunk. Not a divisor of the 32-byte identity: PyVISA-py's
    # VXI-11 read checks the byte count before END, so a reply that fills its last chunk
    # exactly makes it ask for one more (and time out), whoever the server is.
    inst.chunk_size = 5
    out["chunked"] = inst.query("*IDN?")
    inst.close()
    rm.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
