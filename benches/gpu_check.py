"""The checks and the report of benches/gpu.sh, in plain Python (no packages needed).

  python3 benches/gpu_check.py golden GOT.safetensors WANT.safetensors   # f32 outputs, 1e-5 rel L2
  python3 benches/gpu_check.py nll DEVICE.json CPU.json                  # eval mean NLL, 1e-5 rel
  python3 benches/gpu_check.py report OUT                                # OUT/gpu-report.json
"""
import array
import json
import math
import pathlib
import struct
import sys


def read_f32(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        values = array.array("f")
        values.frombytes(data[a:b])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = values
    return out


def golden(got_path, want_path):
    got, want = read_f32(got_path), read_f32(want_path)
    worst = 0.0
    for name, w in want.items():
        if not name.startswith("output."):
            continue
        g = got[name]
        err = math.sqrt(sum((x - y) ** 2 for x, y in zip(g, w)))
        norm = math.sqrt(sum(y * y for y in w))
        worst = max(worst, err / norm)
    print(json.dumps({"relative_l2": worst, "passed": worst <= 1e-5}))
    return worst <= 1e-5


def nll(device_json, cpu_json):
    a = json.load(open(device_json))["result"]["mean_nll"]
    b = json.load(open(cpu_json))["result"]["mean_nll"]
    rel = abs(a - b) / abs(b)
    print(json.dumps({"device": a, "cpu": b, "relative": rel, "passed": rel <= 1e-5}))
    return rel <= 1e-5


def report(out):
    out = pathlib.Path(out)
    lines = (out / "gpu-report.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines if line]
    for s in steps:
        try:
            s["output"] = json.loads((out / f"{s['step']}.json").read_text())
        except (OSError, ValueError):
            s["output"] = None
    (out / "gpu-report.json").write_text(json.dumps({"steps": steps}, indent=2) + "\n")
    failed = [s["step"] for s in steps if s["rc"] != 0]
    print("gpu.sh:", "all passed" if not failed else "failed: " + ", ".join(failed))
    return not failed


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    ok = {"golden": golden, "nll": nll, "report": report}[what](*args)
    sys.exit(0 if ok else 1)
