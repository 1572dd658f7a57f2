#!/usr/bin/env python3
"""A pymodbus TCP server on 127.0.0.1 with a known register map, for labgate's tests.

It binds an ephemeral port and prints it on stdout (one line) once it accepts connections.
The map (unit 1, 0-based protocol addresses) is mirrored in tests/modbus_pymodbus.rs:

  holding 0      u16 1234
  holding 1      i16 -200
  holding 2-3    f32 21.5, low word first (CDAB)
  holding 4-5    f32 -3.25, big-endian (ABCD)
  holding 6-7    u32 100000, big-endian
  holding 8-9    ASCII "OK" then NUL padding
  holding 10-19  zeros, for writes
  input 0        u16 65535
  input 1-2      f32 230.0 CDAB
  coils 0-7      1 0 1 1 0 0 0 1
  discrete 0-7   0 1 0 0 0 0 1 0

Anything outside these ranges answers "illegal data address".
"""

import asyncio
import struct
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext

try:
    from pymodbus.datastore import ModbusDeviceContext
except ImportError:  # pymodbus before 3.10
    from pymodbus.datastore import ModbusSlaveContext as ModbusDeviceContext
from pymodbus.server import ModbusTcpServer


def f32_words(value, low_word_first):
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi] if low_word_first else [hi, lo]


def u32_words(value):
    return list(struct.unpack(">HH", struct.pack(">I", value)))


def holding():
    regs = [1234, struct.unpack(">H", struct.pack(">h", -200))[0]]
    regs += f32_words(21.5, True)
    regs += f32_words(-3.25, False)
    regs += u32_words(100000)
    regs += [0x4F4B, 0x0000]
    regs += [0] * 10
    return regs


async def main():
    # Blocks start at 1: pymodbus maps data-block address N to protocol address N - 1
    # (older 3.x through the device context's +1, newer ones in the block itself).
    device = ModbusDeviceContext(
        co=ModbusSequentialDataBlock(1, [True, False, True, True, False, False, False, True]),
        di=ModbusSequentialDataBlock(1, [False, True, False, False, False, False, True, False]),
        hr=ModbusSequentialDataBlock(1, holding()),
        ir=ModbusSequentialDataBlock(1, [65535] + f32_words(230.0, True)),
    )
    context = ModbusServerContext(devices={1: device}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    print(port, flush=True)
    # Serve until the test kills us or closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
