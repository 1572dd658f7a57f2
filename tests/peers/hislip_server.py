#!/usr/bin/env python3
"""A small HiSLIP instrument for tests/link_hislip_peers.rs, framed with PyVISA-py's HiSLIP
header format, message type table and send_msg, so labgate's client is checked against framing
code it does not share.

Prints the port on stdout, then serves until killed. The instrument: `*IDN?` answers
`PEER,HISLIP-SERVER,0,1.0`, `ECHO? text` answers `text`. It accepts messages of at most
SERVER_MAX bytes (header included; larger ones get Error 4, "message too large") and sends
replies in Data messages of at most 50 payload bytes, the last one DataEnd, each carrying the
message id of the request. Sub-addresses other than `hislip0` get FatalError 3.
"""
import socket
import struct
import threading

from pyvisa_py.protocols import hislip as h

SERVER_MAX = 256
REPLY_PIECE = 50

lock = threading.Lock()
sessions = {}
next_session = [1]


def read_msg(conn):
    raw = h.receive_exact(conn, h.HEADER_SIZE)
    prologue, mtype, control, param, length = struct.unpack(h.HEADER_FORMAT, raw)
    if prologue != b"HS":
        raise RuntimeError("bad prologue")
    payload = h.receive_exact(conn, length) if length else b""
    return h.MESSAGETYPE_STR.get(mtype, str(mtype)), control, param, payload


def reply_for(msg):
    text = msg.rstrip(b"\r\n")
    if text == b"*IDN?":
        return b"PEER,HISLIP-SERVER,0,1.0\n"
    if text.startswith(b"ECHO? "):
        return text[6:] + b"\n"
    return None


def sync_loop(conn, sid):
    data = b""
    while True:
        mtype, control, param, payload = read_msg(conn)
        if mtype in ("Data", "DataEnd"):
            if len(payload) + h.HEADER_SIZE > SERVER_MAX:
                h.send_msg(conn, "Error", 4, 0, b"message too large")
                data = b""
                continue
            data += payload
            if mtype == "Data":
                continue
            msg, data = data, b""
            reply = reply_for(msg)
            if reply is None:
                continue
            pieces = [reply[i:i + REPLY_PIECE] for i in range(0, len(reply), REPLY_PIECE)]
            for i, piece in enumerate(pieces):
                kind = "DataEnd" if i == len(pieces) - 1 else "Data"
                h.send_msg(conn, kind, 0, param, piece)
        elif mtype == "DeviceClearComplete":
            data = b""
            h.send_msg(conn, "DeviceClearAcknowledge", control, 0)
        else:
            h.send_msg(conn, "Error", 1, 0, b"unrecognized message type")


def async_loop(conn, sid):
    while True:
        mtype, control, param, payload = read_msg(conn)
        if mtype == "AsyncMaxMsgSize":
            h.send_msg(conn, "AsyncMaxMsgSizeResponse", 0, 0, struct.pack("!Q", SERVER_MAX))
        elif mtype == "AsyncDeviceClear":
            h.send_msg(conn, "AsyncDeviceClearAcknowledge", 0, 0)
        else:
            h.send_msg(conn, "Error", 1, 0, b"unrecognized message type")


def serve(conn):
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mtype, control, param, payload = read_msg(conn)
        if mtype == "Initialize":
            if payload != b"hislip0":
                h.send_msg(conn, "FatalError", 3, 0, b"unknown sub-address " + payload)
                return
            with lock:
                sid = next_session[0]
                next_session[0] += 1
                sessions[sid] = True
            h.send_msg(conn, "InitializeResponse", 0, (0x0100 << 16) | sid)
            sync_loop(conn, sid)
        elif mtype == "AsyncInitialize":
            sid = param & 0xFFFF
            if sid not in sessions:
                h.send_msg(conn, "FatalError", 3, 0, b"no such session")
                return
            h.send_msg(conn, "AsyncInitializeResponse", 0, 0x5059)
            async_loop(conn, sid)
        else:
            h.send_msg(conn, "FatalError", 3, 0, b"initialize first")
    except (OSError, RuntimeError):
        pass
    finally:
        conn.close()


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
