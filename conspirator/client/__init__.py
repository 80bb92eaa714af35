"""Client SDK of the data path: send requests to a job through the node's DPU agent.

::

    from conspirator.client import Client
    with Client("tcp://node:7470", "team-a/resnet", token) as c:
        answer = c.request(tensor.tobytes())        # Response(request_id, data, buffer_id)

    from conspirator.client import AsyncClient
    c = await AsyncClient.connect("tcp://node:7470", "team-a/resnet", token)
    answer = await c.request(payload)

Addresses: ``tcp://host:port`` (payload inside the frames), ``unix:///path`` (same host:
the client writes into agent staging it was handed, the one-sided model), ``rdma://host:port``
(RDMA WRITE into agent staging; TCP for control).  Every request ends with a
:class:`Response` or a :class:`RequestFailed` (:class:`ConnectionLost` when the connection
ended first); none is left hanging.

Imports only the wire protocol and ``_native`` (DESIGN section 2).
"""

from conspirator.client.aio import AsyncClient
from conspirator.client.base import (
    Address,
    ConnectionLost,
    HandshakeFailed,
    RequestFailed,
    Response,
)
from conspirator.client.sync import Client

__all__ = ["Address", "AsyncClient", "Client", "ConnectionLost", "HandshakeFailed",
           "RequestFailed", "Response"]
