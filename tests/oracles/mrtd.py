#!/usr/bin/env python3
"""Independent MRTD calculator (own TDVF parser), used as an oracle for cvm's Rust code.

usage: mrtd.py FIRMWARE [single|two]
"""
import hashlib
import struct
import sys
import uuid

FOOTER = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
TDX_METADATA = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
MR_EXTEND, PAGE_AUG = 1, 2


def guid_table(fw):
    end = len(fw) - 32
    size, = struct.unpack_from("<H", fw, end - 18)
    assert uuid.UUID(bytes_le=fw[end - 16:end]) == FOOTER, "no footer"
    table, entries = fw[end - size:end - 18], {}
    while len(table) >= 18:
        size, = struct.unpack_from("<H", table, len(table) - 18)
        entries[uuid.UUID(bytes_le=table[len(table) - 16:])] = table[len(table) - size:len(table) - 18]
        table = table[:len(table) - size]
    return entries


def sections(fw):
    off, = struct.unpack("<I", guid_table(fw)[TDX_METADATA][:4])
    base = len(fw) - off
    sig, _, ver, count = struct.unpack_from("<4sIII", fw, base)
    assert sig == b"TDVF" and ver == 1
    return [struct.unpack_from("<IIQQII", fw, base + 16 + 32 * i) for i in range(count)]


def rec(op, gpa):
    return op.ljust(16, b"\0") + struct.pack("<Q", gpa) + b"\0" * 104


def mrtd(fw, two_pass):
    h, secs = hashlib.sha384(), sections(fw)

    def extend_page(data_off, raw, gpa, page):
        data = fw[data_off:data_off + raw][page * 4096:(page + 1) * 4096].ljust(4096, b"\0")
        for c in range(16):
            h.update(rec(b"MR.EXTEND", gpa + page * 4096 + c * 256))
            h.update(data[c * 256:(c + 1) * 256])

    if two_pass:
        for (_, _, gpa, msize, _, attr) in secs:
            if not attr & PAGE_AUG:
                for p in range(msize // 4096):
                    h.update(rec(b"MEM.PAGE.ADD", gpa + p * 4096))
        for (doff, raw, gpa, msize, _, attr) in secs:
            if attr & MR_EXTEND:
                for p in range(msize // 4096):
                    extend_page(doff, raw, gpa, p)
    else:
        for (doff, raw, gpa, msize, _, attr) in secs:
            if attr & PAGE_AUG:
                continue
            for p in range(msize // 4096):
                h.update(rec(b"MEM.PAGE.ADD", gpa + p * 4096))
                if attr & MR_EXTEND:
                    extend_page(doff, raw, gpa, p)
    return h.hexdigest()


if __name__ == "__main__":
    firmware = open(sys.argv[1], "rb").read()
    print(mrtd(firmware, len(sys.argv) > 2 and sys.argv[2] == "two"))
