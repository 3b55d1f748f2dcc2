#!/usr/bin/env python3
"""The trace recorder's file writer (tools/record_trace.py, TraceFile) when the disk fills: a
file-size limit stands in for the full disk. The child process must end with one error line and
exit status 1, not a traceback or a crash (libhdf5 cannot close a file whose write failed and
crashes at exit if it tries, HDFGroup/hdf5#2291), and leave no file, partial or final. Without
the limit the same code writes a file h5py reads back. Exit 77 (skipped) without numpy/h5py; no
torch or model is needed.

    python3 tests/test_recorder_full_disk.py
"""
import os
import subprocess
import sys
import tempfile

try:
    import h5py  # noqa: F401
    import numpy  # noqa: F401
except ImportError as e:
    print(f"skipped: {e} (pip install -r tools/requirements-artefacts.txt)")
    sys.exit(77)

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")

# Writes one [8, tokens, 64] dataset as the recorder does (whole, in token slices, or as a numpy
# array in its own dtype), under a file-size limit, and fails the way the recorder's main() does.
CHILD = r"""
import os, resource, signal, sys
sys.path.insert(0, sys.argv[1])
import h5py, numpy as np
import record_trace

class Tensor:  # what TraceFile.write calls on a torch tensor
    def __init__(self, array): self.array, self.shape = array, array.shape
    def detach(self): return self
    def cpu(self): return self
    def float(self): return self
    def numpy(self): return self.array

path, tokens, limit, how = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
trace = record_trace.TraceFile(h5py, np, path, "float16", False)
try:
    data = np.linspace(-1, 1, 8 * tokens * 64, dtype=np.float32).reshape(8, tokens, 64)
    if how == "steps":  # as the recorder writes q/k/v/attn_out: token slices into a dataset it keeps
        dataset = trace.create("layers/0/q", data.shape)
        for start in range(0, tokens, 256):
            trace.write(dataset, Tensor(data[:, start:start + 256]), start)
    elif how == "whole":  # as it writes o_proj, hidden states and extra passes
        trace.write_whole("layers/0/q", Tensor(data))
    else:  # as it writes KVzip's hidden-state norms
        trace.write_array("layers/0/q", data)
    trace.close()
except BaseException as e:
    trace.abandon()
    if trace.failed:
        record_trace.fail_writing(path, e)
    raise
"""


def run(path, tokens, limit, how):
    return subprocess.run([sys.executable, "-c", CHILD, TOOLS, path, str(tokens), str(limit), how], capture_output=True, text=True)


def main():
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "t.h5")
        # Small data stays in HDF5's chunk cache until the dataset is flushed; large data fails in
        # the write itself. Both must end the same way.
        for how in ("whole", "steps", "array"):
            for tokens in (4096, 65536):
                out = run(path, tokens, 256 * 1024, how)
                lines = out.stderr.strip().splitlines()
                if out.returncode != 1 or len(lines) != 1 or "cannot write" not in lines[0] or "is the disk full?" not in lines[0]:
                    failures.append(f"{how}, {tokens} tokens under the limit: status {out.returncode}, stderr {out.stderr!r}")
                left = os.listdir(folder)
                if left:
                    failures.append(f"{how}, {tokens} tokens under the limit: left {left}")
            out = run(path, 4096, 0, how)
            if out.returncode != 0 or out.stderr:
                failures.append(f"{how} without a limit: status {out.returncode}, stderr {out.stderr!r}")
            else:
                with h5py.File(path, "r") as f:
                    if f["layers/0/q"].shape != (8, 4096, 64) or abs(float(f["layers/0/q"][7, 4095, 63]) - 1.0) > 1e-3:
                        failures.append(f"{how} without a limit: the dataset read back is wrong")
                os.remove(path)
    for failure in failures:
        print("FAIL:", failure)
    print("ok" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
