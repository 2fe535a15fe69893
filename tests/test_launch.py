"""gradwell.train.launch: torchrun's own report left out, the training processes' output kept."""

import io

from gradwell.train.launch import Failure, Relay

TORCHRUN = """\
epoch 3: loss 0.41
W1201 09:33:21.824000 21863 torch/distributed/elastic/multiprocessing/api.py:1028] Sending SIGTERM
[rank0]: Traceback (most recent call last):
[rank0]:   File "/work/src/gradwell/train/loop.py", line 370, in train_epoch
[rank0]: RuntimeError: a bug in a training process, which the user must see
E1201 09:33:21.944000 21863 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9)
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
gradwell FAILED
-------------------------------------------------------
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 21868)  (SIGTERM)
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 21869)  (SIGKILL)
=======================================================
"""


def test_the_relay_keeps_the_processes_output_and_reads_the_root_cause_from_torchruns_report():
    out = io.StringIO()
    relay = Relay(out)
    relay.relay(io.StringIO(TORCHRUN))
    kept = out.getvalue()
    assert "epoch 3: loss 0.41" in kept and "[rank0]: RuntimeError: a bug" in kept  # bugs still show
    assert "ChildFailedError" not in kept and "torch/distributed/" not in kept and "Root Cause" not in kept
    assert (relay.failure.rank, relay.failure.exitcode) == (1, -9)


def test_a_failure_is_said_in_one_sentence_with_the_way_to_resume():
    killed = Failure(rank=1, exitcode=-9).describe(2, "runs/dp")
    assert killed == (
        "training process 1 of 2 was stopped by SIGKILL (kill -9, or the out-of-memory killer); torchrun "
        "stopped the others. Go on from the last checkpoint with: gradwell train --resume runs/dp"
    )
    assert (
        Failure(rank=0, exitcode=3).describe(4, "").startswith("training process 0 of 4 exited with status 3")
    )
    assert "--resume RUN_DIR" in Failure().describe(2, "")
