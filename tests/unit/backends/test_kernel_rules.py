"""The kernel layer of the TVM backend: ISA capabilities come from the target, the micro-kernel table
picks each int8 GEMM's kernel, every kernel kind goes to its rule by tag (not by block name), and
each rule's schedule has the loop structure it promises and computes what numpy computes."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, topi

from accelc.backends.tvm import intrin
from accelc.backends.tvm.kernels import isa as isa_info
from accelc.backends.tvm.kernels import microkernels, tags
from accelc.backends.tvm.lower import quant
from accelc.backends.tvm.lower.patches import im2col
from accelc.backends.tvm.schedules import RULES, choose
from accelc.backends.tvm.schedules.concat import Concat
from accelc.backends.tvm.schedules.elementwise import Elementwise
from accelc.backends.tvm.schedules.im2col import Im2col
from accelc.backends.tvm.schedules.inner_kept_reduction import InnerKeptReduction
from accelc.backends.tvm.schedules.int8_gemm import Int8Gemm
from accelc.backends.tvm.schedules.int8_gemv import Int8Gemv
from accelc.backends.tvm.schedules.matmul import Matmul
from accelc.backends.tvm.tune import database as tune_db
from accelc.config import host_cpu, targets
from tests.fixtures import tir

HASWELL = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
SKYLAKE_X = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
CASCADELAKE = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"})
ARM = targets.resolve("aarch64").tvm_target()
RUNS_AVX2 = {"avx2", "fma"} <= host_cpu.cpu_flags()


# ---- ISA capabilities ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, has, lanes", [
    ("x86", {"avx2", "fma"}, 8),
    ("x86-avx512", {"avx2", "fma", "avx512f"}, 16),
    ("aarch64", {"neon"}, 4),
    ("aarch64-neoverse-n1", {"neon", "dotprod"}, 4),
])
def test_isa_is_derived_from_the_target_description(name, has, lanes):
    isa = isa_info.of(targets.resolve(name).tvm_target())
    assert {c for c in isa_info.CAPABILITIES if isa.has(c)} == has
    assert isa.lanes() == lanes and isa.lanes(8) == lanes * 4


def test_isa_is_derived_once_per_target_and_names_vnni_by_mcpu():
    first = isa_info.of({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"})
    assert first is isa_info.of(CASCADELAKE)  # a dict and a Target of the same description
    assert first.avx512_vnni and first.avx512f and not isa_info.of(SKYLAKE_X).avx512_vnni
    assert isa_info.of({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell",
                        "mattr": ["+avx512f", "+avx512vnni"]}).avx512_vnni  # mattr counts too
    assert isa_info.of({"kind": "cuda", "arch": "sm_80"}) == isa_info.Isa(arch="cuda")


# ---- the micro-kernel table ----------------------------------------------------------------------

@pytest.mark.parametrize("target, columns, bits, kernel", [
    (HASWELL, 64, 7, "avx2_pairs"),
    (HASWELL, 64, 8, "int32"),  # full-range activations would saturate the pair multiply
    (HASWELL, 24, 7, "avx2_pairs"),
    (HASWELL, 6, 7, None),  # no row's columns divide 6: the GEMV
    (CASCADELAKE, 64, 8, "avx512_vnni"),
    (CASCADELAKE, 64, 7, "avx512_vnni"),
    (CASCADELAKE, 24, 7, "avx2_pairs"),  # 24 is no multiple of VNNI's 16 columns
    (CASCADELAKE, 24, 8, "int32"),
    (ARM, 64, 7, "int32"),
])
def test_each_gemm_gets_the_first_row_that_fits_it(target, columns, bits, kernel):
    chosen = microkernels.select(isa_info.of(target), columns, bits)
    assert (chosen.name if chosen else None) == kernel


@pytest.mark.parametrize("row", [k for k in microkernels.KERNELS if k.intrin], ids=lambda k: k.name)
def test_each_rows_intrinsic_computes_one_packed_weight_block(row):
    """The intrinsic a row names is registered by its module, over one block of the row's packing."""
    assert intrin.register(row) == row.intrin
    regions = tvm.s_tir.TensorIntrin.get(row.intrin).desc.body.block.reads  # C, A, B: all three read
    a, b, c = sorted((region.source for region in regions), key=lambda buf: buf.name)
    assert [tuple(int(d) for d in buf.shape) for buf in (a, b, c)] == [(row.k_group,), row.packing, (row.columns,)]
    assert [str(buf.dtype) for buf in (a, b, c)] == list(row.operands)


@pytest.mark.parametrize("target, bits", [(HASWELL, 7), (CASCADELAKE, 8), (ARM, 8), ("llvm", 8)])
def test_activation_bits_are_those_of_the_isas_preferred_kernel(target, bits):
    assert microkernels.activation_bits(isa_info.of(target)) == bits
    assert microkernels.activation_bits(target) == bits  # a target is taken as well


def test_target_files_ask_for_the_activations_their_int8_kernel_is_exact_for():
    """targets/*.yaml state an int8 policy for the quantize pass; it must agree with the table."""
    policies = {name: (t.tvm_target(), t.int8) for name, t in targets.load_all().items()
                if t.device == "cpu" and getattr(t, "int8", None) is not None}
    assert policies, "no CPU target states an int8 policy"
    for name, (target, policy) in policies.items():
        assert policy.activation_bits == microkernels.activation_bits(target), name


def test_every_rule_row_names_a_tag_or_all_kernels():
    known = {v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str) and not v.startswith("accelc.")}
    assert all(pattern == "*" or pattern in known for pattern, _ in RULES)
    assert tags.matches("*", ()) and tags.matches(tags.INT8_GEMM, ("", tags.INT8_GEMM))
    assert not tags.matches(tags.INT8_GEMM, ("", tags.GEMM))


# ---- rules by tag, their structure and numerics ------------------------------------------------------

def scheduled(tensors, target=HASWELL):
    """(rule, schedule) RULES gives the kernel computing tensors[-1] from the others."""
    chosen = choose(te.create_prim_func(list(tensors)), target)
    assert chosen is not None
    return chosen


def run(sch, arrays: list[np.ndarray], out_shape, out_dtype, target=HASWELL) -> np.ndarray:
    lib = tvm.compile(sch.mod, target=target)
    args = [tvm.runtime.tensor(a) for a in arrays] + [tvm.runtime.tensor(np.zeros(out_shape, out_dtype))]
    lib["main"](*args)
    return args[-1].numpy()


def floats(*shapes) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal(shape, dtype=np.float32) for i, shape in enumerate(shapes)]


def kinds(loops) -> list[tuple[str, int]]:
    return [(loop.kind, loop.extent) for loop in loops]


def float_gemm(m: int, k: int, n: int, name: str = "matmul", tagged: bool = False):
    a, b = te.placeholder((m, k), "float32", "a"), te.placeholder((k, n), "float32", "b")
    r = te.reduce_axis((0, k), "r")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name=name,
                   attrs=tags.attrs(tags.GEMM) if tagged else None)
    return a, b, topi.nn.relu(c)


@pytest.mark.parametrize("target, rows, cols", [(HASWELL, 4, 16), (SKYLAKE_X, 8, 32)])
def test_float_gemm_is_a_register_tile_with_k_unrolled_by_8(target, rows, cols):
    rule, sch = scheduled(float_gemm(32, 24, 64), target)
    func = sch.mod["main"]
    assert isinstance(rule, Matmul)
    assert kinds(tir.loops(func, "matmul_update")) == [
        ("parallel", 32 // rows), ("serial", 64 // cols), ("serial", 3), ("unrolled", 8), ("unrolled", rows),
        ("vectorized", cols)]
    assert tir.buffers(func) == {"matmul_global": "global"}  # the tile: on the stack, not a workspace
    if RUNS_AVX2 and target is HASWELL:
        a, b = floats((32, 24), (24, 64))
        np.testing.assert_allclose(run(sch, [a, b], (32, 64), "float32"), np.maximum(a @ b, 0), rtol=1e-5, atol=1e-5)


def test_rules_match_tags_not_block_names():
    tagged, _ = scheduled(float_gemm(8, 16, 32, name="weights_by_rows", tagged=True))
    assert isinstance(tagged, Matmul)  # any name, tagged as a GEMM
    untagged, _ = scheduled(float_gemm(8, 16, 32, name="weights_by_rows"))
    assert not isinstance(untagged, Matmul)
    x, w = te.placeholder((8, 16), "float32", "x"), te.placeholder((16, 32), "int8", "w")
    sch = s_tir.Schedule(te.create_prim_func([x, w, quant.w8_matmul(x, w)]))
    assert tags.of(sch.get(sch.get_sblock("w8_matmul"))) == tags.GEMM  # tagged where the lowering creates it


def test_one_column_gemm_sums_rows_in_vector_lanes():
    rule, sch = scheduled(float_gemm(64, 32, 1))
    func = sch.mod["main"]
    assert isinstance(rule, Matmul) and "matmul_rf_update" in tir.blocks(func)
    assert ("vectorized", 8) in kinds(tir.loops(func, "matmul_rf_update"))
    assert kinds(tir.top_loops(func)) == [("serial", 8)]  # groups of 8 rows: lane sums, totals and ReLU inside
    if RUNS_AVX2:
        a, b = floats((64, 32), (32, 1))
        np.testing.assert_allclose(run(sch, [a, b], (64, 1), "float32"), np.maximum(a @ b, 0), rtol=1e-5, atol=1e-5)


def int8_operands(rows: int, depth: int, columns: int, qmax: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    activations = rng.integers(0, qmax + 1, (rows, depth), dtype=np.uint8)
    return activations, rng.integers(-127, 128, (columns, depth), dtype=np.int8)


def packed(w: np.ndarray, kernel: microkernels.MicroKernel) -> np.ndarray:
    """numpy's packing of [N, K] weights for `kernel`: [N/columns, K/k_group, columns, k_group]."""
    columns, k_group = kernel.packing
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n // columns, columns, k // k_group, k_group).transpose(0, 2, 1, 3))


def int8_gemm(rows: int, depth: int, columns: int, kernel: microkernels.MicroKernel, bits: int):
    a = te.placeholder((rows, depth), "uint8", "a")
    w = te.placeholder((columns // kernel.columns, depth // kernel.k_group, *kernel.packing), "int8", "w")
    return a, w, quant.qgemm(a, w, columns, kernel=kernel, bits=bits)


# 12 rows x 48 columns, depth 32: row tiles of 4; a tensorized tile is 2 calls x 8 columns wide
TENSORIZED = [("parallel", 3 * 3), ("serial", 32 // 4), ("unrolled", 4), ("unrolled", 2)]
PLAIN = [("parallel", 3 * 6), ("serial", 32), ("unrolled", 4), ("serial", 8)]


@pytest.mark.parametrize("target, kernel, bits, intrinsics, update, loops", [
    (HASWELL, "avx2_pairs", 7, ["accelc_dot_8x4_u8i8i32_avx2"], "qgemm_update_o", TENSORIZED),
    (HASWELL, "avx2_pairs", 8, [], "qgemm_update", PLAIN),  # activations too wide for the kernel: plain int32
    (ARM, "int32", 7, [], "qgemm_update", PLAIN),
])
def test_int8_gemm_tiles_and_tensorizes_with_its_micro_kernel(target, kernel, bits, intrinsics, update, loops):
    row = microkernels.by_name(kernel)
    rule, sch = scheduled(int8_gemm(12, 32, 48, row, bits), target)
    func = sch.mod["main"]
    assert isinstance(rule, Int8Gemm) and tir.tensorized(sch) == intrinsics
    assert kinds(tir.loops(func, update)) == loops
    assert tir.buffers(func) == {"qgemm_global": "global"}  # int32 accumulators on the stack
    if RUNS_AVX2 and target is HASWELL:
        a, w = int8_operands(12, 32, 48, (1 << bits) - 1)
        got = run(sch, [a, packed(w, row)], (12, 48), "int32")
        np.testing.assert_array_equal(got, a.astype(np.int32) @ w.astype(np.int32).T)


def test_int8_gemv_is_one_dot_product_per_output():
    a, w = te.placeholder((80, 36), "uint8", "a"), te.placeholder((3, 36), "int8", "w")
    rule, sch = scheduled([a, w, quant.qgemv(a, w)])
    func = sch.mod["main"]
    assert isinstance(rule, Int8Gemv)
    assert kinds(tir.loops(func, "qgemv_update")) == [("parallel", 240), ("serial", 36)]
    if RUNS_AVX2:
        x, weights = int8_operands(80, 36, 3, 255)
        got = run(sch, [x, weights], (80, 3), "int32")
        np.testing.assert_array_equal(got, x.astype(np.int32) @ weights.astype(np.int32).T)


def test_patches_alone_copy_one_vector_per_tap():
    x = te.placeholder((2, 5, 6, 3), "uint8", "x")
    patches = im2col(x, 7, (3, 3), (1, 1), (1, 1), (1, 1))  # 3 channels x 9 taps: padded to 4 channels
    rule, sch = scheduled([x, patches])
    assert isinstance(rule, Im2col)
    assert kinds(tir.loops(sch.mod["main"], "im2col")) == [("serial", 60), ("serial", 9), ("vectorized", 4)]
    if RUNS_AVX2:
        image = np.random.default_rng(3).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
        got = run(sch, [image], (60, 36), "uint8").reshape(2, 5, 6, 3, 3, 4)
        padded = np.pad(image, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=7)
        for r in range(3):
            for s in range(3):
                np.testing.assert_array_equal(got[:, :, :, r, s, :3], padded[:, r:r + 5, s:s + 6, :])
        assert not got[..., 3].any()  # the padding channel meets zero weights


def test_concat_computes_its_inputs_row_by_row():
    x = te.placeholder((64, 16), "float32", "x")
    scaled = te.compute((64, 16), lambda i, j: x[i, j] * 2.0, name="scaled")
    shifted = te.compute((64, 5), lambda i, j: x[i, j] + 1.0, name="shifted")
    rule, sch = scheduled([x, topi.concatenate([scaled, shifted], axis=1)])
    func = sch.mod["main"]
    assert isinstance(rule, Concat)
    assert kinds(tir.loops(func, "scaled")) == [("serial", 64), ("serial", 2), ("vectorized", 8)]
    assert kinds(tir.loops(func, "T_concat")) == [("serial", 64), ("unrolled", 21)]
    if RUNS_AVX2:
        data = np.random.default_rng(4).standard_normal((64, 16), dtype=np.float32)
        want = np.concatenate([data * 2, data[:, :5] + 1], axis=1)
        np.testing.assert_array_equal(run(sch, [data], (64, 21), "float32"), want)


def test_elementwise_rows_run_in_vectors():
    x = te.placeholder((700, 24), "float32", "x")
    rule, sch = scheduled([x, topi.nn.relu(topi.add(x, 1.0))])
    assert isinstance(rule, Elementwise)
    assert kinds(tir.all_loops(sch.mod["main"])) == [("parallel", 700), ("serial", 3), ("vectorized", 8)]
    if RUNS_AVX2:
        data = np.random.default_rng(5).standard_normal((700, 24), dtype=np.float32)
        np.testing.assert_array_equal(run(sch, [data], (700, 24), "float32"), np.maximum(data + 1, 0))


def test_sums_over_outer_axes_keep_the_inner_axis_in_vectors():
    x = te.placeholder((3, 5, 6, 16), "float32", "x")
    rule, sch = scheduled([x, topi.sum(x, axis=(1, 2))])
    assert isinstance(rule, InnerKeptReduction)
    update = [name for name in tir.blocks(sch.mod["main"]) if name.endswith("_update")][0]
    assert kinds(tir.loops(sch.mod["main"], update)) == [("serial", 3), ("serial", 5), ("serial", 6), ("serial", 2),
                                                          ("vectorized", 8)]
    if RUNS_AVX2:
        data = np.random.default_rng(6).standard_normal((3, 5, 6, 16), dtype=np.float32)
        np.testing.assert_allclose(run(sch, [data], (3, 16), "float32"), data.sum(axis=(1, 2)), rtol=1e-5)


# ---- the tuning database key ----------------------------------------------------------------------

def test_the_tuning_key_hashes_every_file_of_the_rule_folders(tmp_path):
    source = tune_db.Path(tune_db.__file__).resolve().parents[1]
    for folder in tune_db.DEFAULTS:
        shutil.copytree(source / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert tune_db.digest_of(tmp_path) == tune_db.defaults_digest()
    (tmp_path / "schedules" / "new_rule.py").write_text('"""a new rule"""\n')
    with_rule = tune_db.digest_of(tmp_path)
    assert with_rule != tune_db.defaults_digest()
    table = tmp_path / "kernels" / "microkernels.py"
    table.write_text(table.read_text().replace("rows=4", "rows=2", 1))
    assert tune_db.digest_of(tmp_path) not in (with_rule, tune_db.defaults_digest())
