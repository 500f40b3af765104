"""A target process with as many mappings as its first argument says (the browser tests, the benchmark)."""

# Neighbours with different protections never merge, so each mapping stays one line of /proc/PID/maps.
# It prints "ready" once they exist; a line of input then writes one more page in each of the first 2,000.
MANY_MAPPINGS = """
import mmap, sys
kept = []
for n in range(int(sys.argv[1])):
    area = mmap.mmap(-1, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     prot=mmap.PROT_READ | (mmap.PROT_WRITE if n % 2 else 0))
    if n % 2:
        area[0] = 1
    kept.append(area)
print("ready", flush=True)
sys.stdin.readline()
for area in kept[1:4000:2]:
    area[mmap.PAGESIZE] = 1
print("ok", flush=True)
sys.stdin.readline()
"""
