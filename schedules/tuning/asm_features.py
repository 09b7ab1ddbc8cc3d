"""Features read from the x86 assembly LLVM makes of a candidate (the cost model's second stage).

Every CPU misrank the features' analytical model was fixed for so far (versions 4-7 in the
README) came from reading what LLVM did with a schedule: loops it vectorized by itself, loops it
did not, registers it spilled, strided reads it turned into gathers or shuffles. Those rules
stay approximations; the assembly itself says what the candidate will execute. Each candidate is
built for the tuning target (``tvm.tirx.build``, about 0.17 s on one core) and its functions
are read instruction by instruction (TVM's error paths and fp16 helpers skipped; the FFI wrapper
is read, as a kernel with no parallel loop is inlined into it):

  * counts per class — vector fused multiply-adds by width (zmm/ymm/xmm), scalar ones, other
    vector and scalar arithmetic, divides/square roots, loads, stores, stack accesses (spills
    and reloads), gathers, broadcasts, shuffles, calls — over the whole code, over the bodies
    of the innermost loops (a backward jump that encloses no other), and weighted 4^depth by
    loop nesting (a stand-in for trip counts, which the analytical features carry);
  * ratios of the innermost bodies: the vector share of multiply-adds, stack accesses, loads,
    shuffles, gathers and broadcasts per arithmetic instruction, lanes per instruction;
  * estimated dynamic counts (version 3): every instruction weighted by the trip counts of the
    loops around it, read from the loop's own code — the immediate its induction register is
    compared with (``cmp $N, %reg`` before the back edge, or at the top of a rotated loop) and
    the register's step and start; a counter that runs up to zero from ``mov $-N``; LLVM's
    two-pass ``testb $1`` loops count 2. A trip the code does not state (a parallel lambda's
    range, a runtime bound) counts ``UNKNOWN_TRIP`` inside parallel lambdas and 1 elsewhere (there
    such "loops" are TVM's argument checks and the parallel-launch retry). Ratios of these
    counts (lanes, arithmetic, loads, stores, spills, shuffles per instruction or per arithmetic
    op) and the hottest innermost loop's weight and mix complete the group. Leave-one-task-out
    on the 16 benchmark tasks (booster trained with the group present): 0.863 -> 0.882.

Building is too slow to score a whole evolutionary population (hundreds of candidates per
round), so the tuner uses these only to re-rank the population's best few (``rerank`` in
``driver.SkipMeasured``): ``cost_model.AccelcXGBModel`` keeps two boosters, one on the analytical
features alone for populations and one with this group for the candidates built.
"""

from __future__ import annotations

import re

import numpy as np

ASM_FEATURE_VERSION = 3
UNKNOWN_TRIP = 8.0  # a parallel lambda's loop whose bound the code does not state

_SKIP = ("__tvm_set_raised", "__truncsfhf2", "__extendhfsf2")  # error paths, fp16 helpers
_JUMP = re.compile(r"^j[a-z]+$")
_FMA = re.compile(r"^vf(n?)m(add|sub)(sub|add)?\d+(p|s)(s|d)$")
_ARITH = re.compile(r"^v(add|sub|mul|max|min)(p|s)(s|d)$")
_DIV = re.compile(r"^v(div|sqrt|rcp|rsqrt)")
_SHUF = re.compile(r"^v(perm|shuf|unpck|insert|extract|blend|pshuf|palignr|movhl|movlh|movsh|movsl|pblend|pmov[sz]x|"
                   r"compress|expand)")
CLASSES = ("n", "vfma_z", "vfma_y", "vfma_x", "sfma", "varith", "sarith", "div", "load", "store", "stack",
           "gather", "bcast", "shuf", "call", "other")
_IDX = {k: i for i, k in enumerate(CLASSES)}
RATIOS = ("vec_fma_frac", "stack_per_fp", "load_per_fp", "shuf_per_fp", "lanes_per_ins", "fp_per_ins",
          "gather_per_fp", "bcast_per_fp", "zmm_frac", "max_loop_depth", "loops")
DYN_RATIOS = ("lanes_per_ins", "fp_per_ins", "load_per_fp", "stack_per_fp", "shuf_per_fp", "store_per_fp",
              "known_trip_frac", "hot_weight", "hot_fp_frac", "hot_load_per_fp", "lanes")
ASM_NAMES = tuple([f"asm_all_{c}" for c in CLASSES] + [f"asm_inner_{c}" for c in CLASSES]
                  + [f"asm_depth_{c}" for c in CLASSES] + [f"asm_{r}" for r in RATIOS]
                  + [f"asm_dyn_{c}" for c in CLASSES] + [f"asm_dyn_{r}" for r in DYN_RATIOS])
_IMM = re.compile(r"^\$(-?\d+)$")
_R32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi", "ebp": "rbp", "esp": "rsp"}
_RNUM = re.compile(r"^(r\d+)[dwb]?$")


def functions(asm: str) -> list[tuple[str, list[str]]]:
    """The compute functions of an assembly listing: (name, instruction and label lines)."""
    out, cur = [], None
    for line in asm.splitlines():
        s = line.strip()
        if s.startswith(".type") and "@function" in s:
            name = s.split()[1].split(",")[0]
            cur = None if name.startswith(_SKIP) else []
            if cur is not None:
                out.append((name, cur))
            continue
        if cur is None or not s or s.startswith(("#", ".cfi", ".p2align", ".loc", ".file")):
            continue
        if s.startswith(".Lfunc_end"):
            cur = None
            continue
        cur.append(s)
    return out


def classify(ins: str) -> np.ndarray:
    """One AT&T-syntax instruction as a one-hot-ish vector over ``CLASSES`` (``n`` always 1;
    a memory operand adds load/store/stack beside the operation's own class)."""
    parts = ins.split(None, 1)
    m, ops = parts[0], (parts[1] if len(parts) > 1 else "")
    v = np.zeros(len(CLASSES))
    v[0] = 1
    if "(" in ops and not m.startswith(("lea", "prefetch", "nop")):
        last = ops.rsplit(",", 1)[-1]  # AT&T: the destination is the last operand
        v[_IDX["store" if "(" in last and not m.startswith(("cmp", "test")) else "load"]] = 1
        if "(%rsp)" in ops or "(%rbp)" in ops:
            v[_IDX["stack"]] = 1
    if "{1to" in ops:
        v[_IDX["bcast"]] = 1
    f = _FMA.match(m)
    if f:
        if f.group(4) == "s":
            v[_IDX["sfma"]] = 1
        else:
            v[_IDX["vfma_z" if "%zmm" in ops else "vfma_y" if "%ymm" in ops else "vfma_x"]] = 1
    elif _ARITH.match(m):
        v[_IDX["varith" if m[-2] == "p" else "sarith"]] = 1
    elif _DIV.match(m):
        v[_IDX["div"]] = 1
    elif m.startswith(("vgather", "vpgather")):
        v[_IDX["gather"]] = 1
    elif m.startswith(("vbroadcast", "vpbroadcast")):
        v[_IDX["bcast"]] = 1
    elif _SHUF.match(m):
        v[_IDX["shuf"]] = 1
    elif m.startswith("call"):
        v[_IDX["call"]] = 1
    else:
        v[_IDX["other"]] = 1
    return v


def _reg(op: str) -> str:
    """A register operand by its 64-bit name (``%ecx`` and ``%rcx`` are one counter)."""
    op = op.strip().lstrip("%")
    m = _RNUM.match(op)
    return _R32.get(op, m.group(1) if m else op)


_OPERAND = re.compile(r"(?:[^,(]|\([^)]*\))+")  # commas inside (base,index,scale) do not split


def _ops(ins: str) -> tuple[str, list[str]]:
    """Mnemonic and operands: ``addq $64, 8(%rsp,%rax,4)`` → ``("addq", ["$64", "8(%rsp,%rax,4)"])``."""
    parts = ins.split(None, 1)
    return parts[0], ([o.strip() for o in _OPERAND.findall(parts[1])] if len(parts) > 1 else [])


def _step(ins: list[str], a: int, b: int, reg: str) -> int | None:
    """How much the loop body ``ins[a..b]`` adds to ``reg`` (first inc/dec/add/sub of it)."""
    for s in ins[a:b + 1]:
        m, ops = _ops(s)
        if m.startswith(("inc", "dec")) and len(ops) == 1 and _reg(ops[0]) == reg:
            return 1 if m.startswith("inc") else -1
        if m.startswith(("add", "sub")) and len(ops) == 2 and _reg(ops[1]) == reg:
            imm = _IMM.match(ops[0])
            if imm:
                return int(imm.group(1)) * (1 if m.startswith("add") else -1)
    return None


def _start(ins: list[str], a: int, reg: str, window: int = 12) -> int | None:
    """``reg``'s value entering the loop at ``a``: the last xor/mov of it shortly before (0 if
    none: TVM's counters start at 0, zeroed further up); None if it is not an immediate."""
    for s in reversed(ins[max(0, a - window):a]):
        m, ops = _ops(s)
        if m.startswith("xor") and len(ops) == 2 and _reg(ops[0]) == _reg(ops[1]) == reg:
            return 0
        if m.startswith("mov") and len(ops) == 2 and _reg(ops[1]) == reg:
            imm = _IMM.match(ops[0])
            return int(imm.group(1)) if imm else None
    return 0


def _trip_to(ins: list[str], a: int, b: int, cmp_ops: list[str]) -> float | None:
    imm = _IMM.match(cmp_ops[0])
    if not imm:
        return None
    reg = _reg(cmp_ops[1])
    step, start = _step(ins, a, b, reg), _start(ins, a, reg)
    if not step or start is None:
        return None
    t = (int(imm.group(1)) - start) / step
    return t if t >= 1 else None


def trip_count(ins: list[str], a: int, b: int) -> float | None:
    """The trip count the code of the loop ``ins[a..b]`` (``b``: its backward jump) states, or
    None (a runtime bound)."""
    for s in ins[max(a, b - 3):b]:
        m, ops = _ops(s)
        if m == "testb" and ops and ops[0] == "$1":
            return 2.0  # LLVM's two-pass loop over a bool
    if ins[b].split()[0] == "jmp":  # a rotated loop: the exit test is at the top
        for s in ins[a:min(b, a + 6)]:
            m, ops = _ops(s)
            if m.startswith("cmp") and len(ops) == 2:
                return _trip_to(ins, a, b, ops)
        return None
    for s in reversed(ins[max(a, b - 4):b]):
        m, ops = _ops(s)
        if m.startswith("cmp") and len(ops) == 2:
            return _trip_to(ins, a, b, ops)
        if m.startswith(("inc", "dec", "add", "sub")) and ops:  # flags of the induction: to zero
            reg = _reg(ops[-1])
            step, start = _step(ins, a, b, reg), _start(ins, a, reg)
            if not step or not start:
                return None
            t = -start / step
            return t if t >= 1 else None
    return None


def _fp(counts: np.ndarray) -> float:
    """Arithmetic instructions among ``CLASSES`` counts: multiply-adds, other arithmetic."""
    return counts[1:4].sum() + counts[_IDX["sfma"]] + counts[_IDX["varith"]] + counts[_IDX["sarith"]]


def _lanes(counts: np.ndarray) -> float:
    """fp32 lanes the multiply-adds among ``CLASSES`` counts compute (zmm 16, ymm 8, xmm 4, scalar 1)."""
    return 16 * counts[1] + 8 * counts[2] + 4 * counts[3] + counts[_IDX["sfma"]]


def features(asm: str) -> np.ndarray:
    """``ASM_NAMES`` values of one assembly listing."""
    k = len(CLASSES)
    total, inner, deep, dyn = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
    hot_body, hot_weight = np.zeros(k), 0.0
    max_depth = n_loops = known = 0
    for name, lines in functions(asm):
        labels, ins = {}, []
        for s in lines:
            if s.endswith(":"):
                labels[s[:-1]] = len(ins)
            else:
                ins.append(s)
        loops = []
        for p, s in enumerate(ins):
            parts = s.split()
            if _JUMP.match(parts[0]) and len(parts) > 1 and labels.get(parts[1], p + 1) <= p:
                loops.append((labels[parts[1]], p))
        n_loops += len(loops)
        cls = np.array([classify(s) for s in ins]) if ins else np.zeros((0, k))
        depth = np.zeros(len(ins), int)
        weight = np.ones(len(ins))
        for a, b in loops:
            depth[a:b + 1] += 1
            t = trip_count(ins, a, b)
            known += t is not None
            weight[a:b + 1] *= min(t, 1e5) if t is not None else \
                UNKNOWN_TRIP if "parallel_lambda" in name else 1.0
        for a, b in loops:
            if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops):
                inner += cls[a:b + 1].sum(0)
                if weight[a] > hot_weight:
                    hot_weight, hot_body = weight[a], cls[a:b + 1].sum(0)
        total += cls.sum(0)
        deep += (cls * (4.0 ** depth)[:, None]).sum(0)
        dyn += (cls * weight[:, None]).sum(0)
        max_depth = max(max_depth, int(depth.max()) if len(depth) else 0)
    vfma, sfma, fp, lanes = inner[1:4].sum(), inner[_IDX["sfma"]], _fp(inner), _lanes(inner)
    ratios = [vfma / max(vfma + sfma, 1), inner[_IDX["stack"]] / max(fp, 1), inner[_IDX["load"]] / max(fp, 1),
              inner[_IDX["shuf"]] / max(fp, 1), lanes / max(inner[0], 1), fp / max(inner[0], 1),
              inner[_IDX["gather"]] / max(fp, 1), inner[_IDX["bcast"]] / max(fp, 1),
              inner[1] / vfma if vfma else 0.0, max_depth, n_loops]
    d_fp, h_fp = _fp(dyn), _fp(hot_body)
    dyn_ratios = [_lanes(dyn) / max(dyn[0], 1), d_fp / max(dyn[0], 1), dyn[_IDX["load"]] / max(d_fp, 1),
                  dyn[_IDX["stack"]] / max(d_fp, 1), dyn[_IDX["shuf"]] / max(d_fp, 1), dyn[_IDX["store"]] / max(d_fp, 1),
                  known / max(n_loops, 1), np.log1p(hot_weight), h_fp / max(hot_body[0], 1),
                  hot_body[_IDX["load"]] / max(h_fp, 1), np.log1p(_lanes(dyn))]
    return np.concatenate([np.log1p(total), np.log1p(inner), np.log1p(deep), ratios,
                           np.log1p(dyn), dyn_ratios]).astype("float32")


def assembly(mod, target) -> str | None:
    """The x86 assembly of a candidate's module as MetaSchedule's builder would compile it
    (weight-layout rewrite blocks removed), or None if it does not build."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    try:
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm.tirx.build(mod, target=target).inspect_source("asm")
    except Exception:  # noqa: BLE001 - a candidate that does not build has no assembly
        return None


class AsmFeatures:
    """``ASM_NAMES`` of candidates, built for the tuning context's target; memoized by the
    module's structural hash (the tuner re-ranks a batch, then updates the model with it)."""

    names = ASM_NAMES

    def __init__(self, limit: int = 4096):
        self.memo: dict[int, np.ndarray] = {}
        self.limit = limit

    def of_mod(self, mod, target) -> np.ndarray:
        import tvm_ffi

        key = tvm_ffi.structural_hash(mod)
        hit = self.memo.get(key)
        if hit is None:
            asm = assembly(mod, target)
            hit = features(asm) if asm else np.full(len(ASM_NAMES), np.nan, dtype="float32")
            if len(self.memo) >= self.limit:
                self.memo.pop(next(iter(self.memo)))
            self.memo[key] = hit
        return hit

    def extract(self, context, candidates) -> np.ndarray:
        if context.target is None or context.target.kind.name != "llvm":
            raise ValueError("assembly features read x86 assembly: an llvm target only")
        return np.stack([self.of_mod(c.sch.mod, context.target) for c in candidates]) if candidates else \
            np.zeros((0, len(ASM_NAMES)), dtype="float32")
