"""Importing the package: settings that must be in place before torch computes anything."""

import subprocess
import sys

import pytest

SCRIPT = """
import torch
{imports}
b = torch.randn(32, 32).bfloat16()
for rows in range(16, 1100):  # more shapes than oneDNN's default cache of 1,024 kernels
    torch.mm(torch.randn(rows, 32).bfloat16(), b)
print("FIRST SHAPE AGAIN", flush=True)
torch.mm(torch.randn(16, 32).bfloat16(), b)
"""


def kernel_lookup_of_first_shape(imports: str) -> str:
    """'create:cache_hit' or 'create:cache_miss' for the first shape after 1,084 others, or ''
    where bf16 products do not go through oneDNN."""
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(imports=imports)], capture_output=True, text=True,
                         env={"ONEDNN_VERBOSE": "profile_create", "PATH": ""}, timeout=300).stdout
    tail = out.split("FIRST SHAPE AGAIN", 1)[-1]
    return next((word for word in ("create:cache_hit", "create:cache_miss") if word in tail), "")


def test_importing_pipeline_sets_the_kernel_cache_unless_the_user_did():
    code = "import os, pipeline; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    run = lambda env: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                     env=env, timeout=120).stdout.strip()
    assert run({"PATH": ""}) == "16384"
    assert run({"PATH": "", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "100"}) == "100"


def test_importing_pipeline_keeps_every_bf16_kernel_of_an_epoch_compiled():
    without = kernel_lookup_of_first_shape("")
    if not without:
        pytest.skip("torch sent no bf16 matrix product through oneDNN on this machine (ONEDNN_VERBOSE showed no "
                    "kernel lookup), so it has no oneDNN kernel cache to keep; the setting itself is tested above")
    assert without == "create:cache_miss"  # torch's default: the first shape was evicted and recompiled
    assert kernel_lookup_of_first_shape("import pipeline") == "create:cache_hit"
