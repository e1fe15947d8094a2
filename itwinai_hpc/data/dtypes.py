"""Which array dtypes shards may hold: numeric ones (bool, int, uint, float, complex), stored in
native byte order. Pure numpy."""

from __future__ import annotations

import numpy as np

from itwinai_hpc.core.errors import UserError

NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex


def numeric_dtype(dtype, *, what: str, where: str | None = None) -> np.dtype:
    """`dtype` as a native-byte-order numpy dtype; anything but bool/int/uint/float/complex
    (object, str, bytes, datetime, records) is a UserError naming `what`."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in NUMERIC_KINDS or dt.fields is not None:
        got = str(dt) if dt is not None else repr(dtype)
        raise UserError(f"{what} has dtype {got}, expected a "
                        "numeric dtype (bool, int, uint, float or complex); convert it "
                        "yourself first (nothing is converted silently)", file=where)
    return dt.newbyteorder("=")
