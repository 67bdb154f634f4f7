"""A tree of N objects of 200 bytes, 1000 to a folder (as a partitioned data
lake holds them): python3 docs/bench/tree.py ROOT N"""
import os
import sys

root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"part={i // 1000:05}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{i % 1000:04}.json"), "wb") as f:
        f.write(os.urandom(100).hex().encode())
