"""TVM's known C++ warnings stay out of the build log; anything else on stderr passes through."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from accelc.backends.tvm.tvm_log import known_warnings_hidden


def test_known_lines_are_dropped_and_the_rest_kept(capfd):
    with known_warnings_hidden():
        os.write(2, b"[12:00] transform.h:1261: Warning: Fast mode segfaults when there are out-of-bounds indices.\n")
        os.write(2, b"[12:00] op.cc:275: Warning: Detected pow(x, y) where y >= 3, it is recommended ...\n")
        os.write(2, b"something TVM had to say\n")
    assert capfd.readouterr().err == "something TVM had to say\n"


def test_known_lines_go_to_the_debug_log_once_with_their_count(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="accelc")
    with known_warnings_hidden():
        for second in range(3):  # libtvm stamps each line: repeats differ only in their timestamp
            os.write(2, f"[12:00:0{second}] transform.h:1261: Warning: Fast mode segfaults when there are "
                        "out-of-bounds indices.\n".encode())
        os.write(2, b"[12:00:09] op.cc:275: Warning: Detected pow(x, y) where y >= 3\n")
    assert capfd.readouterr().err == ""
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and r.name.startswith("accelc")]
    assert debug == ["TVM: transform.h:1261: Warning: Fast mode segfaults when there are out-of-bounds indices. (x3)",
                     "TVM: op.cc:275: Warning: Detected pow(x, y) where y >= 3"]


def test_a_build_with_gathers_and_gelu_prints_none_of_them(capfd, tmp_path):
    from accelc.backends.tvm.lower import relax as lower
    from accelc.config import targets
    from tests.fixtures.helpers import ROOT

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, ids):
            x = self.emb(ids)
            return torch.nn.functional.gelu(x, approximate="tanh") ** 3

    ids = torch.from_numpy(np.arange(6).reshape(2, 3))
    program = lower.export_program(torch.export.export(Model(), (ids,)).module(), (ids,), None)
    target = targets.resolve("x86", ROOT).tvm_target()
    lower.compile_module(lower.to_relax({2: program}, target), target)
    err = capfd.readouterr().err
    assert "Fast mode segfaults" not in err and "Detected pow" not in err
