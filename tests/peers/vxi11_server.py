#!/usr/bin/env python3
"""A small VXI-11 instrument for tests/link_vxi11_peers.rs, built on PyVISA-py's ONC RPC server
(record marking, call parsing, reply headers) and its XDR packers, so labgate's client is
checked against RPC code it does not share.

Prints "PORTMAP_PORT CORE_PORT" on stdout, then serves until killed. The instrument: `*IDN?`
answers `PEER,VXI11-SERVER,0,1.0`, `ECHO? text` answers `text`; device_read hands out at most
100 bytes at a time (REQCNT until the last piece, then END), an empty output buffer gives
error 15 (I/O timeout) after the client's io_timeout, create_link knows only `inst0`.
"""
import threading
import time

from pyvisa_py.protocols import rpc, vxi11

MAX_RECV_SIZE = 1024
READ_PIECE = 100


class Unpacker(vxi11.Vxi11Unpacker):
    def unpack_create_link_parms(self):
        return self.unpack_int(), self.unpack_bool(), self.unpack_uint(), self.unpack_string()

    def unpack_device_write_parms(self):
        return (self.unpack_int(), self.unpack_uint(), self.unpack_uint(),
                self.unpack_int(), self.unpack_opaque())

    def unpack_device_read_parms(self):
        return (self.unpack_int(), self.unpack_uint(), self.unpack_uint(),
                self.unpack_uint(), self.unpack_int(), self.unpack_int())

    def unpack_device_generic_parms(self):
        return self.unpack_int(), self.unpack_int(), self.unpack_uint(), self.unpack_uint()


class Server(rpc.TCPServer):
    def session(self, connection):
        # rpc.TCPServer.session spins on a closed connection (its reader treats b"" as "no
        # data yet"); ending at EOF keeps PyVISA-py's record-marking reader otherwise as is.
        sock, _ = connection

        def recv(n):
            data = sock.recv(n)
            if not data:
                raise EOFError
            return data

        while True:
            try:
                call = rpc._recvrecord(sock, None, read_fun=recv)
            except (EOFError, OSError):
                break
            reply = self.handle(call)
            if reply is not None:
                rpc._sendrecord(sock, reply)
        sock.close()


class Core(Server):
    def __init__(self):
        self.links = {}
        self.next_link = 1
        super().__init__("127.0.0.1", vxi11.DEVICE_CORE_PROG, vxi11.DEVICE_CORE_VERS, 0)

    def addpackers(self):
        self.packer = vxi11.Vxi11Packer()
        self.unpacker = Unpacker(b"")

    def handle_10(self):  # create_link
        _client, _lock, _timeout, device = self.unpacker.unpack_create_link_parms()
        self.turn_around()
        if device != b"inst0":
            for v in (3, 0, 0, 0):
                self.packer.pack_int(v)
            return
        link = self.next_link
        self.next_link += 1
        self.links[link] = {"input": b"", "output": b""}
        self.packer.pack_int(0)
        self.packer.pack_int(link)
        self.packer.pack_uint(0)
        self.packer.pack_uint(MAX_RECV_SIZE)

    def handle_11(self):  # device_write
        link, _io, _lock, flags, data = self.unpacker.unpack_device_write_parms()
        self.turn_around()
        st = self.links.get(link)
        if st is None:
            self.packer.pack_int(4)
            self.packer.pack_uint(0)
            return
        if len(data) > MAX_RECV_SIZE:
            self.packer.pack_int(5)
            self.packer.pack_uint(0)
            return
        st["input"] += data
        if flags & vxi11.OP_FLAG_END:
            msg, st["input"] = st["input"], b""
            text = msg.rstrip(b"\r\n")
            if text == b"*IDN?":
                st["output"] += b"PEER,VXI11-SERVER,0,1.0\n"
            elif text.startswith(b"ECHO? "):
                st["output"] += text[6:] + b"\n"
        self.packer.pack_int(0)
        self.packer.pack_uint(len(data))

    def handle_12(self):  # device_read
        link, request, io_timeout, _lock, _flags, _term = self.unpacker.unpack_device_read_parms()
        self.turn_around()
        st = self.links.get(link)
        if st is None:
            self.packer.pack_int(4)
            self.packer.pack_int(0)
            self.packer.pack_opaque(b"")
            return
        if not st["output"]:
            time.sleep(io_timeout / 1000.0)
            self.packer.pack_int(15)
            self.packer.pack_int(0)
            self.packer.pack_opaque(b"")
            return
        n = min(request, READ_PIECE)
        piece, st["output"] = st["output"][:n], st["output"][n:]
        self.packer.pack_int(0)
        self.packer.pack_int(vxi11.RX_REQCNT if st["output"] else vxi11.RX_END)
        self.packer.pack_opaque(piece)

    def handle_15(self):  # device_clear
        link, _flags, _lock, _io = self.unpacker.unpack_device_generic_parms()
        self.turn_around()
        st = self.links.get(link)
        if st is None:
            self.packer.pack_int(4)
            return
        st["input"] = st["output"] = b""
        self.packer.pack_int(0)

    def handle_23(self):  # destroy_link
        link = self.unpacker.unpack_int()
        self.turn_around()
        self.packer.pack_int(0 if self.links.pop(link, None) is not None else 4)


class Portmapper(Server):
    def __init__(self, core_port):
        self.core_port = core_port
        super().__init__("127.0.0.1", rpc.PMAP_PROG, rpc.PMAP_VERS, 0)

    def addpackers(self):
        self.packer = rpc.PortMapperPacker()
        self.unpacker = rpc.PortMapperUnpacker(b"")

    def handle_3(self):  # GETPORT
        prog, vers, prot, _port = self.unpacker.unpack_mapping()
        self.turn_around()
        hit = (prog, vers, prot) == (vxi11.DEVICE_CORE_PROG, vxi11.DEVICE_CORE_VERS, rpc.IPPROTO_TCP)
        self.packer.pack_uint(self.core_port if hit else 0)


def main():
    core = Core()
    core_port = core.sock.getsockname()[1]
    pmap = Portmapper(core_port)
    for server in (core, pmap):
        # Listen before the ports are announced (loop() would only do it in its thread).
        server.sock.listen(8)
        threading.Thread(target=server.loop, daemon=True).start()
    print(pmap.sock.getsockname()[1], core_port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
