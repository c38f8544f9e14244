#!/usr/bin/env python3
"""Writes dwarf_rules seeds from a real ELF file: [split u16][lookup i64][.eh_frame_hdr .. end
of .eh_frame], one per FDE address sampled. Usage: seed_dwarf.py ELF OUTDIR [COUNT]"""
import os, struct, subprocess, sys

elf, out = sys.argv[1], sys.argv[2]
count = int(sys.argv[3]) if len(sys.argv) > 3 else 4
secs = {}
for line in subprocess.run(["readelf", "-SW", elf], capture_output=True, text=True).stdout.splitlines():
    parts = line.replace("[ ", "[").split()
    if len(parts) > 5 and parts[1] in (".eh_frame_hdr", ".eh_frame"):
        secs[parts[1]] = (int(parts[3], 16), int(parts[4], 16), int(parts[5], 16))  # addr, off, size
(ha, ho, hs), (ea, eo, es) = secs[".eh_frame_hdr"], secs[".eh_frame"]
assert ea >= ha + hs, "expected .eh_frame after .eh_frame_hdr"
data = open(elf, "rb").read()
blob = data[ho:ho + (ea - ha)] + data[eo:eo + es]
# The header's table: (initial location, fde) pairs, datarel (relative to the header start).
fde_count = struct.unpack_from("<I", blob, 8)[0]
os.makedirs(out, exist_ok=True)
step = max(1, fde_count // count)
# FDE 0 is often the PLT's (CFA = sp + 16 at its start): ordinary functions from 1 on.
for i in range(1, fde_count, step)[:count]:
    loc = struct.unpack_from("<i", blob, 12 + 8 * i)[0]
    for delta, tag in ((0, "entry"), (4, "body")):
        name = os.path.join(out, f"seed-{os.path.basename(elf)}-{i}-{tag}")
        with open(name, "wb") as f:
            f.write(struct.pack("<Hq", ea - ha, loc + delta) + blob)
