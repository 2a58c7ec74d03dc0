"""Tuning through a TVM RPC tracker: a tracker and two servers on 127.0.0.1 (never another address)
measure the candidates; an unreachable, silent or keyless tracker is a coded error naming the
address, within the configured timeout."""
from __future__ import annotations

import random
import socket
import time

import pytest
import tvm

from accelc import compile as compile_mod
from accelc.config import recipe as recipe_mod
from accelc.config import targets
from accelc.backends.tvm.tune import driver as tune
from accelc.backends.tvm.tune import database as tune_db
from accelc.backends.tvm.tune import rpc as tune_rpc
from accelc.errors import TuningError
from tests.fixtures.helpers import Recording, make_repo, scratch_dir, write_recipe

KEY = "accelc-loopback"
LOCALHOST = "127.0.0.1"


def recipe(tracker: str, key: str = KEY, timeout: float = 60) -> str:
    """One kernel (a Linear layer), one batch of 4 candidates: the least that proves the path."""
    return f"""\
version: 1
name: remote
model:
  entrypoint: torch.nn:Linear
  kwargs: {{in_features: 8, out_features: 4}}
  inputs:
    - {{name: x, shape: [batch, 8], dtype: float32}}
  batch: [4]
target: x86
verify: {{samples: 2}}
tuning:
  per_task: 4
  threads: 1
  runner: {{rpc: {{tracker: "{tracker}", key: {key}, parallel: 2, timeout: {timeout}}}}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def farm():
    import tvm.rpc.tracker
    base = random.randint(20000, 50000)
    tracker = tvm.rpc.tracker.Tracker(host=LOCALHOST, port=base, port_end=base + 200, silent=True)
    servers = [tvm.rpc.Server(host=LOCALHOST, port=base + 200, port_end=base + 400,
                              tracker_addr=(LOCALHOST, tracker.port), key=KEY, silent=True) for _ in range(2)]
    address = f"{LOCALHOST}:{tracker.port}"
    try:
        for _ in range(120):  # servers register a moment after they start
            try:
                if tune_rpc.probe(address, KEY, 5) == 2:
                    break
            except TuningError:
                pass
            time.sleep(0.5)
        yield address
    finally:
        for server in servers:
            server.terminate()
        tracker.terminate()


@pytest.fixture(scope="module")
def remote_tuned(farm):
    repo = make_repo(scratch_dir() / "rpc-repo")
    path = write_recipe(repo, recipe(farm))
    log = Recording()
    return repo, path, compile_mod.tune_recipe(path, logger=log.logger), log.lines


def test_candidates_are_measured_on_the_two_servers(remote_tuned):
    _, _, summary, lines = remote_tuned
    assert summary["runner"].startswith(f"rpc {LOCALHOST}:") and "2 device(s), 2 at once" in summary["runner"]
    assert summary["trials"] == 5 and summary["failed_trials"] == 0  # the default schedule and 4 candidates
    assert summary["tuned_tasks"] == summary["tasks"] == 1
    assert any("kernels done" in line for line in lines)


def test_the_build_applies_the_remote_records(remote_tuned):
    repo, path, _, _ = remote_tuned
    result = compile_mod.build(path, output=repo / "build" / "remote", cache=False)
    summary = result.manifest.tuning
    assert summary.stopped_by == "nothing to tune" and summary.tuned_tasks == 1
    assert result.report["status"] == "passed"
    loaded, spec = recipe_mod.load(path), targets.resolve("x86", repo)
    target = tune.tuning_target(spec.tvm_target(), 1)
    lowered = compile_mod._lower(loaded, spec, lambda *_: None, None)[-1]
    database = tune_db.open_database(repo / ".accelc" / "tuning", target)
    with target, database:
        applied = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(
            tune.tunable_module(lowered.mod, target))
    assert any(f.attrs is not None and "tirx.is_scheduled" in f.attrs
               for _, f in applied.functions.items() if isinstance(f, tvm.tirx.PrimFunc))


def test_an_unknown_key_lists_the_keys_there(farm, tmp_path):
    path = write_recipe(make_repo(tmp_path / "repo"), recipe(farm, key="no-such-board"))
    with pytest.raises(TuningError) as info:
        compile_mod.tune_recipe(path)
    assert info.value.code == "E613" and farm in info.value.format() and KEY in info.value.format()


def test_an_unreachable_tracker_is_named_without_waiting(tmp_path):
    address = f"{LOCALHOST}:{free_port()}"  # nothing listens there
    path = write_recipe(make_repo(tmp_path / "repo"), recipe(address, timeout=5))
    with pytest.raises(TuningError) as info:
        compile_mod.tune_recipe(path)
    assert info.value.code == "E611" and address in info.value.format()
    assert f"{path}:" in info.value.format()  # the recipe line of the tracker


def test_a_silent_tracker_times_out(tmp_path):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind((LOCALHOST, 0))
        listener.listen(1)
        address = f"{LOCALHOST}:{listener.getsockname()[1]}"
        with pytest.raises(TuningError) as info:
            tune_rpc.probe(address, KEY, timeout=0.5)
    assert info.value.code == "E611" and "timed out" in info.value.format() and address in info.value.format()
