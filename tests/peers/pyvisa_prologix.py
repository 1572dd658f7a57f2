#!/usr/bin/env python3
"""PyVISA-py as an independent client of labgate's simulated Prologix GPIB-Ethernet adapter.

usage: pyvisa_prologix.py PORT ADDR_A ADDR_B

Opens PRLGX-TCPIP::127.0.0.1::PORT::INTFC, then GPIB::ADDR::INSTR for both addresses, and
prints one JSON object: each instrument's *IDN?, a setpoint written with `+` signs in the data
(escaped on the wire) and read back from ADDR_B, and queries alternating between the two.
"""
import json
import sys

import pyvisa


def main() -> int:
    port, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rm = pyvisa.ResourceManager("@py")
    intfc = rm.open_resource(f"PRLGX-TCPIP::127.0.0.1::{port}::INTFC")
    ia = rm.open_resource(f"GPIB::{a}::INSTR")
    ib = rm.open_resource(f"GPIB::{b}::INSTR")
    out = {}
    # The GPIB INSTR sessions refuse termination attributes: the interface reads up to its
    # termchar (LF), and writes are LF-terminated lines to the adapter.
    for inst in (ia, ib):
        inst.timeout = 5000
    out["idn_a"] = ia.query("*IDN?").strip()
    out["idn_b"] = ib.query("*IDN?").strip()
    ib.write(":SOUR:VOLT:AC +1.15E+02")
    out["setpoint_b"] = ib.query(":SOUR:VOLT:AC?").strip()
    out["alternating"] = [
        inst.query("*IDN?").strip().split(",")[0] for inst in (ia, ib, ia, ib)
    ]
    ia.close()
    ib.close()
    intfc.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
