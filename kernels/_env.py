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
# name -> its key in os.environ._data, for the names read on every layer call, encoded
# once here and never added to afterwards. A torch.compile'd module reads this dict
# while dynamo traces it: a name added by the first compiled call failed dynamo's guard
# on the dict's contents at the second, which then recompiled. Any other name is
# encoded on each call (~1 us).
_PER_CALL = ("RNNFAST_BACKEND", "RNNFAST_LAYER_GEMM", "RNNFAST_TRITON_TF32",
             "RNNFAST_TRITON_PERSISTENT")
_KEYS = {n: _ENCODE(n) for n in _PER_CALL} if _FAST else {}


def getenv(name, default=None):
    """os.environ.get(name, default)."""
    if not _FAST:
        return os.environ.get(name, default)
    key = _KEYS.get(name)
    value = _DATA.get(_ENCODE(name) if key is None else key)
    return default if value is None else _DECODE(value)


def setting(name, default):
    """A setting from the environment: its value, or ``default`` where the variable is
    unset or empty (``RNNFAST_BACKEND= python ...`` means the default)."""
    return getenv(name, "") or default


def env_flag(name, default):
    """A 0/1 switch from the environment, for both backends' settings: ``default`` where
    unset or empty, else '0' (False) or '1' (True).

    Raises ValueError naming the variable for any other value (a 'false' or 'off' read
    as on would be a silent surprise), as RNNFAST_BACKEND does."""
    value = getenv(name, "")
    if value == "":
        return default
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r}: expected '0' or '1'")
    return value == "1"
