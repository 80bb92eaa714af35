"""An unchanged Triton client (the official ``tritonclient[grpc]`` from PyPI) reaches a
Conspirator job through the agent's Open Inference Protocol listener: liveness, readiness,
metadata, ``infer`` to a job with two replicas (every answer the worker's, both replicas
used, none lost), and a wrong token refused as UNAUTHENTICATED.

The client runs in a process of its own: ``tritonclient`` bundles Triton's own
``grpc_service.proto`` (package ``inference``, the same messages), and protobuf refuses two
files defining the same symbols in one process, so a program uses one or the other (and
this test never imports it here).  The test extra installs it: without it, the test fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from conspirator.runtime.reference import expected_touch, touch

from .harness import node
from .test_agent import small_config

JOB = "team-a/resnet"
TOKEN = "token-a"
N = 40

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

url, job, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = grpcclient.InferenceServerClient(url=url)
headers = {"authorization": f"Bearer {token}"}
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready(job, headers=headers)}
meta = client.get_model_metadata(job, headers=headers)
out["input"] = [meta.inputs[0].datatype, list(meta.inputs[0].shape)]
rng = np.random.default_rng(5)
answers = []
for _ in range(n):
    x = rng.integers(0, 256, (1, 4096), dtype=np.uint8)
    tensor = grpcclient.InferInput("input", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x)
    r = client.infer(job, [tensor], headers=headers)
    buffer = r.get_response().parameters["conspirator_buffer_id"].int64_param
    answers.append([x.tobytes().hex(), r.as_numpy("output").tobytes().hex(), buffer])
out["answers"] = answers
try:
    client.infer(job, [tensor], headers={"authorization": "Bearer wrong"})
    out["wrong_token"] = "OK"
except InferenceServerException as e:
    out["wrong_token"] = e.status()
try:
    client.infer("team-z/none", [tensor], headers=headers)
    out["unknown"] = "OK"
except InferenceServerException as e:
    out["unknown"] = e.status()
print(json.dumps(out))
"""


def test_an_unchanged_triton_client_gets_through() -> None:
    with node({JOB: TOKEN}, small_config(), oip=True) as n:
        n.worker(JOB, "a-0", touch, shape=(4096,), slots=4)
        n.worker(JOB, "a-1", touch, shape=(4096,), slots=4)
        n.wait_replicas(2)
        buffers = n.lt.call(lambda: set(n.agent.core.replicas))
        p = subprocess.run([sys.executable, "-c", CLIENT, n.oip, JOB, TOKEN, str(N)],
                           check=False, capture_output=True, text=True, timeout=120,
                           cwd=tempfile.gettempdir())
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads(p.stdout)
        responses = n.stats().responses
    assert (out["live"], out["ready"], out["model_ready"]) == (True, True, True)
    assert out["input"] == ["UINT8", [4096]]
    assert len(out["answers"]) == N
    for x, result, _ in out["answers"]:
        assert bytes.fromhex(result) == expected_touch(bytes.fromhex(x)).tobytes()
    served = {b for _, _, b in out["answers"]}
    assert served == buffers  # both replicas answered
    assert responses >= N
    assert out["wrong_token"] == "StatusCode.UNAUTHENTICATED"
    assert out["unknown"] == "StatusCode.NOT_FOUND"
