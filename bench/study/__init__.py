"""The study: why LSTMs, when a ReLU-RNN's gradient never saturates?

    python -m bench.study --quick     # <= 10 minutes on 2 CPU cores
    python -m bench.study             # standard: <= 60 minutes on 2 CPU cores, 3 seeds
    python -m bench.study --full      # sized for a GPU: T up to 1000, 5 seeds

For each cell (tanh-RNN, ReLU-RNN, IRNN, leaky-ReLU RNN, LSTM, and GRU when rnnfast has
one): how far back it learns (the longest T it solves on the adding problem and on a
copy-memory task, over a ladder of T), how robustly (the share of runs on a fixed
learning-rate grid that solve or diverge, with and without gradient clipping), and why
(gradient norm vs lag from rnnfast's BPTT telemetry, at initialization and at each
cell's horizon). Writes report.md (short answer, figure, tables), results.json (every
run) and two PNGs to --out; ``--report-only DIR`` rebuilds them from DIR/results.json.

Modules: config (modes), tasks, cells, telemetry, train (one run), runner (plan and
workers), stats, prose, plots, report, store (JSON), cli.
"""
