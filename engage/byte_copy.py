"""One compiled byte copy for the kernels that write wire bytes (score messages, Kafka record
batches, Redis commands, session JSON).

Why: numba compiles `out[a:b] = src[c:d]` to a generic strided loop that costs ~15 ns before
the first byte (it builds two views and checks their shapes), and the kernels copy ~25 pieces
an event, most under 40 bytes. `copy_bytes` is LLVM's memcpy (libc's for a size known only at
run time): ~4 ns a short piece, measured on this machine, 400 bytes in 25 ns against 113. It
checks both ranges itself (a slice assignment of a wrong size raised; an unchecked memcpy
would write past the buffer).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic


@intrinsic
def _memcpy(typingctx: Any, dst: Any, dst_pos: Any, src: Any, src_pos: Any, n: Any) -> Any:
    """dst[dst_pos : dst_pos + n] = src[src_pos : src_pos + n], unchecked (contiguous 1-d
    uint8 arrays)."""
    for arr in (dst, src):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
                and arr.dtype == types.uint8):  # fmt: skip
            raise TypingError(f"copy_bytes copies between contiguous uint8 arrays, not {arr}")
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> None:
        out = context.make_array(signature.args[0])(context, builder, args[0])
        inp = context.make_array(signature.args[2])(context, builder, args[2])
        to = builder.gep(out.data, [args[1]])
        frm = builder.gep(inp.data, [args[3]])
        cgutils.raw_memcpy(builder, to, frm, args[4], 1)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def copy_bytes(out: np.ndarray, pos: int, src: np.ndarray, start: int, end: int) -> int:
    """`src[start:end]` into `out` at `pos` (uint8 arrays); returns the position after it.
    IndexError if either range falls outside its array."""
    n = end - start
    if n < 0 or start < 0 or pos < 0 or end > len(src) or pos + n > len(out):
        raise IndexError("copy_bytes: a range outside its array")
    _memcpy(out, pos, src, start, n)  # type: ignore[call-arg]  # (typingctx: numba's)
    return pos + n
