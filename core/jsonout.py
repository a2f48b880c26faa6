"""JSON that is always valid (torch-free): results and metrics files never hold NaN."""
from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """Valid JSON always: a metric that could not be computed (NaN/inf, e.g. IoU of a class
    with no pixels, or no readable samples at all) becomes null, and the object it sits in
    gets `"null_reason"` naming those keys."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        out = {k: json_safe(v) for k, v in obj.items()}
        bad = [str(k) for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            out["null_reason"] = f"not computable (no valid pixels or samples): {', '.join(bad)}"
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
