"""``python -m bench``: rnnfast's speed and gradient-fidelity report against torch.

Modules: :mod:`.cli` (arguments, grids, the run), :mod:`.common` (cells, model pairs,
inputs, timers, flop counts; also used by ``bench.gpu`` and the pytest-benchmark
cases), :mod:`.speed`, :mod:`.fidelity`, :mod:`.packed`, :mod:`.e2e` (the sections),
:mod:`.check` (``--check``: the floors, met or not),
:mod:`.markdown` and :mod:`.plots` (output), :mod:`.jaxpeer` (the optional JAX peer),
:mod:`.isa` (``--isa``: run as on a narrower CPU).
"""
