"""``os.environ.get`` for the lookups made on every layer call (RNNFAST_BACKEND,
RNNFAST_LAYER_GEMM): os.environ.get encodes its key and goes through the Mapping
machinery on every call, ~2 us each on a 2-core AMD EPYC Zen 2 (a layer's forward made
two). This reads os.environ's own dict with the key encoded once, ~0.2 us, and sees every
change made through os.environ at once (monkeypatch.setenv, mock.patch.dict, del); on an
interpreter whose os.environ has no such dict it is os.environ.get."""

import os

_DATA = getattr(os.environ, "_data", None)
_ENCODE = getattr(os.environ, "encodekey", None)
_DECODE = getattr(os.environ, "decodevalue", None)
_FAST = isinstance(_DATA, dict) and callable(_ENCODE) and callable(_DECODE)
# name -> its key in os.environ._data. The names looked up on every layer call are
# encoded here, at import: a torch.compile'd module reads this dict while dynamo traces
# it, and a name added by the first compiled call failed dynamo's guard on the dict's
# contents at the second, which then recompiled.
_KEYS = {n: _ENCODE(n) for n in ("RNNFAST_BACKEND", "RNNFAST_LAYER_GEMM")} if _FAST else {}


def getenv(name, default=None):
    """os.environ.get(name, default)."""
    if not _FAST:
        return os.environ.get(name, default)
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = _ENCODE(name)
    value = _DATA.get(key)
    return default if value is None else _DECODE(value)
