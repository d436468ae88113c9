"""The Triton kernels compile for an NVIDIA H100 (sm_90) on a machine without a GPU.

The triton wheel carries the NVIDIA backend, ptxas and cuobjdump, so each kernel is built to a cubin exactly
as at its first launch on a GPU, with the constexprs and warps the launchers use for real shapes (bf16 data,
tf32 dots). cuobjdump reports registers and per-thread stack; stack at 255 registers is register spilling.
This catches what the interpreter cannot: code the compiler rejects (it is stricter than Python) and tiles
too large for the register file. The compile runs in a child process, because the interpreter (set by
conftest) replaces the kernels at import. By hand: ``python tests/kernels/test_triton_compile.py``.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Per-thread stack bytes the backward FFT kernels are known to need (spills at 255 registers, L1-cached);
# every other kernel must have none. A larger number means a change made the tiles too big.
KNOWN_STACK = {"fused_bwd": 64, "row_bwd": 512, "row_conv": 16}


def _ptr(dtype: str) -> str:
    return "*" + dtype


def _configs():
    """(name, kernel, signature {arg: type}, constexprs, num_warps) for the shapes the launchers produce."""
    import torch

    from kernels.fftconv import triton_fused as fu
    from kernels.fftconv import triton_passes as pa
    from kernels.fftconv.triton_launch import col_meta, onchip_meta, row_meta
    from kernels.fftconv.triton_plan import make_plan
    from kernels.scan.triton_bwd import scan_bwd_kernel
    from kernels.scan.triton_fwd import scan_fwd_kernel
    from kernels.scan.triton_launch import BCView, geometry, scan_meta

    out = []

    def add(name, kernel, ptrs, meta):
        meta = dict(meta)
        warps = meta.pop("num_warps")
        sig = {a: ("constexpr" if a in meta else _ptr(ptrs.get(a, "fp32")) if a.endswith("_ptr") else
                   "fp32" if a == "scale" else "i32") for a in kernel.arg_names}
        out.append((name, kernel, sig, meta, warps))

    bf = dict(u_ptr="bf16", y_ptr="bf16", bias_ptr="bf16", g_ptr="bf16", du_ptr="bf16", k_ptr="bf16",
              x_ptr="bf16", v_ptr="bf16", aux_ptr="bf16")
    for L in (200, 1024):  # on chip: 16 x 32 and 32 x 64 tiles
        m = onchip_meta(make_plan(L), "tf32")
        for name in ("spectrum_kernel", "fused_fwd_kernel", "fused_bwd_kernel"):
            add(f"{name[:-7]} L={L}", getattr(fu, name), bf, m)
    for L in (4096, 1 << 20):  # multi-pass: dense 16-point columns; 32·32 columns with 32 x 64 rows
        plan = make_plan(L)
        cm, rm = col_meta(plan, "tf32"), row_meta(plan, "tf32")
        for pair, dot in ((True, False), (True, True), (False, False)):
            add(f"col_fwd L={L} pair={pair} dot={dot}", pa.col_fwd_kernel, bf, dict(cm, PAIR=pair, DOT=dot))
        for pair in (True, False):
            add(f"col_inv L={L} pair={pair}", pa.col_inv_kernel, bf, dict(cm, PAIR=pair, AUX=pair))
        for name in ("row_spectrum_kernel", "row_conv_kernel", "row_bwd_kernel"):
            add(f"{name[:-7]} L={L}", getattr(pa, name), {}, rm)
    sp = {n: "bf16" for n in ("u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr",
                              "ddt_ptr", "dz_ptr")}
    # channel blocks of 4 (shapes from meta tensors: no SM count) and of 1 (33 channels per group; on a GPU
    # the block also shrinks to 1 for B·D = 128 to keep two programs per SM)
    for Bn, D, layout in ((8, 1024, (8, 16, 4096)), (1, 128, (128, 16)), (1, 128, (1, 16, 4096)),
                          (1, 132, (1, 4, 16, 4096))):
        u = torch.empty(Bn, D, 4096, device="meta")
        X = torch.empty(*layout, device="meta")
        bv = cv = BCView.of(X, D)
        g = geometry(u, torch.empty(D, 16, device="meta"), bv, cv, 32, 64)
        m = scan_meta(g, bv, cv, True, True, True)
        tag = f"B={Bn} D={D} BD={g.BD} {'var' if bv.var else 'shared'}"
        add(f"scan_fwd {tag}", scan_fwd_kernel, sp, dict(m, HAS_H0=True))
        add(f"scan_bwd {tag}", scan_bwd_kernel, sp, dict(m, HAS_DLAST=True))
    return out


def compile_all(arch: int = 90) -> list:
    """Build every configuration to a cubin for sm_<arch>; return [{name, regs, stack, shared}]."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    results = []
    for name, kernel, sig, constexprs, warps in _configs():
        opts = backend.parse_options({"num_warps": warps})
        ck = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=target,
                            options=opts.__dict__)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(ck.asm["cubin"])
            f.flush()
            dump = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True,
                                  text=True, check=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", dump)
        results.append(dict(name=name, warps=warps, regs=int(m.group(1)), stack=int(m.group(2)),
                            shared=ck.metadata.shared))
    return results


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True, env=env, cwd=root,
                          timeout=900)
    if proc.returncode != 0 and "cuobjdump" in proc.stderr and "No such file" in proc.stderr:
        pytest.skip("this triton wheel carries no NVIDIA tools")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(set(r["name"] for r in results)) >= 20
    for r in results:
        allowed = next((v for k, v in KNOWN_STACK.items() if r["name"].startswith(k)), 0)
        assert r["stack"] <= allowed, r
        assert r["shared"] <= 227 * 1024, r  # H100 shared memory per block


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET: the compiler needs the real kernels")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    rows = compile_all(int(os.environ.get("SM", "90")))
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['name']:45s} warps={r['warps']:2d} regs={r['regs']:3d} stack={r['stack']:5d} B "
                  f"shared={r['shared']:6d} B")
