#!/usr/bin/env python3
"""A pymodbus TCP client that reads and writes labgate's simulated Modbus bench and prints
what it saw as one JSON object, decoding every value itself (struct), not with labgate's code.

Usage: pymodbus_client.py PORT   (the bench on 127.0.0.1: unit 1 chamber, 2 Eurotherm, 3 rack)
Exits non-zero with a message on stderr if any request fails.
"""

import json
import struct
import sys

from pymodbus.client import ModbusTcpClient


def f32_cdab(regs):
    return struct.unpack(">f", struct.pack(">HH", regs[1], regs[0]))[0]


def f32_abcd(regs):
    return struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]


def cdab_words(value):
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi]


def check(response, what):
    if response.isError():
        sys.exit(f"{what}: {response}")
    return response


def main():
    port = int(sys.argv[1])
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    if not client.connect():
        sys.exit(f"cannot connect to 127.0.0.1:{port}")
    out = {}

    def holding(address, count, unit):
        r = check(client.read_holding_registers(address, count=count, device_id=unit),
                  f"read holding {address}+{count} unit {unit}")
        return r.registers

    out["chamber_pv"] = f32_cdab(holding(2820, 2, 1))
    out["chamber_mode"] = holding(2730, 1, 1)[0]
    check(client.write_registers(2782, cdab_words(42.25), device_id=1), "write setpoint")
    out["chamber_current_sp"] = f32_cdab(holding(2810, 2, 1))

    out["eurotherm_pv_x10"] = struct.unpack(">h", struct.pack(">H", holding(1, 1, 2)[0]))[0]
    check(client.write_register(26, 655, device_id=2), "write comms setpoint")
    out["eurotherm_working_sp_x10"] = holding(5, 1, 2)[0]
    refused = client.write_register(5, 1, device_id=2)
    out["eurotherm_write_working_sp_exception"] = (
        refused.exception_code if refused.isError() else None
    )

    check(client.write_coils(0, [True, True], device_id=3), "write coils")
    check(client.write_coil(15, True, device_id=3), "write coil")
    coils = check(client.read_coils(0, count=16, device_id=3), "read coils").bits[:16]
    out["rack_relays_on"] = [i + 1 for i, on in enumerate(coils) if on]
    failed = check(client.read_discrete_inputs(0, count=16, device_id=3), "read discrete").bits[:16]
    out["rack_failed"] = [i + 1 for i, f in enumerate(failed) if f]
    currents = check(client.read_input_registers(0, count=16, device_id=3), "read currents")
    out["rack_currents_ma"] = [struct.unpack(">h", struct.pack(">H", w))[0]
                               for w in currents.registers]
    supply = check(client.read_input_registers(100, count=2, device_id=3), "read supply")
    out["rack_supply_v"] = f32_abcd(supply.registers)

    client.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
