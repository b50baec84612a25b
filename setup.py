import os

from setuptools import setup

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md"),
          encoding="utf-8") as f:
    README = f.read()

setup(
    name="rnnfast",
    version="0.1.0",
    description="Fused RNN, LSTM and GRU forward and BPTT kernels (numba CPU, Triton "
                "GPU) behind drop-in torch.nn modules",
    long_description=README,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["rnnfast", "rnnfast.kernels", "rnnfast.kernels.numba",
              "rnnfast.kernels.triton"],
    # kernels/ lives at the top level of the repo but installs as rnnfast.kernels
    # (a top-level package named "kernels" would clash with an existing PyPI name).
    # bench/ and tests/ are run from the repo root and are not installed.
    package_dir={"rnnfast": "rnnfast", "rnnfast.kernels": "kernels"},
    install_requires=["torch>=2.4", "numba>=0.68", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "ruff", "onnx", "onnxruntime", "onnxscript",
                 "expecttest"],
        "bench": ["matplotlib", "pytest-benchmark", "scipy"],
        "triton": ["triton>=3.6"],
        "jax": ["jax"],
    },
)
