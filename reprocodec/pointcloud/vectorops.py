"""Numba intrinsics written as LLVM code: two vector ones for native.py's kernel, and a
cache prefetch for the count models' walks.

numba leaves LLVM's SLP vectorizer off, so a loop over a short accumulator array keeps the
array in memory: every step loads and stores it. Here the accumulators are LLVM vector values
(<64 x i32>, <32 x double>) carried in registers across the loop. The float operations are
plain fmul / fadd / fcmp without fast-math flags, each vector lane its own sum in a fixed
order: LLVM may not reassociate them nor contract them into FMAs, so the result is the same on
every CPU (tests compare with numpy bit for bit and check the code for FMAs).

FIRST_UNITS and SECOND_UNITS are the vector widths: native.py pads smaller layers with zero
units, which changes no value.
"""

from __future__ import annotations

from ..kernels import numba

PREFETCH_AHEAD = 16  # prefetch()'s distance in the walks: a context this many bits ahead
FIRST_UNITS = 64  # at most 64: the tail keeps one bit per unit in an i64 mask
SECOND_UNITS = 32
NEIGHBOURS = 27
GATHER_STATES = 257  # gather.GATHER_STATES (not imported: this module has no numpy users)

if numba is not None:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _I32, _I64, _F64 = ir.IntType(32), ir.IntType(64), ir.DoubleType()

    def _element_address(builder, array, index, stride):
        """Address of element `index` along an array's first axis (byte stride)."""
        base = builder.ptrtoint(array.data, _I64)
        return builder.add(base, builder.mul(index, stride))

    def _arrays(context, builder, sig, args):
        """An intrinsic's arguments, each array as its numba array structure (None for the
        scalars)."""
        return [context.make_array(t)(context, builder, a) if isinstance(t, types.Array)
                else None for t, a in zip(sig.args, args, strict=True)]

    def _load_as(builder, context, array_type, array, offset):
        """array's element at byte offset, widened to i64."""
        element = context.get_value_type(array_type.dtype)
        pointer = builder.inttoptr(offset, element.as_pointer())
        value = builder.load(pointer)
        return builder.sext(value, _I64) if element.width < 64 else value

    @intrinsic
    def gather_sum(typingctx, rows, r, state, table, bias, first):
        """first[:FIRST_UNITS] = bias + table[257 t + state[rows[r, t]]] over the neighbours
        t of row r that are present (rows[r, t] != state.size - 1): integer sums, exact in
        any order."""
        signature = types.void(rows, r, state, table, bias, first)

        def codegen(context, builder, sig, args):
            rows_a, _, state_a, table_a, bias_a, first_a = _arrays(context, builder, sig, args)
            vector = ir.VectorType(_I32, FIRST_UNITS)
            absent = builder.sub(builder.extract_value(state_a.shape, 0), ir.Constant(_I64, 1))
            row = _element_address(builder, rows_a, args[1],
                                   builder.extract_value(rows_a.strides, 0))
            column = ir.Constant(_I64, sig.args[0].dtype.bitwidth // 8)
            table_stride = builder.extract_value(table_a.strides, 0)
            start = builder.load(builder.bitcast(bias_a.data, vector.as_pointer()), align=4)
            entry = builder.block
            head, test, add, step, done = (builder.append_basic_block(f"gather.{n}") for n in
                                           ("head", "test", "add", "step", "done"))
            builder.branch(head)
            builder.position_at_end(head)
            t, acc = builder.phi(_I64), builder.phi(vector)
            t.add_incoming(ir.Constant(_I64, 0), entry)
            acc.add_incoming(start, entry)
            builder.cbranch(builder.icmp_signed("<", t, ir.Constant(_I64, NEIGHBOURS)), test,
                            done)
            builder.position_at_end(test)
            j = _load_as(builder, context, sig.args[0], rows_a,
                         builder.add(row, builder.mul(t, column)))
            builder.cbranch(builder.icmp_signed("==", j, absent), step, add)
            builder.position_at_end(add)
            s = _load_as(builder, context, sig.args[2], state_a, _element_address(
                builder, state_a, j, ir.Constant(_I64, sig.args[2].dtype.bitwidth // 8)))
            index = builder.add(builder.mul(t, ir.Constant(_I64, GATHER_STATES)), s)
            pointer = builder.inttoptr(_element_address(builder, table_a, index, table_stride),
                                       vector.as_pointer())
            added = builder.add(acc, builder.load(pointer, align=4))
            builder.branch(step)
            builder.position_at_end(step)
            acc_next = builder.phi(vector)
            acc_next.add_incoming(acc, test)
            acc_next.add_incoming(added, add)
            t.add_incoming(builder.add(t, ir.Constant(_I64, 1)), step)
            acc.add_incoming(acc_next, step)
            builder.branch(head)
            builder.position_at_end(done)
            builder.store(acc, builder.bitcast(first_a.data, vector.as_pointer()), align=4)
            return context.get_dummy_value()

        return signature, codegen

    @intrinsic
    def relu_dense_tail(typingctx, first, w2t, b2, w3):
        """The float64 sum the last layer adds to its bias, from the first layer's integer
        pre-activations first[:FIRST_UNITS] (int32): second-layer pre-activations acc = sum
        over the units u with first[u] > 0, u ascending, of float64(first[u]) * w2t[u] (from
        +0; a ReLU-zero unit's product would be +-0 and change nothing), then
        p = max(acc + b2, 0) * w3, then p's SECOND_UNITS lanes added by halves (lanes j and
        j + 16, then j and j + 8, .., then 0 and 1). The non-zero units come from a bit mask
        (one vector compare, then count-trailing-zeros): no compacted copy and no branch per
        unit, about half of which are zero, unpredictably. Each unit's value is loaded from
        `first` in memory: extracted from the vector at a variable lane, it made LLVM spill
        the whole vector to the stack on every step (four 64-byte stores a unit; the kernel
        took 160-180 ns a row on the 1/4 sampling's rows instead of 145-165, /tmp script, one
        thread)."""
        signature = types.float64(first, w2t, b2, w3)

        def codegen(context, builder, sig, args):
            first_a, w2t_a, b2_a, w3_a = _arrays(context, builder, sig, args)
            vector = ir.VectorType(_F64, SECOND_UNITS)
            units = ir.VectorType(_I32, FIRST_UNITS)
            row_stride = builder.extract_value(w2t_a.strides, 0)
            first_units = builder.bitcast(first_a.data, _I32.as_pointer())
            pre = builder.load(builder.bitcast(first_a.data, units.as_pointer()), align=4)
            positive = builder.icmp_signed(">", pre, ir.Constant(units, None))
            start = builder.zext(builder.bitcast(positive, ir.IntType(FIRST_UNITS)), _I64)
            cttz = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_I64, [_I64, ir.IntType(1)]), "llvm.cttz.i64")
            entry = builder.block
            head, body, done = (builder.append_basic_block(f"tail.{n}")
                                for n in ("head", "body", "done"))
            builder.branch(head)
            builder.position_at_end(head)
            mask, acc = builder.phi(_I64), builder.phi(vector)
            mask.add_incoming(start, entry)
            acc.add_incoming(ir.Constant(vector, None), entry)  # +0 in every lane
            builder.cbranch(builder.icmp_unsigned("!=", mask, ir.Constant(_I64, 0)), body,
                            done)
            builder.position_at_end(body)
            unit = builder.call(cttz, [mask, ir.Constant(ir.IntType(1), 1)])  # lowest set bit
            x = builder.sitofp(builder.load(builder.gep(first_units, [unit])), _F64)
            row = builder.inttoptr(_element_address(builder, w2t_a, unit, row_stride),
                                   vector.as_pointer())
            splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vector, ir.Undefined), x,
                                       ir.Constant(_I32, 0)),
                ir.Constant(vector, ir.Undefined),
                ir.Constant(ir.VectorType(_I32, SECOND_UNITS), [0] * SECOND_UNITS))
            acc_next = builder.fadd(acc, builder.fmul(splat, builder.load(row, align=8)))
            mask.add_incoming(builder.and_(mask, builder.sub(mask, ir.Constant(_I64, 1))),
                              body)  # that bit cleared
            acc.add_incoming(acc_next, body)
            builder.branch(head)
            builder.position_at_end(done)
            b2v = builder.load(builder.bitcast(b2_a.data, vector.as_pointer()), align=8)
            w3v = builder.load(builder.bitcast(w3_a.data, vector.as_pointer()), align=8)
            y = builder.fadd(acc, b2v)
            zero = ir.Constant(vector, None)
            relu = builder.select(builder.fcmp_ordered(">", y, zero), y, zero)
            p = builder.fmul(relu, w3v)
            width = SECOND_UNITS
            while width > 1:
                width //= 2
                low = builder.shuffle_vector(p, p, ir.Constant(
                    ir.VectorType(_I32, width), list(range(width))))
                high = builder.shuffle_vector(p, p, ir.Constant(
                    ir.VectorType(_I32, width), list(range(width, 2 * width))))
                p = builder.fadd(low, high)
            return builder.extract_element(p, ir.Constant(_I32, 0))

        return signature, codegen

    @intrinsic
    def prefetch(typingctx, array, index):
        """A hint to bring array[index] (along the first axis) into the cache, for writing
        (llvm.prefetch): it changes no value, and never faults, whatever the index. The count
        models' tables (up to 45 MB) are read at a hashed context a bit, which the walks know
        ahead (PREFETCH_AHEAD bits): their misses then overlap instead of stalling the walk
        one by one, which took about two thirds of the mixing walk's time on a dense surface
        (164 ns a bit with its largest tables, 57 with 2^15 contexts, 58 prefetched)."""
        signature = types.void(array, index)

        def codegen(context, builder, sig, args):
            (array_a, _), i8 = _arrays(context, builder, sig, args), ir.IntType(8)
            address = _element_address(builder, array_a, args[1],
                                       builder.extract_value(array_a.strides, 0))
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8.as_pointer()] + [_I32] * 3),
                "llvm.prefetch.p0")  # (address, write, locality: keep, data cache)
            builder.call(hint, [builder.inttoptr(address, i8.as_pointer()), ir.Constant(_I32, 1),
                                ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            return context.get_dummy_value()

        return signature, codegen
else:
    def prefetch(array, index) -> None:  # the light client install: nothing to hint
        del array, index
